"""Per-frame and per-region sharpness for lucky imaging.

The measure: the **energy of a Laplacian of Gaussian** (σ = 0.7 view pixel, 1.4 frame
pixels) of a 2× area-downsampled view, ``E = mean((∇²(G_σ * v))²)``, taken in cells of
16×16 view pixels (32×32 frame pixels) that stay on the same places of the object in every
frame (:func:`measure_view` moves them by the frame's coarse displacement).

* *LoG energy* rather than gradient energy: seeing blur takes the mid spatial frequencies
  first, and a LoG is a band-pass centred there, while a gradient weights the coarse
  scales that seeing barely touches. Measured on the shared lunar benchmark videos (1000
  frames, 640×480, ``benchmarks/lucky.py``, seed 1): Spearman ρ against the true seeing
  0.85 for skystack 0.1's normalised gradient energy, 0.96 for the LoG energy of the whole
  view, 0.97–0.98 for the per-cell form below (0.99 on the planet videos).
* *2× area-downsampled view*: averaging 2×2 halves the pixel noise (for a CFA mosaic it is
  the super-pixel luminance, no demosaicing needed) and makes every step four times
  cheaper. A finer LoG (σ = 0.5 view pixel) ranks the noise (ρ 0.35); σ = 0.7 and 1.0
  rank alike, and 0.7 tells regions apart better (per-point selection).
* *Per cell, relative to the same cell in the other frames* (:func:`fit_cells`,
  :func:`global_quality`): a frame's quality is a weighted mean over the cells of
  ``log E − median log E`` (the median over frames), so a region counts by how well it
  follows the seeing, not by its contrast (a bright crater rim would otherwise outweigh
  the maria; a planet's sky, where ``E`` is noise, gets no weight), minus ``2 log g``
  where ``g`` is the frame's brightness relative to the others (thin cloud scales ``E`` by
  ``g²``; an additive offset is not corrected). What is left of each cell, smoothed, is
  the *local* quality of each region (:mod:`skystack.pipeline.lucky.points`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# below this span (in the frame's own units) a frame is treated as blank: an all-black or
# constant frame from a dropped capture; 8-bit noise alone is larger
BLANK_SPAN = 1e-3
LOG_SIGMA = 0.7  # view pixels (1.4 frame pixels on the default 2x view)
CELL = 16  # view pixels per cell side
_MAX_CELLS = 640  # bigger frames get bigger cells: the per-frame table stays small
_TINY = 1e-12


def gaussian_ksize(sigma: float) -> int:
    """Odd kernel side truncating a Gaussian at 2.5 sigma (OpenCV's default for float
    images is 4 sigma: twice the work for weights below 0.05 % of the peak)."""
    return 2 * int(math.ceil(2.5 * sigma)) + 1


def sharpness_view(lum: np.ndarray, *, downsample: int = 2) -> np.ndarray:
    """The float32 view sharpness is measured on: ``downsample``× area-averaged."""
    img = lum if lum.dtype == np.float32 else lum.astype(np.float32)
    if downsample > 1:
        h, w = img.shape[:2]
        img = cv2.resize(img, (max(1, w // downsample), max(1, h // downsample)), interpolation=cv2.INTER_AREA)
    return img


def log_energy_map(view: np.ndarray, sigma: float = LOG_SIGMA) -> np.ndarray:
    """``(∇²(G_σ * view))²``, float32, the same shape as ``view``."""
    k = gaussian_ksize(sigma)
    b = cv2.GaussianBlur(view, (k, k), sigma, borderType=cv2.BORDER_REFLECT)
    lap = cv2.Laplacian(b, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
    return cv2.multiply(lap, lap)


@dataclass(frozen=True)
class CellGrid:
    """Square cells of ``size`` view pixels: ``ny × nx`` of them tile the top-left of the
    first frame's view, and stay on the same places of the object in every other frame
    (each frame is measured with its displacement, see :func:`measure_view`)."""

    size: int
    ny: int
    nx: int

    def origins(self) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corners ``(x0, y0)`` of the cells, row-major, in view pixels."""
        yy, xx = np.mgrid[0:self.ny, 0:self.nx]
        return (xx.ravel() * self.size).astype(np.intp), (yy.ravel() * self.size).astype(np.intp)


