"""Affine warp with the CPU backend's semantics (OpenCV bilinear / Lanczos-4 values,
replicated border, coverage by pixel centre), in Numba.

The CPU backend (``skystack.backends.cpu.CpuBackend.warp``) warps with
``cv2.warpAffine(..., borderMode=BORDER_REPLICATE)`` and sets NaN wherever a
nearest-neighbour warp of an all-ones plane (``INTER_NEAREST``, ``BORDER_CONSTANT`` 0) is
0. This module reproduces that result so the GPU twin (``gpu/warp.py``, which compiles
:func:`warp_pixel` and :func:`warp_tile_pixel` for the device) can be checked against it.
Measured against OpenCV 5.1 (tests/kernels): NaN masks identical; Lanczos values
bit-identical, edges included; bilinear within one float32 ulp.

Which output pixels are covered (= not NaN): those whose centre maps inside the source,
``-0.5 <= sx <= w - 0.5`` and ``-0.5 <= sy <= h - 0.5`` for the float64 source point
``(sx, sy)`` of the inverse map. Both ends are closed: that is what OpenCV 5.1's nearest
warp does (measured: a centre exactly on ``w - 0.5`` is covered, by the last column).
Measured on transforms pushed to within 1e-11 px of an edge, the two disagree only where
the centre lies within ~1e-13 px of it (OpenCV evaluates the map in another order).

The value of a covered pixel is OpenCV's interpolation with taps that fall off the source
reading the nearest edge pixel (``BORDER_REPLICATE``), so a frame keeps its own edge
pixels rather than losing the kernel's width to the border:

- bilinear: the source point is clamped into ``[0, w-1] x [0, h-1]`` (what OpenCV 5.1's
  replicated border does, measured), then taps ``floor(sx), +1`` by ``floor(sy), +1``
  (the second replicated at the last column/row) are interpolated in float64 (OpenCV 5
  computes the source point in floating point too). The taps are read even when their
  weight is 0. An exact integer translation (``[[1, 0, tx], [0, 1, ty]]``, integer
  ``tx, ty``) is a shifted copy, as in OpenCV.
- Lanczos-4: the source point is first quantised as OpenCV does (fixed point, 1/32 pixel:
  ``INTER_BITS = 5``, ``AB_BITS = 10``, rounding half to even as ``cvRound``); taps
  ``ix-3 .. ix+4`` around ``ix = floor(sx)``, weights from OpenCV's normalised 32-entry
  table, summed in float32 in OpenCV's order: row by row where all 64 taps are inside the
  source, one tap after another where some are replicated (OpenCV's ``remapLanczos4``
  border branch), so edge pixels are bit-identical too.

A NaN inside the source (masked pixel) makes every output pixel whose taps touch it NaN
(taps of zero weight count: NaN * 0 is NaN). A NaN on the edge is replicated with it.

Tiles: the band engine warps on a fixed grid of 8-row output tiles, each from its own
slice of source rows with its own matrix (``skystack.stack.plan.tile_warps``). A *tile
table* (:func:`tile_table`) describes all tiles of one frame's band, and
:func:`warp_tiles_cpu` (GPU: ``gpu.warp.warp_tiles_gpu``, one launch) warps them all,
with every pixel equal to warping its tile alone.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..codes import INTERP_BILINEAR, INTERP_CUBIC, INTERP_LANCZOS4, INTERPOLATION

# internal code: bilinear through an exact integer translation, which OpenCV does as a copy
INTERP_SHIFT = -1

_TAB_SIZE = 32  # OpenCV's INTER_TAB_SIZE: sub-pixel positions of the Lanczos table
_AB_SCALE = 1024.0  # OpenCV's AB_SCALE = 1 << AB_BITS, coordinates in 1/1024 pixel


def _lanczos4_table() -> np.ndarray:
    """OpenCV's ``interpolateLanczos4`` at ``x = k/32``, k = 0..31: (32, 8) float32, each
    row normalised to sum 1 in float32 arithmetic as OpenCV does."""
    s45 = 0.70710678118654752440084436210485
    cs = ((1, 0), (-s45, -s45), (0, 1), (s45, -s45), (-1, 0), (s45, s45), (0, -1), (-s45, s45))
    table = np.empty((_TAB_SIZE, 8), np.float32)
    for k in range(_TAB_SIZE):
        x = np.float32(k / _TAB_SIZE)
        y0 = -(float(x) + 3.0) * math.pi * 0.25
        s0, c0 = math.sin(y0), math.cos(y0)
        total = np.float32(0.0)
        for i in range(8):
            d = np.float32(x + 3 - i)
            if abs(d) >= 1e-6:
                y = -float(d) * math.pi * 0.25
                table[k, i] = np.float32((cs[i][0] * s0 + cs[i][1] * c0) / (y * y))
            else:
                table[k, i] = np.float32(1e30)  # the tap at the point itself: weight 1 after normalising
            total = np.float32(total + table[k, i])
        table[k] = table[k] * (np.float32(1.0) / total)
    table.setflags(write=False)
    return table


LANCZOS4_TABLE = _lanczos4_table()


@njit(nogil=True, cache=True)
def _cubic_weight(d):
    """OpenCV's bicubic kernel (A = -0.75) at distance ``|d|`` from the sample point."""
    d = abs(d)
    if d <= 1.0:
        return ((_CUBIC_A + 2.0) * d - (_CUBIC_A + 3.0)) * d * d + 1.0
    if d < 2.0:
        return ((_CUBIC_A * d - 5.0 * _CUBIC_A) * d + 8.0 * _CUBIC_A) * d - 4.0 * _CUBIC_A
    return 0.0


