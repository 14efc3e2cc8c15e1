"""Levels and stretches for display and final images.

The automatic stretch follows Siril's "autostretch" (a midtones transfer function whose
black point sits a few robust sigmas below the median and whose midtone brings the median
to a target brightness), because astrophotographers know what it looks like and it never
uses the min/max of raw data (one hot pixel would ruin a min-max stretch).
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def mtf(x: np.ndarray, m: float) -> np.ndarray:
    """Midtones transfer function on [0, 1]: MTF(m) = 0.5, MTF(0) = 0, MTF(1) = 1."""
    x = np.clip(x, 0.0, 1.0)
    if m == 0.5:
        return x
    # In float32 a midtone below ~1e-45 is 0 and one within 6e-8 of 1 is 1, and the formula
    # is then 0/0 at x = 0 or x = 1 (NaN pixels from --midtone 1e-300). Its limits there are
    # the curve's own end points, and rounding can carry it a hair outside [0, 1].
    m = min(max(float(m), float(np.finfo(np.float32).tiny)), 1.0 - float(np.finfo(np.float32).epsneg))
    out = ((m - 1.0) * x) / ((2.0 * m - 1.0) * x - m)
    return np.clip(out, 0.0, 1.0, out=out) if isinstance(out, np.ndarray) else min(max(out, 0.0), 1.0)


def robust_range(image: np.ndarray, lo_pct: float = 0.1, hi_pct: float = 99.9,
                 sample: int = 1_000_000) -> tuple[float, float]:
    """Percentiles of the finite values (on a regular subsample for big images)."""
    v = image[np.isfinite(image)]
    if v.size == 0:
        return 0.0, 1.0
    if v.size > sample:
        v = v[:: v.size // sample]
    lo, hi = np.percentile(v, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def levels(image: np.ndarray, black: float, white: float, midtone: float = 0.5) -> np.ndarray:
    """Map ``black``→0, ``white``→1 linearly, then apply the midtone (MTF) balance.
    NaN stays NaN."""
    scale = 1.0 / (white - black) if white != black else 1.0
    x = (image.astype(np.float32) - black) * scale
    return mtf(x, midtone).astype(np.float32)


def asinh_stretch(image: np.ndarray, black: float, white: float, beta: float = 10.0) -> np.ndarray:
    """asinh stretch (Lupton et al. 2004): keeps star colours, lifts faint signal."""
    x = np.clip((image.astype(np.float32) - black) / max(white - black, 1e-12), 0.0, 1.0)
    out = (np.arcsinh(beta * x) / np.arcsinh(beta)).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)  # float32 rounding gave 1.0000001 at x = 1 (β = 0.001)


def autostretch_params(image: np.ndarray, *, shadows_sigma: float = -2.8,
                       target_bkg: float = 0.25, sample: int = 1_000_000) -> tuple[float, float, float]:
    """Black point, white point and midtone for Siril-style autostretch.

    Computed on the luminance (mean of channels) of a subsample of about ``sample`` pixels,
    in the image's own units. The subsample is a regular grid taken as a view before
    anything else, so no full-size temporary is made (the luminance, the finite mask and
    the finite values of a whole 1920×1080 plane were 17 MB at the end of a run, on top of
    the stack).
    """
    h, w = image.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / sample)))
    grid = image[::step, ::step]
    lum = grid.mean(axis=2) if grid.ndim == 3 else grid
    v = lum[np.isfinite(lum)]
    if v.size == 0:
        return 0.0, 1.0, 0.5
    lo, hi = np.percentile(v, [0.0, 99.995])
    hi = max(float(hi), float(lo) + 1e-6)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    black = max(float(lo), med + shadows_sigma * mad)
    white = hi
    x = (med - black) / (white - black)
    # the midtone m that maps the normalised median x to target_bkg: MTF(x, m) = t
    t = target_bkg
    m = 0.5 if x <= 0 or x >= 1 else float(x * (t - 1.0) / (2.0 * x * t - t - x))
    return black, white, min(max(m, 1e-4), 0.9999)


def autostretch(image: np.ndarray, *, linked: bool = True, **kw) -> np.ndarray:
    """Stretch to [0, 1] for display. ``linked``: the same parameters on every channel (the
    image's colour balance is shown as it is); unlinked: each channel stretched on its own,
    which neutralises the sky of an unbalanced camera-RGB stack (the usual display of a
    linear colour stack, as Siril's and PixInsight's unlinked screen stretch)."""
    if image.ndim == 3 and not linked:
        return np.stack([autostretch(image[..., c], **kw) for c in range(image.shape[2])], axis=2)
    black, white, m = autostretch_params(image, **kw)
    return levels(image, black, white, m)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """[0, 1] float (NaN → 0) to uint8 for previews."""
    return _bytes(np.multiply(display, 255.0))


def _bytes(x: np.ndarray) -> np.ndarray:
    """uint8 of ``x`` (float, scaled to [0, 255]; changed in place): NaN and -inf → 0,
    beyond 255 (+inf too) → 255, rounded half to even. The values of clipping, NaN
    replacement, rounding and clipping again as new arrays, in a third of the time
    (0.96 ms instead of 2.5 for a 640×480 RGB preview)."""
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    np.fmax(x, 0.0, out=x)  # fmax takes the number where one side is NaN
    np.fmin(x, 255.0, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


_SKY_SAMPLES = 50_000


def object_levels(image: np.ndarray, mode: str) -> tuple[np.ndarray, float]:
    """Black point(s) and white span for displaying a lucky-imaging stack linearly.

    ``"planet"``: black = the sky (median of each channel away from the disk), white = the
    disk's brightest value above it, so no pixel of the disk is clipped and the belts keep
    their contrast (a deep-sky autostretch would put the sky at mid-grey and the disk at
    pure white). A surface (Moon, Sun): the 0.05th and 99.95th percentiles.

    Returns ``black`` (one value per channel) and the ``white`` span: display values are
    ``(image - black) / white``.
    """
    img = np.asarray(image, dtype=np.float32)
    planes = img[..., None] if img.ndim == 2 else img
    # the mean of the channels; for RGB summed plane by plane, the values of
    # planes.mean(axis=2) ten times faster (as skystack.io.luminance, which this module
    # cannot import: io writes through the output package, which stretches previews)
    lum = (planes[..., 0] + planes[..., 1] + planes[..., 2]) / np.float32(3) if planes.shape[2] == 3 \
        else planes.mean(axis=2)
    finite = np.isfinite(lum)
    if not finite.any():
        return np.zeros(planes.shape[2], np.float32), 1.0
    if mode == "planet":
        v = lum[finite]
        sub = v[:: max(1, v.size // 200_000)]
        lo, hi = np.percentile(sub, [1.0, 99.9])
        disk = finite & (lum > lo + 0.25 * (hi - lo))
        # the sky well away from the disk: its limb-darkened edge is not background
        k = max(3, int(0.02 * max(lum.shape)) | 1)
        near = cv2.dilate(disk.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
        sky = finite & ~near
        if sky.sum() < 16 or not disk.any():
            sky, disk = finite, finite
        # the sky's median from at most ~50 000 of its pixels, evenly spread: as good a
        # black level, and 9 ms less for a 640x480 RGB planet (three full partitions)
        at = np.flatnonzero(sky)
        at = at[:: max(1, at.size // _SKY_SAMPLES)]
        samples = np.ascontiguousarray(planes.reshape(-1, planes.shape[2])[at].T)  # a row per channel
        black = np.median(samples, axis=1).astype(np.float32)
        white = float(np.max(planes[disk] - black))
        return black, white if white > 0 else 1.0
    v = planes[np.isfinite(planes)]
    sub = v[:: max(1, v.size // 1_000_000)]
    lo, hi = np.percentile(sub, [0.05, 99.95])
    return np.full(planes.shape[2], lo, np.float32), float(hi - lo) if hi > lo else 1.0


def display_object(image: np.ndarray, mode: str, *, levels: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """``image`` as uint8 for a preview through :func:`object_levels` (its own, or
    ``levels``, the ``(black, white)`` of another image: two images shown alike)."""
    black, white = levels if levels is not None else object_levels(image, mode)
    img = np.asarray(image, dtype=np.float32)
    planes = img[..., None] if img.ndim == 2 else img
    x = planes - black[: planes.shape[2]]  # one new array, scaled in place
    x /= np.float32(white)
    x *= np.float32(255.0)
    out = _bytes(x)
    return out[..., 0] if img.ndim == 2 else out
