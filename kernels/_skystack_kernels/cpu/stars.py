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
``mesh_background``: per-cell iterative clipped median and σ; ``interp_mesh``: bilinear
interpolation between cell centres; ``find_peaks``: local maxima of a smoothed image over a
threshold map; ``measure_stars``: hot-pixel test, saturation test and an iterative
Gaussian-windowed centroid (SExtractor's XWIN/YWIN) with windowed second moments.
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


@numba.njit(nogil=True, cache=True)
def _clipped_stats(buf, n, kappa, n_iter):
    """Median and σ of ``buf[:n]`` after iterative κ-σ clipping (sorts ``buf[:n]``).

    σ comes from the 15.87/84.13 percentiles of the kept range, which equals the standard
    deviation for Gaussian noise and ignores the stars' tail; clipping then only trims the
    tails, so a sort and a few binary searches do the whole job.
    """
    if n == 0:
        return np.nan, np.nan
    v = np.sort(buf[:n])
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
    return med, sig


@numba.njit(nogil=True, cache=True)
def mesh_background(img, sub, edges_y, edges_x, step, kappa, n_iter, out_bg, out_sigma):
    """Clipped median (``out_bg``) and σ (``out_sigma``) of ``img − sub`` in each mesh cell.

    ``sub`` is a smooth background to remove first (a first pass's interpolated mesh, so
    that a gradient inside a cell does not inflate its σ) or an array of shape (1, 1)
    for none.

    Cell ``(j, i)`` covers rows ``edges_y[j]:edges_y[j+1]`` and columns
    ``edges_x[i]:edges_x[i+1]``; every ``step``-th pixel in each direction is used (the
    median of a few hundred samples is precise to a few % of σ, at a fraction of the
    cost). NaNs are
    skipped; a cell without finite pixels gets NaN.
    """
    ny = edges_y.shape[0] - 1
    nx = edges_x.shape[0] - 1
    cap = ((edges_y[1:] - edges_y[:-1]).max() // step + 1) * ((edges_x[1:] - edges_x[:-1]).max() // step + 1)
    buf = np.empty(cap, dtype=np.float64)
    has_sub = sub.shape[0] == img.shape[0] and sub.shape[1] == img.shape[1]
    for j in range(ny):
        for i in range(nx):
            n = 0
            for y in range(edges_y[j], edges_y[j + 1], step):
                for x in range(edges_x[i], edges_x[i + 1], step):
                    v = img[y, x]
                    if has_sub:
                        v -= sub[y, x]
                    if v == v:
                        buf[n] = v
                        n += 1
            med, sig = _clipped_stats(buf, n, kappa, n_iter)
            out_bg[j, i] = med
            out_sigma[j, i] = sig


@numba.njit(nogil=True, cache=True)
def interp_mesh(mesh, centres_y, centres_x, out):
    """Bilinear interpolation of ``mesh`` (values at cell centres) onto every pixel of
    ``out``, extrapolated linearly beyond the outermost centres (half a cell): a sky
    gradient then continues to the frame edge instead of flattening out."""
    h, w = out.shape
    ny, nx = mesh.shape
    ix = np.empty(w, dtype=np.int64)
    fx = np.empty(w, dtype=np.float64)
    for x in range(w):
        if nx == 1:
            ix[x] = 0
            fx[x] = 0.0
        elif x <= centres_x[0]:
            ix[x] = 0
            fx[x] = (x - centres_x[0]) / (centres_x[1] - centres_x[0])
        elif x >= centres_x[nx - 1]:
            ix[x] = nx - 2
            fx[x] = (x - centres_x[nx - 2]) / (centres_x[nx - 1] - centres_x[nx - 2])
        else:
            k = np.searchsorted(centres_x, x, side="right") - 1
            ix[x] = k
            fx[x] = (x - centres_x[k]) / (centres_x[k + 1] - centres_x[k])
    row = np.empty(nx, dtype=np.float64)
    for y in range(h):
        if ny == 1:
            j = 0
            fy = 0.0
        elif y <= centres_y[0]:
            j = 0
            fy = (y - centres_y[0]) / (centres_y[1] - centres_y[0])
        elif y >= centres_y[ny - 1]:
            j = ny - 2
            fy = (y - centres_y[ny - 2]) / (centres_y[ny - 1] - centres_y[ny - 2])
        else:
            j = np.searchsorted(centres_y, y, side="right") - 1
            fy = (y - centres_y[j]) / (centres_y[j + 1] - centres_y[j])
        for i in range(nx):
            if ny == 1:
                row[i] = mesh[0, i]
            else:
                row[i] = mesh[j, i] * (1.0 - fy) + mesh[j + 1, i] * fy
        for x in range(w):
            if nx == 1:
                out[y, x] = row[0]
            else:
                k = ix[x]
                out[y, x] = row[k] * (1.0 - fx[x]) + row[k + 1] * fx[x]


@numba.njit(nogil=True, cache=True)
def find_peaks(smooth, bg, sig, factor, floor, border):
    """Local maxima of ``smooth`` that exceed ``bg + max(sig · factor, floor)``, at least
    ``border`` pixels from the edge (the threshold is computed per pixel rather than read
    from a frame-sized array). Ties are broken in raster order (a plateau gives one peak).
    Returns (ys, xs) int64 arrays."""
    h, w = smooth.shape
    cap = 1024
    ys = np.empty(cap, dtype=np.int64)
    xs = np.empty(cap, dtype=np.int64)
    n = 0
    for y in range(border, h - border):
        for x in range(border, w - border):
            v = smooth[y, x]
            t = sig[y, x] * factor
            if t < floor:
                t = floor
            if not (v - bg[y, x] > t):
                continue
            if not (v > smooth[y - 1, x - 1] and v > smooth[y - 1, x] and v > smooth[y - 1, x + 1]
                    and v > smooth[y, x - 1] and v >= smooth[y, x + 1]
                    and v >= smooth[y + 1, x - 1] and v >= smooth[y + 1, x] and v >= smooth[y + 1, x + 1]):
                continue
            if n == cap:
                cap *= 2
                ys2 = np.empty(cap, dtype=np.int64)
                xs2 = np.empty(cap, dtype=np.int64)
                ys2[:n] = ys[:n]
                xs2[:n] = xs[:n]
                ys = ys2
                xs = xs2
            ys[n] = y
            xs[n] = x
            n += 1
    return ys[:n], xs[:n]


@numba.njit(nogil=True, cache=True)
def repair_sharp_into(img, med, bg, sig, hot_sigma, sharp_frac):
    """Where a pixel stands more than ``hot_sigma`` σ above its 3×3 median ``med`` and that
    excess is most of its height above the background (a single-pixel peak: hot pixel or
    cosmic ray), keep the median; elsewhere copy ``img``. Writes into ``med`` in place (so
    no further frame-sized temporaries) and returns how many pixels were repaired."""
    h, w = img.shape
    n = 0
    for y in range(h):
        for x in range(w):
            v = img[y, x]
            m = med[y, x]
            e = v - m
            if e > hot_sigma * sig[y, x] and e > (1.0 - sharp_frac) * (v - bg[y, x]):
                n += 1
            else:
                med[y, x] = v
    return n


# status codes of measure_stars (0 = a good star)
OK = 0
SHARP = 1        # single-pixel peak: hot pixel or cosmic ray
SATURATED = 2    # flat-topped peak
EDGE = 3         # the window touches the image edge or a NaN
DIVERGED = 4     # the windowed centroid wandered off or had no positive flux
DUPLICATE = 5    # converged onto a star already measured (two peaks, one star)


@numba.njit(nogil=True, cache=True)
def measure_stars(img, bg, noise, cand_y, cand_x, sigma_w, sharp_frac, flat_frac, saturation,
                  out):
    """Measure the candidates at (cand_y, cand_x).

    ``out`` is (n, 12): x, y, flux, fwhm, roundness, peak, status, n_iter, err, and the
    deconvolved second moments c11 (xx), c22 (yy), c12 (xy) in px².
    ``noise`` is the per-pixel background noise σ map; ``err`` is the 1-σ centroid
    uncertainty per axis from background noise, SExtractor's ERRX2WIN:
    var(x) = 4 Σ w_i² (x_i − x)² σ_i² / (Σ w_i I_i)² (averaged over x and y).

    For each candidate: the brightest background-subtracted pixel ``p`` of the 3×3 around
    it; the candidate is SHARP when the median of p's 8 neighbours is below
    ``sharp_frac * peak`` (a star lights its neighbours — even a 1.5 px FWHM star keeps
    that median above ~0.2 of the peak; a hot pixel or a cosmic-ray track does not);
    SATURATED when the raw peak reaches ``saturation`` or at least 3 of its neighbours are
    within ``flat_frac * peak`` of it (a clipped, flat top). Then the Gaussian-windowed
    centroid (weight σ = ``sigma_w``) is iterated: x ← x + 2 Σ wI(x_i − x) / Σ wI, which
    converges to the point where the windowed first moment vanishes; for a symmetric star
    that is its centre, with a precision close to a PSF fit at a fraction of the cost.
    FWHM and roundness come from the windowed second moments with the Gaussian window
    deconvolved (C = (M⁻¹ − W⁻¹)⁻¹) and the pixel's 1/12 px² removed; they are
    Gaussian-equivalent values.
    """
    h, w = img.shape
    r = int(math.ceil(4.0 * sigma_w))
    inv2s2 = 1.0 / (2.0 * sigma_w * sigma_w)
    nb = np.empty(8, dtype=np.float64)
    # the Gaussian window is separable: 2(2r+1) exp() per iteration instead of (2r+1)²
    gx = np.empty(2 * r + 1, dtype=np.float64)
    gy = np.empty(2 * r + 1, dtype=np.float64)
    for c in range(cand_y.shape[0]):
        cy = cand_y[c]
        cx = cand_x[c]
        for k in range(12):
            out[c, k] = np.nan
        # brightest pixel of the 3x3
        py = cy
        px = cx
        best = -np.inf
        for yy in range(cy - 1, cy + 2):
            for xx in range(cx - 1, cx + 2):
                if 0 <= yy < h and 0 <= xx < w:
                    v = img[yy, xx] - bg[yy, xx]
                    if v > best:
                        best = v
                        py = yy
                        px = xx
        out[c, 5] = best
        if py < 1 or px < 1 or py > h - 2 or px > w - 2 or not (best > 0.0):
            out[c, 6] = EDGE
            continue
        k = 0
        nflat = 0
        raw_peak = img[py, px]
        for yy in range(py - 1, py + 2):
            for xx in range(px - 1, px + 2):
                if yy == py and xx == px:
                    continue
                v = img[yy, xx]
                nb[k] = v - bg[yy, xx]
                if v >= raw_peak - flat_frac * best:
                    nflat += 1
                k += 1
        nbs = np.sort(nb)
        if 0.5 * (nbs[3] + nbs[4]) < sharp_frac * best:
            out[c, 6] = SHARP
            continue
        if raw_peak >= saturation or nflat >= 3:
            out[c, 6] = SATURATED
            continue
        # iterative windowed centroid
        x = float(px)
        y = float(py)
        status = OK
        it = 0
        sw = 0.0
        for it in range(1, 31):
            ix = int(math.floor(x + 0.5))
            iy = int(math.floor(y + 0.5))
            if ix - r < 0 or iy - r < 0 or ix + r > w - 1 or iy + r > h - 1:
                status = EDGE
                break
            sw = 0.0
            sx = 0.0
            sy = 0.0
            bad = False
            for k in range(2 * r + 1):
                gx[k] = math.exp(-((ix - r + k - x) ** 2) * inv2s2)
                gy[k] = math.exp(-((iy - r + k - y) ** 2) * inv2s2)
            for yy in range(iy - r, iy + r + 1):
                dy = yy - y
                wy = gy[yy - iy + r]
                for xx in range(ix - r, ix + r + 1):
                    dx = xx - x
                    d2 = dx * dx + dy * dy
                    if d2 > r * r:
                        continue
                    v = img[yy, xx]
                    if v != v:
                        bad = True
                        continue
                    wi = wy * gx[xx - ix + r] * (v - bg[yy, xx])
                    sw += wi
                    sx += wi * dx
                    sy += wi * dy
            if bad:
                status = EDGE
                break
            if not (sw > 0.0):
                status = DIVERGED
                break
            ddx = 2.0 * sx / sw
            ddy = 2.0 * sy / sw
            # the factor 2 speeds convergence but can overshoot on very broad objects
            if ddx > 1.0:
                ddx = 1.0
            elif ddx < -1.0:
                ddx = -1.0
            if ddy > 1.0:
                ddy = 1.0
            elif ddy < -1.0:
                ddy = -1.0
            x += ddx
            y += ddy
            if abs(x - px) > 2.5 or abs(y - py) > 2.5:
                status = DIVERGED
                break
            if ddx * ddx + ddy * ddy < 1e-10:
                break
        out[c, 7] = it
        if status != OK:
            out[c, 6] = status
            continue
        # windowed second moments and an aperture flux at the converged centre
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        sw = 0.0
        mxx = 0.0
        myy = 0.0
        mxy = 0.0
        flux = 0.0
        evar = 0.0
        for k in range(2 * r + 1):
            gx[k] = math.exp(-((ix - r + k - x) ** 2) * inv2s2)
            gy[k] = math.exp(-((iy - r + k - y) ** 2) * inv2s2)
        for yy in range(iy - r, iy + r + 1):
            dy = yy - y
            wy = gy[yy - iy + r]
            for xx in range(ix - r, ix + r + 1):
                dx = xx - x
                d2 = dx * dx + dy * dy
                if d2 > r * r:
                    continue
                v = img[yy, xx] - bg[yy, xx]
                flux += v
                g = wy * gx[xx - ix + r]
                ns = noise[yy, xx]
                evar += g * g * d2 * ns * ns
                wi = g * v
                sw += wi
                mxx += wi * dx * dx
                myy += wi * dy * dy
                mxy += wi * dx * dy
        out[c, 0] = x
        out[c, 1] = y
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
