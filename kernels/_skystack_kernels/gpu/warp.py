"""GPU twin of ``cpu/warp.py``: affine warp, bilinear or Lanczos-4, with the CPU backend's
edge rules (taps off the source replicate its edge, NaN where the pixel centre maps
outside it).

One thread per output pixel (and channel); the per-pixel functions are
:func:`cpu.warp.warp_pixel` and :func:`cpu.warp.warp_tile_pixel` compiled for the device
(``twins.py``), so coverage, taps and arithmetic are the CPU twin's. The Lanczos weight
table is a module constant, which numba.cuda places in constant memory.

:func:`warp_tiles_gpu` warps all 8-row tiles of one frame's band (every channel) in one
launch: each thread finds its tile from its output row (a binary search in the tile
table), so a 4K frame costs one launch instead of ~270 per channel.
"""
from __future__ import annotations

from numba import cuda

from ..cpu import warp as _warp
from .combine import _as_stream
from .twins import device_twins

_dev = device_twins(_warp)
_warp_pixel = _dev.warp_pixel
_warp_tile_pixel = _dev.warp_tile_pixel

BLOCK = (32, 8)  # 32 threads along x: a warp reads (mostly) one source row segment


@cuda.jit
def _warp_kernel_2d(src, out, a0, a1, a2, a3, a4, a5, interp):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        out[y, x] = _warp_pixel(src, a0, a1, a2, a3, a4, a5, interp, x, y)


@cuda.jit
def _warp_kernel_3d(src, out, a0, a1, a2, a3, a4, a5, interp):
    x, y = cuda.grid(2)
    if y < out.shape[0] and x < out.shape[1]:
        for c in range(out.shape[2]):
            out[y, x, c] = _warp_pixel(src[:, :, c], a0, a1, a2, a3, a4, a5, interp, x, y)


@cuda.jit
def _tiles_kernel_2d(src, table, out):
    x, r = cuda.grid(2)
    if r < out.shape[0] and x < out.shape[1]:
        out[r, x] = _warp_tile_pixel(src, table, x, r)


@cuda.jit
def _tiles_kernel_planar(src, table, out):
    x, r, c = cuda.grid(3)
    if c < out.shape[0] and r < out.shape[1] and x < out.shape[2]:
        out[c, r, x] = _warp_tile_pixel(src[c], table, x, r)


def warp_affine_gpu(src, matrix, out, interpolation, stream=0) -> None:
    """Warp ``src`` into ``out`` on the GPU, as ``CpuBackend.warp`` does:
    ``cv2.warpAffine(src, matrix, (W, h), flags, BORDER_REPLICATE)``, NaN where the pixel
    centre maps outside ``src`` (see ``cpu/warp.py`` for the exact rule).

    Parameters
    ----------
    src : (hs, ws) or (hs, ws, C) device array
        Any real dtype; NaN = masked. CuPy / numba device arrays on a GPU, NumPy arrays
        under the CUDA simulator.
    matrix : (2, 3) array_like (host)
        Maps source (x, y) to output (x, y) (OpenCV convention); inverted on the host.
    out : (h, W) or (h, W, C) float32 device array
        Written: every pixel, NaN where the source does not cover its centre.
    interpolation : str or int
        ``"bilinear"`` / ``"lanczos"`` or a ``codes.INTERP_*`` code.
    stream : int, numba stream or CuPy stream
        Where the kernel is queued; 0: the default stream.
    """
    _warp.check_warp_args(src, matrix, out)
    h, w = out.shape[0], out.shape[1]
    if h == 0 or w == 0:
        return
    grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1])
    kernel = _warp_kernel_2d if src.ndim == 2 else _warp_kernel_3d
    kernel[grid, BLOCK, _as_stream(stream)](*warp_launch_args(src, matrix, out, interpolation))


def warp_launch_args(src, matrix, out, interpolation) -> tuple:
    """The arguments of ``_warp_kernel_2d`` / ``_warp_kernel_3d`` in order: the inverse
    matrix's six coefficients (float64) and the interpolation code (int64). Shared by the
    launch and the PTX compilation tests (the exact signature that runs)."""
    a = _warp.invert_affine(matrix)
    code = _warp.warp_code(matrix, interpolation)
    return (src, out, float(a[0]), float(a[1]), float(a[2]), float(a[3]), float(a[4]), float(a[5]), int(code))


def warp_tiles_gpu(src, table, out, stream=0) -> None:
    """Warp every tile of a tile table from ``src`` into ``out`` on the GPU, all tiles and
    channels in one launch: the GPU twin of :func:`cpu.warp.warp_tiles_cpu` (each pixel as
    warping its tile alone; NaN on rows no tile writes).

    Parameters
    ----------
    src : (hs, ws) or (C, hs, ws) device array
        Source rows, channels first (planar); any real dtype, NaN = masked. May be strided.
    table : (T, cpu.warp.TILE_COLUMNS) float64 device array
        From :func:`cpu.warp.tile_table`, copied to the device by the caller (a host array
        works too, but numba then copies it synchronously on every call).
    out : (h, W) or (C, h, W) float32 device array
        Written: every pixel. May be strided (e.g. one frame of a ``(C, N, h, W)`` band).
    stream : int, numba stream or CuPy stream
        Where the kernel is queued; 0: the default stream.
    """
    _warp.check_tiles_args(src, table, out)
    h, w = out.shape[out.ndim - 2], out.shape[out.ndim - 1]
    if h == 0 or w == 0 or (out.ndim == 3 and out.shape[0] == 0):
        return
    s = _as_stream(stream)
    gx, gy = (w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1]
    if out.ndim == 2:
        _tiles_kernel_2d[(gx, gy), BLOCK, s](src, table, out)
    else:
        _tiles_kernel_planar[(gx, gy, out.shape[0]), (BLOCK[0], BLOCK[1], 1), s](src, table, out)
