"""Star detection: robust background, thresholded local maxima, subpixel centroids.

The steps, and why each is there:

1. **Background and noise on a coarse mesh** (cells of ~64 px, iterative κ-σ clipped median
   and a percentile σ per cell, a 3×3 median over cells, bilinear interpolation between cell
   centres). A sky gradient or a galaxy halo then raises the local background instead of
   producing false detections, and the threshold follows the local noise. The mesh is
   interpolated where a value is needed, never into a frame-sized map.
2. **Local maxima of a lightly smoothed, 2×2-binned view** (a Gaussian of ~1.3 px overall,
   close to matched for the 2–4 px FWHM stars of deep-sky subs) that exceed ``k·σ`` of the
   *smoothed* noise. The binned view is a quarter of the pixels and is built a strip of
   rows at a time. Binning costs a star that straddles bins some of its peak, so the binned
   search runs at 0.8 × the threshold and each candidate is confirmed at full resolution
   with a σ = 1 px Gaussian in its window. The smoothed noise is measured, not only
   predicted from the pixel noise: a demosaiced colour frame's luminance has correlated
   noise, and a 1 px filter leaves ~1.9 × what the white-noise formula says (the Seestar
   subs: a "5 σ" threshold that was really ~2.6 σ found ~1 500 noise peaks per sub besides
   its ~85 stars). Differences of smoothed bins farther apart than the filter reaches
   measure it; the sky, gradients and a cluster's light cancel in them. Each peak is placed
   within its bin (a parabola through its neighbours), and its brightest pixel sought in
   the 3×3 around that. When the stars turn out broader than 3.5 px FWHM, detection runs
   again with a Gaussian matched to their measured FWHM, until the stars' FWHM (the lower
   quartile of the peaks': blends broaden with every wider window) settles (the real M13
   frames: ~10 px stars at ~1 σ per pixel, where the 1 px filter mostly finds noise).
3. **Sharp pixels repaired, then rejections** on the unsmoothed pixels. A pixel far above
   the median of its 3×3 neighbourhood — by 5σ and by most of its height above the sky —
   is a hot pixel or a cosmic-ray hit (a star lights its neighbours: even a 1.5 px FWHM
   star keeps that median above ~0.2 of its peak; a streak of up to 4 pixels still has a
   dark median): it is replaced by that median, in the binned view and in each star's
   window, so that it neither becomes a candidate nor pulls the centroid of a star whose
   window it falls in. Peaks that are still single-pixel or flat-topped (saturated) —
   tested only where the peak stands 5σ above its surroundings: a faint broad star's
   brightest pixel is a noise spike over neighbours at a fraction of σ — touching the edge
   or a NaN, elongated (trails) or much broader than the frame's stars (galaxies) are
   rejected.
4. **Centroid**: the iterative Gaussian-windowed first moment (SExtractor's XWIN/YWIN), with
   the window matched to the frame's median FWHM, on a full-resolution copy of a small
   window around each candidate. It reaches ~0.01–0.02 px on bright stars — close to a PSF
   fit — needs no PSF model (real PSFs are neither Gaussian nor Moffat), never fails to
   converge on a saturated core or a blend the way a nonlinear fit can, and costs a few
   hundred multiply-adds per star (the synthetic tests measure the precision).
5. **Shape**: FWHM and roundness (1 − minor/major) from the windowed second moments with the
   window deconvolved — Gaussian-equivalent values, used to weight and select frames.

The frame is read in place in its own dtype (uint16 subs are not converted): detection's
working memory is a few strip and mesh buffers and the candidates, not copies of the
frame (:func:`detection_working_bytes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from _skystack_kernels.cpu import stars as kern
from _skystack_kernels.cpu.neighbours import pairs_within

from .background import _MESH_CELL, Background, background_mesh  # noqa: F401  (Background: re-exported)

__all__ = ["Stars", "Background", "detect_stars", "background_mesh", "native_frame", "detection_working_bytes"]

_SMOOTH_SIGMA = 1.0  # px, detection filter
_SHARP_FRAC = 0.12  # a peak whose 8-neighbour median is below this fraction is one pixel
_FLAT_FRAC = 0.01  # neighbours within this fraction of the peak: a flat (clipped) top
_MAX_ROUNDNESS = 0.5  # more elongated than 2:1 is a trail, a galaxy or a blend, not a star
_MAX_FWHM_RATIO = 2.5  # broader than this × the frame's median FWHM: a galaxy or a blend
_HOT_SIGMA = 5.0  # a repaired sharp pixel exceeds its 3×3 median by this many σ
_METRIC_ERR_PX = 0.1  # frame metrics use stars centroided better than this (good SNR)
_DEFAULT_FWHM = 3.0  # px, the window of the first pass
_REDETECT_FWHM = 3.5  # px; broader stars are detected again with a matched filter
_MAX_WINDOW_FWHM = 24.0  # px, the widest centroid window
# re-detection with a wider filter stops when the FWHM grew by less than this factor. The
# estimate from the ~40 stars of a real M13 frame wanders by ~±10 % (a wider window also
# sees more of the wings), so a step of +11 % or +24 % is noise, +33 % or more is not; a
# window wider than the stars only costs crowded stars (their neighbours fall into it)
_REDETECT_GROWTH = 1.25
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548: a Gaussian's FWHM / σ
_FWHM_PEAKS = 200  # the strongest peaks measure the frame's FWHM
# candidates kept (the strongest): one per 20×20 px, at least 1000. Far more than any
# frame has stars that could be told apart (a 6 Mpx frame of the synthetic sets has
# ~2 200 candidates for ~1 800 stars), and it bounds detection's memory on a frame of noise
_PX_PER_CANDIDATE = 400
_MIN_CANDIDATES = 1000
_MEASURE_CHUNK = 4096  # candidates measured at a time
_KEPT_COLUMNS = [0, 1, 2, 3, 4, 8, 9, 10, 11]  # of measure_stars' table, for good stars
# The binned search runs at this fraction of the threshold when its candidates are
# confirmed at full resolution (filters narrower than _CONFIRM_BELOW_SIGMA px: there a star
# that straddles bins loses up to ~15 % of its smoothed peak; wider filters barely notice
# the binning), with a filter of at least _BINNED_MIN_SIGMA px (closer to matched for the
# ~3 px stars of deep-sky subs). Measured on two 3000×2000 synthetic frames: 96–98 % of the
# stars the full-frame search found, at 1.3 candidates per star; slack 0.7 finds 1 % more
# at 1.6 candidates per star.
_BINNED_SLACK = 0.8
_BINNED_MIN_SIGMA = 1.3
_CONFIRM_BELOW_SIGMA = 2.0
_STRIP_BINS = 128  # bin rows per smoothed strip of the binned view (~0.8 MB at W = 3000)
# differences of the smoothed binned view sampled to measure its noise: the clipped σ of n
# values scatters by ~1/√n, 0.5 % here
_NOISE_SAMPLES = 40000
# a candidate's peak pixel is the brightest within this many px of its smoothed peak
_PEAK_SEARCH_PX = 1


@dataclass(frozen=True)
class Stars:
    """Detected stars, brightest first.

    Attributes
    ----------
    x, y : float64 arrays
        Subpixel centroids (pixels, 0-based pixel centres, x = column).
    flux : float64 array
        Background-subtracted flux in a circular aperture (ADU; for ranking).
    fwhm : float64 array
        Gaussian-equivalent FWHM (pixels); NaN where the moments were unusable.
    err : float64 array
        1-σ centroid uncertainty per axis from the background noise (pixels); the shot
        noise of the star itself is not included (the gain is unknown).
    moments : (n, 3) float64 array
        Deconvolved second moments (xx, yy, xy) in px², Gaussian-equivalent.
    roundness : float64 array
        1 − minor/major axis (0 = round).
    background, noise : float
        Median sky level and noise σ over the frame (ADU).
    n_detected : int
        How many stars passed every test (before keeping the brightest ``max_stars``).
    n_sharp : int
        Sharp pixels repaired before measuring (hot pixels, cosmic-ray hits) plus
        single-pixel peaks rejected.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    fwhm: np.ndarray
    roundness: np.ndarray
    err: np.ndarray
    moments: np.ndarray
    background: float
    noise: float
    n_detected: int
    n_sharp: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def xy(self) -> np.ndarray:
        """(n, 2) float64 array of (x, y)."""
        return np.column_stack([self.x, self.y])

    def metrics(self) -> dict[str, float]:
        """Frame-level quality metrics: n_stars, fwhm_px, roundness, background, noise.

        FWHM and roundness come from the median second-moment tensor of the well-measured
        stars (centroid error below 0.1 px; all stars when fewer than 5 are). Taking the
        median of the tensor components, not of per-star roundness, matters: noise makes
        every faint star look elongated in some direction, and a median of those positive
        values would report elongation where there is none.
        """
        good = self.err < _METRIC_ERR_PX
        sel = good if good.sum() >= 5 else np.ones_like(good)
        sel &= np.all(np.isfinite(self.moments), axis=1)
        fwhm = rnd = math.nan
        if sel.any():
            c11, c22, c12 = np.median(self.moments[sel], axis=0)
            tr = 0.5 * (c11 + c22)
            disc = math.sqrt(0.25 * (c11 - c22) ** 2 + c12 * c12)
            if tr - disc > 0:
                fwhm = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt(tr)
                rnd = 1.0 - math.sqrt((tr - disc) / (tr + disc))
        return {
            "n_stars": float(self.n_detected),
            "fwhm_px": fwhm,
            "roundness": rnd,
            "background": float(self.background),
            "noise": float(self.noise),
        }