_CUBIC_A = -0.75  # OpenCV's cubic coefficient (Keys' kernel with a = -0.75)


def invert_affine(matrix) -> np.ndarray:
    """Inverse of a 2x3 affine matrix as six float64 (row-major), computed exactly as
    ``cv2.invertAffineTransform`` (a singular matrix gives zeros, as there)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    d = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / d if d != 0.0 else 0.0
    a11, a22 = m[1, 1] * d, m[0, 0] * d
    a12, a21 = -m[0, 1] * d, -m[1, 0] * d
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    return np.array([a11, a12, b1, a21, a22, b2], dtype=np.float64)


def is_integer_translation(matrix) -> bool:
    """True for ``[[1, 0, tx], [0, 1, ty]]`` with integer ``tx, ty`` (exactly)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    return bool(m[0, 0] == 1.0 and m[0, 1] == 0.0 and m[1, 0] == 0.0 and m[1, 1] == 1.0
                and float(m[0, 2]).is_integer() and float(m[1, 2]).is_integer())


def warp_code(matrix, interpolation) -> int:
    """The ``interp`` code :func:`warp_pixel` needs for this matrix: bilinear through an
    exact integer translation is a copy (``INTERP_SHIFT``), as in OpenCV."""
    code = interpolation_code(interpolation)
    if code == INTERP_BILINEAR and is_integer_translation(matrix):
        return INTERP_SHIFT
    return code


def interpolation_code(interpolation) -> int:
    """``"bilinear"`` / ``"lanczos"`` (or a ``codes.INTERP_*`` integer) -> code."""
    if isinstance(interpolation, str):
        try:
            return INTERPOLATION[interpolation]
        except KeyError:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATION)}, not {interpolation!r}") from None
    code = int(interpolation)
    if code not in (INTERP_BILINEAR, INTERP_LANCZOS4, INTERP_CUBIC):
        raise ValueError(f"unknown interpolation code {code}")
    return code


@njit(nogil=True, cache=True)
def _cv_round(v):
    # cvRound: round half to even (lrint in the default rounding mode)
    r = math.floor(v)
    d = v - r
    i = int(r)
    if d > 0.5 or (d == 0.5 and i % 2 != 0):
        i += 1
    return i


