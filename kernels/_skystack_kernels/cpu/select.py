"""Order statistics on small per-pixel scratch vectors: selection, sorting, moments.

Every function works in place on a 1-d scratch array, allocates nothing, never recurses
and uses only ``math``: the GPU twins compile these very functions as CUDA device
functions (see ``gpu/twins.py``), so they must stay in that subset.

Speed notes (n = 100 float64, one core of the 2-core CI machine): a median by
``select_range`` ~0.55 us, by Wirth's branchy selection ~1.6 us, a full sort 3.5 us
(merge) to 12 us (heapsort). Hence selection wherever a rank is all that is needed, and a
sort only where the method needs the order itself (linear fit, GESD, large min/max).

The sums (:func:`moments_about`, :func:`deviations`, :func:`clipped_moments`,
:func:`split_moments`) run independent accumulators over ``j mod 4`` (or ``mod 2``) and add
them in a fixed order at the end: the loop is then bound by throughput, not by the latency
of one long chain of additions, and the result still depends only on the values and their
order, not on the machine or its vector width (no ``fastmath``: the CPU, the GPU twins and
any worker add in the same order).

Performance rules of this module and its callers (``reject.py``, ``reduce.py``,
``combine.py``), measured at n = 100 on the CI machine:

- ``_nrt=False``: these functions never allocate, and without Numba's runtime they do not
  increment and decrement the reference count of every array argument on each call (two
  atomic operations per array, ~100 ns per call of ``reject_pixel``, 30 % of a sigma clip).
- Array indices are cast to ``uintp``: Numba then drops the negative-index wraparound
  code (four instructions per access), ~25 % of a partition pass. Every index here is
  non-negative. (The GPU twins compile the same casts; the simulator runs them as NumPy
  integers.)
"""
from __future__ import annotations

import math

from numba import njit, uintp

# Below this length insertion sort beats merge sort (fewer branches and moves); the usual
# crossover is 16-32 elements.
_INSERTION_MAX = 32


@njit(nogil=True, cache=True, _nrt=False)
def select_range(a, lo, hi, k):
    """The value of rank ``k`` in ``a``, searching only ``a[lo:hi+1]``.

    Requires ``lo <= k <= hi`` and ``a[:lo] <= a[lo:hi+1] <= a[hi+1:]`` (trivially true for
    ``lo = 0, hi = len - 1``). Returns with ``a[:k] <= a[k] <= a[k+1:]``, so a later call
    for a nearby rank can pass the tighter bounds this one established.

    Quickselect with a median-of-three pivot and a branch-free Lomuto partition (the
    comparison result feeds an index, not a jump): on random data half the branches of
    a Hoare partition mispredict, this one has none, ~3x faster at n = 100.
    Deterministic: the CPU and GPU twins move the same elements.

    A rank at either end of the range (the common case right after a neighbouring rank
    was selected, e.g. the lower middle of an even count) is a plain min/max scan.
    """
    if hi > lo and (k == lo or k == hi):
        best = k
        if k == hi:
            for i in range(lo, hi):
                if a[uintp(i)] > a[uintp(best)]:
                    best = i
        else:
            for i in range(lo + 1, hi + 1):
                if a[uintp(i)] < a[uintp(best)]:
                    best = i
        v = a[uintp(best)]
        a[uintp(best)] = a[uintp(k)]
        a[uintp(k)] = v
        return v
    while hi > lo:
        mid = (lo + hi) // 2
        x = a[uintp(lo)]
        y = a[uintp(mid)]
        z = a[uintp(hi)]
        pivot = max(min(x, y), min(max(x, y), z))
        store = lo
        for i in range(lo, hi + 1):
            v = a[uintp(i)]
            a[uintp(i)] = a[uintp(store)]
            a[uintp(store)] = v
            store += v < pivot
        # a[lo:store] < pivot <= a[store:hi+1]; the pivot itself is on the right, so store <= hi
        if k < store:
            hi = store - 1
        elif store > lo:
            lo = store
        else:
            # the pivot is the range's minimum: split off the values equal to it (this
            # pass only runs then, so ties cannot stall the loop and random data pays ~2n)
            equal_end = lo
            for i in range(lo, hi + 1):
                v = a[uintp(i)]
                a[uintp(i)] = a[uintp(equal_end)]
                a[uintp(equal_end)] = v
                equal_end += v <= pivot
            if k < equal_end:
                return a[uintp(k)]
            lo = equal_end
    return a[uintp(k)]


