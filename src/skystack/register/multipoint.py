"""Multi-point (local) alignment for lucky imaging.

Seeing moves different parts of the field differently (anisoplanatism), so one global shift
per frame leaves a stack blurred wherever the local motion disagreed with the mean. As in
AutoStakkert! and PlanetarySystemStacker, the reference is covered by a grid of
**alignment points** (APs), each a box of ``ap_size`` pixels:

1. :func:`place_alignment_points` keeps only nodes whose box holds structure (gradient
   energy) on a lit part of the image: none on empty sky, none on featureless regions
   where a correlation would only follow noise.
2. :class:`LocalAligner` measures, for every frame, each AP's subpixel displacement
   against the reference (batched phase correlation of the AP boxes) and each AP's local
   sharpness, so frames are ranked and selected per AP (:func:`select_per_ap`).
3. The AP results become smooth per-pixel fields by **bilinear interpolation between
   nodes** (:class:`NodeInterpolator`): the displacement field ``s(p)`` de-warps the frame
   (:func:`dewarp`) and the selection weight field blends it into the stack. Bilinear
   weights are tent windows of half-width ``spacing`` that sum to one, so contributions
   fade smoothly from one AP to the next and no seam can appear; nodes without an AP
   (sky, flat regions) carry the frame's global shift and global selection.

Displacements follow :mod:`skystack.register.planetary`: ``frame(p + s(p)) ≈ reference(p)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from ..quality.metrics import gradient_energy_map, region_quality
from .planetary import PhaseCorrelator


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


def place_alignment_points(reference: np.ndarray, *, ap_size: int = 64, spacing: float | None = None,
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
        Node spacing; default ``ap_size / 2`` so boxes overlap by half and every pixel
        is seen by about four APs.
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
    step = float(spacing) if spacing else size / 2.0
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
    for j, y in enumerate(ys):
        y0 = int(round(y - size / 2))
        for i, x in enumerate(xs):
            x0 = int(round(x - size / 2))
            s = ii[y0 + size, x0 + size] - ii[y0, x0 + size] - ii[y0 + size, x0] + ii[y0, x0]
            energy[j, i] = s / (size * size)
            box = img[y0:y0 + size:2, x0:x0 + size:2]
            lit[j, i] = float(np.percentile(box, 90)) > lit_thr
    if lit.any():
        ref_energy = float(np.median(energy[lit]))
        active = lit & (energy >= min_structure * ref_energy) & (energy > 0)
    else:
        active = lit
    return APGrid(xs=xs, ys=ys, size=size, active=active)


@lru_cache(maxsize=16)
def _interp_index(nodes: tuple[float, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    """For pixels ``0..n-1``: the node to their left (``k``, so nodes ``k`` and ``k+1``
    bracket them) and the fraction ``t`` of the way to the next node, clamped to [0, 1]
    beyond the end nodes (constant extrapolation)."""
    x = np.arange(n, dtype=np.float64)
    nd = np.asarray(nodes, dtype=np.float64)
    if nd.size == 1:
        k = np.zeros(n, dtype=np.intp)
        t = np.zeros(n, dtype=np.float32)
    else:
        k = np.clip(np.searchsorted(nd, x) - 1, 0, nd.size - 2).astype(np.intp)
        t = np.clip((x - nd[k]) / (nd[k + 1] - nd[k]), 0.0, 1.0).astype(np.float32)
    k.setflags(write=False)
    t.setflags(write=False)
    return k, t


class NodeInterpolator:
    """Spread per-node values over the full image by bilinear interpolation between nodes,
    constant beyond the outer nodes.

    Written as two gathers per axis rather than as matrix products: a BLAS call of this
    shape may start its own threads, which on a loaded two-core machine made each call up
    to 50 times slower than this plain version.
    """

    def __init__(self, grid: APGrid, shape: tuple[int, int]):
        h, w = shape
        self.shape = (h, w)
        self._ky, self._ty = _interp_index(tuple(float(v) for v in grid.ys), h)
        self._kx, self._tx = _interp_index(tuple(float(v) for v in grid.xs), w)
        self._single_y = grid.ys.size == 1
        self._single_x = grid.xs.size == 1

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``(ny, nx)`` node values → ``(H, W)`` float32 field."""
        v = np.asarray(values, dtype=np.float32)
        if self._single_y:
            rows = np.repeat(v[:1], self.shape[0], axis=0)
        else:
            ty = self._ty[:, None]
            rows = v[self._ky] * (1.0 - ty) + v[self._ky + 1] * ty  # (H, nx)
        if self._single_x:
            return np.ascontiguousarray(np.repeat(rows[:, :1], self.shape[1], axis=1))
        tx = self._tx[None, :]
        return rows[:, self._kx] * (1.0 - tx) + rows[:, self._kx + 1] * tx


@dataclass
class LocalMeasure:
    """One frame's alignment-point results: ``disp`` (n_ap, 2) total displacement at each
    AP (global + local), ``response`` (n_ap,), ``quality`` (n_ap,) local sharpness, and
    ``valid`` (n_ap,) whether the displacement is trusted."""

    disp: np.ndarray
    response: np.ndarray
    quality: np.ndarray
    valid: np.ndarray