@njit(nogil=True, cache=True)
def warp_sample(src, row0, rows, a0, a1, a2, a3, a4, a5, interp, x, y):
    """Output pixel (x, y) of the source ``src[row0:row0 + rows]`` (2-d) warped through the
    inverse affine map ``(a0 a1 a2; a3 a4 a5)`` (output -> source, relative to ``row0``):
    :func:`warp_pixel` on a row slice, without making one (the tiles of
    :func:`warp_tile_pixel` share one source array). ``row0 + rows <= src.shape[0]``."""
    w = src.shape[1]
    sx = a0 * x + a1 * y + a2
    sy = a3 * x + a4 * y + a5
    # coverage: the centre maps inside the source, both ends closed (OpenCV's nearest
    # warp); also false for NaN
    if not (-0.5 <= sx <= w - 0.5 and -0.5 <= sy <= rows - 0.5):
        return math.nan
    if interp == INTERP_SHIFT:  # integer sx, sy: inside the source, a copy
        return float(src[row0 + int(sy), int(sx)])
    if interp == INTERP_BILINEAR:
        # OpenCV 5.1's replicated border, measured: the source point is clamped into
        # [0, w-1] x [0, h-1] first, then the taps floor(s), +1 are read (the second one
        # replicated at the last column/row). Same values as clamping each tap, but a
        # point left of column 0 reads column 1 (weight 0), which matters for NaN.
        cx = min(max(sx, 0.0), w - 1.0)
        cy = min(max(sy, 0.0), rows - 1.0)
        ix = int(math.floor(cx))
        iy = int(math.floor(cy))
        fx = cx - ix
        fy = cy - iy
        x1 = min(ix + 1, w - 1)
        y0 = row0 + iy
        y1 = row0 + min(iy + 1, rows - 1)
        p00 = float(src[y0, ix])
        p01 = float(src[y0, x1])
        p10 = float(src[y1, ix])
        p11 = float(src[y1, x1])
        v0 = p00 + fx * (p01 - p00)
        v1 = p10 + fx * (p11 - p10)
        return v0 + fy * (v1 - v0)
    if interp == INTERP_CUBIC:
        # OpenCV 5.1 computes float bicubic warps at the exact source point (measured: no
        # 1/32 px grid, unlike Lanczos-4) with Keys' kernel, a = -0.75; taps ix-1 .. ix+2,
        # replicated at the edge; float64 here (within float32 rounding of OpenCV's)
        ix = int(math.floor(sx))
        iy = int(math.floor(sy))
        fx = sx - ix
        fy = sy - iy
        total = 0.0
        for i in range(4):
            wy = _cubic_weight(fy - (i - 1))
            ty = row0 + min(max(iy - 1 + i, 0), rows - 1)
            row = 0.0
            for j in range(4):
                tx = min(max(ix - 1 + j, 0), w - 1)
                row += float(src[ty, tx]) * _cubic_weight(fx - (j - 1))
            total += wy * row
        return total
    # Lanczos-4 on OpenCV's 1/32-pixel grid
    row_x = (a1 * y + a2) * _AB_SCALE
    row_y = (a4 * y + a5) * _AB_SCALE
    col_x = a0 * x * _AB_SCALE
    col_y = a3 * x * _AB_SCALE
    if not (abs(row_x) < 1e15 and abs(row_y) < 1e15 and abs(col_x) < 1e15 and abs(col_y) < 1e15):
        return math.nan  # terms that cancel to a covered point but overflow the integers
    gx = (_cv_round(row_x) + 16 + _cv_round(col_x)) >> 5
    gy = (_cv_round(row_y) + 16 + _cv_round(col_y)) >> 5
    ix = gx >> 5
    iy = gy >> 5
    fx = gx & 31
    fy = gy & 31
    acc = np.float32(0.0)
    if ix - 3 >= 0 and ix + 4 <= w - 1 and iy - 3 >= 0 and iy + 4 <= rows - 1:
        # OpenCV's interior arithmetic, to the bit: float32 weights wy*wx, each row summed
        # left to right in float32, rows added in float32
        for i in range(8):
            wy = LANCZOS4_TABLE[fy, i]
            row = np.float32(0.0)
            for j in range(8):
                row += np.float32(src[row0 + iy - 3 + i, ix - 3 + j]) * (wy * LANCZOS4_TABLE[fx, j])
            acc += row
        return float(acc)
    # OpenCV's border branch: taps clamped to the edge, all 64 added one after another
    for i in range(8):
        wy = LANCZOS4_TABLE[fy, i]
        ty = row0 + min(max(iy - 3 + i, 0), rows - 1)
        for j in range(8):
            tx = min(max(ix - 3 + j, 0), w - 1)
            acc += np.float32(src[ty, tx]) * (wy * LANCZOS4_TABLE[fx, j])
    return float(acc)


@njit(nogil=True, cache=True)
def warp_pixel(src, a0, a1, a2, a3, a4, a5, interp, x, y):
    """The value of output pixel (x, y) of a 2-d ``src`` warped through the inverse affine
    map ``(a0 a1 a2; a3 a4 a5)`` (output -> source): NaN where the pixel's centre maps
    outside the source, else the interpolated value with taps off the edge replicated
    (module docstring). ``interp``: ``codes.INTERP_*`` or ``INTERP_SHIFT``. Returned as
    float64; Lanczos values are computed in float32 exactly as OpenCV does (bit-identical
    on the CPU), bilinear ones in float64 (within one float32 ulp of OpenCV's)."""
    return warp_sample(src, 0, src.shape[0], a0, a1, a2, a3, a4, a5, interp, x, y)


