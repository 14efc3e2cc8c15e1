"""Star kernels: rendering (for the synthetic generator) and detection/centroiding.

Plain arrays in, plain arrays out; only numpy, numba and math are imported here.

Rendering
---------
A star is ``flux * norm * (1 + d^T A d) ** -beta`` (an elliptical Moffat profile, ``d`` the
offset from the centre). ``A`` is the symmetric 2×2 shape matrix ``[[a11, a12], [a12, a22]]``
and ``norm = (beta - 1) * sqrt(det A) / pi`` makes the profile integrate to 1. The render
kernel sums several such components per star (the ideal stack is the mean of every frame's
PSF). Each component is truncated where ``d^T A d > qmax`` — an ellipse in the profile's own
coordinates, so the same truncation applies whatever the pixel grid (frame or reference).
Pixels near the core are integrated with 3×3 Gauss–Legendre quadrature (exact for
polynomials up to degree 5 per axis, symmetric, so no centroid bias); the far wings are
sampled at the pixel centre.

Detection
---------
``mesh_stats``: per-cell clipped median and σ (from a fine histogram, O(n)); ``bin_rows``:
rows of the 2×2-binned view with sharp pixels repaired; ``strip_peaks``: thresholded local
maxima of a smoothed strip of it, placed within their bin; ``strip_differences`` and
``clipped_sigma``: the smoothed strip's own noise, from differences of bins farther apart
than the filter reaches; ``measure_stars``: per candidate, a full-resolution window
(repaired, background removed), hot-pixel and saturation tests and an iterative
Gaussian-windowed centroid (SExtractor's XWIN/YWIN) with windowed second moments. The frame
is read in its own dtype and nothing frame-sized is allocated.

Matching
--------
``score_similarities``: inlier count and MSAC cost of many candidate transforms at once.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# 3-point Gauss–Legendre nodes and weights on a unit-width pixel centred at 0.
_GL_NODES = np.array([-0.5 * math.sqrt(0.6), 0.0, 0.5 * math.sqrt(0.6)])
_GL_WEIGHTS = np.array([5.0 / 18.0, 8.0 / 18.0, 5.0 / 18.0])


@numba.njit(nogil=True, cache=True)
def _moffat(q, beta):
    u = 1.0 + q
    if beta == 3.0:  # the default seeing model; pow() is several times slower
        return 1.0 / (u * u * u)
    return math.exp(-beta * math.log(u))


@numba.njit(nogil=True, cache=True)
def render_moffat(img, xs, ys, fluxes, comp, qmax, qcore):
    """Add Moffat stars to ``img`` in place.

    Parameters
    ----------
    img : (H, W) float64
        Image to add to; pixel (x, y) is ``img[y, x]``, centres at integer coordinates.
    xs, ys, fluxes : (n,) float64
        Star centres (pixels) and total fluxes.
    comp : (m, 6) float64
        PSF components, one per row: ``a11, a12, a22, beta, norm, weight``. A star's value
        is ``flux * sum_k weight_k * norm_k * moffat_k``.
    qmax : (n, m) float64
        Truncation of each star/component in ``d^T A d`` units.
    qcore : (m,) float64
        Inside ``d^T A d <= qcore`` (at the pixel centre) the pixel is integrated by
        quadrature, outside it is sampled at the centre.
    """
    h, w = img.shape
    m = comp.shape[0]
    for s in range(xs.shape[0]):
        cx = xs[s]
        cy = ys[s]
        f = fluxes[s]
        # bounding box: the union of the component ellipses
        rx = 0.0
        ry = 0.0
        for k in range(m):
            a11 = comp[k, 0]
            a12 = comp[k, 1]
            a22 = comp[k, 2]
            det = a11 * a22 - a12 * a12
            ex = math.sqrt(qmax[s, k] * a22 / det)
            ey = math.sqrt(qmax[s, k] * a11 / det)
            if ex > rx:
                rx = ex
            if ey > ry:
                ry = ey
        x0 = max(int(math.floor(cx - rx)), 0)
        x1 = min(int(math.ceil(cx + rx)), w - 1)
        y0 = max(int(math.floor(cy - ry)), 0)
        y1 = min(int(math.ceil(cy + ry)), h - 1)
        for y in range(y0, y1 + 1):
            dy = y - cy
            for x in range(x0, x1 + 1):
                dx = x - cx
                acc = 0.0
                for k in range(m):
                    a11 = comp[k, 0]
                    a12 = comp[k, 1]
                    a22 = comp[k, 2]
                    beta = comp[k, 3]
                    q = a11 * dx * dx + 2.0 * a12 * dx * dy + a22 * dy * dy
                    if q > qmax[s, k]:
                        continue
                    amp = comp[k, 4] * comp[k, 5]
                    if q <= qcore[k]:
                        v = 0.0
                        for j in range(3):
                            sy = dy + _GL_NODES[j]
                            for i in range(3):
                                sx = dx + _GL_NODES[i]
                                qq = a11 * sx * sx + 2.0 * a12 * sx * sy + a22 * sy * sy
                                v += _GL_WEIGHTS[i] * _GL_WEIGHTS[j] * _moffat(qq, beta)
                        acc += amp * v
                    else:
                        acc += amp * _moffat(q, beta)
                img[y, x] += f * acc


@numba.njit(nogil=True, cache=True)
def render_gaussians(img, xs, ys, fluxes, inv, qmax):
    """Add elliptical Gaussian blobs (sampled at pixel centres) to ``img`` in place.

    ``inv`` is (n, 3): ``c11, c12, c22`` of each blob's inverse covariance; the value is
    ``flux * sqrt(det inv) / (2 pi) * exp(-q / 2)`` with ``q = d^T inv d <= qmax[s]``.
    """
    h, w = img.shape
    for s in range(xs.shape[0]):
        c11 = inv[s, 0]
        c12 = inv[s, 1]
        c22 = inv[s, 2]
        det = c11 * c22 - c12 * c12
        amp = fluxes[s] * math.sqrt(det) / (2.0 * math.pi)
        rx = math.sqrt(qmax[s] * c22 / det)
        ry = math.sqrt(qmax[s] * c11 / det)
        cx = xs[s]
        cy = ys[s]
        x0 = max(int(math.floor(cx - rx)), 0)
        x1 = min(int(math.ceil(cx + rx)), w - 1)
        y0 = max(int(math.floor(cy - ry)), 0)
        y1 = min(int(math.ceil(cy + ry)), h - 1)
        for y in range(y0, y1 + 1):
            dy = y - cy
            for x in range(x0, x1 + 1):
                dx = x - cx
                q = c11 * dx * dx + 2.0 * c12 * dx * dy + c22 * dy * dy
                if q <= qmax[s]:
                    img[y, x] += amp * math.exp(-0.5 * q)


# --------------------------------------------------------------------------- detection
#
# The frame is read in its own dtype (uint16, float32, ...) and never copied: the
# background and noise live on a coarse mesh and are interpolated where they are needed,
# candidates come from a 2×2-binned view (a quarter of the pixels), smoothed a strip at a
# time, and each candidate is measured in a small window at full resolution.
#
# Mesh interpolation: a value at pixel row ``y`` uses mesh rows ``rk[y]`` and ``rk[y] + 1``
# with weight ``rf[y]`` on the second (``rf`` < 0 or > 1 beyond the outermost cell centres:
# linear extrapolation, so a sky gradient continues to the frame edge); likewise for
# columns (``ck``, ``cf``). The ``*b`` variants hold the same for the centres of the 2×2
# bins (full-resolution coordinate 2·b + 0.5). Meshes have at least 2 rows and 2 columns;
# the detection kernels take them already interpolated to every pixel or bin column
# (``pbg``/``psg``, ``cbg``/``csg``: mesh rows × columns), so that a value is one
# interpolation between two rows.

_HIST_HALF = 80  # histogram bins on each side of the first guess
_HIST_PER_SIGMA = 8.0  # bins per guessed σ: ±10 σ covered, a bin is σ/8 wide
_HINT_SAMPLES = 64  # samples sorted for the first guess of location and spread


@numba.njit(nogil=True, cache=True)
def _lerp2(m, k0, f0, k1, f1):
    """Bilinear value of mesh ``m`` at row weight (k0, f0) and column weight (k1, f1)."""
    a = m[k0, k1] + (m[k0, k1 + 1] - m[k0, k1]) * f1
    b = m[k0 + 1, k1] + (m[k0 + 1, k1 + 1] - m[k0 + 1, k1]) * f1
    return a + (b - a) * f0


@numba.njit(nogil=True, cache=True)
def _sorted_clipped_stats(v, n, kappa, n_iter):
    """Median and σ of ``v[:n]`` after iterative κ-σ clipping, exactly (sorts ``v[:n]``).

    σ comes from the 15.87/84.13 percentiles of the kept range, which equals the standard
    deviation for Gaussian noise and ignores the stars' tail; clipping then only trims the
    tails, so a sort and a few binary searches do the whole job.
    """
    if n == 0:
        return np.nan, np.nan
    v[:n].sort()
    lo = 0
    hi = n  # kept range v[lo:hi]
    med = 0.0
    sig = 0.0
    for _ in range(n_iter):
        k = hi - lo
        if k < 3:
            break
        med = 0.5 * (v[lo + (k - 1) // 2] + v[lo + k // 2])
        sig = 0.5 * (v[lo + int(0.8413 * (k - 1))] - v[lo + int(0.1587 * (k - 1))])
        if sig <= 0.0:
            break
        nlo = lo + np.searchsorted(v[lo:hi], med - kappa * sig, side="left")
        nhi = lo + np.searchsorted(v[lo:hi], med + kappa * sig, side="right")
        if nlo == lo and nhi == hi:
            break
        lo = nlo
        hi = nhi
    k = hi - lo
    if k >= 3:
        med = 0.5 * (v[lo + (k - 1) // 2] + v[lo + k // 2])
        sig = 0.5 * (v[lo + int(0.8413 * (k - 1))] - v[lo + int(0.1587 * (k - 1))])
    elif k > 0:
        med = v[lo]
    return med, sig


@numba.njit(nogil=True, cache=True)
def _hist_quantile(hist, cum, lo, width, t):
    """The value below which ``t`` samples lie, from a histogram read as a piecewise-linear
    CDF (``cum[b]``: samples in bins below ``b``). ``t`` must lie within the histogram."""
    nb = hist.shape[0]
    b = np.searchsorted(cum[1:], t, side="right")
    if b >= nb:
        b = nb - 1
    while b > 0 and hist[b] == 0:
        b -= 1
    frac = 0.0 if hist[b] == 0 else (t - cum[b]) / hist[b]
    if frac < 0.0:
        frac = 0.0
    elif frac > 1.0:
        frac = 1.0
    return lo + (b + frac) * width


@numba.njit(nogil=True, cache=True)
def _hist_count(hist, cum, lo, width, v):
    """Samples at or below ``v`` (same piecewise-linear CDF; ``v`` within the histogram)."""
    nb = hist.shape[0]
    x = (v - lo) / width
    if x <= 0.0:
        return 0.0
    if x >= nb:
        return cum[nb]
    b = int(x)
    return cum[b] + hist[b] * (x - b)


@numba.njit(nogil=True, cache=True)
def _binned_clipped_stats(v, n, kappa, n_iter, loc0, scale0, hist, cum):
    """:func:`_sorted_clipped_stats` from a fine histogram around a first guess
    (``loc0``, ``scale0``): O(n) instead of a sort, and the same result to a small fraction
    of σ (the percentiles are interpolated within bins σ/8 wide). Returns (NaN, NaN) when
    the guess cannot bracket the clipped distribution (the caller then sorts)."""
    nb = hist.shape[0]
    width = scale0 / _HIST_PER_SIGMA
    lo = loc0 - _HIST_HALF * width
    for b in range(nb):
        hist[b] = 0.0
    under = 0
    over = 0
    inv = 1.0 / width
    for i in range(n):
        x = (v[i] - lo) * inv
        if x < 0.0:
            under += 1
        elif x >= nb:
            over += 1
        else:
            hist[int(x)] += 1.0
    cum[0] = 0.0
    for b in range(nb):
        cum[b + 1] = cum[b] + hist[b]
    hi = lo + nb * width
    # the kept set is [a, b] in value; counts relative to the histogram's own samples
    ca = -float(under)  # samples (inside the histogram) below a, minus those under it
    cb = cum[nb] + over
    med = np.nan
    sig = np.nan
    for it in range(n_iter + 1):
        k = cb - ca
        if k < 3.0:
            return np.nan, np.nan
        t16 = ca + 0.1587 * k
        t50 = ca + 0.5 * k
        t84 = ca + 0.8413 * k
        if t16 < 0.0 or t84 > cum[nb]:
            return np.nan, np.nan  # a percentile outside the histogram
        med = _hist_quantile(hist, cum, lo, width, t50)
        sig = 0.5 * (_hist_quantile(hist, cum, lo, width, t84) - _hist_quantile(hist, cum, lo, width, t16))
        if it == n_iter or not (sig > 0.0):
            break
        a = med - kappa * sig
        b = med + kappa * sig
        if (a < lo and under > 0) or (b > hi and over > 0):
            return np.nan, np.nan  # the clip bound falls where the histogram cannot count
        na = _hist_count(hist, cum, lo, width, a)
        nb_ = _hist_count(hist, cum, lo, width, b)
        if abs(na - ca) < 0.5 and abs(nb_ - cb) < 0.5:
            break
        ca = na
        cb = nb_
    return med, sig


@numba.njit(nogil=True, cache=True)
def _clipped_stats(v, n, kappa, n_iter, loc0, scale0, hist, cum, hint):
    """Clipped median and σ of ``v[:n]``: from a histogram around (``loc0``, ``scale0``),
    else (``scale0`` not positive, or the histogram could not bracket the data) around a
    guess from a sorted subsample; exact (a full sort, which reorders ``v[:n]``) when
    neither works (quantised or constant values) and for small samples."""
    if n < 4 * _HINT_SAMPLES:
        return _sorted_clipped_stats(v, n, kappa, n_iter)
    for attempt in range(2):
        if attempt == 1 or not (scale0 > 0.0):
            if attempt == 1 and not (scale0 > 0.0):
                break  # the subsample guess has already failed
            m = _HINT_SAMPLES
            for i in range(m):
                hint[i] = v[(i * n) // m]
            hint[:m].sort()
            loc0 = 0.5 * (hint[(m - 1) // 2] + hint[m // 2])
            scale0 = 0.5 * (hint[int(0.8413 * (m - 1))] - hint[int(0.1587 * (m - 1))])
            if not (scale0 > 0.0):
                break
        med, sig = _binned_clipped_stats(v, n, kappa, n_iter, loc0, scale0, hist, cum)
        if sig > 0.0 and sig < 0.35 * scale0:
            # the guess was much wider than the clipped spread: once more with bins
            # matched to it
            med, sig = _binned_clipped_stats(v, n, kappa, n_iter, med, sig, hist, cum)
        if sig > 0.0:
            return med, sig
    return _sorted_clipped_stats(v, n, kappa, n_iter)


@numba.njit(nogil=True, cache=True)
def mesh_stats(img, edges_y, edges_x, step, kappa, n_iter, sub, rk, rf, ck, cf, scale_hint,
               out_bg, out_sigma):
    """Clipped median (``out_bg``) and σ (``out_sigma``) of ``img − sub`` in each mesh cell.

    ``sub`` is a mesh interpolated at each sample and removed first (a first pass's
    background, so that a gradient inside a cell does not widen its σ), or an array with
    fewer than 2 rows for none. ``scale_hint`` (ny, nx) is a first guess of each cell's σ
    (the first pass's, when ``sub`` is given) or has fewer than 2 rows for none: then the
    previous cell's result is the guess.

    Cell ``(j, i)`` covers rows ``edges_y[j]:edges_y[j+1]`` and columns
    ``edges_x[i]:edges_x[i+1]``; every ``step``-th pixel in each direction is used (the
    median of a few hundred samples is precise to a few % of σ, at a fraction of the
    cost). NaNs are skipped; a cell without finite pixels gets NaN.
    """
    ny = edges_y.shape[0] - 1
    nx = edges_x.shape[0] - 1
    has_sub = sub.shape[0] >= 2
    has_hint = scale_hint.shape[0] >= 2
    cap = 1
    for j in range(ny):
        for i in range(nx):
            c = ((edges_y[j + 1] - edges_y[j] + step - 1) // step) * ((edges_x[i + 1] - edges_x[i] + step - 1) // step)
            if c > cap:
                cap = c
    buf = np.empty(cap, dtype=np.float64)
    hist = np.empty(2 * _HIST_HALF, dtype=np.float64)
    cum = np.empty(2 * _HIST_HALF + 1, dtype=np.float64)
    hint = np.empty(_HINT_SAMPLES, dtype=np.float64)
    for j in range(ny):
        for i in range(nx):
            n = 0
            for y in range(edges_y[j], edges_y[j + 1], step):
                for x in range(edges_x[i], edges_x[i + 1], step):
                    v = float(img[y, x])
                    if v == v:
                        if has_sub:
                            v -= _lerp2(sub, rk[y], rf[y], ck[x], cf[x])
                        buf[n] = v
                        n += 1
            if n == 0:
                out_bg[j, i] = np.nan
                out_sigma[j, i] = np.nan
                continue
            if has_hint:
                loc0 = 0.0
                scale0 = scale_hint[j, i]
            elif i > 0:
                # the neighbouring cell's result is a good first guess (it saves sorting
                # a subsample in almost every cell; a bad guess only costs the retry)
                loc0 = out_bg[j, i - 1]
                scale0 = out_sigma[j, i - 1]
            elif j > 0:
                loc0 = out_bg[j - 1, 0]
                scale0 = out_sigma[j - 1, 0]
            else:
                loc0 = 0.0
                scale0 = 0.0
            med, sig = _clipped_stats(buf, n, kappa, n_iter, loc0, scale0, hist, cum, hint)
            out_bg[j, i] = med
            out_sigma[j, i] = sig


# the 8 neighbours of a pixel, the 4 direct ones first (the likelier to settle a test early)
_NB_DY = np.array([-1, 1, 0, 0, -1, -1, 1, 1])
_NB_DX = np.array([0, 0, -1, 1, -1, 1, -1, 1])


@numba.njit(nogil=True, cache=True)
def _median9(buf):
    """Median of ``buf[:9]`` (reorders it)."""
    for i in range(1, 9):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    return buf[4]


# the 3×3 median of sky pixels scatters by ~0.4 σ about the background, so a pixel can be
# hot_sigma σ above its median while only hot_sigma − 1 σ above the sky; nothing below
# hot_sigma − _MEDIAN_DIP σ can be (the median would have to dip 5 of its σ below the sky)
_MEDIAN_DIP = 2.0


@numba.njit(nogil=True, cache=True)
def _median_of_9(img, y, x, bg, nb):
    """The median of the 3×3 neighbourhood of pixel (y, x): NaN pixels count as ``bg``,
    beyond the frame edge the edge pixel repeats. ``nb`` is a scratch array of 9."""
    h, w = img.shape
    k = 0
    for yy in range(y - 1, y + 2):
        yc = min(max(yy, 0), h - 1)
        for xx in range(x - 1, x + 2):
            xc = min(max(xx, 0), w - 1)
            u = float(img[yc, xc])
            nb[k] = u if u == u else bg
            k += 1
    return _median9(nb)


@numba.njit(nogil=True, cache=True)
def mesh_at_columns(m, k, f, out):
    """``out[j, x]``: row ``j`` of mesh ``m`` interpolated to column weight (k[x], f[x])."""
    for j in range(m.shape[0]):
        for x in range(k.shape[0]):
            out[j, x] = m[j, k[x]] + (m[j, k[x] + 1] - m[j, k[x]]) * f[x]


@numba.njit(nogil=True, cache=True)
def _at_bin(cm, k0, f0, bx):
    """A mesh at the centre of bin (row weight k0/f0, column ``bx``), from ``cm``: the mesh
    already interpolated to every bin column, one row per mesh row."""
    return cm[k0, bx] + (cm[k0 + 1, bx] - cm[k0, bx]) * f0


@numba.njit(nogil=True, cache=True)
def bin_rows(img, cbg, csg, sig_floor, rkb, rfb, hot_sigma, sharp_frac, out):
    """The 2×2-binned view of ``img`` into ``out`` (float32, ``H // 2`` × ``W // 2``): the
    mean of four pixels, sharp pixels repaired, NaN pixels replaced by the background.

    A pixel that stands more than ``hot_sigma`` σ above the median of its 3×3
    neighbourhood, by most of its height above the background (all but ``sharp_frac``),
    is a hot pixel or a cosmic-ray hit: its value becomes that median (NaN pixels in the
    neighbourhood count as background, beyond the frame edge the edge pixel repeats; the
    background and σ of the test are taken at the bin's centre). Only pixels
    ``hot_sigma`` − ``_MEDIAN_DIP`` σ above the background are tested (the others cannot
    be sharp unless their neighbourhood lies far below the sky).

    ``cbg``, ``csg``: background and noise meshes interpolated to the bin columns
    (mesh rows × ``W // 2``), so that a bin's value is one interpolation between two rows.
    A first, vectorisable loop sums every bin and flags those with a pixel above the
    repair test's threshold (or a NaN); only the flagged ones (stars, hot pixels: a few %)
    are redone pixel by pixel.

    Returns ``(index, value)``: the repaired pixels (flat index y·W + x, ascending) and
    their repaired values, so that measuring windows repair exactly the same pixels.
    """
    hb, wb = out.shape
    h, w = img.shape
    flag = np.empty(wb, dtype=np.bool_)
    nb = np.empty(9, dtype=np.float64)
    size = 64
    rep_idx = np.empty(size, dtype=np.int64)
    rep_val = np.empty(size, dtype=np.float64)
    n_rep = 0
    for by in range(hb):
        k0 = rkb[by]
        f0 = rfb[by]
        b0 = cbg[k0]
        b1 = cbg[k0 + 1]
        s0 = csg[k0]
        s1 = csg[k0 + 1]
        o = out[by]
        y0 = 2 * by
        r0 = img[y0]
        r1 = img[y0 + 1]
        for x in range(wb):
            a = float(r0[2 * x])
            b = float(r0[2 * x + 1])
            c = float(r1[2 * x])
            d = float(r1[2 * x + 1])
            s = a + b + c + d
            o[x] = 0.25 * s
            bg = b0[x] + (b1[x] - b0[x]) * f0
            sg = max(s0[x] + (s1[x] - s0[x]) * f0, sig_floor)
            flag[x] = max(max(a, b), max(c, d)) - bg > (hot_sigma - _MEDIAN_DIP) * sg or s != s
        n_row = n_rep
        for x in range(wb):
            if not flag[x]:
                continue
            bg = b0[x] + (b1[x] - b0[x]) * f0
            sg = max(s0[x] + (s1[x] - s0[x]) * f0, sig_floor)
            s = 0.0
            for yy in range(y0, y0 + 2):
                for xx in range(2 * x, 2 * x + 2):
                    v = float(img[yy, xx])
                    if v != v:
                        s += bg
                        continue
                    if not (v - bg > (hot_sigma - _MEDIAN_DIP) * sg):
                        s += v
                        continue
                    # sharp exactly when the median m of the 3×3 stays below
                    # lim = min(v − hot_sigma·σ, bg + sharp_frac·(v − bg)), i.e. when at
                    # most 4 of the 9 reach lim; v does, so it is a count of the 8
                    # neighbours (NaN as bg), and a sort only for the few sharp pixels
                    lim = min(v - hot_sigma * sg, bg + sharp_frac * (v - bg))
                    reach = 0
                    for d in range(8):
                        u = float(img[min(max(yy + _NB_DY[d], 0), h - 1), min(max(xx + _NB_DX[d], 0), w - 1)])
                        if u >= lim or (u != u and bg >= lim):
                            reach += 1
                    if reach >= 4:
                        s += v
                        continue
                    v = _median_of_9(img, yy, xx, bg, nb)
                    if n_rep == size:
                        size *= 2
                        i2 = np.empty(size, dtype=np.int64)
                        v2 = np.empty(size, dtype=np.float64)
                        i2[:n_rep] = rep_idx[:n_rep]
                        v2[:n_rep] = rep_val[:n_rep]
                        rep_idx = i2
                        rep_val = v2
                    rep_idx[n_rep] = yy * w + xx
                    rep_val[n_rep] = v
                    n_rep += 1
                    s += v
            o[x] = 0.25 * s
        # this bin row's repairs alternate between its two frame rows: sort them
        if n_rep - n_row > 1:
            order = np.argsort(rep_idx[n_row:n_rep])
            rep_idx[n_row:n_rep] = rep_idx[n_row:n_rep][order]
            rep_val[n_row:n_rep] = rep_val[n_row:n_rep][order]
    return rep_idx[:n_rep].copy(), rep_val[:n_rep].copy()


@numba.njit(nogil=True, cache=True)
def strip_peaks(smooth, by0, r0, r1, cbg, csg, sig_floor, rkb, rfb, factor, floor, hb, scale):
    """Candidates in rows ``r0:r1`` of ``smooth`` (a smoothed strip of a binned view whose
    row 0 is bin row ``by0``; bins of ``scale`` × ``scale`` pixels): local maxima above
    ``bg + max(σ · factor, floor)``, the background and σ at the bin centre (``cbg``,
    ``csg`` as in :func:`bin_rows`), at least one bin from every frame edge (``hb``: bin
    rows in the frame). Ties go to the first in raster order (``>`` against the neighbours
    before, ``>=`` against those after: a plateau gives one candidate). The threshold is
    tested first, a row at a time: it rejects almost every bin, where the local-maximum
    test alone passes one bin in nine of pure noise.

    Each peak is placed within its bin by a parabola through it and its two neighbours
    along each axis (at most half a bin away): the smoothed peak of a star too faint or too
    broad for its brightest pixel to mark its centre (a noise spike can outshine the star's
    core by 2-3 σ anywhere in its bin) still starts the centroid within a pixel or two.

    Returns ``(y, x, value, ratio)``: the full-resolution pixel (int32) nearest that refined
    peak (bins in raster order), the smoothed value above the background and its ratio to
    the threshold (float64; the caller may raise the threshold once it has measured the
    smoothed noise: :func:`strip_differences`).
    """
    ws = smooth.shape[1]
    size = 256
    ys = np.empty(size, dtype=np.int32)
    xs = np.empty(size, dtype=np.int32)
    vals = np.empty(size, dtype=np.float64)
    ratios = np.empty(size, dtype=np.float64)
    above = np.empty(ws, dtype=np.bool_)
    n = 0
    for j in range(r0, r1):
        by = by0 + j
        if by < 1 or by > hb - 2:
            continue
        up = smooth[j - 1]
        mid = smooth[j]
        dn = smooth[j + 1]
        k0 = rkb[by]
        f0 = rfb[by]
        b0 = cbg[k0]
        b1 = cbg[k0 + 1]
        s0 = csg[k0]
        s1 = csg[k0 + 1]
        # the threshold first, for the whole row: a branch-free loop the compiler
        # vectorises; the few bins above it are then tested one by one
        for x in range(ws):
            above[x] = mid[x] - (b0[x] + (b1[x] - b0[x]) * f0) > max(
                max(s0[x] + (s1[x] - s0[x]) * f0, sig_floor) * factor, floor)
        for x in range(1, ws - 1):
            if not above[x]:
                continue
            v = mid[x]
            bg = b0[x] + (b1[x] - b0[x]) * f0
            t = max(max(s0[x] + (s1[x] - s0[x]) * f0, sig_floor) * factor, floor)
            if not (v > up[x - 1] and v > up[x] and v > up[x + 1] and v > mid[x - 1] and v >= mid[x + 1]
                    and v >= dn[x - 1] and v >= dn[x] and v >= dn[x + 1]):
                continue
            if n == size:
                size *= 2
                ys2 = np.empty(size, dtype=np.int32)
                xs2 = np.empty(size, dtype=np.int32)
                vals2 = np.empty(size, dtype=np.float64)
                ratios2 = np.empty(size, dtype=np.float64)
                ys2[:n] = ys[:n]
                xs2[:n] = xs[:n]
                vals2[:n] = vals[:n]
                ratios2[:n] = ratios[:n]
                ys = ys2
                xs = xs2
                vals = vals2
                ratios = ratios2
            ys[n] = _refined_pixel(up[x], v, dn[x], by, scale)
            xs[n] = _refined_pixel(mid[x - 1], v, mid[x + 1], x, scale)
            vals[n] = v - bg
            ratios[n] = (v - bg) / t
            n += 1
    return ys[:n].copy(), xs[:n].copy(), vals[:n].copy(), ratios[:n].copy()


@numba.njit(nogil=True, cache=True)
def _refined_pixel(a, b, c, k, scale):
    """The full-resolution pixel of the vertex of the parabola through the values ``a``,
    ``b``, ``c`` of bins ``k`` − 1, ``k``, ``k`` + 1 (bins of ``scale`` pixels; bin ``k``
    a local maximum), the vertex clamped to half a bin from ``k``'s centre."""
    curv = a - 2.0 * b + c
    d = 0.5 * (a - c) / curv if curv < 0.0 else 0.0
    d = min(max(d, -0.5), 0.5)
    # bin k covers pixels scale·k ... scale·k + scale − 1: its centre is scale·k + (scale − 1)/2
    return int(math.floor(scale * (k + d) + 0.5 * (scale - 1) + 0.5))


@numba.njit(nogil=True, cache=True)
def strip_differences(smooth, by0, r0, r1, csg, sig_floor, rkb, rfb, lag, step, out, n):
    """Sample the noise of a smoothed strip (as in :func:`strip_peaks`): for the bins of
    rows ``r0:r1`` whose bin row and column are multiples of ``step``, the difference to
    the bin ``lag`` columns to the right, over the noise σ at the bin; appended to
    ``out`` from ``out[n]`` (as far as it has room). Returns the new count.

    With ``lag`` beyond the filter's reach the two values' noise is independent, so the
    differences scatter by √2 × the smoothed noise, correlated pixel noise included, while
    the sky and any signal smooth on the scale of the lag cancel (a cluster's or a galaxy's
    light, which a direct measurement of the smoothed scatter would count as noise). Rows
    are chosen by their frame row, so the samples do not depend on how the frame is cut
    into strips.
    """
    ws = smooth.shape[1]
    cap = out.shape[0]
    for j in range(r0, r1):
        by = by0 + j
        if by % step != 0:
            continue
        k0 = rkb[by]
        f0 = rfb[by]
        s0 = csg[k0]
        s1 = csg[k0 + 1]
        row = smooth[j]
        for x in range(0, ws - lag, step):
            if n >= cap:
                return n
            sg = max(s0[x] + (s1[x] - s0[x]) * f0, sig_floor)
            v = (row[x + lag] - row[x]) / sg
            if v == v:
                out[n] = v
                n += 1
    return n


@numba.njit(nogil=True, cache=True)
def clipped_sigma(v, kappa, n_iter):
    """The clipped σ of ``v`` (:func:`_clipped_stats`: iterative κ-σ clipping, σ from the
    15.87/84.13 percentiles); reorders ``v``. NaN for fewer than 3 values."""
    hist = np.empty(2 * _HIST_HALF, dtype=np.float64)
    cum = np.empty(2 * _HIST_HALF + 1, dtype=np.float64)
    hint = np.empty(_HINT_SAMPLES, dtype=np.float64)
    if v.shape[0] < 3:
        return np.nan
    med, sig = _clipped_stats(v, v.shape[0], kappa, n_iter, 0.0, 0.0, hist, cum, hint)
    return sig


# status codes of measure_stars (0 = a good star)
OK = 0
SHARP = 1        # single-pixel peak: hot pixel or cosmic ray
SATURATED = 2    # flat-topped peak
EDGE = 3         # the window touches the image edge or a NaN
DIVERGED = 4     # the windowed centroid wandered off or had no positive flux
DUPLICATE = 5    # converged onto a star already measured (two peaks, one star)
FAINT = 6        # below the detection threshold at full resolution

_MAX_ITER = 30
# the centroid has converged when an iteration moves it by less than 1e-4 px, or by less
# than 1 % of the precision its signal-to-noise allows (σ_w / (peak / σ): a faint star's
# centroid cannot be placed to 1e-4 px, and chasing it costs iterations)
_CONVERGED_PX = 1e-4
_CONVERGED_FRAC = 0.01


@numba.njit(nogil=True, cache=True)
def _gauss_taps(out, n, d, c):
    """``out[k] = exp(−c (k − d)²)`` for k < n, with three exp() and a recurrence (the
    ratio of neighbouring taps is itself geometric): the window weights of a centroid
    iteration cost a fraction of 2(2r + 1) exp() calls."""
    g = math.exp(-c * d * d)
    ratio = math.exp(-c * (1.0 - 2.0 * d))
    q = math.exp(-2.0 * c)
    for k in range(n):
        out[k] = g
        g *= ratio
        ratio *= q


@numba.njit(nogil=True, cache=True)
def _centroid(patch, ox, oy, h, w, x, y, r, inv2s2, tol, max_iter, gx, gy):
    """Solve for the point (x, y) where the Gaussian-windowed first moment of ``patch``
    vanishes (patch coordinates; its pixel (0, 0) is frame pixel (oy, ox)), from (x, y),
    window cut at radius ``r``. Stops when a step is shorter than ``tol`` px. Returns
    (x, y, status, iterations).

    Newton's method: with m the windowed mean offset and C the windowed covariance about
    it, dm/dx = −(I − C/σ_w²), so the step is (I − C/σ_w²)⁻¹ m. For a Gaussian star this is
    exact in one step (I − C/σ_w² = σ_w²/(σ_w² + σ★²) per axis), for real profiles it
    converges in a few; where the noise makes that matrix implausible (faint, or not a
    star) the step is 2m, the plain fixed-point iteration for a star as wide as the window.
    """
    tol2 = tol * tol
    sw2 = 0.5 / inv2s2  # σ_w²
    it = 0
    for it in range(1, max_iter + 1):
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        if ox + ix - r < 0 or oy + iy - r < 0 or ox + ix + r > w - 1 or oy + iy + r > h - 1:
            return x, y, EDGE, it
        sw = 0.0
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        _gauss_taps(gx, 2 * r + 1, x - (ix - r), inv2s2)
        _gauss_taps(gy, 2 * r + 1, y - (iy - r), inv2s2)
        for yy in range(iy - r, iy + r + 1):
            dy = yy - y
            wy = gy[yy - iy + r]
            # the pixels of this row within r of (x, y): a branch-free inner loop
            e = r * r - dy * dy
            if e < 0.0:
                continue
            e = math.sqrt(e)
            x0 = max(ix - r, int(math.ceil(x - e)))
            x1 = min(ix + r, int(math.floor(x + e)))
            row = patch[yy]
            a = 0.0
            b = 0.0
            c = 0.0
            for xx in range(x0, x1 + 1):
                dx = xx - x
                wi = gx[xx - ix + r] * row[xx]
                a += wi
                b += wi * dx
                c += wi * dx * dx
            sw += wy * a
            sx += wy * b
            sy += wy * a * dy
            sxx += wy * c
            syy += wy * a * dy * dy
            sxy += wy * b * dy
        if sw != sw:
            return x, y, EDGE, it  # a NaN (no data) in the window
        if not (sw > 0.0):
            return x, y, DIVERGED, it
        mx = sx / sw
        my = sy / sw
        k11 = 1.0 - (sxx / sw - mx * mx) / sw2
        k22 = 1.0 - (syy / sw - my * my) / sw2
        k12 = -(sxy / sw - mx * my) / sw2
        det = k11 * k22 - k12 * k12
        if 0.1 < k11 < 1.5 and 0.1 < k22 < 1.5 and det > 0.01:
            ddx = (k22 * mx - k12 * my) / det
            ddy = (k11 * my - k12 * mx) / det
        else:
            ddx = 2.0 * mx
            ddy = 2.0 * my
        ddx = min(max(ddx, -1.0), 1.0)
        ddy = min(max(ddy, -1.0), 1.0)
        x += ddx
        y += ddy
        if ddx * ddx + ddy * ddy < tol2:
            break
    return x, y, OK, it


@numba.njit(nogil=True, cache=True)
def _fill_window(img, patch, oy, ox, j0, j1, i0, i1, pbg, rk, rf, rep_idx, rep_val):
    """Rows j0:j1, columns i0:i1 of a measuring window whose pixel (0, 0) is frame pixel
    (oy, ox): the frame with the background removed and the sharp pixels :func:`bin_rows`
    repaired (``rep_idx``, ``rep_val``) replaced by their repaired values; NaN outside the
    frame and for NaN pixels."""
    h, w = img.shape
    for j in range(j0, j1):
        yy = oy + j
        if yy < 0 or yy >= h:
            for i in range(i0, i1):
                patch[j, i] = np.nan
            continue
        b0 = pbg[rk[yy]]
        b1 = pbg[rk[yy] + 1]
        f0 = rf[yy]
        a = max(i0, -ox)
        b = min(i1, w - ox)
        for i in range(i0, a):
            patch[j, i] = np.nan
        for i in range(b, i1):
            patch[j, i] = np.nan
        row = img[yy]
        for i in range(a, b):
            xx = ox + i
            patch[j, i] = float(row[xx]) - (b0[xx] + (b1[xx] - b0[xx]) * f0)
        if rep_idx.shape[0] > 0 and b > a:
            start = yy * w + ox
            k = np.searchsorted(rep_idx, start + a)
            while k < rep_idx.shape[0] and rep_idx[k] < start + b:
                xx = rep_idx[k] - yy * w
                patch[j, xx - ox] = rep_val[k] - (b0[xx] + (b1[xx] - b0[xx]) * f0)
                k += 1


@numba.njit(nogil=True, cache=True)
def measure_stars(img, pbg, psg, sig_floor, rk, rf, rep_idx, rep_val, cand_y, cand_x, search, sigma_w, sharp_frac,
                  hot_sigma, flat_frac, saturation, confirm, factor, floor, out):
    """Measure the candidates at pixels (cand_y, cand_x) of :func:`strip_peaks`.

    ``out`` is (n, 12): x, y, flux, fwhm, roundness, peak, status, n_iter, err, and the
    deconvolved second moments c11 (xx), c22 (yy), c12 (xy) in px². ``err`` is the 1-σ
    centroid uncertainty per axis from the background noise, SExtractor's ERRX2WIN:
    var(x) = 4 Σ w_i² (x_i − x)² σ_i² / (Σ w_i I_i)² (averaged over x and y).

    ``pbg``, ``psg``: the background and noise meshes interpolated to every pixel column
    (mesh rows × W), with the row weights ``rk``, ``rf``; ``rep_idx``, ``rep_val``: the
    sharp pixels :func:`bin_rows` repaired.

    ``confirm`` (1-D, odd length; empty for none): a Gaussian filter at full resolution. A
    candidate is then FAINT unless the repaired window smoothed by it peaks within one
    pixel of ``p`` above background + max(σ · ``factor``, ``floor``): the binned search
    runs at a lower threshold (it loses some signal when a star straddles bins) and this
    applies the detection criterion on the full-resolution pixels.

    Each candidate is measured in a small window at full resolution, copied with its
    sharp pixels repaired and the background removed (:func:`_fill_window`). In it: the
    brightest pixel ``p`` within ``search`` px of the candidate's pixel (its smoothed peak,
    :func:`strip_peaks`); the candidate is SHARP when the median of p's 8 neighbours is
    below ``sharp_frac * peak`` (a star lights its neighbours — even a 1.5 px FWHM star
    keeps that median above ~0.2 of the peak; a hot pixel or a cosmic-ray track does not)
    and p stands above that median by more than ``hot_sigma`` σ (the test :func:`bin_rows`
    repairs by: within the noise, a pixel cannot be told from its neighbours, and a faint
    broad star's brightest pixel is a noise spike above neighbours at ~0.3 σ); SATURATED
    when the raw peak reaches ``saturation`` or at least 3 of its neighbours are within
    ``flat_frac * peak`` of it (a clipped, flat top) while it stands ``hot_sigma`` σ above
    the background (p, the brightest of the pixels searched, is not always a local
    maximum: the neighbours of a noise-dominated p beyond them may exceed it). Then the
    Gaussian-windowed centroid (weight σ = ``sigma_w``, SExtractor's XWIN/YWIN) is iterated
    to the point where the windowed first moment vanishes (:func:`_centroid`); for a
    symmetric star that is its centre, with a precision close to a PSF fit at a fraction of
    the cost. ``n_iter`` counts its iterations. FWHM and roundness come from the windowed
    second moments with the Gaussian window deconvolved (C = (M⁻¹ − W⁻¹)⁻¹) and the pixel's
    1/12 px² removed; they are Gaussian-equivalent values. A window that touches the frame
    edge or a NaN: EDGE.
    """
    h, w = img.shape
    r = int(math.ceil(4.0 * sigma_w))
    inv2s2 = 1.0 / (2.0 * sigma_w * sigma_w)
    rc = (confirm.shape[0] - 1) // 2
    # the centroid stays within 2.5 px of p: its window within p ± (r + 3); the confirming
    # filter reaches rc + 1 px
    half = max(r + 3, rc + 1)
    side = 2 * half + 1
    hsum = np.empty((side, 3), dtype=np.float64)
    patch = np.empty((side, side), dtype=np.float64)
    nb8 = np.empty(8, dtype=np.float64)
    gx = np.empty(2 * r + 1, dtype=np.float64)
    gy = np.empty(2 * r + 1, dtype=np.float64)
    for c in range(cand_y.shape[0]):
        for k in range(12):
            out[c, k] = np.nan
        # the brightest repaired pixel within ``search`` of the candidate's
        py = -1
        px = -1
        best = -np.inf
        raw_peak = 0.0
        x0 = max(cand_x[c] - search, 0)
        x1 = min(cand_x[c] + search + 1, w)
        for yy in range(max(cand_y[c] - search, 0), min(cand_y[c] + search + 1, h)):
            k0 = rk[yy]
            f0 = rf[yy]
            # the next repaired pixel at or after this row's first one
            kr = np.searchsorted(rep_idx, yy * w + x0) if rep_idx.shape[0] > 0 else 0
            for xx in range(x0, x1):
                u = float(img[yy, xx])
                if kr < rep_idx.shape[0] and rep_idx[kr] == yy * w + xx:
                    u = rep_val[kr]
                    kr += 1
                v = u - _at_bin(pbg, k0, f0, xx)
                if v > best:  # never for NaN
                    best = v
                    py = yy
                    px = xx
                    raw_peak = u
        out[c, 5] = best
        if py < 1 or px < 1 or py > h - 2 or px > w - 2 or not (best > 0.0):
            out[c, 6] = EDGE
            continue
        noise_p = max(_at_bin(psg, rk[py], rf[py], px), sig_floor)
        # the window around p (:func:`_fill_window`): first the core that the
        # confirmation and the tests around p read, the rest only for a candidate that
        # passes them
        oy = py - half
        ox = px - half
        core = max(rc + 1, 1)
        _fill_window(img, patch, oy, ox, half - core, half + core + 1, half - core, half + core + 1, pbg, rk, rf,
                     rep_idx, rep_val)
        if rc > 0:
            # the confirming filter's largest value over the 3×3 around p (NaN as
            # background); separable: row sums for the 3 columns, then columns
            for j in range(half - 1 - rc, half + 2 + rc):
                for q in range(3):
                    a = 0.0
                    for t in range(-rc, rc + 1):
                        v = patch[j, half - 1 + q + t]
                        if v == v:
                            a += confirm[t + rc] * v
                    hsum[j, q] = a
            peak_s = -np.inf
            for q0 in range(3):
                for q in range(3):
                    a = 0.0
                    for t in range(-rc, rc + 1):
                        a += confirm[t + rc] * hsum[half - 1 + q0 + t, q]
                    peak_s = max(peak_s, a)
            t = max(noise_p * factor, floor)
            if not (peak_s > t):
                out[c, 6] = FAINT
                continue
        # hot-pixel and flat-top tests around p
        k = 0
        nflat = 0
        for j in range(half - 1, half + 2):
            for i in range(half - 1, half + 2):
                if j == half and i == half:
                    continue
                v = patch[j, i]
                if v != v:
                    v = 0.0
                nb8[k] = v
                if v >= best - flat_frac * best:
                    nflat += 1
                k += 1
        nb8.sort()
        nb_median = 0.5 * (nb8[3] + nb8[4])
        if nb_median < sharp_frac * best and \
                best - nb_median > hot_sigma * noise_p:
            out[c, 6] = SHARP
            continue
        if raw_peak >= saturation or (nflat >= 3 and best > hot_sigma * noise_p):
            out[c, 6] = SATURATED
            continue
        lo = half - core
        hi = half + core + 1
        _fill_window(img, patch, oy, ox, 0, lo, 0, side, pbg, rk, rf, rep_idx, rep_val)
        _fill_window(img, patch, oy, ox, hi, side, 0, side, pbg, rk, rf, rep_idx, rep_val)
        _fill_window(img, patch, oy, ox, lo, hi, 0, lo, pbg, rk, rf, rep_idx, rep_val)
        _fill_window(img, patch, oy, ox, lo, hi, hi, side, pbg, rk, rf, rep_idx, rep_val)
        tol = max(_CONVERGED_PX, _CONVERGED_FRAC * sigma_w * noise_p / best)
        x, y, status, it1 = _centroid(patch, ox, oy, h, w, float(half), float(half), r, inv2s2, tol, _MAX_ITER,
                                      gx, gy)
        out[c, 7] = it1
        if status == OK and (abs(x - half) > 2.5 or abs(y - half) > 2.5):
            status = DIVERGED  # wandered off to another object
        if status != OK:
            out[c, 6] = status
            continue
        # windowed second moments and an aperture flux at the converged centre (whose
        # window may have moved by a pixel since the last bounds check)
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        if ox + ix - r < 0 or oy + iy - r < 0 or ox + ix + r > w - 1 or oy + iy + r > h - 1:
            out[c, 6] = EDGE
            continue
        sw = 0.0
        mxx = 0.0
        myy = 0.0
        mxy = 0.0
        flux = 0.0
        evar = 0.0
        _gauss_taps(gx, 2 * r + 1, x - (ix - r), inv2s2)
        _gauss_taps(gy, 2 * r + 1, y - (iy - r), inv2s2)
        for yy in range(iy - r, iy + r + 1):
            dy = yy - y
            wy = gy[yy - iy + r]
            fy = oy + yy
            k0 = rk[fy]
            f0 = rf[fy]
            for xx in range(ix - r, ix + r + 1):
                dx = xx - x
                d2 = dx * dx + dy * dy
                if d2 > r * r:
                    continue
                v = patch[yy, xx]
                if v != v:
                    status = EDGE
                    break
                flux += v
                g = wy * gx[xx - ix + r]
                ns = max(_at_bin(psg, k0, f0, ox + xx), sig_floor)
                evar += g * g * d2 * ns * ns
                wi = g * v
                sw += wi
                mxx += wi * dx * dx
                myy += wi * dy * dy
                mxy += wi * dx * dy
            if status != OK:
                break
        if status != OK:
            out[c, 6] = status
            continue
        out[c, 0] = ox + x
        out[c, 1] = oy + y
        out[c, 2] = flux
        out[c, 6] = OK
        if sw > 0.0:
            out[c, 8] = math.sqrt(0.5 * 4.0 * evar) / sw
            mxx /= sw
            myy /= sw
            mxy /= sw
            # deconvolve the window: C = (M^-1 - W^-1)^-1
            det = mxx * myy - mxy * mxy
            if det > 0.0:
                i11 = myy / det - 1.0 / (sigma_w * sigma_w)
                i22 = mxx / det - 1.0 / (sigma_w * sigma_w)
                i12 = -mxy / det
                idet = i11 * i22 - i12 * i12
                if i11 > 0.0 and i22 > 0.0 and idet > 0.0:
                    c11 = i22 / idet - 1.0 / 12.0
                    c22 = i11 / idet - 1.0 / 12.0
                    c12 = -i12 / idet
                    tr = 0.5 * (c11 + c22)
                    disc = math.sqrt(max(0.25 * (c11 - c22) ** 2 + c12 * c12, 0.0))
                    l1 = tr + disc
                    l2 = tr - disc
                    if l2 > 0.0:
                        out[c, 3] = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt(tr)
                        out[c, 4] = 1.0 - math.sqrt(l2 / l1)
                        out[c, 9] = c11
                        out[c, 10] = c22
                        out[c, 11] = c12


@numba.njit(nogil=True, cache=True)
def windowed_centroid(img, xs, ys, sigma_w, max_move, out):
    """Iterate a Gaussian-windowed intensity centroid (mean shift) from each (x, y).

    ``img`` must be non-negative (an 8-bit view, say). ``out`` is (n, 3): x, y and a flag
    (1 = converged within ``max_move`` px of the start, 0 = not: edge, empty window or
    wandered off). Used to tie ORB keypoints — which FAST puts anywhere on a blob's rim —
    to the blob's centre, or to the local brightness peak of a texture.
    """
    h, w = img.shape
    r = int(math.ceil(3.0 * sigma_w))
    inv2s2 = 1.0 / (2.0 * sigma_w * sigma_w)
    gx = np.empty(2 * r + 1, dtype=np.float64)
    gy = np.empty(2 * r + 1, dtype=np.float64)
    for k in range(xs.shape[0]):
        x = xs[k]
        y = ys[k]
        out[k, 0] = x
        out[k, 1] = y
        out[k, 2] = 0.0
        ok = False
        for _ in range(50):
            ix = int(math.floor(x + 0.5))
            iy = int(math.floor(y + 0.5))
            if ix - r < 0 or iy - r < 0 or ix + r > w - 1 or iy + r > h - 1:
                break
            sw = 0.0
            sx = 0.0
            sy = 0.0
            for j in range(2 * r + 1):
                gx[j] = math.exp(-((ix - r + j - x) ** 2) * inv2s2)
                gy[j] = math.exp(-((iy - r + j - y) ** 2) * inv2s2)
            for yy in range(iy - r, iy + r + 1):
                dy = yy - y
                wy = gy[yy - iy + r]
                for xx in range(ix - r, ix + r + 1):
                    dx = xx - x
                    wi = wy * gx[xx - ix + r] * img[yy, xx]
                    sw += wi
                    sx += wi * dx
                    sy += wi * dy
            if not (sw > 0.0):
                break
            mx = sx / sw
            my = sy / sw
            x += mx
            y += my
            if (x - xs[k]) ** 2 + (y - ys[k]) ** 2 > max_move * max_move:
                break
            if mx * mx + my * my < 1e-6:
                ok = True
                break
        if ok:
            out[k, 0] = x
            out[k, 1] = y
            out[k, 2] = 1.0


# --------------------------------------------------------------------------- matching


@numba.njit(nogil=True, cache=True)
def score_similarities(hyp, pts, ref_x, ref_y, tol, count, cost):
    """Score each (2, 3) transform ``hyp[k]`` on all points ``pts`` (n, 2): ``count[k]``,
    how many land within ``tol`` of a reference point, and ``cost[k]``, the sum over the
    points of min(d², tol²) with d the distance to the nearest reference point (MSAC).

    ``ref_x`` must be sorted (``ref_y`` in the same order): each query then looks only at
    the reference points within ``tol`` in x, found by bisection — for the ~100 stars of a
    frame several times faster than a KD-tree query.
    """
    m = hyp.shape[0]
    n = pts.shape[0]
    r = ref_x.shape[0]
    tol2 = tol * tol
    for k in range(m):
        a00 = hyp[k, 0, 0]
        a01 = hyp[k, 0, 1]
        a02 = hyp[k, 0, 2]
        a10 = hyp[k, 1, 0]
        a11 = hyp[k, 1, 1]
        a12 = hyp[k, 1, 2]
        c = 0
        s = 0.0
        for i in range(n):
            px = a00 * pts[i, 0] + a01 * pts[i, 1] + a02
            py = a10 * pts[i, 0] + a11 * pts[i, 1] + a12
            best = tol2
            j = np.searchsorted(ref_x, px - tol)
            while j < r and ref_x[j] < px + tol:
                dx = ref_x[j] - px
                dy = ref_y[j] - py
                d2 = dx * dx + dy * dy
                if d2 < best:
                    best = d2
                j += 1
            if best < tol2:
                c += 1
            s += best
        count[k] = c
        cost[k] = s
