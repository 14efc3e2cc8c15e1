"""Affine warp with OpenCV's exact semantics (bilinear and Lanczos-4), in Numba.

The CPU backend warps with ``cv2.warpAffine(..., borderMode=BORDER_CONSTANT,
borderValue=NaN)``; this module reproduces that result so the GPU twin
(``gpu/warp.py``, which compiles :func:`warp_pixel` for the device) can be checked against
it, and serves as a fallback. Measured against OpenCV 5.1 (tests/kernels): NaN masks
identical; Lanczos values bit-identical, bilinear within one float32 ulp.

What "the source covers an output pixel" means (= where the output is not NaN):

- bilinear: all 2x2 taps lie inside the source: ``0 <= sx < w-1`` and ``0 <= sy < h-1``
  (OpenCV 5 computes the source point in floating point). The taps are read even when
  their weight is 0, so a source point exactly on the last column or row is not covered.
  Exception, as in OpenCV: an exact integer translation (``[[1, 0, tx], [0, 1, ty]]``,
  integer ``tx, ty``) is a shifted copy, every source pixel lands on one output pixel.
- Lanczos-4: all 8x8 taps lie inside the source. The source point is first quantised as
  OpenCV does (fixed point, 1/32 pixel: ``INTER_BITS = 5``, ``AB_BITS = 10``, rounding
  half to even as ``cvRound``), the taps are ``ix-3 .. ix+4`` around ``ix = floor(sx)``
  and the weights come from OpenCV's normalised 32-entry table. Taps of zero weight count
  too (OpenCV multiplies the NaN border by the weight; NaN * 0 is NaN).

A NaN inside the source (masked pixel) makes every output pixel whose taps touch it NaN.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..codes import INTERP_BILINEAR, INTERP_LANCZOS4, INTERPOLATION

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
    if code not in (INTERP_BILINEAR, INTERP_LANCZOS4):
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
def warp_pixel(src, a0, a1, a2, a3, a4, a5, interp, x, y):
    """The value of output pixel (x, y) of a 2-d ``src`` warped through the inverse affine
    map ``(a0 a1 a2; a3 a4 a5)`` (output -> source), NaN where the source does not cover
    it (module docstring). ``interp``: ``codes.INTERP_*`` or ``INTERP_SHIFT``. Returned as
    float64; Lanczos values are computed in float32 exactly as OpenCV does (bit-identical
    on the CPU), bilinear ones in float64 (within one float32 ulp of OpenCV's)."""
    h = src.shape[0]
    w = src.shape[1]
    if interp == INTERP_SHIFT:
        sx = x + a2
        sy = y + a5
        if not (0.0 <= sx <= w - 1 and 0.0 <= sy <= h - 1):
            return math.nan
        return float(src[int(sy), int(sx)])
    if interp == INTERP_BILINEAR:
        sx = a0 * x + a1 * y + a2
        sy = a3 * x + a4 * y + a5
        if not (0.0 <= sx < w - 1 and 0.0 <= sy < h - 1):  # also false for NaN
            return math.nan
        ix = int(math.floor(sx))
        iy = int(math.floor(sy))
        fx = sx - ix
        fy = sy - iy
        p00 = float(src[iy, ix])
        p01 = float(src[iy, ix + 1])
        p10 = float(src[iy + 1, ix])
        p11 = float(src[iy + 1, ix + 1])
        v0 = p00 + fx * (p01 - p00)
        v1 = p10 + fx * (p11 - p10)
        return v0 + fy * (v1 - v0)
    # Lanczos-4 on OpenCV's 1/32-pixel grid
    row_x = (a1 * y + a2) * _AB_SCALE
    row_y = (a4 * y + a5) * _AB_SCALE
    col_x = a0 * x * _AB_SCALE
    col_y = a3 * x * _AB_SCALE
    if not (abs(row_x) < 1e15 and abs(row_y) < 1e15 and abs(col_x) < 1e15 and abs(col_y) < 1e15):
        return math.nan  # far outside (or NaN): keep the integer arithmetic in range
    gx = (_cv_round(row_x) + 16 + _cv_round(col_x)) >> 5
    gy = (_cv_round(row_y) + 16 + _cv_round(col_y)) >> 5
    ix = gx >> 5
    iy = gy >> 5
    if ix - 3 < 0 or ix + 4 > w - 1 or iy - 3 < 0 or iy + 4 > h - 1:
        return math.nan
    fx = gx & 31
    fy = gy & 31
    # OpenCV's arithmetic, to the bit: float32 weights wy*wx, each row summed left to
    # right in float32, rows added in float32
    acc = np.float32(0.0)
    for i in range(8):
        wy = LANCZOS4_TABLE[fy, i]
        row = np.float32(0.0)
        for j in range(8):
            row += np.float32(src[iy - 3 + i, ix - 3 + j]) * (wy * LANCZOS4_TABLE[fx, j])
        acc += row
    return float(acc)


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
    """Warp ``src`` into ``out`` as ``cv2.warpAffine(src, matrix, (W, h), flags,
    BORDER_CONSTANT, NaN)`` does.

    Parameters
    ----------
    src : (hs, ws) or (hs, ws, C) array
        Source pixels, any real dtype (read as float; NaN = masked).
    matrix : (2, 3) array_like
        Maps source (x, y) to output (x, y), pixels (OpenCV convention); inverted here.
    out : (h, W) or (h, W, C) float32 array
        Written: every pixel, NaN where the source does not cover it.
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