# Columns of a tile table row (float64; the integers are exact)
TILE_MATRIX = 0  # 0..5: the tile's inverse matrix, output (x, y - tile_y0) -> source (x, y - src_y0)
TILE_OUT_Y0 = 6  # first output row the tile writes (of the band being written)
TILE_OUT_Y1 = 7  # one past its last
TILE_Y0 = 8  # the output row of the tile's local row 0 (<= out_y0: a tile cut at its top)
TILE_SRC_Y0 = 9  # first source row of the tile's source slice (of the source array)
TILE_SRC_Y1 = 10  # one past its last: taps beyond replicate this slice's edge rows
TILE_INTERP = 11  # warp_code of the tile's matrix
TILE_COLUMNS = 12


@njit(nogil=True, cache=True)
def find_tile(table, r):
    """Index of the tile table row whose output rows hold row ``r``, or -1 (no tile: the
    frame does not reach that row). Rows are sorted by ``TILE_OUT_Y0`` and disjoint, so a
    binary search; a thread finds its tile from its output row alone."""
    lo = 0
    hi = table.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid, TILE_OUT_Y0] <= r:
            lo = mid + 1
        else:
            hi = mid
    t = lo - 1
    if t >= 0 and r < table[t, TILE_OUT_Y1]:
        return t
    return -1


@njit(nogil=True, cache=True)
def warp_tile_pixel(src, table, x, r):
    """Output pixel (x, r) of a tiled warp of the 2-d ``src`` (:func:`tile_table`): the
    value warping its tile alone gives that pixel; NaN on rows no tile covers."""
    t = find_tile(table, r)
    if t < 0:
        return math.nan
    s0 = int(table[t, TILE_SRC_Y0])
    return warp_sample(src, s0, int(table[t, TILE_SRC_Y1]) - s0, table[t, 0], table[t, 1], table[t, 2],
                       table[t, 3], table[t, 4], table[t, 5], int(table[t, TILE_INTERP]), x,
                       r - int(table[t, TILE_Y0]))


@njit(nogil=True, cache=True)
def _warp_tiles(src, table, out):
    for c in range(out.shape[0]):
        plane = src[c]
        for r in range(out.shape[1]):
            for x in range(out.shape[2]):
                out[c, r, x] = warp_tile_pixel(plane, table, x, r)


def tile_table(tiles, interpolation, out_rows: int, src_rows: int) -> np.ndarray:
    """The tile table of one frame's band, for :func:`warp_tiles_cpu` / ``warp_tiles_gpu``.

    Parameters
    ----------
    tiles : iterable of (out_y0, out_y1, tile_y0, src_y0, src_y1, matrix)
        Per tile: the output rows ``[out_y0, out_y1)`` it writes and the output row
        ``tile_y0`` of its local row 0 (all relative to the band being written); the source
        rows ``[src_y0, src_y1)`` it reads (relative to the source array); ``matrix``
        (2x3) maps those source rows (local: row ``src_y0`` is y = 0) to the tile's local
        rows, as ``cv2.warpAffine`` would take it. In output order, not overlapping.
    interpolation : str or int
        ``"bilinear"`` / ``"lanczos"`` or its code.
    out_rows, src_rows : int
        Heights of the output band and of the source array (checked against the tiles).

    Returns
    -------
    (T, TILE_COLUMNS) float64 array
        One row per tile: the inverse matrix (as ``cv2.invertAffineTransform``), the row
        ranges and the per-tile interpolation code (``warp_code``).

    Raises
    ------
    ValueError
        Tiles out of order, overlapping, or outside the output or source rows.
    """
    code = interpolation_code(interpolation)
    rows = []
    last = 0
    for out_y0, out_y1, tile_y0, src_y0, src_y1, matrix in tiles:
        if not (last <= out_y0 < out_y1 <= out_rows and tile_y0 <= out_y0):
            raise ValueError(f"tile rows {out_y0}:{out_y1} (local 0 at {tile_y0}) out of order or outside "
                             f"the {out_rows} output rows")
        if not 0 <= src_y0 < src_y1 <= src_rows:
            raise ValueError(f"tile source rows {src_y0}:{src_y1} outside the {src_rows} source rows")
        if np.shape(matrix) != (2, 3):
            raise ValueError(f"matrix must be 2x3, not {np.shape(matrix)}")
        last = out_y1
        row = np.empty(TILE_COLUMNS, np.float64)
        row[:6] = invert_affine(matrix)
        row[6:11] = (out_y0, out_y1, tile_y0, src_y0, src_y1)
        row[TILE_INTERP] = warp_code(matrix, code)
        rows.append(row)
    if not rows:
        return np.empty((0, TILE_COLUMNS), np.float64)
    return np.stack(rows)


