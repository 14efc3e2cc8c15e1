"""Cosmetic correction: find hot and cold pixels, and repair them before demosaicing.

Defects are fixed sensor pixels, so they are found once, in the masters:

* **hot** (and stuck-low) pixels in the master dark: its thermal signal (dark − bias when
  the dark holds the bias) minus a 5×5 median of its neighbourhood, beyond ``hot_sigma``
  (``cold_sigma`` below) robust standard deviations of that residual. The local median
  keeps amplifier glow and other smooth dark structure from being flagged.
* **cold** (dead or weak) pixels in the master flat: a response below half of the
  neighbourhood's (5×5 median of the flat normalised per CFA colour). Dividing by so
  small a flat value would only amplify noise, so such pixels are interpolated instead.

A pixel is repaired with the median of its nearest neighbours **of the same CFA colour**
(for R and B sites the eight at distance 2; for G sites the four diagonal ones and the
four at distance 2 along rows and columns; for mono data the eight adjacent pixels),
leaving out neighbours that are themselves defects, outside the frame or not finite. This
is Siril's "cosmetic correction" idea: interpolating across colours would paint a red
photosite with green light.

Without a dark, hot pixels are not looked for in the lights: in a one-shot-colour camera a
star core spans a few photosites of a colour, and a same-colour neighbourhood test would
take undersampled stars for hot pixels. The stack's rejection removes hot pixels that
move relative to the sky (dithering or drift) instead.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy.ndimage import median_filter

from ..io.bayer import normalize_pattern

log = logging.getLogger("skystack")

# 5×5: at least two same-colour neighbours each way on a Bayer mosaic.
_LOCAL = 5
_HALF = _LOCAL // 2
# Strips of rows processed at a time when measuring masters (plus the filter margin).
_STRIP = 256
# More flagged pixels than this fraction means the thresholds are wrong for this sensor,
# not that half of it is broken: keep the strongest, say so.
MAX_DEFECT_FRACTION = 0.005
# A flat pixel below this fraction of its neighbourhood is "dead" (interpolated).
COLD_FLAT_RATIO = 0.5

# Same-colour neighbour offsets (dy, dx).
_RING2 = [(-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2)]
_GREEN = [(-1, -1), (-1, 1), (1, -1), (1, 1), (-2, 0), (2, 0), (0, -2), (0, 2)]
_MONO = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _strips(h: int):
    for y0 in range(0, h, _STRIP):
        y1 = min(h, y0 + _STRIP)
        ya, yb = max(0, y0 - _HALF), min(h, y1 + _HALF)
        yield y0, y1, ya, yb


def _residual(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel − local median, local median) of a block."""
    clean = np.where(np.isfinite(block), block, np.nanmedian(block) if np.isfinite(block).any() else 0.0)
    local = median_filter(clean, size=_LOCAL, mode="nearest")
    return clean - local, local


def _robust_sigma(v: np.ndarray) -> float:
    if v.size == 0:
        return 0.0
    med = float(np.median(v))
    sigma = 1.4826 * float(np.median(np.abs(v - med)))
    if sigma <= 0:  # quantised, very quiet data: fall back to the spread of the middle 90 %
        lo, hi = np.percentile(v, [5.0, 95.0])
        sigma = float(hi - lo) / 3.29
    return sigma


def _noise_model(level: np.ndarray, res: np.ndarray, bins: int = 16) -> tuple[float, float]:
    """``(a, b)`` of ``σ² = a + b·level``: the residual noise of a dark grows with its
    thermal signal (shot noise), so amplifier glow must not read as a field of hot pixels.
    Fitted on robust σ in bins of the local level."""
    # the variance has a floor: a dark with no noise left after the bias (a bias given as
    # the dark, or a synthetic master) must give z = 0 for a zero residual, not 0/0
    floor = 1e-12
    ok = np.isfinite(level) & np.isfinite(res)
    level, res = level[ok], res[ok]
    if res.size == 0:
        return floor, 0.0
    edges = np.unique(np.percentile(level, np.linspace(0, 100, bins + 1)))
    xs, vs = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (level >= lo) & (level <= hi)
        if sel.sum() >= 50:
            xs.append(float(np.median(level[sel])))
            vs.append(_robust_sigma(res[sel]) ** 2)
    if len(xs) < 2:
        return max(_robust_sigma(res) ** 2, floor), 0.0
    x, v = np.array(xs), np.array(vs)
    # robust line through the bins: most pixels sit at the lowest levels, so anchor a there
    b = max(float(np.polyfit(x, v, 1)[0]), 0.0)
    a = max(float(np.median(v - b * x)), floor)
    return a, b


