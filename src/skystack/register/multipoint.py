"""Multi-point (local) alignment for lucky imaging.

Seeing moves different parts of the field differently (anisoplanatism), so one global shift
per frame leaves a stack blurred wherever the local motion disagreed with the mean. As in
AutoStakkert! and PlanetarySystemStacker, the reference is covered by a grid of
**alignment points** (APs), each a box of ``ap_size`` pixels:

1. :func:`place_alignment_points` keeps only nodes whose box holds structure (gradient
   energy) on a lit part of the image: none on empty sky, none on featureless regions
   where a correlation would only follow noise.
2. Frames are selected per AP (:func:`select_per_ap`, on local qualities the lucky
   pipeline takes from :mod:`skystack.quality.metrics`), and :class:`LocalAligner`
   measures each selected AP's subpixel displacement against the reference (batched
   phase correlation of the AP boxes).
3. The AP results become smooth per-pixel fields by **bilinear interpolation between
   nodes** (:class:`NodeInterpolator`): the displacement field ``s(p)`` de-warps the frame
   (:func:`dewarp`) and the selection weight field blends it into the stack. Bilinear
   weights are tent windows of half-width ``spacing`` that sum to one, so contributions
   fade smoothly from one AP to the next and no seam can appear; nodes without an AP
   (sky, flat regions) carry the frame's global shift and global selection, and an AP
   not measured in a frame continues its measured neighbours (:func:`fill_from_neighbours`).

Displacements follow :mod:`skystack.register.planetary`: ``frame(p + s(p)) ≈ reference(p)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from ..options import LuckyOptions, default_of
from ..quality.metrics import gradient_energy_map
from .planetary import EDGE_TOL, PhaseCorrelator


@dataclass(frozen=True)
class APGrid:
    """Alignment-point lattice on the reference: node centres ``xs`` × ``ys`` (reference
    pixels), box side ``size`` and which nodes are ``active`` (hold an AP)."""

    xs: np.ndarray  # (nx,)
    ys: np.ndarray  # (ny,)
    size: int
    active: np.ndarray  # (ny, nx) bool

    @property
    def spacing(self) -> float:
        d = [float(np.diff(a).min()) for a in (self.xs, self.ys) if a.size > 1]
        return min(d) if d else float(self.size)

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    @property
    def centers(self) -> np.ndarray:
        """``(n_active, 2)`` (x, y) of the active nodes, row-major order."""
        iy, ix = np.nonzero(self.active)
        return np.column_stack([self.xs[ix], self.ys[iy]]).astype(np.float64)

    def boxes(self) -> np.ndarray:
        """``(n_active, 4)`` integer boxes ``(x0, y0, x1, y1)`` of the active APs."""
        c = np.round(self.centers - self.size / 2.0).astype(int)
        return np.column_stack([c[:, 0], c[:, 1], c[:, 0] + self.size, c[:, 1] + self.size])


def _lattice(n: int, size: int, spacing: float) -> np.ndarray:
    k = max(1, int(math.floor((n - size) / spacing)) + 1)
    span = (k - 1) * spacing
    start = (n - size - span) / 2.0 + size / 2.0
    return start + spacing * np.arange(k)


# Default AP box and node spacing (a fraction of the box): boxes overlap by two thirds, so
# every pixel is seen by about nine APs and its de-warp field and blending weights rest on
# that many measurements, each from a box big enough to correlate robustly. Measured on the
# shared benchmark videos (1000 frames 640×480, --keep 10%), box 96 at 1/3 against box 64
# at 1/2 (the same 204 APs, the same time): patchy Moon seeds 2, 6, 11, 14, 17 +0.00015 to
# +0.00046 detail, uniform-seeing Moon +0.00002, planet -0.00003 to -0.00002. Box 80 at 0.3
# gained as much (to +0.0002 more on one seed) for 35 % more time in the stacking pass.
SPACING = 1.0 / 3.0
DEFAULT_SIZE: int = default_of(LuckyOptions, "ap_size")  # the one default, --ap-size's


def place_alignment_points(reference: np.ndarray, *, ap_size: int = DEFAULT_SIZE, spacing: float | None = None,
                           min_structure: float = 0.1, sky_level: float = 0.12,
                           margin: int = 0) -> APGrid:
    """Lay an AP lattice on ``reference`` and keep the nodes worth aligning on.

    Parameters
    ----------
    reference
        ``(H, W)`` float luminance (the mean of the best frames).
    ap_size
        Box side in pixels (even; clipped to the image).
    spacing
        Node spacing; default :data:`SPACING` × ``ap_size`` (every pixel is seen by
        about nine APs).
    min_structure
        A node needs at least this fraction of the median gradient energy of the lit
        nodes (featureless boxes give correlations that follow noise).
    sky_level
        A box whose 90th percentile stays below ``sky + sky_level·(bright − sky)`` is sky
        and gets no AP (sky and bright are the image's 1st and 99.9th percentiles).

    Returns
    -------
    APGrid
    """
    h, w = reference.shape
    margin = max(0, min(int(margin), (min(h, w) - 16) // 2))
    size = int(min(ap_size, h - 2 * margin, w - 2 * margin)) // 2 * 2
    if size < 8:
        raise ValueError(f"alignment-point size {ap_size} does not fit a {w}x{h} image")
    step = float(spacing) if spacing else size * SPACING
    if step <= 0:
        raise ValueError(f"alignment-point spacing must be positive, not {spacing}")
    xs = margin + _lattice(w - 2 * margin, size, step)
    ys = margin + _lattice(h - 2 * margin, size, step)
    img = reference.astype(np.float32, copy=False)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.0)
    g = gradient_energy_map(blurred).astype(np.float64)
    ii = cv2.integral(g, sdepth=cv2.CV_64F)
    sub = img[:: max(1, h // 256), :: max(1, w // 256)]
    sky, bright = np.percentile(sub, [1.0, 99.9])
    lit_thr = sky + sky_level * (bright - sky)
    energy = np.zeros((ys.size, xs.size))
    lit = np.zeros((ys.size, xs.size), dtype=bool)
    above = _BoxCounts(img, lit_thr, size)
    for j, y in enumerate(ys):
        y0 = int(round(y - size / 2))
        for i, x in enumerate(xs):
            x0 = int(round(x - size / 2))
            s = ii[y0 + size, x0 + size] - ii[y0, x0 + size] - ii[y0 + size, x0] + ii[y0, x0]
            energy[j, i] = s / (size * size)
            lit[j, i] = above.p90_above(y0, x0)
    if lit.any():
        ref_energy = float(np.median(energy[lit]))
        active = lit & (energy >= min_structure * ref_energy) & (energy > 0)
    else:
        active = lit
    return APGrid(xs=xs, ys=ys, size=size, active=active)


class _BoxCounts:
    """Whether the 90th percentile (NumPy's, linear) of a ``size``-square box of ``img``
    is above ``thr``, from the count of pixels above it (one integral image): with the box's
    values sorted, ``a[k] > thr`` exactly when at least ``n - k`` pixels are above, and
    ``a[k+1] <= thr`` when at most ``n - k - 2`` are. Only a box at the boundary between
    the two is sorted (a ``np.percentile`` per box cost 0.15 ms, 26 ms for a planet's
    176 boxes, measured); a box with a NaN is never above (its percentile is NaN)."""

    def __init__(self, img: np.ndarray, thr: float, size: int):
        thr = img.dtype.type(thr)  # both tests below compare in the image's precision
        self.img, self.thr, self.size = img, thr, size
        self.n = size * size
        self.k = int(math.floor(0.9 * (self.n - 1)))  # a[k], a[k+1]: the values interpolated
        self.above = cv2.integral((img > thr).astype(np.uint8), sdepth=cv2.CV_32S)
        nan = np.isnan(img)
        self.nan = cv2.integral(nan.astype(np.uint8), sdepth=cv2.CV_32S) if nan.any() else None

    @staticmethod
    def _sum(ii: np.ndarray, y0: int, x0: int, s: int) -> int:
        return int(ii[y0 + s, x0 + s] - ii[y0, x0 + s] - ii[y0 + s, x0] + ii[y0, x0])

    def p90_above(self, y0: int, x0: int) -> bool:
        s = self.size
        if self.nan is not None and self._sum(self.nan, y0, x0, s):
            return False
        c = self._sum(self.above, y0, x0, s)
        if c >= self.n - self.k:  # a[k] > thr: a[k+1] and their mix too
            return True
        if c <= self.n - self.k - 2:  # a[k+1] <= thr
            return False
        # at the boundary (rounding of the interpolation included): the percentile itself
        return float(np.percentile(self.img[y0:y0 + s, x0:x0 + s], 90)) > self.thr


class NodeInterpolator:
    """Spread per-node values over the image (or a window of it) by bilinear interpolation
    between nodes, constant beyond the outer nodes.

    The lattice is regular, so this is an affine resampling of the small node array with
    OpenCV (``warpAffine``, bilinear, replicated border): a full 640×480 field costs
    0.05 ms where gathers in NumPy cost 1.5 ms. OpenCV places the sample positions on a
    1/32 grid of the node spacing, so a field is exact at the nodes and bilinear between
    them up to that step (0.03 px of position for 32-pixel spacing).
    """

    def __init__(self, grid: APGrid, shape: tuple[int, int]):
        h, w = shape
        self.shape = (h, w)
        self._x0, self._sx = float(grid.xs[0]), float(grid.xs[1] - grid.xs[0]) if grid.xs.size > 1 else 1.0
        self._y0, self._sy = float(grid.ys[0]), float(grid.ys[1] - grid.ys[0]) if grid.ys.size > 1 else 1.0
        self._nodes = (int(grid.ys.size), int(grid.xs.size))

    def __call__(self, values: np.ndarray, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """``(ny, nx)`` or ``(ny, nx, c)`` node values → float32 field over ``window``
        ``(y0, y1, x0, x1)`` (default: the whole image), shape ``(y1-y0, x1-x0[, c])``."""
        v = np.ascontiguousarray(values, dtype=np.float32)
        y0, y1, x0, x1 = window if window is not None else (0, self.shape[0], 0, self.shape[1])
        ny, nx = self._nodes
        if ny == 1 and nx == 1:
            return np.ascontiguousarray(np.broadcast_to(v[0, 0], (y1 - y0, x1 - x0) + v.shape[2:]))
        # destination pixel (x, y) samples node coordinates ((x + x0 - xs0) / sx, ...)
        m = np.array([[1.0 / self._sx, 0.0, (x0 - self._x0) / self._sx],
                      [0.0, 1.0 / self._sy, (y0 - self._y0) / self._sy]])
        if nx == 1:
            m[0] = 0.0
        if ny == 1:
            m[1] = 0.0
        out = cv2.warpAffine(v, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        return out.reshape((y1 - y0, x1 - x0) + v.shape[2:])


@dataclass
class LocalMeasure:
    """One frame's alignment-point results for the APs measured (``which``, indices into
    the active APs): ``disp`` (n, 2) total displacement at each (global + local),
    ``response`` (n,) and ``valid`` (n,) whether the displacement is trusted."""

    which: np.ndarray
    disp: np.ndarray
    response: np.ndarray
    valid: np.ndarray


class LocalAligner:
    """Per-AP subpixel displacements of frames against a reference.

    Parameters
    ----------
    reference
        ``(H, W)`` float luminance.
    grid
        The AP lattice.
    peak_sigma
        Width of the correlation peak in frame pixels (see
        :class:`~skystack.register.planetary.PhaseCorrelator`); 1.4 measured best on the
        shared lunar benchmark (detail +0.0002 over 2.0, −0.0009 at 3.0).
    max_local_px
        A local displacement further than this from the starting one is not trusted
        (default: a quarter of the AP size).
    min_response
        Correlation responses below this are not trusted.
    downsample
        Correlate 2×2-binned boxes (``2``) or full-resolution ones (``1``); ``None``
        chooses 2 for boxes of 48 pixels or more, where binning costs no accuracy that the
        seeing left (the correlation is 4 times cheaper).

    Boxes are not smoothed first: the phase correlation whitens the cross-power spectrum,
    which undoes any blur applied to both images, and its Gaussian taper already discards
    the frequencies where only noise is left.
    """

    def __init__(self, reference: np.ndarray, grid: APGrid, *, peak_sigma: float = 1.4,
                 max_local_px: float | None = None, min_response: float = 0.08, downsample: int | None = None):
        self.grid = grid
        self.downsample = downsample if downsample is not None else (2 if grid.size >= 48 else 1)
        self.max_local_px = max_local_px if max_local_px is not None else grid.size / 4.0
        self.min_response = min_response
        self._boxes = grid.boxes()
        ref = reference.astype(np.float32, copy=False)
        patches = np.stack([ref[y0:y1, x0:x1] for x0, y0, x1, y1 in self._boxes]) if len(self._boxes) \
            else np.zeros((0, grid.size, grid.size), np.float32)
        self._corr = PhaseCorrelator(self._bin(patches), peak_sigma=peak_sigma / self.downsample,
                                     window="tukey") if len(patches) else None

    def _bin(self, patches: np.ndarray) -> np.ndarray:
        f = self.downsample
        n, a = patches.shape[0], patches.shape[1]
        if f == 1 or n == 0:
            return patches
        b = a // f
        # one area resize of the patches stacked into a tall image: 20x faster than a
        # NumPy reshape-mean, the same 2x2 means
        tall = np.ascontiguousarray(patches[:, :b * f, :b * f]).reshape(n * b * f, b * f)
        return cv2.resize(tall, (b, n * b), interpolation=cv2.INTER_AREA).reshape(n, b, b)

    def measure(self, lum: np.ndarray, shift: tuple[float, float], which: np.ndarray | None = None) -> LocalMeasure:
        """Measure one frame at the APs ``which`` (default: all).

        Parameters
        ----------
        lum
            The frame's float32 luminance.
        shift
            Where to look: the frame's (global or coarse) displacement ``(sx, sy)``.
        which
            Indices of the active APs to measure.
        """
        n_all = len(self._boxes)
        idx = np.arange(n_all) if which is None else np.asarray(which, dtype=np.intp)
        n = idx.size
        if n == 0 or self._corr is None:
            z = np.zeros(0)
            return LocalMeasure(idx, np.zeros((0, 2)), z, np.zeros(0, bool))
        a = self.grid.size
        img = lum.astype(np.float32, copy=False)
        h, w = img.shape
        ix, iy = int(round(shift[0])), int(round(shift[1]))
        x0 = self._boxes[idx, 0] + ix
        y0 = self._boxes[idx, 1] + iy
        inside = (x0 >= 0) & (y0 >= 0) & (x0 + a <= w) & (y0 + a <= h)
        patches = np.zeros((n, a, a), dtype=np.float32)
        if inside.any():
            win = np.lib.stride_tricks.sliding_window_view(img, (a, a))
            patches[inside] = win[y0[inside], x0[inside]]
        local, resp = self._corr.measure_many(self._bin(patches), which=idx)
        # binning f x f keeps the box centre where it was, so d binned pixels are f*d
        disp = local * self.downsample + np.array([ix, iy], dtype=np.float64)
        dev = np.hypot(disp[:, 0] - shift[0], disp[:, 1] - shift[1])
        valid = inside & (resp >= self.min_response) & (dev <= self.max_local_px)
        return LocalMeasure(idx, disp, resp, valid)


def select_per_ap(score: np.ndarray, valid: np.ndarray, keep: int) -> np.ndarray:
    """Per-AP selection: for each AP (column), the ``keep`` frames (rows) of highest score
    among those with a valid entry. Ties keep the earlier frame.

    Returns a ``(n_frames, n_ap)`` bool array.
    """
    q = np.where(valid, score, -np.inf)
    n = q.shape[0]
    k = min(keep, n)
    order = np.argsort(-q, axis=0, kind="stable")[:k]
    sel = np.zeros(q.shape, dtype=bool)
    cols = np.broadcast_to(np.arange(q.shape[1]), order.shape)
    sel[order, cols] = True
    return sel & valid


def node_values(grid: APGrid, active_values: np.ndarray, fill: float | np.ndarray) -> np.ndarray:
    """Scatter per-AP values into the ``(ny, nx)`` lattice, ``fill`` at nodes without one
    (``active_values`` may be NaN where a value is missing: those nodes get ``fill``
    too)."""
    out = np.empty(grid.active.shape, dtype=np.float32)
    out[...] = fill
    v = np.asarray(active_values, dtype=np.float32)
    vals = out[grid.active]
    ok = np.isfinite(v)
    vals[ok] = v[ok]
    out[grid.active] = vals
    return out


def fill_from_neighbours(values: np.ndarray, known: np.ndarray, fallback: float) -> np.ndarray:
    """Nodes not ``known`` take the mean of their known 8-neighbours (``fallback`` where
    none is known): an unmeasured node next to measured ones continues their local
    displacement instead of dropping to a global one."""
    v = np.where(known, values, 0.0).astype(np.float32)
    k = known.astype(np.float32)
    kernel = np.ones((3, 3), np.float32)
    s = cv2.filter2D(v, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    c = cv2.filter2D(k, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    out = np.where(c > 0, s / np.maximum(c, 1e-9), np.float32(fallback)).astype(np.float32)
    return np.where(known, values, out).astype(np.float32)


@lru_cache(maxsize=4)
def _base_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def dewarp(image: np.ndarray, sx: np.ndarray, sy: np.ndarray,
           window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample a frame through a displacement field: ``out(p) = image(p + s(p))``.

    ``sx``, ``sy`` cover ``window`` ``(y0, y1, x0, x1)`` of the frame (default: all of it);
    the source may lie anywhere in the frame. Returns the float32 result over the window
    (bicubic, edges replicated) and the float32 mask of pixels whose source lies inside
    the frame, or ``None`` when all of them do (the common case, not worth a mask).
    """
    h, w = image.shape[:2]
    y0, y1, x0, x1 = window if window is not None else (0, h, 0, w)
    gx, gy = _base_grid((h, w))
    mx = cv2.add(gx[y0:y1, x0:x1], sx)
    my = cv2.add(gy[y0:y1, x0:x1], sy)
    # fixed-point maps (1/32 px) make the bicubic remap several times faster at no visible cost
    m1, m2 = cv2.convertMaps(mx, my, cv2.CV_16SC2)
    out = cv2.remap(image.astype(np.float32, copy=False), m1, m2, cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_REPLICATE)
    lo_x, hi_x = cv2.minMaxLoc(mx)[:2]
    lo_y, hi_y = cv2.minMaxLoc(my)[:2]
    lo, hx, hy = -EDGE_TOL, w - 1 + EDGE_TOL, h - 1 + EDGE_TOL  # (identical frames lost column 0)
    if lo_x >= lo and hi_x <= hx and lo_y >= lo and hi_y <= hy:
        return out, None
    inside = ((mx >= lo) & (mx <= hx) & (my >= lo) & (my <= hy)).astype(np.float32)
    return out, inside
