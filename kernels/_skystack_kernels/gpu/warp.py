"""GPU twin of ``cpu/warp.py``: affine warp, bilinear or Lanczos-4, OpenCV semantics.

One thread per output pixel; the per-pixel function is :func:`cpu.warp.warp_pixel`
compiled for the device (``twins.py``), so the coverage rule (NaN where the source does
not cover the output) and the taps are OpenCV's on both sides. The Lanczos weight table
is a module constant, which numba.cuda places in constant memory.
"""
from __future__ import annotations

from numba import cuda

from ..cpu import warp as _warp
from .combine import _as_stream
from .twins import device_twins

_warp_pixel = device_twins(_warp).warp_pixel

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


def warp_affine_gpu(src, matrix, out, interpolation, stream=0) -> None:
    """Warp ``src`` into ``out`` on the GPU, as ``cv2.warpAffine(src, matrix, (W, h),
    flags, BORDER_CONSTANT, NaN)`` does (see ``cpu/warp.py`` for the exact rule).

    Parameters
    ----------
    src : (hs, ws) or (hs, ws, C) device array
        Any real dtype; NaN = masked. CuPy / numba device arrays on a GPU, NumPy arrays
        under the CUDA simulator.
    matrix : (2, 3) array_like (host)
        Maps source (x, y) to output (x, y) (OpenCV convention); inverted on the host.
    out : (h, W) or (h, W, C) float32 device array
        Written: every pixel, NaN where the source does not cover it.
    interpolation : str or int
        ``"bilinear"`` / ``"lanczos"`` or a ``codes.INTERP_*`` code.
    stream : int, numba stream or CuPy stream
        Where the kernel is queued; 0: the default stream.
    """
    _warp.check_warp_args(src, matrix, out)
    a = _warp.invert_affine(matrix)
    code = _warp.warp_code(matrix, interpolation)
    h, w = out.shape[0], out.shape[1]
    if h == 0 or w == 0:
        return
    grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1])
    kernel = _warp_kernel_2d if src.ndim == 2 else _warp_kernel_3d
    kernel[grid, BLOCK, _as_stream(stream)](src, out, float(a[0]), float(a[1]), float(a[2]), float(a[3]),
                                            float(a[4]), float(a[5]), int(code))