@njit(nogil=True, cache=True, _nrt=False)
def select_near(a, n, k, hint, h):
    """The value of rank ``k`` in ``a[:n]``, helped by a guess of it, and a lower search
    bound for rank ``k - 1``.

    ``hint[h]`` is the guess (e.g. the neighbouring pixel's median), ``hint[h + 1]`` a
    half-width. One pass splits ``a[:n]`` into ``< guess - width``, the window and
    ``> guess + width``; when the answer lies in the window (most pixels of a sky
    background) only the window's few values remain to search: ~1.5n steps instead of
    ~2n. A bad guess costs about one pass. The result never depends on the hint, only the
    time does, so the GPU twin (whose threads see other neighbours) returns the same.

    Updates ``hint[h:h+2]`` for the next pixel: the guess becomes this answer, the width
    shrinks while the window holds more values than needed and grows (to at least the
    miss) when it missed.
    A NaN guess means "no hint" (the first pixel): the width is then seeded from the
    spread of the values.

    Returns ``(value, lo)``: besides the split at ``k``, ``a[:lo] <= a[lo:]`` with
    ``lo <= k - 1`` (or ``lo = 0``), so rank ``k - 1`` (the lower middle of an even count)
    is ``select_range(a, lo, k - 1, k - 1)``: a scan of the window's part below ``k``
    rather than of everything below it.
    """
    guess = hint[uintp(h)]
    width = hint[uintp(h + 1)]
    below = guess - width
    above = guess + width
    if not (below <= above):  # no hint yet
        value = select_range(a, 0, n - 1, k)
        lo_v = a[0]
        hi_v = a[0]
        for i in range(1, n):
            lo_v = min(lo_v, a[uintp(i)])
            hi_v = max(hi_v, a[uintp(i)])
        hint[uintp(h)] = value
        hint[uintp(h + 1)] = 4.0 * (hi_v - lo_v) / n  # ~0.2 sigma for a normal sample
        return value, 0
    start = 0
    for i in range(n):
        v = a[uintp(i)]
        a[uintp(i)] = a[uintp(start)]
        a[uintp(start)] = v
        start += v < below
    end = start
    if k >= start:
        for i in range(start, n):
            v = a[uintp(i)]
            a[uintp(i)] = a[uintp(end)]
            a[uintp(end)] = v
            end += v <= above
    # a[:start] < below <= a[start:end] <= above < a[end:n]
    if k < start:
        value = select_range(a, 0, start - 1, k)
    elif k < end:
        value = select_range(a, start, end - 1, k)
    else:
        value = select_range(a, end, n - 1, k)
    if start <= k < end:
        if end - start > n // 8 + 4:
            width *= 0.75
    else:  # missed: at least as wide as the miss, so a jump in level recovers at once
        width = max(2.0 * width, 1.5 * abs(value - guess))
    hint[uintp(h)] = value
    hint[uintp(h + 1)] = width
    # the boundaries 0 <= start <= end: the highest one at or below k - 1
    lo = end if end <= k - 1 else (start if start <= k - 1 else 0)
    return value, lo


@njit(nogil=True, cache=True, _nrt=False)
def median_near(a, n, hint, h):
    """:func:`median_inplace` using (and updating) the guess in ``hint[h:h+2]``
    (:func:`select_near`)."""
    k = n // 2
    upper, lo = select_near(a, n, k, hint, h)
    if n % 2 == 1:
        return upper
    return 0.5 * (select_range(a, lo, k - 1, k - 1) + upper)


@njit(nogil=True, cache=True, _nrt=False)
def median_inplace(a, n):
    """Median of ``a[:n]`` (mean of the two middle values for even ``n``, as
    ``numpy.median``); reorders ``a[:n]``. ``n`` must be at least 1."""
    k = n // 2
    upper = select_range(a, 0, n - 1, k)
    if n % 2 == 1:
        return upper
    # a[:k] now holds the k smallest values: the lower middle is their maximum
    return 0.5 * (select_range(a, 0, k - 1, k - 1) + upper)


