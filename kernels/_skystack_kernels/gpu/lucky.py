"""numba.cuda kernels of lucky-imaging ranking: a batch of frames at once.

The CPU path (``skystack.quality.metrics``) measures one frame at a time with OpenCV:
``INTER_AREA`` downsampling by an integer factor, a Gaussian blur and a 1-tap Laplacian
(both ``BORDER_REFLECT``), the squared Laplacian (the LoG energy) and box means of the
energy and of the view in cells. These kernels compute the same quantities for a
``(B, H, W)`` batch, one thread per output value, so thousands of frames cost a handful of
launches; only ``math`` arithmetic, so they compile to PTX and run in Numba's CUDA
simulator alike.

Numerics: sums are accumulated in float64 and rounded to float32 once (OpenCV rounds
each step in float32), so a view or energy pixel may differ from OpenCV's in its last
bits; cell means are float64 sums of those float32 values.
"""
from __future__ import annotations

import math

from numba import cuda

BLOCK_2D = (32, 8)  # 32 threads along x: a warp reads one row segment of one frame


@cuda.jit(device=True)
def _reflect(i, n):
    """OpenCV's BORDER_REFLECT (``fedcba|abcdefgh|hgfedcb``), any distance off the edge."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        if i < 0:
            i = -i - 1
        else:
            i = 2 * n - i - 1
    return i


@cuda.jit
def _area_kernel(src, scale_y, scale_x, out):
    """``out[b, y, x]``: the area-weighted mean of ``src[b]`` over the source rectangle
    ``[y·scale_y, (y+1)·scale_y) × [x·scale_x, (x+1)·scale_x)``: ``cv2.resize(...,
    INTER_AREA)`` when shrinking, a plain block mean for an integer scale, fractional edge
    weights otherwise (an odd-sized view halved), slivers under 1e-3 pixel dropped as
    OpenCV's area tables drop them."""
    x, y, b = cuda.grid(3)
    if b < out.shape[0] and y < out.shape[1] and x < out.shape[2]:
        h, w = src.shape[1], src.shape[2]
        fy1 = y * scale_y
        fy2 = min(fy1 + scale_y, float(h))
        fx1 = x * scale_x
        fx2 = min(fx1 + scale_x, float(w))
        s = 0.0
        for i in range(int(math.floor(fy1)), min(int(math.ceil(fy2)), h)):
            wy = min(i + 1.0, fy2) - max(float(i), fy1)
            if wy > 1e-3:
                r = 0.0
                for j in range(int(math.floor(fx1)), min(int(math.ceil(fx2)), w)):
                    wx = min(j + 1.0, fx2) - max(float(j), fx1)
                    if wx > 1e-3:
                        r += wx * float(src[b, i, j])
                s += wy * r
        out[b, y, x] = s / ((fy2 - fy1) * (fx2 - fx1))


@cuda.jit
def _blur_kernel(src, weights, axis, out):
    """One pass of a separable convolution along ``axis`` (1: rows, y; 2: columns, x) with
    the odd-length ``weights``, BORDER_REFLECT."""
    x, y, b = cuda.grid(3)
    if b < out.shape[0] and y < out.shape[1] and x < out.shape[2]:
        r = weights.shape[0] // 2
        s = 0.0
        if axis == 2:
            w = src.shape[2]
            for k in range(weights.shape[0]):
                s += weights[k] * src[b, y, _reflect(x + k - r, w)]
        else:
            h = src.shape[1]
            for k in range(weights.shape[0]):
                s += weights[k] * src[b, _reflect(y + k - r, h), x]
        out[b, y, x] = s


@cuda.jit
def _log_energy_kernel(blurred, out):
    """``out = lap²`` with the 4-neighbour Laplacian of ``blurred`` (``cv2.Laplacian``,
    ``ksize=1``, BORDER_REFLECT: a neighbour off the edge is the edge pixel itself)."""
    x, y, b = cuda.grid(3)
    if b < out.shape[0] and y < out.shape[1] and x < out.shape[2]:
        h, w = blurred.shape[1], blurred.shape[2]
        c = float(blurred[b, y, x])
        lap = (float(blurred[b, y, _reflect(x - 1, w)]) + float(blurred[b, y, _reflect(x + 1, w)])
               + float(blurred[b, _reflect(y - 1, h), x]) + float(blurred[b, _reflect(y + 1, h), x]) - 4.0 * c)
        out[b, y, x] = lap * lap