def _reads_natively(dtype: np.dtype) -> bool:
    return dtype.kind in "uif" and dtype.isnative and dtype.itemsize <= 8 and dtype != np.float16


def native_frame(lum: np.ndarray) -> np.ndarray:
    """``lum`` as detection reads it: the same array when it is a C-contiguous 2-D array of
    a real dtype in native byte order (uint8/16, int16/32, float32/64 ...), else a float32
    copy (big-endian FITS data, strided views, other dtypes).

    Raises ``ValueError`` for an array that is not 2-D.
    """
    a = np.asarray(lum)
    if a.ndim != 2:
        raise ValueError(f"star detection needs a 2-D luminance frame, got shape {a.shape}")
    if _reads_natively(a.dtype) and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


class _Detector:
    """One frame's detection state: the frame (never copied), its background model and the
    interpolation weights, shared by the candidate search and the measurements."""

    def __init__(self, img: np.ndarray, bg: Background):
        self.img = img
        self.bg = bg
        rk, rf, ck, cf = bg.axes()
        rkb, rfb, ckb, cfb = bg.axes(binned=True)
        self.rows, self.rows_b = (rk, rf), (rkb, rfb)
        # the meshes interpolated to every pixel column and every bin column (mesh rows ×
        # 1.5 W values: ~1.1 MB each at W = 3000): a value is then one interpolation
        # between two rows
        self.pbg = _at_columns(bg.level, ck, cf)
        self.psg = _at_columns(bg.noise, ck, cf)
        self.cbg = _at_columns(bg.level, ckb, cfb)
        self.csg = _at_columns(bg.noise, ckb, cfb)
        self.binned: np.ndarray | None = None
        self.repaired: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0))
        self.n_repaired = 0

    def candidates(self, smooth_sigma: float, k_sigma: float) -> _Candidates:
        """Candidates, strongest first: local maxima of the 2×2-binned view smoothed to
        ~``smooth_sigma`` px that rise ``k_sigma`` × the smoothed noise above the background
        (at most :func:`_max_candidates`, the strongest).

        With a narrow filter a star that straddles bins loses signal in the binned view, so
        there the search runs at ``_BINNED_SLACK`` × the threshold and each candidate is
        confirmed at full resolution (the old full-frame criterion, applied in its window:
        :func:`_skystack_kernels.cpu.stars.measure_stars`). The binned view (a quarter of
        the pixels) is built on the first call and smoothed in strips of ``_STRIP_BINS`` bin
        rows plus a halo, into one strip-sized buffer.

        The threshold is first that of white noise; the differences of smoothed bins farther
        apart than the filter reaches measure the smoothed noise itself, and the candidates
        that do not clear its excess over the white-noise prediction are dropped (a
        demosaiced frame's luminance: ~1.9 × after a 1 px filter). The sky, gradients and a
        cluster's or a galaxy's light cancel in the differences, the stars are clipped;
        stars too many to clip (broad ones, densely) raise the estimate by a few %: the
        threshold errs on the high side.
        """
        img, bg = self.img, self.bg
        gk = _binned_kernel(max(smooth_sigma, _BINNED_MIN_SIGMA))
        # smoothed background == background (it is smooth); a small floor keeps σ = 0 cells
        # (clipped or synthetic noise-free data) from turning every bump into a star
        floor = 1e-6 * max(abs(bg.median_level), 1.0)
        if smooth_sigma < _CONFIRM_BELOW_SIGMA:
            # white noise σ shrinks by sqrt(sum k²) under the filter; for the separable 2-D
            # kernel sum k² = (sum k1²)², so the factor is sum k1²
            confirm = cv2.getGaussianKernel(int(2 * math.ceil(4 * smooth_sigma) + 1), smooth_sigma,
                                            cv2.CV_64F).ravel()
            confirm_factor = float(k_sigma * np.sum(confirm ** 2))
            k_binned = _BINNED_SLACK * k_sigma
        else:
            confirm, confirm_factor, k_binned = np.zeros(0), 0.0, k_sigma
        # each bin weight g_i·g_j covers 4 pixels at a quarter each: for white noise the
        # filter leaves sqrt(4 · Σ (g_i g_j / 4)²) = (Σ g²) / 2 of σ
        white = float(np.sum(gk ** 2) / 2.0)
        factor = k_binned * white
        hb, wb = img.shape[0] // 2, img.shape[1] // 2
        if self.binned is None:
            # the binned view is the same for every filter: built once (a quarter of the
            # pixels, float32), then smoothed in strips for each detection pass
            self.binned = np.empty((hb, wb), np.float32)
            self.repaired = kern.bin_rows(img, self.cbg, self.csg, bg.noise_floor, *self.rows_b, _HOT_SIGMA,
                                          _SHARP_FRAC, self.binned)
            self.n_repaired = int(self.repaired[0].size)
        halo = (gk.size - 1) // 2 + 1  # the filter's reach, plus the local-maximum test's row
        smooth = np.empty((min(_STRIP_BINS + 2 * halo, hb), wb), np.float32)
        g32 = gk.astype(np.float32)
        # noise samples: differences between bins farther apart than the filter's reach
        # (and the ~1 bin that demosaicing correlates)
        lag = min(gk.size + 1, max(wb - 1, 1))
        step = max(1, math.ceil(math.sqrt(hb * max(wb - lag, 1) / _NOISE_SAMPLES)))
        diffs = np.empty(-(-hb // step) * -(-max(wb - lag, 0) // step))
        n_diffs = 0
        found: list[tuple[np.ndarray, ...]] = []
        n_found = 0
        cap = _max_candidates(img.shape)
        for s0 in range(0, hb, _STRIP_BINS):
            s1 = min(s0 + _STRIP_BINS, hb)
            a, b = max(0, s0 - halo), min(hb, s1 + halo)
            # OpenCV reflects at the strip's ends: right where they are the frame's, and
            # inside the halo elsewhere
            cv2.sepFilter2D(self.binned[a:b], cv2.CV_32F, g32, g32, dst=smooth[:b - a], borderType=cv2.BORDER_REFLECT)
            part = kern.strip_peaks(smooth[:b - a], a, s0 - a, s1 - a, self.cbg, self.csg, bg.noise_floor,
                                    *self.rows_b, factor, floor, hb, 2)
            n_diffs = kern.strip_differences(smooth[:b - a], a, s0 - a, s1 - a, self.csg, bg.noise_floor,
                                             *self.rows_b, lag, step, diffs, n_diffs)
            found.append(part)
            n_found += part[0].size
            if n_found > 2 * cap:
                found = [_strongest(found, cap)]
                n_found = found[0][0].size
        ys, xs, vals, ratios = _strongest(found, cap)
        # the threshold above assumed white noise; correlated noise (a demosaiced frame's
        # luminance) leaves more after the filter: the measured excess raises the threshold
        # (never lowers it: the search has already run at the white-noise one)
        excess = kern.clipped_sigma(diffs[:n_diffs], 3.0, 5) / (math.sqrt(2.0) * white)
        excess = float(excess) if excess > 1.0 else 1.0  # also for NaN (no noise, or no samples)
        keep = ratios > excess
        ys, xs, vals = ys[keep], xs[keep], vals[keep]
        order = np.argsort(-vals, kind="stable")
        return _Candidates(ys[order], xs[order], confirm, confirm_factor * excess, floor)

    def measure(self, cand: _Candidates, window_fwhm: float, saturation: float, start: int = 0,
                stop: int | None = None) -> np.ndarray:
        """:func:`_skystack_kernels.cpu.stars.measure_stars` on candidates ``start:stop``;
        (n, 12)."""
        ys, xs = cand.ys[start:stop], cand.xs[start:stop]
        # in raster order: consecutive windows then share cache lines and pages of the frame
        # (in brightness order nearly every window row is a cache miss: 2× slower)
        raster = np.lexsort((xs, ys))
        out = np.empty((ys.size, 12))
        kern.measure_stars(self.img, self.pbg, self.psg, self.bg.noise_floor, *self.rows, *self.repaired, ys[raster],
                           xs[raster], _PEAK_SEARCH_PX, window_fwhm / _FWHM_PER_SIGMA, _SHARP_FRAC, _HOT_SIGMA,
                           _FLAT_FRAC, saturation, cand.confirm, cand.factor, cand.floor, out)
        back = np.empty_like(raster)
        back[raster] = np.arange(raster.size)
        return out[back]


class _Candidates(NamedTuple):
    """Candidate pixels (strongest first) and the full-resolution test that confirms them."""

    ys: np.ndarray
    xs: np.ndarray
    confirm: np.ndarray  # 1-D Gaussian taps (empty: no confirmation)
    factor: float  # threshold = background + max(σ · factor, floor)
    floor: float

    @property
    def size(self) -> int:
        return int(self.ys.size)


def _max_candidates(shape: tuple[int, ...]) -> int:
    return max(_MIN_CANDIDATES, int(shape[0]) * int(shape[1]) // _PX_PER_CANDIDATE)


def _at_columns(m: np.ndarray, k: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Mesh ``m`` interpolated along its columns to the column weights (k, f)."""
    out = np.empty((m.shape[0], k.size))
    kern.mesh_at_columns(m, k, f, out)
    return out


def _strongest(parts, cap: int) -> tuple[np.ndarray, ...]:
    """The ``cap`` strongest candidates of raster-ordered parts (tuples of arrays, the
    value third), still in raster order (ties broken by raster order, so the result does
    not depend on how the frame was cut)."""
    cols = tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))
    if cols[2].size > cap:
        keep = np.sort(np.argsort(-cols[2], kind="stable")[:cap])
        cols = tuple(c[keep] for c in cols)
    return cols


def _binned_kernel(smooth_sigma: float) -> np.ndarray:
    """The 1-D Gaussian, in bins, that after 2×2 binning smooths like a Gaussian of
    ``smooth_sigma`` full-resolution pixels: binning is a 2-px box (variance 1/4 px² per
    axis for the two pixel centres), the Gaussian adds 4·σ_b², so
    σ_b = sqrt(σ² − 1/4) / 2 (at least 0.3 bin: a narrower one is a plain box filter)."""
    sb = max(math.sqrt(max(smooth_sigma ** 2 - 0.25, 0.0)) / 2.0, 0.3)
    r = max(1, int(round(2.5 * sb)))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sb) ** 2)
    return g / g.sum()


def detect_stars(lum: np.ndarray, *, max_stars: int = 100, sigma: float = 5.0,
                 saturation: float | None = None, fwhm_guess: float | None = None) -> Stars:
    """Detect and measure the stars of a luminance frame.

    Parameters
    ----------
    lum : (H, W) array
        Linear luminance, any real dtype; read in place (see :func:`native_frame`), never
        modified. NaN pixels are treated as background, and stars whose centroid window
        touches one are not centroided.
    max_stars : int
        Keep the brightest ``max_stars`` stars (all good stars are still counted in
        ``n_detected``).
    sigma : float
        Detection threshold in units of the local noise of the smoothed image.
    saturation : float, optional
        Raw level at or above which a peak is saturated. Flat-topped peaks are rejected
        either way.
    fwhm_guess : float, optional
        Starting FWHM (pixels) for the centroid window; by default it is measured.

    Returns
    -------
    Stars
        Brightest first. Empty arrays when nothing qualifies (never an exception).
    """
    img = native_frame(lum)
    h, w = img.shape
    bg = background_mesh(img)
    empty = Stars(*(np.empty(0) for _ in range(6)), np.empty((0, 3)), background=bg.median_level,
                  noise=bg.median_noise, n_detected=0)
    if h < 8 or w < 8 or not (bg.median_noise > 0):
        return empty
    det = _Detector(img, bg)
    cand = det.candidates(_SMOOTH_SIGMA, sigma)
    sat = np.inf if saturation is None else float(saturation)
    if cand.size == 0:
        return empty
    # pass 1: the window from a guess, on the strongest peaks, to measure the FWHM
    fw = fwhm_guess
    if fw is None:
        # the window must be wider than the stars for the moments to deconvolve: widen it
        # until most measurable peaks give a finite FWHM (defocused or oversampled data)
        guess = _DEFAULT_FWHM
        fw = low = _DEFAULT_FWHM
        while guess <= _MAX_WINDOW_FWHM:
            est = _fwhm_of_peaks(det, cand, guess, sat)
            if est is not None:
                fw, low = est
                break
            guess *= 2.0
        # broad stars (poor seeing, defocus, fine sampling): the 1 px filter is far from
        # matched, most of its peaks are noise and their FWHM pulls the estimate down.
        # Detect again with a filter matched to the estimate and re-measure, until the
        # stars' FWHM (the peaks' lower quartile) stops growing (M13: 5 → 10 px; a matched
        # filter gains ~√(σ★/1 px))
        for _ in range(4):
            if fw <= _REDETECT_FWHM:
                break
            cand = det.candidates(min(fw, _MAX_WINDOW_FWHM) / _FWHM_PER_SIGMA, sigma)
            if cand.size == 0:
                return empty
            est = _fwhm_of_peaks(det, cand, fw, sat)
            if est is None or est[1] < _REDETECT_GROWTH * low:
                break
            fw, low = est
    elif fw > _REDETECT_FWHM:
        cand = det.candidates(min(fw, _MAX_WINDOW_FWHM) / _FWHM_PER_SIGMA, sigma)
        if cand.size == 0:
            return empty
    # measured in chunks, keeping only the good stars' columns (x, y, flux, fwhm,
    # roundness, err, moments): a frame of tens of thousands of candidates never holds a
    # (candidates × 12) table
    window = float(np.clip(fw, 1.2, _MAX_WINDOW_FWHM))
    kept = []
    n_sharp = det.n_repaired
    for start in range(0, cand.size, _MEASURE_CHUNK):
        out = det.measure(cand, window, sat, start, start + _MEASURE_CHUNK)
        status = out[:, 6]
        n_sharp += int(np.sum(status == kern.SHARP))
        # a NaN shape means the object is wider than the matched window in some direction:
        # a trail, a galaxy, a blend — not a star
        ok = ((status == kern.OK) & (out[:, 2] > 0) & np.isfinite(out[:, 8]) & np.isfinite(out[:, 3])
              & (out[:, 4] < _MAX_ROUNDNESS))
        kept.append(out[ok][:, _KEPT_COLUMNS])
    res = np.concatenate(kept)  # x, y, flux, fwhm, roundness, err, c11, c22, c12
    if res.shape[0] >= 5:
        res = res[res[:, 3] <= _MAX_FWHM_RATIO * np.median(res[:, 3])]
    # two peaks of one star converge to one centroid: keep the brighter
    res = res[np.argsort(-res[:, 2], kind="stable")]
    res = _dedupe(res, 0.5 * max(fw, 1.0))
    n_good = res.shape[0]
    res = res[:max_stars]
    return Stars(
        x=res[:, 0].copy(), y=res[:, 1].copy(), flux=res[:, 2].copy(), fwhm=res[:, 3].copy(),
        roundness=res[:, 4].copy(), err=res[:, 5].copy(), moments=res[:, 6:9].copy(), background=bg.median_level,
        noise=bg.median_noise, n_detected=n_good,
        n_sharp=n_sharp,
    )


def _fwhm_of_peaks(det: _Detector, cand: _Candidates, window_fwhm: float,
                   sat: float) -> tuple[float, float] | None:
    """The median and the lower quartile of the FWHM of the strongest ``_FWHM_PEAKS``
    peaks measured with a window of ``window_fwhm``, or None when under half of the
    centroided ones give a finite, round shape (the window is too narrow for them).

    The median sizes the centroid window. The lower quartile follows the stars alone: a
    blend, or a peak of a globular cluster's crowded core, looks broader the wider the
    window (M13: ~14-37 px against ~10 px for the stars around the core), and where such
    peaks are most of the strongest, their median grows with every re-detection.
    """
    out1 = det.measure(cand, window_fwhm, sat, 0, _FWHM_PEAKS)
    cent = out1[:, 6] == kern.OK
    ok1 = cent & np.isfinite(out1[:, 3]) & (out1[:, 4] < _MAX_ROUNDNESS)
    if ok1.sum() >= 3 and ok1.sum() >= 0.5 * cent.sum():
        return float(np.median(out1[ok1, 3])), float(np.percentile(out1[ok1, 3], 25))
    return None


def _dedupe(res: np.ndarray, radius: float) -> np.ndarray:
    """Drop rows whose centroid lies within ``radius`` of a brighter row's (rows sorted by
    flux, brightest first)."""
    if res.shape[0] < 2:
        return res
    i, j, _ = pairs_within(res[:, :2], res[:, :2], radius)
    later = j > i  # each pair once, and no row with itself
    if not later.any():
        return res
    drop = np.zeros(res.shape[0], dtype=bool)
    drop[j[later]] = True  # the later (fainter) row of each pair
    return res[~drop]


# What detect_stars holds besides the frame, term by term (bytes), for
# detection_working_bytes. Measured as the peak RSS growth of one call (after a warm-up
# call, /proc/self/clear_refs reset): 2.7 MiB at 1000×1500, 3.8–5.2 MiB at 1200×1600 (run
# to run: glibc's heap), 9.1 MiB at 2000×3000 and 34 MiB at 4000×6000 (synthetic frames,
# float32 or uint16, with or without NaN regions): 1.5–1.9 bytes per pixel, of which the
# binned view is 1. The bound below gives 4.9, 5.9, 15.4 and 57 MiB: its candidate term
# assumes that a frame has as many good stars as it may have candidates, ~8× what the
# synthetic frames have.
_WORK_FIXED = 1 << 20  # Python objects, small kernel buffers, the measuring table of one chunk
_WORK_NOISE = 8 * _NOISE_SAMPLES * 11 // 10  # the smoothed noise's samples, float64 (a few % over)
_WORK_PER_AXIS_PX = 40  # interpolation weights per row and column, pixels and bins (int64 + float64)
_WORK_PER_TABLE_VALUE = 24  # background + noise per mesh row × (pixel + bin) column, float64
_WORK_PER_CANDIDATE = 328  # its pixel, value and threshold ratio (24), a good star's 9 columns
# and their sorted copies and k-d tree for deduplication (~300)
# the repaired pixels' index and value (16 bytes each), for up to 1 % of the pixels (the
# synthetic 6 Mpx frames, with hot pixels and cosmic rays: 0.012 %; beyond 1 % the list
# still grows, at 16 bytes a pixel)
_WORK_PER_REPAIR = 16
_REPAIRED_FRACTION = 0.01


def detection_working_bytes(shape: tuple[int, ...], dtype=np.float32) -> int:
    """An upper bound of the memory :func:`detect_stars` needs besides the frame (bytes).

    Use it to size how many frames may be detected at once within a memory limit. It is
    about 1.6 bytes per pixel (the 2×2-binned view, float32: 1 byte per pixel; background
    tables and the candidate cap: ~0.6) — not copies of the frame, which detection never
    makes, except a float32 copy (4 bytes per pixel) for a dtype it does not read natively
    (big-endian data, float16, ...; see :func:`native_frame`) or a non-contiguous array.

    Parameters
    ----------
    shape : (H, W) or (H, W, C)
        The luminance frame's shape (a colour frame's luminance is H × W).
    dtype : numpy dtype
        The luminance's dtype.

    Returns
    -------
    int
        Bytes.
    """
    h, w = int(shape[0]), int(shape[1])
    conversion = 0 if _reads_natively(np.dtype(dtype)) else 4 * h * w
    ny = max(2, int(round(h / _MESH_CELL)))
    tables = _WORK_PER_TABLE_VALUE * ny * w  # w pixel columns + w/2 bin columns, two meshes
    halo = (_binned_kernel(_MAX_WINDOW_FWHM / _FWHM_PER_SIGMA).size - 1) // 2 + 1
    binned = (h // 2) * (w // 2) * 4  # float32
    strip = min(_STRIP_BINS + 2 * halo, h // 2 + 1) * (w // 2) * 4  # smoothed, float32
    candidates = _WORK_PER_CANDIDATE * _max_candidates((h, w))
    repairs = _WORK_PER_REPAIR * _REPAIRED_FRACTION * h * w
    return int(conversion + _WORK_FIXED + _WORK_NOISE + _WORK_PER_AXIS_PX * (h + w) + tables + binned + strip
               + candidates + repairs)