def find_defects(*, dark=None, bias=None, flat=None, hot_sigma: float = 5.0,
                 cold_sigma: float = 5.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Locate hot and cold pixels in the masters.

    Parameters
    ----------
    dark, bias, flat : Master, optional
        The masters to look in (see the module docstring); the bias only serves to take
        the offset out of a dark that holds it.
    hot_sigma, cold_sigma : float
        Thresholds in robust σ of the dark's local residual.

    Returns
    -------
    defects : (n, 2) int32 array
        ``(y, x)`` of every defect, sorted by row then column.
    info : dict
        Counts (``hot``, ``cold_dark``, ``cold_flat``), the dark's residual σ, and whether
        the list was capped.
    """
    found: dict[tuple[int, int], float] = {}
    info: dict[str, Any] = {"hot": 0, "cold_dark": 0, "cold_flat": 0, "capped": False}
    shape = None
    if dark is not None:
        shape = dark.shape
        dsrc = dark.open()
        bsrc = bias.open() if (bias is not None and dark.includes_offset and bias.shape == dark.shape) else None
        try:
            def thermal(ya: int, yb: int) -> np.ndarray:
                d = np.asarray(dsrc.read_rows(0, ya, yb), dtype=np.float32)
                if bsrc is not None:
                    d = d - np.asarray(bsrc.read_rows(0, ya, yb), dtype=np.float32)
                return d

            h = dark.shape[0]
            levels, samples = [], []
            for y0, y1, ya, yb in _strips(h):
                res, local = _residual(thermal(ya, yb))
                levels.append(local[y0 - ya:y1 - ya:3, ::3].ravel())
                samples.append(res[y0 - ya:y1 - ya:3, ::3].ravel())
            a, b = _noise_model(np.concatenate(levels), np.concatenate(samples))
            info["dark_noise_model"] = {"var0": a, "var_per_adu": b}
            info["dark_residual_sigma"] = math.sqrt(a)
            for y0, y1, ya, yb in _strips(h):
                res, local = _residual(thermal(ya, yb))
                res, local = res[y0 - ya:y1 - ya], local[y0 - ya:y1 - ya]
                sigma = np.sqrt(a + b * np.maximum(local, 0.0))
                z = res / sigma
                for sign, thr, name in ((1.0, hot_sigma, "hot"), (-1.0, cold_sigma, "cold_dark")):
                    ys, xs = np.nonzero(sign * z > thr)
                    info[name] += int(ys.size)
                    for y, x, v in zip(ys + y0, xs, np.abs(z[ys, xs])):
                        found[(int(y), int(x))] = max(found.get((int(y), int(x)), 0.0), float(v))
        finally:
            dsrc.close()
            if bsrc is not None:
                bsrc.close()
    if flat is not None:
        shape = shape or flat.shape
        fsrc = flat.open()
        cells = np.asarray(flat.cell_means, dtype=np.float32).reshape(2, 2)
        try:
            for y0, y1, ya, yb in _strips(flat.shape[0]):
                f = np.asarray(fsrc.read_rows(0, ya, yb), dtype=np.float32)
                for r in range(2):
                    for c in range(2):
                        f[(ya + r) % 2::2, c::2] /= cells[r, c]
                clean = np.where(np.isfinite(f), f, 0.0)
                local = median_filter(clean, size=_LOCAL, mode="nearest")
                with np.errstate(invalid="ignore", divide="ignore"):
                    bad = ~np.isfinite(f) | (f <= 0) | (f < COLD_FLAT_RATIO * local)
                bad = bad[y0 - ya:y1 - ya]
                ys, xs = np.nonzero(bad)
                info["cold_flat"] += int(ys.size)
                for y, x in zip(ys + y0, xs):
                    # weak response: ranked after every dark defect only if capping is needed
                    found.setdefault((int(y), int(x)), np.inf)
        finally:
            fsrc.close()
    if not found:
        return np.empty((0, 2), dtype=np.int32), info
    keys = list(found)
    if shape is not None:
        cap = max(1, int(MAX_DEFECT_FRACTION * shape[0] * shape[1]))
        if len(keys) > cap:
            keys.sort(key=lambda k: -found[k])
            log.warning("cosmetic correction: %d defective pixels found, more than %.1f%% of the sensor; "
                        "repairing the %d strongest (raise --hot-sigma to be stricter)",
                        len(keys), 100 * MAX_DEFECT_FRACTION, cap)
            keys = keys[:cap]
            info["capped"] = True
    arr = np.array(sorted(keys), dtype=np.int32).reshape(-1, 2)
    info["total"] = int(arr.shape[0])
    return arr, info


def neighbour_offsets(colour: str | None) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` of the same-colour neighbours used to repair a pixel of
    ``colour`` ("R", "G", "B", or None for mono)."""
    if colour is None:
        return _MONO
    return _GREEN if colour == "G" else _RING2


def fix_defects(plane: np.ndarray, ys: np.ndarray, xs: np.ndarray, pattern: str | None) -> int:
    """Replace defects in ``plane`` (in place) by the median of their same-colour neighbours.

    Parameters
    ----------
    plane : (h, W) float32 array
        A CFA or mono plane (or a strip of one).
    ys, xs : int arrays
        Defect coordinates within ``plane``.
    pattern : str or None
        CFA pattern of ``plane[0:2, 0:2]`` (for a strip: the pattern at its first row).

    Returns
    -------
    int
        Pixels repaired (a defect with no usable neighbour becomes NaN, "no data").
    """
    if len(ys) == 0:
        return 0
    h, w = plane.shape
    ys = np.asarray(ys, dtype=np.int64)
    xs = np.asarray(xs, dtype=np.int64)
    bad = np.zeros((h, w), dtype=bool)
    bad[ys, xs] = True
    p = normalize_pattern(pattern)
    new = np.empty(len(ys), dtype=np.float32)
    groups: dict[str | None, np.ndarray] = {}
    if p is None:
        groups[None] = np.ones(len(ys), dtype=bool)
    else:
        site = np.array([p[2 * r + c] for r in range(2) for c in range(2)])[2 * (ys % 2) + (xs % 2)]
        for colour in ("R", "G", "B"):
            groups[colour] = site == colour
    for colour, sel in groups.items():
        if not sel.any():
            continue
        off = np.array(neighbour_offsets(colour), dtype=np.int64)
        yy = ys[sel, None] + off[None, :, 0]
        xx = xs[sel, None] + off[None, :, 1]
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        yc, xc = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
        vals = plane[yc, xc].astype(np.float32)
        ok = inside & ~bad[yc, xc] & np.isfinite(vals)
        vals[~ok] = np.inf  # sorted last
        vals.sort(axis=1)
        n = ok.sum(axis=1)
        lo = np.take_along_axis(vals, np.maximum((n - 1) // 2, 0)[:, None], axis=1)[:, 0]
        hi = np.take_along_axis(vals, np.minimum(n // 2, vals.shape[1] - 1)[:, None], axis=1)[:, 0]
        with np.errstate(invalid="ignore", over="ignore"):
            med = np.where(n > 0, 0.5 * (lo + hi), np.nan)
        new[sel] = med
    plane[ys, xs] = new
    return int(np.count_nonzero(np.isfinite(new)))
