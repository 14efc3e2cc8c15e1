"""Pixel rejection: one small function per method, each filling a keep-mask.

Every method sees the finite values of one output pixel, ``vals[:n]`` in frame order, and
writes ``flags[:n]``: ``KEEP`` (0), ``LOW`` (1) or ``HIGH`` (2). The reduction
(``reduce.py``) then consumes values + flags; see STYLE.md section 2.

Definitions follow Siril's rejection stacking (``src/stacking/rejection_float.c``), made
order-independent and explicit where Siril is neither:

- ``sigma``: centre = median, scale = sample standard deviation (ddof=1); reject
  ``x < c - p_low*s`` (low) or ``x > c + p_high*s`` (high); iterate.
- ``mad``: as ``sigma`` with scale = 1.4826 * median(|x - median|).
- ``winsorized``: as ``sigma`` but the scale is Huber's winsorized estimate: starting from
  the standard deviation, clip a copy of the values to ``median +- 1.5 s`` and re-estimate
  ``s = 1.134 * std(clipped)`` until it changes by <= 0.05 % (1.134 undoes the variance a
  normal sample loses when winsorized at 1.5 sigma); then clip the real values.
- ``linear-fit``: sort the kept values, fit a least-squares line to (rank, value), scale =
  mean absolute residual; reject by residual ``< -p_low*s`` / ``> p_high*s``; iterate.
- ``percentile``: one pass; reject ``median - x > p_low*|median|`` (low) or
  ``x - median > p_high*|median|`` (high).
- ``gesd``: Rosner's generalized ESD test, ``p_low`` = significance alpha, ``p_high`` = the
  largest fraction of the values that may be outliers; the most extreme value (from the
  mean, in units of the sample standard deviation) is removed r = floor(p_high*n) times and
  the outliers are the first i removed for the largest i whose statistic exceeds its
  critical value. Removed from the low end = low, from the high end = high.
- ``minmax``: drop the round(p_low) lowest and round(p_high) highest values (halves round
  up; ties between equal values go by frame order: the earliest frames are dropped low,
  the latest high).

Small stacks and degenerate scales (documented behaviour, identical on CPU and GPU):

- ``n <= 2`` finite values: nothing is rejected, whatever the method.
- The iterative methods (sigma, mad, winsorized, linear-fit) run passes while more than
  3 values remain, the last pass rejected something and fewer than ``max_iter`` passes ran
  (``max_iter <= 0``: no cap; as Siril, which iterates to convergence).
- No statistical method leaves fewer than 2 values: a pass that would is dropped whole and
  the iteration ends (GESD tests at most n - 2 values). ``minmax`` keeps at least 1 value
  (it drops fewer when there are not enough: ``k_low = min(k_low, n - 1)``,
  ``k_high = min(k_high, n - 1 - k_low)``).
- A zero scale (all kept values equal, MAD = 0 when more than half the values tie, kept
  values exactly on a line for linear-fit, a zero median for percentile) rejects nothing:
  the data carry no spread to judge outliers by. "Zero" for the kappa methods means
  ``s <= 1e-12 * max|x|`` over the kept values, so that float rounding noise (~1e-16
  relative) is not mistaken for a spread; float32 data cannot have a real spread that
  small. (Siril would reject every value that differs from the median; with 8-bit video
  that throws away most of the signal in dark pixels.)
- Comparisons are strict (``>``), as in Siril: a value exactly at the threshold is kept.

Where this departs from Siril, on purpose: Siril's "stop when N - r <= 4" guard depends on
the order of the frames (it stops rejecting part-way through a pass); here a pass is kept
or dropped whole. Siril's MAD pass uses the previous pass's median for the MAD; here the
current one. Siril counts GESD's outlier budget from all frames including missing ones;
here from the values present.

Arithmetic (not part of the definitions): the standard deviations of sigma and winsorized
are computed in one pass as ``sum d^2 - (sum d)^2 / k`` over the deviations ``d`` from the
median (exact to a few ulp, see ``select.moments_about``), not in NumPy's two passes about
the mean, and sums use several accumulators in a fixed order. Results can therefore differ
from a NumPy reference in the last bits of a scale; a value that close to a threshold is
decided either way. The tests check every method against a plain NumPy reference
(tests/kernels/kernel_reference.py) on random stacks with ties, NaN and outliers.
"""
from __future__ import annotations

import math

from numba import njit, uintp

