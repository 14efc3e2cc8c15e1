"""Turn a memory budget into a band height, and a frame transform into the source rows
and local matrix one band needs.

Memory model (DESIGN.md): phase 2 processes the output ``band_rows`` rows at a time. For
each band every kept frame is warped into an ``(N, band_rows, W, C)`` float32 buffer, the
kernel rejects and reduces along N, and the band is written out. Peak memory is therefore
set by the band size, not by how many frames there are.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


# Taps on each side of the sample point for the interpolation kernels (OpenCV Lanczos-4
# uses an 8×8 neighbourhood: 3 before, 4 after; bicubic 4×4: 1 before, 2 after; bilinear
# 0 before, 1 after) plus one row
# of slack for rounding of the inverse-mapped corners.
INTERP_MARGIN = {"lanczos": 5, "cubic": 3, "bilinear": 2}

# Warps are done on a fixed grid of output row tiles. Each tile's source rows and local
# matrix depend only on the tile, so a pixel's value never depends on the band partition
# (which follows the memory budget and worker count): outputs are bit-identical for any
# --workers. Bands are whole numbers of tiles, so no tile is ever cut by a band boundary.
# 8 rows: OpenCV's warp costs the same per pixel on 8-row tiles as on whole frames
# (measured: 0.24 s per 3000×2000 Lanczos frame either way), and small tiles keep the
# smallest possible band (one tile) small for tight memory limits.
WARP_TILE_ROWS = 8

@dataclass(frozen=True)
class BandPlan:
    height: int  # output rows
    width: int
    channels: int
    band_rows: int
    n_frames: int

    @property
    def bands(self) -> list[tuple[int, int]]:
        return [(y0, min(y0 + self.band_rows, self.height)) for y0 in range(0, self.height, self.band_rows)]


def plan_bands(*, height: int, width: int, channels: int, n_frames: int, memory_limit: int,
               concurrent: int = 1, src_rows_extra: int = 0, band_rows: int | None = None) -> BandPlan:
    """Choose the band height so that ``concurrent`` bands in flight fit ``memory_limit``.

    Per band in flight we hold the ``N × h × W × C`` float32 buffer, the kernel's per-band
    outputs (h × W × C float32 + int32) and one frame's source block at a time (``h +
    src_rows_extra`` rows of float32, the extra covering rotation and interpolation taps).
    The output accumulators (H × W × C float32 + int32) are shared by all bands.

    Raises
    ------
    UsageError
        When even one output row per band does not fit: the message says the minimum.
    """
    n = max(n_frames, 1)
    row_bytes = width * channels * 4
    fixed = height * row_bytes * 2  # output image + count, resident as bands are written
    per_row = concurrent * row_bytes * (n + 3)  # N warped rows + out + count + a source row
    per_band_fixed = concurrent * row_bytes * (src_rows_extra + 1)
    available = memory_limit - fixed - per_band_fixed
    if band_rows is None:
        if available < per_row * WARP_TILE_ROWS:
            need = fixed + per_band_fixed + per_row * WARP_TILE_ROWS
            raise UsageError(
                f"--memory-limit {_fmt(memory_limit)} is too small for {n} frames of {width}×{height}"
                f"{'×' + str(channels) if channels > 1 else ''}: the smallest band ({WARP_TILE_ROWS} rows) needs about "
                f"{_fmt(need)} (use at least that, or fewer --workers)")
        band_rows = int(available // per_row)
    band_rows = max(WARP_TILE_ROWS, band_rows - band_rows % WARP_TILE_ROWS)
    band_rows = min(band_rows, height)
    return BandPlan(height=height, width=width, channels=channels, band_rows=band_rows, n_frames=n)


def _fmt(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)


def rotation_extra_rows(width: int, matrices: list[np.ndarray], interpolation: str) -> int:
    """How many more source rows than output rows a band can need: the vertical extent of
    a band's inverse image minus its height, maximised over frames."""
    extra = 0
    for m in matrices:
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        # d(src y)/d(dst x) × W is the tilt of a row; the y scale adds proportionally
        extra = max(extra, math.ceil(abs(inv[1, 0]) * width + abs(inv[1, 1] - 1.0) * 64))
    return extra + 2 * INTERP_MARGIN.get(interpolation, 5)


def source_rows(matrix: np.ndarray, band_y0: int, band_y1: int, width: int, src_height: int,
                interpolation: str) -> tuple[int, int] | None:
    """The frame rows ``[y0, y1)`` needed to fill output rows ``[band_y0, band_y1)``.

    ``matrix`` maps frame (x, y) → reference (x, y). The band's corners are mapped back to
    the frame (an affine map sends the rectangle to a parallelogram whose extreme rows are
    at its corners) and widened by the interpolation margin. ``None`` when the band sees
    no row of the frame.
    """
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    xs = np.array([-0.5, width - 0.5, -0.5, width - 0.5])
    ys = np.array([band_y0 - 0.5, band_y0 - 0.5, band_y1 - 0.5, band_y1 - 0.5])
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    margin = INTERP_MARGIN.get(interpolation, 5)
    y0 = max(0, math.floor(sy.min()) - margin)
    y1 = min(src_height, math.ceil(sy.max()) + margin + 1)
    if y1 <= y0:
        return None
    return y0, y1


def band_matrix(matrix: np.ndarray, src_y0: int, band_y0: int) -> np.ndarray:
    """The 2×3 matrix mapping local source rows (starting at ``src_y0``) to local band rows
    (starting at ``band_y0``): ``T(0, -band_y0) · M · T(0, +src_y0)``."""
    m = np.array(matrix, dtype=np.float64).copy()
    m[0, 2] += m[0, 1] * src_y0
    m[1, 2] += m[1, 1] * src_y0 - band_y0
    return m




def tile_warps(frame_matrix: np.ndarray, band_y0: int, band_y1: int, src_y0: int, src_y1: int,
               width: int, src_height: int, interpolation: str):
    """Yield ``(out_y0, out_y1, rows_y0, rows_y1, local_matrix)`` for each grid tile of the
    band: output rows relative to the band, the slice of the band's source block the tile
    reads, and the matrix mapping that slice to the tile."""
    t0 = (band_y0 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    for ty0 in range(t0, band_y1, WARP_TILE_ROWS):
        ty1 = ty0 + WARP_TILE_ROWS
        a, b = max(ty0, band_y0), min(ty1, band_y1)
        if a >= b:
            continue
        rows = source_rows(frame_matrix, ty0, ty1, width, src_height, interpolation)
        if rows is None:
            continue
        sy0, sy1 = rows
        if sy0 < src_y0 or sy1 > src_y1:
            raise ValueError(f"band source rows {src_y0}:{src_y1} do not cover tile rows {sy0}:{sy1}; "
                             "bands must be whole tiles")
        yield ty0, ty1, a, b, sy0, sy1, band_matrix(frame_matrix, sy0, ty0)


def workers_default() -> int:
    return os.cpu_count() or 1