def cell_grid(view_shape: tuple[int, ...], *, size: int = CELL) -> CellGrid:
    """Cells of ``size`` view pixels, grown for big views so that there are at most
    :data:`_MAX_CELLS` of them (at least one)."""
    h, w = view_shape[:2]
    s = max(1, min(int(size), h, w))
    while (h // s) * (w // s) > _MAX_CELLS:
        s += size // 2 or 1
    return CellGrid(s, max(1, h // s), max(1, w // s))


@dataclass(frozen=True)
class ViewSharpness:
    """One frame's measurements: ``log_energy`` (ny, nx) log of the cells' LoG energy and
    ``log_level`` (ny, nx) log of their mean level (NaN for a cell less than half inside
    the frame), the frame's ``peak`` and whether it is ``blank``."""

    log_energy: np.ndarray
    log_level: np.ndarray
    peak: float
    blank: bool


def _overlap(start: int, size: int, count: int, n: int) -> np.ndarray:
    """Pixels of ``[0, n)`` inside each of ``count`` cells of ``size`` from ``start``."""
    a = start + size * np.arange(count)
    return np.clip(np.minimum(a + size, n) - np.maximum(a, 0), 0, size)


def _cell_sums(img: np.ndarray, x0: int, y0: int, grid: CellGrid) -> np.ndarray:
    """``(ny, nx)`` sums of ``img`` over the cells whose top-left corner is ``(x0, y0)``
    (parts outside the image count 0): the block means of an exact integer area
    resize, on the image padded with zeros where cells leave it (two OpenCV calls; a
    64-bit integral image cost 60 µs more per 320×240 view)."""
    s, ny, nx = grid.size, grid.ny, grid.nx
    h, w = img.shape
    xa, ya = min(max(x0, 0), w), min(max(y0, 0), h)
    xb, yb = max(min(x0 + nx * s, w), xa), max(min(y0 + ny * s, h), ya)
    crop = img[ya:yb, xa:xb]
    top, left = ya - y0, xa - x0
    bottom, right = ny * s - top - (yb - ya), nx * s - left - (xb - xa)
    if crop.size == 0:
        return np.zeros((ny, nx), np.float64)
    if top or left or bottom or right:
        crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    means = cv2.resize(crop, (nx, ny), interpolation=cv2.INTER_AREA) if s > 1 else crop
    return means.reshape(ny, nx).astype(np.float64) * (s * s)


def measure_view(view: np.ndarray, grid: CellGrid, offset: tuple[float, float] = (0.0, 0.0)) -> ViewSharpness:
    """Cell energies and levels of a :func:`sharpness_view`, the cells moved by
    ``offset`` (view pixels, rounded: where the first frame's cells lie in this one)."""
    lo, hi = cv2.minMaxLoc(view)[:2]
    shape = (grid.ny, grid.nx)
    if hi - lo < BLANK_SPAN:
        z = np.zeros(shape, np.float32)
        return ViewSharpness(z, z, float(hi), True)
    x0, y0 = int(round(offset[0])), int(round(offset[1]))
    area = np.outer(_overlap(y0, grid.size, grid.ny, view.shape[0]),
                    _overlap(x0, grid.size, grid.nx, view.shape[1])).astype(np.float64)
    e = _cell_sums(log_energy_map(view), x0, y0, grid) / np.maximum(area, 1)
    lev = _cell_sums(view, x0, y0, grid) / np.maximum(area, 1)
    inside = area >= grid.size * grid.size / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        le = np.where(inside, np.log(np.maximum(e, _TINY)), np.nan)
        ll = np.where(inside, np.log(np.maximum(lev, BLANK_SPAN)), np.nan)
    return ViewSharpness(le.reshape(shape).astype(np.float32), ll.reshape(shape).astype(np.float32), float(hi),
                         False)


def nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` (the same values), NaN for an all-NaN slice without a warning.

    One sort along ``axis`` (NaN sorts last) and the middle of each slice's finite
    values: 5-8 times faster than NumPy's, which partitions every slice on its own
    (60 ms of the serial part of a 1000-frame lucky run).
    """
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return np.median(a, axis=axis)
    s = np.sort(a, axis=axis)
    n = (~np.isnan(a)).sum(axis=axis, keepdims=True)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0), axis)
    hi = np.take_along_axis(s, n // 2, axis)
    # the mean of the two middle values, computed as np.median does (float16 in float32)
    with np.errstate(invalid="ignore"):
        m = np.mean(np.concatenate([lo, hi], axis=axis), axis=axis, keepdims=True)
    return np.squeeze(np.where(n > 0, m, np.nan).astype(m.dtype), axis=axis)


@dataclass(frozen=True)
class CellModel:
    """How each cell follows the frames' quality, fitted on a sample of frames: the
    per-cell medians of the log energy and log level, each cell's ``loading`` (how much
    its log energy moves per unit of quality) and the ``weight`` it gets in the quality
    (loading over residual variance; 0 for cells that do not follow the seeing, such as
    empty sky)."""

    median: np.ndarray
    level: np.ndarray
    loading: np.ndarray
    weight: np.ndarray


def _weighted(rel: np.ndarray, weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight, rel.dtype)
    ok = np.isfinite(rel)
    den = np.where(ok, weight, 0.0).sum(axis=1)
    num = np.where(ok, rel * weight, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _log_gain(log_level: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Each frame's brightness relative to the others: the median ratio over the cells at
    least a fifth as bright as the brightest (log)."""
    top = np.nanmax(level) if np.isfinite(level).any() else 0.0
    lit = np.isfinite(level) & (level > top + math.log(0.2))
    if not lit.any():
        return np.zeros(log_level.shape[0])
    g = nanmedian(log_level[:, lit] - level[lit], 1)
    return np.where(np.isfinite(g), g, 0.0)


def fit_cells(log_energy: np.ndarray, log_level: np.ndarray, *, iterations: int = 2) -> CellModel:
    """Fit the one-factor model ``log E[f, c] = median[c] + loading[c] · q[f] + noise``.

    ``q`` starts as the plain mean over cells of ``log E − median``; each iteration
    regresses every cell on ``q`` and recomputes ``q`` as the mean weighted by loading over
    residual variance (the best linear estimate of a common factor), so cells that do not
    follow the seeing (sky, where the energy is noise) drop out, and strongly responding
    ones (a planet's limb and belts) count more. Measured Spearman ρ of ``q`` against the
    true seeing on the shared benchmark videos: Moon 0.976, planet 0.986 (plain mean:
    0.975, 0.968).
    """
    log_energy = np.asarray(log_energy, np.float32)  # float32 temporaries: half the memory
    med = nanmedian(log_energy, 0)
    level = nanmedian(log_level, 0)
    rel = log_energy - med - np.float32(2.0) * _log_gain(log_level, level).astype(np.float32)[:, None]
    k = rel.shape[1]
    weight = np.ones(k)
    loading = np.ones(k)
    q = _weighted(rel, weight)
    for _ in range(iterations):
        ok = np.isfinite(rel) & np.isfinite(q)[:, None]
        qc = np.where(ok, (q - np.nanmean(q)).astype(np.float32)[:, None], np.float32(0))
        r = np.where(ok, rel, np.float32(0))
        n = np.maximum(ok.sum(axis=0), 1)
        rc = r - np.where(ok, (r.sum(axis=0) / n).astype(np.float32), np.float32(0))
        var_q = (qc * qc).sum(axis=0) / n
        loading = np.where(var_q > 0, (rc * qc).sum(axis=0) / n / np.maximum(var_q, _TINY), 0.0)
        res = np.where(ok, rc - loading.astype(np.float32) * qc, np.float32(0))
        res_var = (res * res).sum(axis=0) / n
        fitted = np.where(ok.sum(axis=0) >= 3, np.clip(loading, 0.0, None) / np.maximum(res_var, 1e-6), 0.0)
        if not (fitted > 0).any():
            # fewer than three frames, or no cell that follows the seeing: the regression has
            # nothing to go on and the plain mean stands (a zero weight everywhere made every
            # frame's quality NaN: a one-frame video stacked to an all-zero image)
            break
        weight = fitted
        q = _weighted(rel, weight)
    return CellModel(med, level, loading, weight)


@dataclass(frozen=True)
class GlobalQuality:
    """Frame qualities: ``quality`` (n_frames,) the weighted mean of the cells'
    ``log E − median`` (brightness-corrected; NaN for a frame with no weighted cell),
    ``log_gain`` (n_frames,) the brightness correction ``log g`` and ``residual``
    (n_frames, n_cells) what is left of each cell after its loading times the frame's
    quality is removed (the local part, plus noise)."""

    quality: np.ndarray
    log_gain: np.ndarray
    residual: np.ndarray


def global_quality(log_energy: np.ndarray, log_level: np.ndarray, model: CellModel | None = None) -> GlobalQuality:
    """Frame qualities from cell measurements taken at fixed places on the object.

    Parameters
    ----------
    log_energy, log_level
        ``(n_frames, n_cells)``: each frame's log cell energy and log cell level, at the
        same object positions in every frame (NaN where a cell left the frame).
    model
        :func:`fit_cells` of these or of a sample of the video they belong to (a long
        video is scored in chunks); default: fitted on these frames.
    """
    m = model if model is not None else fit_cells(log_energy, log_level)
    g = _log_gain(log_level, m.level)
    rel = log_energy - m.median - 2.0 * g[:, None]
    q = _weighted(rel, m.weight)
    return GlobalQuality(q, g, rel - m.loading * q[:, None])


def sample_cells(maps: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of per-frame cell maps at the same points in every frame.

    Parameters
    ----------
    maps
        ``(m, ny, nx)`` one map per frame.
    points
        ``(k, 2)`` positions ``(x, y)`` in cell units (cell centres at whole numbers).

    Returns
    -------
    ndarray
        ``(m, k)`` float32; a point within half a cell of the grid takes the edge cell's
        value, one further out is NaN (as is a sample touching a NaN cell).
    """
    m, ny, nx = maps.shape
    p = np.asarray(points, np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    x = np.clip(x, 0.0, nx - 1.0)
    y = np.clip(y, 0.0, ny - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.intp), max(nx - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.intp), max(ny - 2, 0))
    x1 = np.minimum(x0 + 1, nx - 1)
    y1 = np.minimum(y0 + 1, ny - 1)
    tx, ty = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    a = maps.astype(np.float32, copy=False)
    v = ((a[:, y0, x0] * (1 - tx) + a[:, y0, x1] * tx) * (1 - ty)
         + (a[:, y1, x0] * (1 - tx) + a[:, y1, x1] * tx) * ty)
    return np.where(inside, v, np.float32(np.nan)).astype(np.float32)


def local_quality(lum: np.ndarray, centres: np.ndarray, size: int, *, downsample: int = 2) -> np.ndarray:
    """Log LoG energy in square boxes of a luminance frame (the local sharpness a region
    has in this frame, comparable with the same region in other frames).

    Parameters
    ----------
    lum
        ``(H, W)`` luminance.
    centres
        ``(n, 2)`` box centres ``(x, y)`` in frame pixels.
    size
        Box side in frame pixels; boxes are clipped to the frame.

    Returns
    -------
    ndarray
        ``(n,)`` float64, NaN for a box entirely outside the frame.
    """
    view = sharpness_view(lum, downsample=downsample)
    ii = cv2.integral(log_energy_map(view), sdepth=cv2.CV_64F)
    h, w = view.shape
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2) / downsample
    half = size / (2.0 * downsample)
    x0 = np.clip(np.round(c[:, 0] - half).astype(int), 0, w)
    x1 = np.clip(np.round(c[:, 0] + half).astype(int), 0, w)
    y0 = np.clip(np.round(c[:, 1] - half).astype(int), 0, h)
    y1 = np.clip(np.round(c[:, 1] + half).astype(int), 0, h)
    area = (x1 - x0) * (y1 - y0)
    s = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, np.log(s / np.maximum(area, 1) + _TINY), np.nan)


def gradient_energy_map(view: np.ndarray) -> np.ndarray:
    """``gx² + gy²`` of a view (Sobel 3×3, scaled to unit gain per pixel step): where
    alignment points find structure to correlate on."""
    gx = cv2.Sobel(view, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(view, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    return cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy))