def check_tiles_args(src, table, out) -> None:
    """Shape checks shared by the CPU and GPU tiled warps."""
    if src.ndim not in (2, 3) or out.ndim != src.ndim:
        raise ValueError(f"src and out must both be (h, w) or (C, h, w), not {src.shape} and {out.shape}")
    if src.ndim == 3 and src.shape[0] != out.shape[0]:
        raise ValueError(f"src has {src.shape[0]} channels, out {out.shape[0]}")
    if table.ndim != 2 or table.shape[1] != TILE_COLUMNS:
        raise ValueError(f"the tile table must be (T, {TILE_COLUMNS}), not {table.shape}")


def warp_tiles_cpu(src: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Warp every tile of a tile table from ``src`` into ``out`` (the CPU twin of
    ``gpu.warp.warp_tiles_gpu``): each pixel as warping its tile alone with
    :func:`warp_affine_cpu` (i.e. as ``CpuBackend.warp`` of the tile's source slice), NaN on
    rows no tile writes.

    Parameters
    ----------
    src : (hs, ws) or (C, hs, ws) array
        Source rows, channels first; any real dtype (read as float; NaN = masked).
    table : (T, TILE_COLUMNS) float64 array
        From :func:`tile_table`.
    out : (h, W) or (C, h, W) float32 array
        Written: every pixel.

    Returns
    -------
    out
    """
    check_tiles_args(src, table, out)
    if src.ndim == 2:
        _warp_tiles(src[None], table, out[None])
    else:
        _warp_tiles(src, table, out)
    return out


@njit(nogil=True, cache=True)
def _warp_2d(src, a0, a1, a2, a3, a4, a5, interp, out):
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            out[y, x] = warp_pixel(src, a0, a1, a2, a3, a4, a5, interp, x, y)


@njit(nogil=True, cache=True)
def _warp_3d(src, a0, a1, a2, a3, a4, a5, interp, out):
    for c in range(out.shape[2]):
        plane = src[:, :, c]
        for y in range(out.shape[0]):
            for x in range(out.shape[1]):
                out[y, x, c] = warp_pixel(plane, a0, a1, a2, a3, a4, a5, interp, x, y)


def check_warp_args(src, matrix, out) -> None:
    """Shape checks shared by the CPU and GPU warps."""
    if src.ndim not in (2, 3) or out.ndim != src.ndim:
        raise ValueError(f"src and out must both be (h, w) or (h, w, C), not {src.shape} and {out.shape}")
    if src.ndim == 3 and src.shape[2] != out.shape[2]:
        raise ValueError(f"src has {src.shape[2]} channels, out {out.shape[2]}")
    if np.shape(matrix) != (2, 3):
        raise ValueError(f"matrix must be 2x3, not {np.shape(matrix)}")


def warp_affine_cpu(src: np.ndarray, matrix, out: np.ndarray, interpolation) -> np.ndarray:
    """Warp ``src`` into ``out`` as ``CpuBackend.warp`` does: ``cv2.warpAffine(src, matrix,
    (W, h), flags, BORDER_REPLICATE)``, NaN where the pixel centre maps outside ``src``.

    Parameters
    ----------
    src : (hs, ws) or (hs, ws, C) array
        Source pixels, any real dtype (read as float; NaN = masked).
    matrix : (2, 3) array_like
        Maps source (x, y) to output (x, y), pixels (OpenCV convention); inverted here.
    out : (h, W) or (h, W, C) float32 array
        Written: every pixel, NaN where the source does not cover its centre.
    interpolation : str or int
        ``"bilinear"`` or ``"lanczos"`` (Lanczos-4, OpenCV's INTER_LANCZOS4), or its code.

    Returns
    -------
    out
    """
    check_warp_args(src, matrix, out)
    a = invert_affine(matrix)
    code = warp_code(matrix, interpolation)
    kernel = _warp_2d if src.ndim == 2 else _warp_3d
    kernel(src, a[0], a[1], a[2], a[3], a[4], a[5], code, out)
    return out