from ..codes import (
    REJECT_GESD,
    REJECT_LINEAR_FIT,
    REJECT_MAD,
    REJECT_MINMAX,
    REJECT_NONE,
    REJECT_PERCENTILE,
    REJECT_SIGMA,
    REJECT_WINSORIZED,
)
from .select import (
    clipped_moments,
    deviations,
    median_near,
    moments_about,
    sample_std,
    select_near,
    select_range,
    sort_pairs,
    split_bounds,
    split_moments,
)

KEEP = 0
LOW = 1
HIGH = 2

MIN_KEPT = 2  # no statistical pass may leave fewer values than this
ZERO_SCALE = 1e-12  # a kappa scale at most this times max|x| counts as zero
ITERATE_ABOVE = 3  # iterative methods run another pass only while more values remain

MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample -> its sigma
WINSOR_CLIP = 1.5  # Huber's winsorizing point, in sigmas (Siril uses the same)
WINSOR_CORRECTION = 1.134  # sigma of a normal winsorized at +-1.5 sigma is sigma / 1.134
WINSOR_TOL = 0.0005  # relative change of the scale that ends the winsorizing loop
WINSOR_MAX_ITER = 100  # converges in < 20 in practice; a cap so no input can spin
# Speed only: the winsorizing loop sums the values within this fraction of the clipping
# point once, and re-walks only the others while the clipping point stays above it. The
# point falls fast while outliers are being tamed (x0.2 a step), then by < 10 % a step.
WINSOR_CORE = 0.8


# ---------------------------------------------------------------------------------
# sigma, mad, winsorized: a centre (the median) and a scale, an interval kept per pass


@njit(nogil=True, cache=True, _nrt=False)
def _winsorized_scale(d, k, s1, s2, rim):
    """Huber's winsorized sigma of values whose deviations from their median are
    ``d[:k]``; ``s1``, ``s2``: ``sum d`` and ``sum d^2`` (``select.deviations``); ``rim``:
    scratch of ``k``.

    Each iteration clips the already clipped values to ``centre +- 1.5 s``. All those
    intervals contain the centre, so clipping again and again is clipping once to the
    narrowest of them: the clipped values are ``d`` clipped to ``+-b`` with ``b`` the
    smallest ``1.5 s`` so far. ``b`` only shrinks, so the values with ``|d| <= t`` for
    some ``t <= b`` are not clipped in this iteration nor in any later one while ``b``
    stays above ``t``: their sums are taken once (the core), and an iteration walks only
    the others (the rim, ~30 % of a normal sample); when ``b`` falls below ``t`` the split
    is redone lower. The clipped values keep the median, so the sums about it stay exact
    (``select.moments_about``).
    """
    s = sample_std(s1, s2, k)
    b = math.inf
    t = -1.0
    c1 = 0.0
    c2 = 0.0
    nr = 0
    for _ in range(WINSOR_MAX_ITER):
        b = min(b, WINSOR_CLIP * s)
        if b < t or t < 0.0:
            t = WINSOR_CORE * b
            c1, c2, nr = split_moments(d, k, t, rim)
        r1, r2 = clipped_moments(rim, nr, b)
        s0 = s
        s = WINSOR_CORRECTION * sample_std(c1 + r1, c2 + r2, k)
        if abs(s - s0) <= s0 * WINSOR_TOL:
            break
    return s