@njit(nogil=True, cache=True, _nrt=False)
def split_bounds(r, n, s1, s2, s3, s4):
    """Search bounds for rank ``r`` given ranks ``s1..s4`` already selected in the same
    array (each a "split": ``a[:s] <= a[s] <= a[s+1:]``; negative = unknown).

    Returns ``(lo, hi)`` for :func:`select_range`; ``lo == hi == r`` when ``r`` is a split.
    """
    lo = 0
    hi = n - 1
    for s in (s1, s2, s3, s4):
        if s < 0:
            continue
        if s == r:
            return r, r
        if s < r:
            lo = max(lo, s + 1)
        else:
            hi = min(hi, s - 1)
    return lo, hi


@njit(nogil=True, cache=True, _nrt=False)
def sort_pairs(a, p, n, a2, p2):
    """Sort ``a[:n]`` ascending, carrying ``p[:n]`` along; stable (equal values keep their
    order in ``p``, i.e. frame order when ``p`` is ascending on entry).

    Insertion sort up to 32 values, else runs of 32 by insertion sort merged bottom-up
    (O(n log n)), ping-ponging through the scratch ``a2``/``p2`` (at least ``n`` long).
    Iterative: no stack to size on the GPU.
    """
    for s in range(0, n, _INSERTION_MAX):
        e = min(s + _INSERTION_MAX, n)
        for i in range(s + 1, e):
            v = a[uintp(i)]
            q = p[uintp(i)]
            j = i - 1
            while j >= s and a[uintp(j)] > v:
                a[uintp(j + 1)] = a[uintp(j)]
                p[uintp(j + 1)] = p[uintp(j)]
                j -= 1
            a[uintp(j + 1)] = v
            p[uintp(j + 1)] = q
    width = _INSERTION_MAX
    in_scratch = False
    while width < n:
        for s in range(0, n, 2 * width):
            m = min(s + width, n)
            e = min(s + 2 * width, n)
            if in_scratch:
                _merge(a2, p2, a, p, s, m, e)
            else:
                _merge(a, p, a2, p2, s, m, e)
        in_scratch = not in_scratch
        width *= 2
    if in_scratch:
        for i in range(n):
            a[uintp(i)] = a2[uintp(i)]
            p[uintp(i)] = p2[uintp(i)]


@njit(nogil=True, cache=True, _nrt=False)
def _merge(a, p, out_a, out_p, s, m, e):
    # merge a[s:m] and a[m:e] into out[s:e]; take from the right run only when strictly
    # smaller, which keeps the sort stable
    i = s
    j = m
    k = s
    while i < m and j < e:
        if a[uintp(j)] < a[uintp(i)]:
            out_a[uintp(k)] = a[uintp(j)]
            out_p[uintp(k)] = p[uintp(j)]
            j += 1
        else:
            out_a[uintp(k)] = a[uintp(i)]
            out_p[uintp(k)] = p[uintp(i)]
            i += 1
        k += 1
    while i < m:
        out_a[uintp(k)] = a[uintp(i)]
        out_p[uintp(k)] = p[uintp(i)]
        i += 1
        k += 1
    while j < e:
        out_a[uintp(k)] = a[uintp(j)]
        out_p[uintp(k)] = p[uintp(j)]
        j += 1
        k += 1


@njit(nogil=True, cache=True, _nrt=False)
def moments_about(a, n, c):
    """``(sum d, sum d^2)`` over ``a[:n]``, ``d = x - c``, in float64 (four accumulators,
    see the module docstring).

    About a centre ``c`` inside the data (the median), ``sum d^2 - (sum d)^2 / n`` is the
    sum of squared deviations from the mean without cancellation: the median is within
    one standard deviation of the mean, so the subtracted term is at most the result.
    """
    s1a = 0.0
    s1b = 0.0
    s1c = 0.0
    s1d = 0.0
    s2a = 0.0
    s2b = 0.0
    s2c = 0.0
    s2d = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        d0 = a[uintp(j)] - c
        d1 = a[uintp(j + 1)] - c
        d2 = a[uintp(j + 2)] - c
        d3 = a[uintp(j + 3)] - c
        s1a += d0
        s1b += d1
        s1c += d2
        s1d += d3
        s2a += d0 * d0
        s2b += d1 * d1
        s2c += d2 * d2
        s2d += d3 * d3
    for j in range(m, n):
        d = a[uintp(j)] - c
        s1a += d
        s2a += d * d
    return (s1a + s1b) + (s1c + s1d), (s2a + s2b) + (s2c + s2d)


