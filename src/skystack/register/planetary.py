"""Global (whole-frame) alignment for lucky imaging: planetary disks and lunar/solar surfaces.

Two ways to find where a frame sits:

* **planet**: the disk's centroid (threshold, largest blob, intensity-weighted moments) is a
  cheap, absolute, coarse position; it needs no reference and survives large jumps.
* **surface** (Moon, Sun, any frame filled with detail): phase correlation.

Both are refined by subpixel phase correlation against a reference built from the best
frames (:class:`GlobalAligner`).

Shift convention (used throughout the lucky pipeline): the displacement ``s = (sx, sy)`` of a
frame says that the detail at reference pixel ``p`` sits at frame pixel ``p + s``, so
``frame(p + s) ≈ reference(p)``. The corresponding :class:`~skystack.types.Transform`
(frame → reference coordinates) is a translation by ``-s``.

Phase correlation here whitens the cross-power spectrum and then multiplies it by a
Gaussian taper, so the correlation peak is a Gaussian of known width instead of a
noise-dominated delta; a three-point fit of a Gaussian to that peak is then unbiased to a
few hundredths of a pixel (the taper also discards the frequencies where seeing left only
noise). OpenCV's ``phaseCorrelate`` cannot reuse the reference spectrum nor batch many
small patches, which multi-point alignment needs, so it is written here on ``scipy.fft``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

from . import fft

Mode = Literal["planet", "surface"]

# pixels of patches correlated at once (about 2 MB of float32 per temporary)
_BLOCK_PIXELS = 1 << 19


# -- phase correlation ----------------------------------------------------------------------

@lru_cache(maxsize=32)
def _window(shape: tuple[int, int], kind: str) -> np.ndarray:
    h, w = shape

    def tukey(n: int, alpha: float) -> np.ndarray:
        if n < 3:
            return np.ones(n)
        x = np.linspace(0.0, 1.0, n)
        win = np.ones(n)
        edge = alpha / 2.0
        lo = x < edge
        hi = x > 1.0 - edge
        win[lo] = 0.5 * (1 + np.cos(np.pi * (x[lo] / edge - 1.0)))
        win[hi] = 0.5 * (1 + np.cos(np.pi * ((x[hi] - 1.0) / edge + 1.0)))
        return win

    if kind == "hann":
        wy, wx = np.hanning(h), np.hanning(w)
    elif kind == "tukey":
        wy, wx = tukey(h, 0.4), tukey(w, 0.4)
    else:
        raise ValueError(f"unknown window {kind!r}")
    win = np.outer(wy, wx).astype(np.float32)
    win.setflags(write=False)
    return win


@lru_cache(maxsize=32)
def _taper(shape: tuple[int, int], sigma: float) -> tuple[np.ndarray, float]:
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    g = np.exp(-2.0 * math.pi ** 2 * sigma ** 2 * (fx * fx + fy * fy)).astype(np.float32)
    # the peak a perfect match gives: the taper's own inverse transform at the origin
    ideal = float(fft.irfft2(g.astype(np.complex64), (h, w))[0, 0])
    g.setflags(write=False)
    return g, ideal


def _prepare(stack: np.ndarray, window: np.ndarray) -> np.ndarray:
    a = stack.astype(np.float32, copy=False)
    a = a - a.mean(axis=(-2, -1), keepdims=True, dtype=np.float32)
    return a * window


def _subpixel(c: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Three-point Gaussian (log-parabola) fit around integer peaks of a batch of
    circular correlation surfaces ``c`` (n, h, w); falls back to a parabola where a
    neighbour is not positive."""
    n, h, w = c.shape
    if n == 1:  # one surface (whole frames): plain floats, a tenth of the NumPy overhead
        y, x = int(iy[0]), int(ix[0])
        z = float(c[0, y, x])
        fx = _fit1(float(c[0, y, (x - 1) % w]), z, float(c[0, y, (x + 1) % w]))
        fy = _fit1(float(c[0, (y - 1) % h, x]), z, float(c[0, (y + 1) % h, x]))
        return np.array([fx]), np.array([fy])
    k = np.arange(n)
    c0 = c[k, iy, ix]
    cxm, cxp = c[k, iy, (ix - 1) % w], c[k, iy, (ix + 1) % w]
    cym, cyp = c[k, (iy - 1) % h, ix], c[k, (iy + 1) % h, ix]

    def fit(m: np.ndarray, z: np.ndarray, p: np.ndarray) -> np.ndarray:
        ok = (m > 0) & (z > 0) & (p > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lm, lz, lp = np.log(np.where(ok, m, 1)), np.log(np.where(ok, z, 1)), np.log(np.where(ok, p, 1))
            den_g = 2.0 * (lm - 2.0 * lz + lp)
            d_g = np.where(den_g < 0, (lm - lp) / np.where(den_g < 0, den_g, -1), 0.0)
            den_p = 2.0 * (m - 2.0 * z + p)
            d_p = np.where(den_p < 0, (m - p) / np.where(den_p < 0, den_p, -1), 0.0)
        return np.clip(np.where(ok, d_g, d_p), -1.0, 1.0)

    return fit(cxm, c0, cxp), fit(cym, c0, cyp)


def _fit1(m: float, z: float, p: float) -> float:
    """:func:`_subpixel`'s fit for one peak (the same formulas on floats)."""
    if m > 0 and z > 0 and p > 0:
        lm, lz, lp = math.log(m), math.log(z), math.log(p)
        den = 2.0 * (lm - 2.0 * lz + lp)
        d = (lm - lp) / den if den < 0 else 0.0
    else:
        den = 2.0 * (m - 2.0 * z + p)
        d = (m - p) / den if den < 0 else 0.0
    return min(1.0, max(-1.0, d))


@dataclass(frozen=True)
class Shift:
    """A measured displacement ``(sx, sy)`` in pixels and the correlation ``response``
    (1 for a perfect match, about 0 for no match)."""

    sx: float
    sy: float
    response: float


class PhaseCorrelator:
    """Subpixel phase correlation of one or many same-size images against references whose
    spectra are computed once.

    Parameters
    ----------
    references
        ``(h, w)`` or ``(n, h, w)``: one reference, or one per patch (multi-point).
    peak_sigma
        Width in pixels of the Gaussian correlation peak (the taper); larger is more robust
        to noise and blur, smaller resolves nearby peaks.
    window
        ``"tukey"`` (flat centre, tapered 20 % borders; whole frames) or ``"hann"``
        (patches: weights the centre).
    """

    def __init__(self, references: np.ndarray, *, peak_sigma: float = 1.0,
                 window: Literal["tukey", "hann"] = "hann"):
        ref = np.asarray(references, dtype=np.float32)
        self.single = ref.ndim == 2
        if self.single:
            ref = ref[None]
        self.shape = (int(ref.shape[1]), int(ref.shape[2]))
        self._win = _window(self.shape, window)
        self._taper, self._ideal = _taper(self.shape, float(peak_sigma))
        spec = fft.rfft2(_prepare(ref, self._win))
        self._conj = np.conj(spec).astype(np.complex64)

    def measure_many(self, images: np.ndarray, which: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Displacements ``(n, 2)`` (sx, sy) and responses ``(n,)`` of ``images`` (n, h, w)
        against the references: one each (``which`` picks them by index, default the
        first ``n``), or the single reference for all."""
        imgs = np.asarray(images)
        if imgs.ndim == 2:
            imgs = imgs[None]
        if imgs.shape[1:] != self.shape:
            raise ValueError(f"image shape {imgs.shape[1:]} differs from the reference {self.shape}")
        n = imgs.shape[0]
        refs = self._conj if which is None or self._conj.shape[0] == 1 else self._conj[np.asarray(which)]
        if refs.shape[0] not in (1, n):
            raise ValueError(f"{n} images for {refs.shape[0]} references")
        shifts = np.empty((n, 2))
        resp = np.empty(n)
        # blocks of patches bound the temporaries (a 1280x960 frame has ~1000 APs)
        step = max(1, _BLOCK_PIXELS // (self.shape[0] * self.shape[1]))
        for a in range(0, n, step):
            b = min(n, a + step)
            conj = refs if refs.shape[0] == 1 else refs[a:b]
            shifts[a:b], resp[a:b] = self._block(imgs[a:b], conj)
        return shifts, resp

    def _block(self, imgs: np.ndarray, conj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = fft.rfft2(_prepare(imgs, self._win))
        x = np.multiply(f, conj, out=f)
        mag = np.abs(x)
        # a floor relative to the strongest term keeps empty frequencies from being
        # whitened into pure noise; one real factor (taper / |X|) is cheaper than a complex
        # division followed by a complex product
        floor = mag.max(axis=(-2, -1), keepdims=True) * np.float32(1e-6) + np.float32(1e-30)
        mag += floor
        np.divide(self._taper, mag, out=mag)
        x *= mag
        c = fft.irfft2(x, self.shape)
        n, h, w = c.shape
        flat = c.reshape(n, -1).argmax(axis=1)
        iy, ix = np.unravel_index(flat, (h, w))
        dx, dy = _subpixel(c, iy, ix)
        sx = np.where(ix > w // 2, ix - w, ix) + dx
        sy = np.where(iy > h // 2, iy - h, iy) + dy
        resp = c[np.arange(n), iy, ix] / self._ideal
        return np.stack([sx, sy], axis=1), resp

    def measure(self, image: np.ndarray) -> Shift:
        """The displacement of one image against the (single) reference."""
        s, r = self.measure_many(image[None])
        return Shift(float(s[0, 0]), float(s[0, 1]), float(r[0]))


# -- planetary disk -----------------------------------------------------------------------

@dataclass(frozen=True)
class Disk:
    """A bright blob on dark sky: intensity-weighted centroid ``(cx, cy)``, equivalent
    radius, bounding box ``(x0, y0, x1, y1)`` (exclusive ends), the fraction of the image
    it covers, and whether it touches the image border (drifted partly out of the field)."""

    cx: float
    cy: float
    radius: float
    bbox: tuple[int, int, int, int]
    area_fraction: float
    touches_edge: bool
    threshold: float


def _levels(view: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.9th percentiles of a regular subsample of at most ~16 000 pixels
    (a full-view percentile cost 1.2 ms per 320x240 view, most of a planet frame's ranking)."""
    step = max(1, int(math.ceil(math.sqrt(view.size / 16000))))
    sub = np.ascontiguousarray(view[::step, ::step]).ravel()
    n = sub.size
    lo_k, hi_k = int(0.01 * (n - 1)), int(0.999 * (n - 1))
    part = np.partition(sub, (lo_k, hi_k))
    return float(part[lo_k]), float(part[hi_k])


def disk_centroid(view: np.ndarray, *, level: float = 0.25) -> Disk | None:
    """Find the brightest blob (planet disk) of a float image.

    The threshold sits at ``level`` of the way from the sky (1st percentile) to the disk's
    bright end (99.9th percentile), low enough to include a limb-darkened edge. Only the
    largest connected blob counts, so moons and hot pixels do not pull the centroid.

    Returns ``None`` when nothing stands above the sky.
    """
    img = view.astype(np.float32, copy=False)
    lo, hi = _levels(img)
    if hi - lo <= 1e-6:
        return None
    thr = lo + level * (hi - lo)
    mask = (img > thr).astype(np.uint8)
    # Grana's block-based labelling: the same labels and statistics as OpenCV's default
    # (Spaghetti here), whose statistics pass is slow on one thread: 0.16 ms against 0.41
    # for a 320x240 view (measured, OpenCV 5.1), two thirds of a planet frame's ranking
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_GRANA)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x0, y0 = int(stats[k, cv2.CC_STAT_LEFT]), int(stats[k, cv2.CC_STAT_TOP])
    bw, bh = int(stats[k, cv2.CC_STAT_WIDTH]), int(stats[k, cv2.CC_STAT_HEIGHT])
    area = int(stats[k, cv2.CC_STAT_AREA])
    sub = img[y0:y0 + bh, x0:x0 + bw]
    wgt = np.where(labels[y0:y0 + bh, x0:x0 + bw] == k, sub - thr, 0.0).astype(np.float32)
    m = cv2.moments(wgt)
    if m["m00"] <= 0:
        return None
    cx = x0 + m["m10"] / m["m00"]
    cy = y0 + m["m01"] / m["m00"]
    h, w = img.shape
    touches = x0 <= 0 or y0 <= 0 or x0 + bw >= w or y0 + bh >= h
    return Disk(float(cx), float(cy), math.sqrt(area / math.pi), (x0, y0, x0 + bw, y0 + bh),
                area / float(h * w), bool(touches), float(thr))


def pick_mode(view: np.ndarray) -> tuple[Mode, str]:
    """Planet or surface, from one (preferably sharp) frame view, with the reason in words.

    A planet is a compact bright blob on dark sky: it covers less than a third of the frame
    and its blob leaves the frame border dark. Anything else (the Moon or the Sun filling
    the field, a limb crossing it) is a surface.
    """
    disk = disk_centroid(view)
    if disk is None:
        return "surface", "no bright object above the sky level"
    h, w = view.shape
    ring = max(2, int(0.03 * min(h, w)))
    mask = view > disk.threshold
    border = np.concatenate([mask[:ring].ravel(), mask[-ring:].ravel(),
                             mask[:, :ring].ravel(), mask[:, -ring:].ravel()])
    bright_border = float(border.mean())
    lit = float(mask.mean())
    if disk.area_fraction < 0.33 and lit < 0.4 and bright_border < 0.02:
        return "planet", (f"a compact disk (radius {disk.radius:.0f} px, {100 * disk.area_fraction:.0f}% "
                          "of the frame) on dark sky")
    return "surface", (f"{100 * lit:.0f}% of the frame is lit and {100 * bright_border:.0f}% of its "
                       "border: an extended surface")


# -- global alignment against a reference ------------------------------------------------------

def fast_len_below(n: int) -> int:
    """The largest 5-smooth length ≤ ``n`` (fast for FFTs; the lengths
    ``scipy.fft.next_fast_len(m, real=True)`` keeps)."""
    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    m = max(1, int(n))
    while not smooth(m):
        m -= 1
    return m


def crop_shifted(image: np.ndarray, roi: tuple[int, int, int, int], dx: int, dy: int) -> tuple[np.ndarray, float]:
    """``image[y0+dy:y1+dy, x0+dx:x1+dx]`` for ``roi = (y0, y1, x0, x1)``, padded with the
    mean of the part inside where it leaves the image; also returns the fraction inside."""
    y0, y1, x0, x1 = roi
    h, w = image.shape[:2]
    ya, yb, xa, xb = y0 + dy, y1 + dy, x0 + dx, x1 + dx
    if ya >= 0 and xa >= 0 and yb <= h and xb <= w:
        return image[ya:yb, xa:xb], 1.0
    iy0, iy1 = max(ya, 0), min(yb, h)
    ix0, ix1 = max(xa, 0), min(xb, w)
    out = np.empty((y1 - y0, x1 - x0) + image.shape[2:], dtype=np.float32)
    if iy1 <= iy0 or ix1 <= ix0:
        out[...] = 0.0
        return out, 0.0
    inner = image[iy0:iy1, ix0:ix1]
    out[...] = float(inner.mean())
    out[iy0 - ya:iy1 - ya, ix0 - xa:ix1 - xa] = inner
    return out, (iy1 - iy0) * (ix1 - ix0) / float(out.shape[0] * out.shape[1])


class GlobalAligner:
    """Measure each frame's displacement against a reference inside a region of interest.

    The ROI is the part of the reference that frames are compared on (the disk and some sky
    for a planet; most of the field for a surface). A frame is cropped at the ROI moved by
    its rounded coarse displacement, so large drifts cost nothing extra; the correlation
    then finds the (small) rest to subpixel precision.

    Parameters
    ----------
    reference
        ``(H, W)`` float luminance on the reference grid.
    roi
        ``(y0, y1, x0, x1)``; trimmed to FFT-friendly sizes.
    peak_sigma
        Correlation peak width in (full-resolution) pixels.
    downsample
        Correlate ``downsample``× area-averaged crops: a 640×480 field then costs a quarter
        of the FFT work, and the Gaussian-peak fit keeps the error a few hundredths of a
        pixel (the blur of real frames leaves little at the finest scale anyway).
    """

    def __init__(self, reference: np.ndarray, roi: tuple[int, int, int, int] | None = None, *,
                 peak_sigma: float = 1.0, downsample: int = 1):
        h, w = reference.shape
        y0, y1, x0, x1 = roi if roi is not None else (0, h, 0, w)
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(h, y1), min(w, x1)
        f = max(1, int(downsample))
        self.downsample = f
        fh, fw = f * fast_len_below((y1 - y0) // f), f * fast_len_below((x1 - x0) // f)
        y0 += (y1 - y0 - fh) // 2
        x0 += (x1 - x0 - fw) // 2
        self.roi = (y0, y0 + fh, x0, x0 + fw)
        self._corr = PhaseCorrelator(self._reduce(reference[y0:y0 + fh, x0:x0 + fw]),
                                     peak_sigma=peak_sigma / f, window="tukey")

    def _reduce(self, crop: np.ndarray) -> np.ndarray:
        f = self.downsample
        if f == 1:
            return crop
        h, w = crop.shape[:2]
        return cv2.resize(crop.astype(np.float32, copy=False), (w // f, h // f), interpolation=cv2.INTER_AREA)

    def measure(self, lum: np.ndarray, coarse: tuple[float, float] = (0.0, 0.0)) -> tuple[Shift, float]:
        """The displacement of ``lum`` and the fraction of the ROI that lay inside it.

        When the result lies more than half a pixel from the crop position, the frame is
        cropped again at the rounded result and measured once more: the fixed window pulls
        a correlation slightly towards zero residual (about 5 % of it), so the residual is
        kept below half a pixel.
        """
        cx, cy = int(round(coarse[0])), int(round(coarse[1]))
        s, inside = self._measure_at(lum, cx, cy)
        nx, ny = int(round(s.sx)), int(round(s.sy))
        if (nx, ny) != (cx, cy) and s.response > 0:
            again, inside2 = self._measure_at(lum, nx, ny)
            if again.response >= 0.5 * s.response:
                return again, inside2
        return s, inside

    def _measure_at(self, lum: np.ndarray, cx: int, cy: int) -> tuple[Shift, float]:
        crop, inside = crop_shifted(lum, self.roi, cx, cy)
        s = self._corr.measure(self._reduce(crop))
        f = self.downsample
        # area averaging keeps pixel centres aligned: a shift of d reduced pixels is f*d
        return Shift(f * s.sx + cx, f * s.sy + cy, s.response), inside


def shift_image(image: np.ndarray, sx: float, sy: float, *, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Resample a frame onto the reference grid: ``out(p) = image(p + s)`` (edges
    replicated; use :func:`valid_rect` for the pixels the frame really covers)."""
    h, w = image.shape[:2]
    m = np.array([[1.0, 0.0, -sx], [0.0, 1.0, -sy]])
    return cv2.warpAffine(image, m, (w, h), flags=interpolation,
                          borderMode=cv2.BORDER_REPLICATE)


def covered_only(shifted: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of a frame already on the reference grid (:func:`shift_image`) as float32,
    NaN outside ``rect`` (:func:`valid_rect`), the part the frame really covers: a preview
    shows those margins black instead of the replicated edge's streaks."""
    y0, y1, x0, x1 = rect
    out = np.full(shifted.shape, np.nan, np.float32)
    out[y0:y1, x0:x1] = shifted[y0:y1, x0:x1]
    return out


def shifted_covered(image: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """:func:`shift_image` of ``image``, NaN outside the part the frame covers
    (:func:`covered_only` of its :func:`valid_rect`)."""
    return covered_only(shift_image(image, sx, sy), valid_rect(image.shape, sx, sy))


def valid_rect(shape: tuple[int, ...], sx: float, sy: float) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: reference pixels whose source ``p + s`` lies inside a frame
    of ``shape`` (H, W[, C]), its last pixel included to within :data:`EDGE_TOL` (the
    cubic kernel's outer taps there read the replicated edge)."""
    h, w = shape[:2]
    # a source point within EDGE_TOL of the last pixel counts as inside (a frame aligned onto
    # itself, shift 1.5e-7 px from rounding in the correlation peak, lost its last row to the
    # edge fill)
    x0 = max(0, math.ceil(-sx - EDGE_TOL))
    x1 = min(w, math.floor(w - 1 - sx + EDGE_TOL) + 1)
    y0 = max(0, math.ceil(-sy - EDGE_TOL))
    y1 = min(h, math.floor(h - 1 - sy + EDGE_TOL) + 1)
    return y0, max(y0, y1), x0, max(x0, x1)


# OpenCV's warps and remaps sample at 1/32 px: a source within half a step of the frame's
# last pixel is sampled at that pixel itself, so it is inside
EDGE_TOL = 1.0 / 64