@cuda.jit
def _cells_kernel(energy, view, dx, dy, size, nx, energy_mean, level_mean, area):
    """Box means of ``energy`` and ``view`` over the cells of each frame: cell ``k``
    (row-major in an ``ny × nx`` grid of side ``size``) of frame ``b`` covers
    ``[k_x·size + dx[b], +size) × [k_y·size + dy[b], +size)`` clipped to the view;
    ``area`` is the clipped pixel count (0: outside, means 0)."""
    k, b = cuda.grid(2)
    if b < energy_mean.shape[0] and k < energy_mean.shape[1]:
        h, w = view.shape[1], view.shape[2]
        x0 = (k % nx) * size + dx[b]
        y0 = (k // nx) * size + dy[b]
        a0 = min(max(x0, 0), w)
        a1 = min(max(x0 + size, 0), w)
        b0 = min(max(y0, 0), h)
        b1 = min(max(y0 + size, 0), h)
        se = 0.0
        sv = 0.0
        for yy in range(b0, b1):
            for xx in range(a0, a1):
                se += energy[b, yy, xx]
                sv += view[b, yy, xx]
        n = (a1 - a0) * (b1 - b0)
        area[b, k] = n
        energy_mean[b, k] = se / max(n, 1)
        level_mean[b, k] = sv / max(n, 1)


def _grid3(shape) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    b, h, w = shape
    grid = ((w + BLOCK_2D[0] - 1) // BLOCK_2D[0], (h + BLOCK_2D[1] - 1) // BLOCK_2D[1], b)
    return grid, (BLOCK_2D[0], BLOCK_2D[1], 1)


def area_downsample_gpu(src, out, stream=0) -> None:
    """Area-average each frame of ``src`` (B, H, W; uint8, uint16 or float32) onto the
    smaller grid of ``out`` (B, h, w) float32, as ``cv2.resize(frame, (w, h),
    interpolation=cv2.INTER_AREA)``."""
    if out.shape[0] != src.shape[0] or not (0 < out.shape[1] <= src.shape[1] and 0 < out.shape[2] <= src.shape[2]):
        raise ValueError(f"cannot area-average {src.shape} onto {out.shape}")
    grid, block = _grid3(out.shape)
    _area_kernel[grid, block, stream](*area_launch_args(src, out))


def area_launch_args(src, out) -> tuple:
    """``_area_kernel``'s arguments: the source/output size ratios as float64 (shared with
    the PTX compilation test, so it compiles the signature that runs)."""
    return src, src.shape[1] / out.shape[1], src.shape[2] / out.shape[2], out


def blur_gpu(src, weights, axis: int, out, stream=0) -> None:
    """Convolve every frame of ``src`` (B, h, w) float32 with the odd 1-D ``weights``
    (float64 device array) along ``axis`` (1 = y, 2 = x), BORDER_REFLECT, into ``out``."""
    if axis not in (1, 2) or src.shape != out.shape or weights.shape[0] % 2 != 1:
        raise ValueError(f"blur along axis {axis} of {src.shape} into {out.shape} with {weights.shape[0]} taps")
    if out.size == 0:
        return
    grid, block = _grid3(out.shape)
    _blur_kernel[grid, block, stream](src, weights, int(axis), out)


def log_energy_gpu(blurred, out, stream=0) -> None:
    """Squared 4-neighbour Laplacian of every frame of ``blurred`` (B, h, w) float32."""
    if blurred.shape != out.shape:
        raise ValueError(f"Laplacian of {blurred.shape} into {out.shape}")
    if out.size == 0:
        return
    grid, block = _grid3(out.shape)
    _log_energy_kernel[grid, block, stream](blurred, out)


def cells_gpu(energy, view, dx, dy, size: int, ny: int, nx: int, energy_mean, level_mean, area, stream=0) -> None:
    """Cell means of ``energy`` and ``view`` (B, h, w) float32 with per-frame cell offsets
    ``dx``, ``dy`` (B,) int64 into ``energy_mean``, ``level_mean`` (B, ny·nx) float64 and
    ``area`` (B, ny·nx) int64 (see ``_cells_kernel``)."""
    b = energy.shape[0]
    if energy_mean.shape != (b, ny * nx) or level_mean.shape != (b, ny * nx) or area.shape != (b, ny * nx):
        raise ValueError(f"cells of {b} frames in a {ny}x{nx} grid into {energy_mean.shape}")
    if b == 0:
        return
    threads = 64
    grid = ((ny * nx + threads - 1) // threads, b)
    _cells_kernel[grid, (threads, 1), stream](energy, view, dx, dy, int(size), int(nx), energy_mean, level_mean,
                                              area)