@njit(nogil=True, cache=True, _nrt=False)
def deviations(a, out, n, c):
    """``out[:n] = a[:n] - c`` and return ``(sum d, sum d^2)`` of those deviations (as
    :func:`moments_about`, which it is, keeping the deviations)."""
    s1a = 0.0
    s1b = 0.0
    s1c = 0.0
    s1d = 0.0
    s2a = 0.0
    s2b = 0.0
    s2c = 0.0
    s2d = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        d0 = a[uintp(j)] - c
        d1 = a[uintp(j + 1)] - c
        d2 = a[uintp(j + 2)] - c
        d3 = a[uintp(j + 3)] - c
        out[uintp(j)] = d0
        out[uintp(j + 1)] = d1
        out[uintp(j + 2)] = d2
        out[uintp(j + 3)] = d3
        s1a += d0
        s1b += d1
        s1c += d2
        s1d += d3
        s2a += d0 * d0
        s2b += d1 * d1
        s2c += d2 * d2
        s2d += d3 * d3
    for j in range(m, n):
        d = a[uintp(j)] - c
        out[uintp(j)] = d
        s1a += d
        s2a += d * d
    return (s1a + s1b) + (s1c + s1d), (s2a + s2b) + (s2c + s2d)


@njit(nogil=True, cache=True, _nrt=False)
def clipped_moments(d, n, b):
    """``(sum e, sum e^2)`` with ``e = d`` clipped to ``[-b, b]``, over ``d[:n]`` (as
    :func:`moments_about`)."""
    s1a = 0.0
    s1b = 0.0
    s1c = 0.0
    s1d = 0.0
    s2a = 0.0
    s2b = 0.0
    s2c = 0.0
    s2d = 0.0
    m = n - n % 4
    for j in range(0, m, 4):
        e0 = min(max(d[uintp(j)], -b), b)
        e1 = min(max(d[uintp(j + 1)], -b), b)
        e2 = min(max(d[uintp(j + 2)], -b), b)
        e3 = min(max(d[uintp(j + 3)], -b), b)
        s1a += e0
        s1b += e1
        s1c += e2
        s1d += e3
        s2a += e0 * e0
        s2b += e1 * e1
        s2c += e2 * e2
        s2d += e3 * e3
    for j in range(m, n):
        e = min(max(d[uintp(j)], -b), b)
        s1a += e
        s2a += e * e
    return (s1a + s1b) + (s1c + s1d), (s2a + s2b) + (s2c + s2d)


@njit(nogil=True, cache=True, _nrt=False)
def split_moments(d, n, t, rim):
    """Split ``d[:n]`` at ``|d| <= t``: return ``(sum d, sum d^2)`` over those values (as
    :func:`moments_about`) and how many others there are, copied in order to ``rim``."""
    s1a = 0.0
    s1b = 0.0
    s2a = 0.0
    s2b = 0.0
    nr = 0
    m = n - n % 2
    for j in range(0, m, 2):
        d0 = d[uintp(j)]
        d1 = d[uintp(j + 1)]
        in0 = abs(d0) <= t
        in1 = abs(d1) <= t
        rim[uintp(nr)] = d0
        nr += not in0
        rim[uintp(nr)] = d1
        nr += not in1
        e0 = d0 if in0 else 0.0
        e1 = d1 if in1 else 0.0
        s1a += e0
        s1b += e1
        s2a += e0 * e0
        s2b += e1 * e1
    if m < n:
        d0 = d[uintp(m)]
        in0 = abs(d0) <= t
        rim[uintp(nr)] = d0
        nr += not in0
        e0 = d0 if in0 else 0.0
        s1a += e0
        s2a += e0 * e0
    return s1a + s1b, s2a + s2b, nr


@njit(nogil=True, cache=True, _nrt=False)
def sample_std(s1, s2, k):
    """Sample standard deviation (ddof=1) of ``k >= 2`` values from their
    :func:`moments_about` sums (0 where rounding leaves a tiny negative variance)."""
    var = (s2 - s1 * s1 / k) / (k - 1)
    return math.sqrt(var) if var > 0.0 else 0.0