@njit(nogil=True, cache=True, _nrt=False)
def _centre_clip(method, vals, n, flags, k_low, k_high, max_iter, kv, work, work2, work3, hint):
    """sigma, mad and winsorized clipping; returns the number of values rejected.

    Each pass keeps ``[c - k_low s, c + k_high s]`` of what was kept, so the kept values
    are always an interval ``[vmin, vmax]`` of the sorted values, i.e. the ranks
    ``[lo_rank, hi_rank)``, and ``vmin``/``vmax`` are kept values themselves (so
    ``max |x|`` over the kept values is ``max(|vmin|, |vmax|)``). The median of the kept
    values is then a rank selection in ``work`` (all n values), whose earlier selections
    (up to four "splits") bound the next one: after the first pass a median costs a
    fraction of the first. The first searches a window around the mean of the values
    without their extremes, as wide as the windows that served the previous pixels
    (``hint[0:2]``, see ``select.select_near``); the MAD's own median starts from the
    previous one (``hint[2:4]``).

    The first pass reads ``vals``; a pass that rejects copies what it keeps, in frame
    order, to ``kv``, which the next pass reads: no pass tests the values against the
    interval again. A pass whose interval holds ``vmin`` and ``vmax`` rejects nothing,
    which ends the iteration without walking the values. The flags follow from the final
    interval (a value below it was necessarily rejected low); all ``n`` are written.

    The scale's sums run about the median (``select.moments_about``): one pass, no
    cancellation.
    """
    vmin = vals[0]
    vmax = vals[0]
    ta = 0.0
    tb = 0.0
    m = n - n % 2
    for j in range(0, m, 2):
        x = vals[uintp(j)]
        y = vals[uintp(j + 1)]
        work[uintp(j)] = x
        work[uintp(j + 1)] = y
        vmin = min(vmin, min(x, y))
        vmax = max(vmax, max(x, y))
        ta += x
        tb += y
    if m < n:
        x = vals[uintp(m)]
        work[uintp(m)] = x
        vmin = min(vmin, x)
        vmax = max(vmax, x)
        ta += x
    total = ta + tb
    # speed only: the first median is searched near the mean without the extremes (robust to
    # one outlier each side): measured 5-10 % faster than starting from the neighbouring
    # pixel's median, which misses wherever the level changes (stars, gradients)
    hint[0] = (total - vmin - vmax) / (n - 2)
    lo_rank = 0
    hi_rank = n
    s1 = -1
    s2 = -1
    s3 = -1
    s4 = -1
    passes = 0
    src = vals  # the kept values, frame order: vals, then kv
    while hi_rank - lo_rank > ITERATE_ABOVE and (max_iter <= 0 or passes < max_iter):
        passes += 1
        k = hi_rank - lo_rank
        r = lo_rank + k // 2
        a, b = split_bounds(r, n, s1, s2, s3, s4)
        below = 0  # a boundary at or below r - 1 (a[:below] <= a[below:]), from the first selection
        if passes == 1:
            centre, below = select_near(work, n, r, hint, 0)
        else:
            centre = select_range(work, a, b, r)
        if a != b:
            s4 = s3
            s3 = s2
            s2 = s1
            s1 = r
        if k % 2 == 0:
            r -= 1
            a, b = split_bounds(r, n, s1, s2, s3, s4)
            a = max(a, below)
            centre = 0.5 * (select_range(work, a, b, r) + centre)
            if a != b:
                s4 = s3
                s3 = s2
                s2 = s1
                s1 = r
        biggest = max(abs(vmin), abs(vmax))
        if method == REJECT_MAD:
            for j in range(k):
                work2[uintp(j)] = abs(src[uintp(j)] - centre)
            s = MAD_TO_SIGMA * median_near(work2, k, hint, 2)
        elif method == REJECT_WINSORIZED:
            d1, d2 = deviations(src, work2, k, centre)
            s = _winsorized_scale(work2, k, d1, d2, work3)
        else:
            d1, d2 = moments_about(src, k, centre)
            s = sample_std(d1, d2, k)  # k >= 4 here
        if not s > ZERO_SCALE * biggest:
            break
        lo = k_low * s
        hi = k_high * s
        if not (centre - vmin > lo or vmax - centre > hi):
            break  # the extremes are inside: nothing to reject
        n_low = 0
        n_high = 0
        m = 0
        new_min = math.inf
        new_max = -math.inf
        for j in range(k):
            x = src[uintp(j)]
            low = centre - x > lo
            not_low = centre - x <= lo  # (no NaN here: the values are finite)
            high = (x - centre > hi) & not_low
            keep = (x - centre <= hi) & not_low
            kv[uintp(m)] = x  # in place when src is kv: m <= j
            m += keep
            n_low += low
            n_high += high
            new_min = min(new_min, x if keep else math.inf)
            new_max = max(new_max, x if keep else -math.inf)
        if m < MIN_KEPT:
            break
        src = kv
        vmin = new_min
        vmax = new_max
        lo_rank += n_low
        hi_rank -= n_high
    for j in range(n):
        x = vals[uintp(j)]
        flags[uintp(j)] = (x < vmin) * LOW + (x > vmax) * HIGH
    return n - (hi_rank - lo_rank)


# ---------------------------------------------------------------------------------
# linear fit: a line through the sorted values, residual clipping


@njit(nogil=True, cache=True, _nrt=False)
def _line_fit(kv, k):
    """Least-squares line through (j, kv[j]), j = 0..k-1: intercept, slope, the mean
    absolute residual and max |kv|."""
    xm = 0.5 * (k - 1)
    ym = 0.0
    for j in range(k):
        ym += kv[j]
    ym /= k
    sxy = 0.0
    sxx = 0.0
    for j in range(k):
        dx = j - xm
        sxy += dx * (kv[j] - ym)
        sxx += dx * dx
    slope = sxy / sxx
    intercept = ym - slope * xm
    s = 0.0
    biggest = 0.0
    for j in range(k):
        s += abs(kv[j] - (intercept + slope * j))
        biggest = max(biggest, abs(kv[j]))
    return intercept, slope, s / k, biggest


