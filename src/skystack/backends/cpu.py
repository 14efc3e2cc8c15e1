"""CPU backend: OpenCV warps, Numba rejection/reduction kernels."""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from _skystack_kernels.cpu.cells import cell_geometry

from ..options import StackOptions
from ..stack.plan import INTERP_MARGIN, WARP_TILE_ROWS
from .base import BandJob, BandResult

_CV_INTERP = {"lanczos": 4, "cubic": 2, "bilinear": 1}  # cv2.INTER_LANCZOS4, INTER_CUBIC, INTER_LINEAR


def cv_interp(name: str) -> int:
    try:
        return _CV_INTERP[name]
    except KeyError:
        raise ValueError(f"interpolation must be lanczos, cubic or bilinear, not {name!r}") from None


def reject_codes(options: StackOptions) -> tuple[int, int]:
    from _skystack_kernels.codes import REDUCE, REJECT

    return REJECT[options.reject], REDUCE[options.reduction]


class CpuBackend:
    """The CPU backend: OpenCV warps, Numba rejection kernels.

    Each thread keeps its last tile band (the warped frames of one tile, ~100 MB for 100
    frames of 600×500) and reuses it for its next tile: a fresh band of that size is
    mapped, faulted in page by page and unmapped again for every tile, and on the 2-core
    project machine those faults and unmaps were about a tenth of phase 2's time. The
    bands live as long as the backend, i.e. the run (the workspace resolves it once).
    """

    name = "cpu"

    def __init__(self) -> None:
        self._local = threading.local()

    def _band(self, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        buf = getattr(self._local, "band", None)
        if buf is None or buf.size < size:
            self._local.band = None  # the old band goes before the new one is mapped
            buf = self._local.band = np.empty(size, dtype=np.float32)
        return buf[:size].reshape(shape)

    def warp(self, rows: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int],
             interpolation: str, out: np.ndarray | None = None, inside: bool | None = None) -> np.ndarray:
        """Resample ``rows`` onto an ``out_shape`` grid through ``matrix``.

        Coverage is decided by where each output pixel's centre lands in the source: inside
        ``[-0.5, w - 0.5) × [-0.5, h - 0.5)`` it is covered, elsewhere NaN. Interpolation
        taps that fall off the source edge reuse the edge pixels (replicated border), so a
        frame's own edge pixels are kept rather than lost to the kernel's width (Lanczos-4
        would otherwise eat 4 px of every border). NaN source pixels (masked data) spread
        NaN to the outputs whose taps touch them, i.e. they stay missing data.
        ``inside``: the caller's :func:`maps_inside` answer, when it has it.
        """
        import cv2

        h, w = out_shape
        src = rows if rows.dtype == np.float32 else rows.astype(np.float32)
        m = np.asarray(matrix, dtype=np.float64)
        out = cv2.warpAffine(src, m, (w, h), dst=out, flags=cv_interp(interpolation),
                             borderMode=cv2.BORDER_REPLICATE)
        if inside if inside is not None else maps_inside(m, out_shape, src.shape[:2]):
            return out  # every centre lands a pixel or more inside the source: all covered
        # nearest-neighbour warp of an all-ones plane: 1 exactly where the centre maps
        # inside the source (OpenCV rounds to the nearest source pixel)
        ones = np.ones(src.shape[:2], dtype=np.uint8)
        covered = cv2.warpAffine(ones, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
        out[covered == 0] = np.nan
        return out

    def warp_job(self, job: BandJob, dst: np.ndarray, interpolation: str) -> None:
        """Warp one job into ``dst`` (h, W[, C]); on the fixed tile grid when the job carries
        its absolute geometry, so the result does not depend on the band partition."""
        h, w = dst.shape[:2]
        rows = job.load_rows()
        if job.frame_matrix is None:
            self.warp(rows, job.matrix, (h, w), interpolation, out=dst)
            return
        band_y0, band_y1 = job.band_y0, job.band_y0 + h
        ty0s, sy0s, sy1s, mats, inside = _cells(job, band_y0, band_y1, rows.shape[0], rows.shape[1], w, interpolation)
        grid_cells = -(-band_y1 // WARP_TILE_ROWS) - band_y0 // WARP_TILE_ROWS  # the cells the band meets
        if len(ty0s) < grid_cells:
            dst[...] = np.nan  # cells that see no row of the frame are not warped
        r = WARP_TILE_ROWS
        for ty0, sy0, sy1, m, within in zip(ty0s.tolist(), (sy0s - job.src_y0).tolist(),
                                            (sy1s - job.src_y0).tolist(), mats, inside.tolist()):
            a, b = max(ty0, band_y0), min(ty0 + r, band_y1)
            if (a, b) == (ty0, ty0 + r):
                self.warp(rows[sy0:sy1], m, (r, w), interpolation, out=dst[a - band_y0:b - band_y0], inside=within)
            else:  # the image's last cell, cut by the bottom edge
                tile = self.warp(rows[sy0:sy1], m, (r, w), interpolation, inside=within)
                dst[a - band_y0:b - band_y0] = tile[a - ty0:b - ty0]

    def combine_band(self, jobs: Sequence[BandJob], out_shape: tuple[int, ...], weights: np.ndarray,
                     options: StackOptions) -> BandResult:
        h, w = out_shape[:2]
        c = out_shape[2] if len(out_shape) == 3 else 1
        n = len(jobs)
        band = self._band((n, h, w, c))
        scale = np.empty((n, c), dtype=np.float32)
        offset = np.empty((n, c), dtype=np.float32)
        for k, job in enumerate(jobs):
            dst = band[k] if c > 1 else band[k, :, :, 0]
            self.warp_job(job, dst, options.interpolation)
            # normalised by the kernel as it gathers the values (one pass fewer over the band)
            scale[k] = np.asarray(job.scale, dtype=np.float32).reshape(-1)
            offset[k] = np.asarray(job.offset, dtype=np.float32).reshape(-1)
        return combine_host_band(band, weights, options, scale, offset)


def _cells(job: BandJob, band_y0: int, band_y1: int, src_rows: int, src_width: int, width: int,
           interpolation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells of ``job`` over output rows ``[band_y0, band_y1)``: their first output
    row, source rows, matrices and whether they map inside their rows — what
    :func:`~skystack.stack.plan.cell_warps` and :func:`cells_inside` give, to the bit, from
    one compiled call (:mod:`_skystack_kernels.cpu.cells`: 57 µs → 3 µs a job)."""
    k = -(-band_y1 // WARP_TILE_ROWS) - band_y0 // WARP_TILE_ROWS
    ty0, sy0, sy1 = np.empty(k, np.int64), np.empty(k, np.int64), np.empty(k, np.int64)
    mats, inside = np.empty((k, 2, 3)), np.empty(k, dtype=bool)
    src_y0 = job.src_y0
    n, bad = cell_geometry(np.ascontiguousarray(job.frame_matrix, dtype=np.float64), band_y0, band_y1, src_y0,
                           src_y0 + src_rows, width, job.src_height, INTERP_MARGIN.get(interpolation, 5),
                           WARP_TILE_ROWS, src_width, 1.0, ty0, sy0, sy1, mats, inside)
    if bad >= 0:
        raise ValueError(f"band source rows {src_y0}:{src_y0 + src_rows} do not cover tile rows "
                         f"{sy0[bad]}:{sy1[bad]}; bands must be whole tiles")
    return ty0[:n], sy0[:n], sy1[:n], mats[:n], inside[:n]


def maps_inside(matrix: np.ndarray, out_shape: tuple[int, int], src_shape: tuple[int, int],
                margin: float = 1.0) -> bool:
    """True when every output pixel centre of an ``out_shape`` grid maps, through the
    forward affine ``matrix`` (source → output), at least ``margin`` source pixels inside
    the source's covered area ``[-0.5, w - 0.5) × [-0.5, h - 0.5)``.

    An affine map sends the grid's four corner centres to a parallelogram that holds
    every other centre, so the corners decide. Most tiles of a registered frame lie wholly
    inside it, and for them the coverage warp (a nearest-neighbour warp of a ones plane,
    ~15 % of a bicubic warp's time) has nothing to mark; the margin of a whole pixel keeps
    OpenCV's fixed-point rounding of the inverse map far from the edge.
    """
    if out_shape[0] <= 0 or out_shape[1] <= 0:
        return True
    m = np.asarray(matrix, dtype=np.float64)[None, :2]
    return bool(cells_inside(m, out_shape, np.array([src_shape[0]]), src_shape[1], margin)[0])


def cells_inside(matrices: np.ndarray, out_shape: tuple[int, int], src_heights: np.ndarray, src_width: int,
                 margin: float = 1.0) -> np.ndarray:
    """:func:`maps_inside` for many warps of one linear part at once (the cells of a job:
    ``matrices`` (K, 2, 3) differ only in translation), source ``src_heights[k] ×
    src_width``: a boolean per warp. The linear part is inverted once, in closed form."""
    k = len(matrices)
    if k == 0:
        return np.zeros(0, dtype=bool)
    h, w = out_shape
    (a, b), (c, d) = matrices[0, :, :2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    tx = -(ia * matrices[:, 0, 2] + ib * matrices[:, 1, 2])
    ty = -(ic * matrices[:, 0, 2] + id_ * matrices[:, 1, 2])
    xs = np.array([0.0, w - 1.0, 0.0, w - 1.0])
    ys = np.array([0.0, 0.0, h - 1.0, h - 1.0])
    sx = (ia * xs + ib * ys)[None, :] + tx[:, None]
    sy = (ic * xs + id_ * ys)[None, :] + ty[:, None]
    lo = margin - 0.5
    return ((sx >= lo).all(axis=1) & (sx <= src_width - 0.5 - margin).all(axis=1)
            & (sy >= lo).all(axis=1) & (sy <= np.asarray(src_heights)[:, None] - 0.5 - margin).all(axis=1))


def combine_host_band(band: np.ndarray, weights: np.ndarray, options: StackOptions, scale: np.ndarray | None = None,
                      offset: np.ndarray | None = None) -> BandResult:
    """Reject and reduce a warped host band ``(N, h, W[, C])`` with the Numba kernel, one
    channel at a time (also used by the cv2.cuda backend after its GPU warps).

    ``scale``/``offset`` (``(N,)`` or ``(N, C)`` float32), when given, normalise the values
    inside the kernel, ``v * scale + offset`` in float32, bit-identical to normalising the
    band beforehand (:func:`_normalise_inplace`); without them the band is used as it is.
    """
    from _skystack_kernels.cpu.combine import combine_band

    n, h, w = band.shape[:3]
    c = band.shape[3] if band.ndim == 4 else 1
    b4 = band.reshape(n, h, w, c)
    image = np.empty((h, w, c), dtype=np.float32)
    count = np.empty((h, w, c), dtype=np.int32)
    rejected = np.zeros((n, 2), dtype=np.int64)
    rej, red = reject_codes(options)
    w32 = np.ascontiguousarray(weights, dtype=np.float32)
    if scale is not None:
        scale = np.asarray(scale, dtype=np.float32).reshape(n, -1)
        offset = np.asarray(offset, dtype=np.float32).reshape(n, -1)
        if np.all(scale == 1) and np.all(offset == 0):
            scale = offset = None  # nothing to do: spare the kernel the arithmetic
        else:
            scale = np.ascontiguousarray(np.broadcast_to(scale, (n, c)).T)  # (C, N): one row per channel
            offset = np.ascontiguousarray(np.broadcast_to(offset, (n, c)).T)
    for ch in range(c):
        if scale is None:
            combine_band(b4[..., ch], w32, rej, red, float(options.kappa_low), float(options.kappa_high),
                         int(options.max_iter), image[..., ch], count[..., ch], rejected)
        else:
            combine_band(b4[..., ch], w32, rej, red, float(options.kappa_low), float(options.kappa_high),
                         int(options.max_iter), image[..., ch], count[..., ch], rejected, scale[ch], offset[ch])
    if c == 1:
        image, count = image[..., 0], count[..., 0]
    return BandResult(image=image, count=count, rejected=rejected)


def _normalise_inplace(x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> None:
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    offset = np.asarray(offset, dtype=np.float32).reshape(-1)
    if np.all(scale == 1) and np.all(offset == 0):
        return
    if x.ndim == 2:
        x *= scale[0]
        x += offset[0]
    else:
        x *= scale
        x += offset