class LocalAligner:
    """Per-AP subpixel displacements and local sharpness of frames against a reference.

    Parameters
    ----------
    reference
        ``(H, W)`` float luminance.
    grid
        The AP lattice.
    blur_sigma
        Gaussian sigma (pixels) applied to frames and reference before measuring; it keeps
        pixel noise out of both the local quality and the correlation.
    max_local_px
        A local displacement further than this from the global one is not trusted
        (default: a quarter of the AP size).
    min_response
        Correlation responses below this are not trusted.
    downsample
        Correlate 2×2-binned boxes (``2``) or full-resolution ones (``1``); ``None``
        chooses 2 for boxes of 48 pixels or more, where binning costs no accuracy that the
        seeing left (the correlation is 4 times cheaper).
    """

    def __init__(self, reference: np.ndarray, grid: APGrid, *, blur_sigma: float = 1.0,
                 peak_sigma: float = 2.0, max_local_px: float | None = None, min_response: float = 0.08,
                 downsample: int | None = None):
        self.grid = grid
        self.downsample = downsample if downsample is not None else (2 if grid.size >= 48 else 1)
        self.blur_sigma = blur_sigma
        self.max_local_px = max_local_px if max_local_px is not None else grid.size / 4.0
        self.min_response = min_response
        ref = self.prepare(reference)
        self._boxes = grid.boxes()
        patches = np.stack([ref[y0:y1, x0:x1] for x0, y0, x1, y1 in self._boxes]) if len(self._boxes) \
            else np.zeros((0, grid.size, grid.size), np.float32)
        self._corr = PhaseCorrelator(self._bin(patches), peak_sigma=peak_sigma / self.downsample,
                                     window="hann") if len(patches) else None

    def _bin(self, patches: np.ndarray) -> np.ndarray:
        f = self.downsample
        if f == 1:
            return patches
        n, a, _ = patches.shape
        b = a // f
        return patches[:, :b * f, :b * f].reshape(n, b, f, b, f).mean(axis=(2, 4), dtype=np.float32)

    def prepare(self, lum: np.ndarray) -> np.ndarray:
        """The blurred float32 view frames are measured on."""
        img = lum.astype(np.float32, copy=False)
        return cv2.GaussianBlur(img, (0, 0), self.blur_sigma) if self.blur_sigma > 0 else img

    def measure(self, prepared: np.ndarray, shift: tuple[float, float], signal: float) -> LocalMeasure:
        """Measure one frame.

        Parameters
        ----------
        prepared
            The frame after :meth:`prepare`.
        shift
            The frame's global displacement ``(sx, sy)``.
        signal
            The frame's normalisation span (see :mod:`skystack.quality.metrics`).
        """
        n = len(self._boxes)
        if n == 0 or self._corr is None:
            z = np.zeros(0)
            return LocalMeasure(np.zeros((0, 2)), z, z, np.zeros(0, bool))
        a = self.grid.size
        h, w = prepared.shape
        ix, iy = int(round(shift[0])), int(round(shift[1]))
        x0 = self._boxes[:, 0] + ix
        y0 = self._boxes[:, 1] + iy
        inside = (x0 >= 0) & (y0 >= 0) & (x0 + a <= w) & (y0 + a <= h)
        patches = np.empty((n, a, a), dtype=np.float32)
        if inside.any():
            win = np.lib.stride_tricks.sliding_window_view(prepared, (a, a))
            patches[inside] = win[y0[inside], x0[inside]]
        for k in np.nonzero(~inside)[0]:
            xa, ya = int(x0[k]), int(y0[k])
            cy0, cy1 = max(ya, 0), min(ya + a, h)
            cx0, cx1 = max(xa, 0), min(xa + a, w)
            patches[k] = 0.0
            if cy1 > cy0 and cx1 > cx0:
                inner = prepared[cy0:cy1, cx0:cx1]
                patches[k] = float(inner.mean())
                patches[k, cy0 - ya:cy1 - ya, cx0 - xa:cx1 - xa] = inner
        local, resp = self._corr.measure_many(self._bin(patches))
        # binning f x f keeps the box centre where it was, so d binned pixels are f*d
        disp = local * self.downsample + np.array([ix, iy], dtype=np.float64)
        q = region_quality(prepared, np.column_stack([x0 + a / 2.0, y0 + a / 2.0]), a, signal)
        dev = np.hypot(disp[:, 0] - shift[0], disp[:, 1] - shift[1])
        valid = inside & (resp >= self.min_response) & (dev <= self.max_local_px)
        return LocalMeasure(disp, resp, q, valid)


def select_per_ap(quality: np.ndarray, valid: np.ndarray, keep: int) -> np.ndarray:
    """Per-AP selection: for each AP (column), the ``keep`` frames (rows) of highest local
    quality among those with a valid measurement. Ties keep the earlier frame.

    Returns a ``(n_frames, n_ap)`` bool array.
    """
    q = np.where(valid, quality, -np.inf)
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


@lru_cache(maxsize=4)
def _base_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def dewarp(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample a frame through a displacement field: ``out(p) = image(p + s(p))``.

    Returns the float32 result (bicubic, edges replicated) and the float32 mask of pixels
    whose source lies inside the frame.
    """
    h, w = image.shape[:2]
    gx, gy = _base_grid((h, w))
    mx = gx + sx
    my = gy + sy
    # fixed-point maps (1/32 px) make the bicubic remap several times faster at no visible cost
    m1, m2 = cv2.convertMaps(mx, my, cv2.CV_16SC2)
    out = cv2.remap(image.astype(np.float32, copy=False), m1, m2, cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_REPLICATE)
    inside = ((mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)).astype(np.float32)
    return out, inside