@njit(nogil=True, cache=True, _nrt=False)
def _linear_fit_clip(vals, n, flags, k_low, k_high, max_iter, kv, kp, work, kp2):
    """Linear-fit clipping. ``kv[:k]``/``kp[:k]``: the kept values, sorted, and their
    positions in ``vals``; compaction keeps them sorted, so one sort serves every pass."""
    for j in range(n):
        kv[j] = vals[j]
        kp[j] = j
    sort_pairs(kv, kp, n, work, kp2)
    k = n
    passes = 0
    while k > ITERATE_ABOVE and (max_iter <= 0 or passes < max_iter):
        passes += 1
        intercept, slope, s, biggest = _line_fit(kv, k)
        if not s > ZERO_SCALE * biggest:
            return
        lo = k_low * s
        hi = k_high * s
        r = 0
        for j in range(k):
            d = kv[j] - (intercept + slope * j)
            if -d > lo or d > hi:
                r += 1
        if r == 0 or k - r < MIN_KEPT:
            return
        m = 0
        for j in range(k):
            d = kv[j] - (intercept + slope * j)
            if -d > lo:
                flags[kp[j]] = LOW
            elif d > hi:
                flags[kp[j]] = HIGH
            else:
                kv[m] = kv[j]
                kp[m] = kp[j]
                m += 1
        k = m


# ---------------------------------------------------------------------------------
# single-pass methods


@njit(nogil=True, cache=True, _nrt=False)
def _percentile_clip(vals, n, flags, p_low, p_high, work, hint):
    for j in range(n):
        work[j] = vals[j]
    centre = median_near(work, n, hint, 0)
    scale = abs(centre)
    if not scale > 0.0:
        return
    lo = p_low * scale
    hi = p_high * scale
    r = 0
    for j in range(n):
        if centre - vals[j] > lo or vals[j] - centre > hi:
            r += 1
    if n - r < MIN_KEPT:
        return
    for j in range(n):
        if centre - vals[j] > lo:
            flags[j] = LOW
        elif vals[j] - centre > hi:
            flags[j] = HIGH


@njit(nogil=True, cache=True, _nrt=False)
def _gesd(vals, n, flags, max_fraction, crit, kv, kp, work, kp2):
    """Generalized ESD (Rosner 1983) with ``crit[s]`` the critical value at size ``s``.

    The values are sorted once; each step removes the lower or upper end. The mean and
    sample variance of what remains are kept as running sums of deviations from the
    median (small numbers, so removing an end costs O(1) without losing digits); they
    are recomputed exactly whenever a removed value dwarfs what remains.
    """
    r = int(math.floor(max_fraction * n))
    if r > n - MIN_KEPT:
        r = n - MIN_KEPT
    if r <= 0:
        return
    for j in range(n):
        kv[j] = vals[j]
        kp[j] = j
    sort_pairs(kv, kp, n, work, kp2)
    c = kv[n // 2]
    s1 = 0.0
    s2 = 0.0
    for j in range(n):
        d = kv[j] - c
        s1 += d
        s2 += d * d
    lo = 0
    hi = n - 1
    out_lo = 0  # after the accepted removals: kv[:out_lo] low, kv[out_hi+1:] high
    out_hi = n - 1
    for _ in range(r):
        size = hi - lo + 1
        mean = c + s1 / size
        var = (s2 - s1 * s1 / size) / (size - 1)
        sd = math.sqrt(var) if var > 0.0 else 0.0
        dev_low = mean - kv[lo]
        dev_high = kv[hi] - mean
        if dev_high > dev_low:
            stat = dev_high
            d = kv[hi] - c
            hi -= 1
        else:
            stat = dev_low
            d = kv[lo] - c
            lo += 1
        if sd > 0.0 and stat / sd > crit[size]:
            out_lo = lo
            out_hi = hi
        s1 -= d
        s2 -= d * d
        if d * d > 1e6 * s2:  # the sums were dominated by the value just removed: redo
            s1 = 0.0
            s2 = 0.0
            for j in range(lo, hi + 1):
                e = kv[j] - c
                s1 += e
                s2 += e * e
    for j in range(out_lo):
        flags[kp[j]] = LOW
    for j in range(out_hi + 1, n):
        flags[kp[j]] = HIGH


@njit(nogil=True, cache=True, _nrt=False)
def _insert_extreme(bv, bp, m, v, p, lowest):
    """Insert (v, p) into the first ``m`` entries of a buffer kept sorted by closeness to
    the extreme (ascending for the lowest values, descending for the highest)."""
    j = m - 1
    while j >= 0 and ((v < bv[j]) if lowest else (v >= bv[j])):
        bv[j + 1] = bv[j]
        bp[j + 1] = bp[j]
        j -= 1
    bv[j + 1] = v
    bp[j + 1] = p


@njit(nogil=True, cache=True, _nrt=False)
def _minmax_clip(vals, n, flags, p_low, p_high, kv, kp, work, kp2):
    k_low = max(int(math.floor(p_low + 0.5)), 0)
    k_high = max(int(math.floor(p_high + 0.5)), 0)
    k_low = min(k_low, n - 1)
    k_high = min(k_high, n - 1 - k_low)
    if k_low + k_high <= 16:
        # one pass keeps the k lowest (kv/kp) and k highest (work/kp2) in small sorted
        # buffers; a value only enters when it beats the buffer's last, which is rare, so
        # this costs ~n steps. Ties: a later frame never beats an equal value at the low
        # end and always does at the high end, as with the stable sort below.
        m_low = 0
        m_high = 0
        for j in range(n):
            v = vals[j]
            if m_low < k_low:
                _insert_extreme(kv, kp, m_low, v, j, True)
                m_low += 1
            elif k_low > 0 and v < kv[k_low - 1]:
                _insert_extreme(kv, kp, k_low - 1, v, j, True)
            if m_high < k_high:
                _insert_extreme(work, kp2, m_high, v, j, False)
                m_high += 1
            elif k_high > 0 and v >= work[k_high - 1]:
                _insert_extreme(work, kp2, k_high - 1, v, j, False)
        for j in range(k_low):
            flags[kp[j]] = LOW
        for j in range(k_high):
            flags[kp2[j]] = HIGH
        return
    for j in range(n):
        kv[j] = vals[j]
        kp[j] = j
    sort_pairs(kv, kp, n, work, kp2)  # stable: equal values stay in frame order
    for j in range(k_low):
        flags[kp[j]] = LOW
    for j in range(n - k_high, n):
        flags[kp[j]] = HIGH


@njit(nogil=True, cache=True, _nrt=False)
def reject_pixel(method, vals, n, flags, p_low, p_high, max_iter, crit, kv, kp, work, work2, work3, kp2, hint):
    """Fill ``flags[:n]`` (KEEP / LOW / HIGH) for the finite values ``vals[:n]`` of one pixel.

    Parameters
    ----------
    method : int
        A ``codes.REJECT_*`` code.
    vals : float64 array
        The pixel's finite values in frame order (only ``vals[:n]`` is read; not modified).
    n : int
        Number of values.
    flags : int8 array
        Output, ``flags[j]`` for ``vals[j]``.
    p_low, p_high : float
        Method parameters (module docstring).
    max_iter : int
        Pass cap of the iterative methods (<= 0: until nothing more is rejected).
    crit : float64 array
        GESD critical values by sample size (``tdist.gesd_critical_values``); unused by
        the other methods.
    kv, kp, work, work2, work3, kp2 : arrays of at least ``n`` float64 / int32 / float64 /
        float64 / float64 / int32
        Scratch.
    hint : float64 array of 4
        Speed only, never the result: guesses of the medians and the widths of the
        windows searched around them, carried from pixel to pixel (``select.select_near``).
        Start each row of pixels (or each thread) with NaN.

    Returns
    -------
    int
        How many values were rejected (flags that are not KEEP).
    """
    if n > 2 and (method == REJECT_SIGMA or method == REJECT_MAD or method == REJECT_WINSORIZED):
        return _centre_clip(method, vals, n, flags, p_low, p_high, max_iter, kv, work, work2, work3,
                            hint)  # writes all flags
    for j in range(n):
        flags[j] = KEEP
    if n <= 2 or method == REJECT_NONE:
        return 0
    if method == REJECT_LINEAR_FIT:
        _linear_fit_clip(vals, n, flags, p_low, p_high, max_iter, kv, kp, work, kp2)
    elif method == REJECT_PERCENTILE:
        _percentile_clip(vals, n, flags, p_low, p_high, work, hint)
    elif method == REJECT_GESD:
        _gesd(vals, n, flags, p_high, crit, kv, kp, work, kp2)
    elif method == REJECT_MINMAX:
        _minmax_clip(vals, n, flags, p_low, p_high, kv, kp, work, kp2)
    r = 0
    for j in range(n):
        r += flags[j] != KEEP
    return r
