"""GPU twin of ``cpu/combine.py``: reject and reduce a band, one CUDA thread per pixel.

Same contract as :func:`_skystack_kernels.cpu.combine.combine_band` without its optional
normalisation (``scale``/``offset``: the CuPy backend normalises the warped frames on the
device, where that costs nothing next to the transfers); the rejection and reduction are
the CPU functions compiled for the device (``twins.py``), so both sides follow one
definition. Every kernel here and in ``warp.py`` is compiled to PTX for sm_80 and sm_90 by
the tests (tests/kernels/test_gpu_ptx.py), with the launch arguments built by
:func:`combine_launch_args` as here.

Per-pixel scratch (the gathered values, the keep-mask, selection buffers) lives in
global memory laid out ``(value index, thread)``: thread ``t`` uses column ``t``, so the
32 threads of a warp touching their j-th value touch 32 neighbouring addresses (one
coalesced transaction), and any stack size N works (no compile-time local array size).
A grid-stride loop lets a fixed number of threads (sized to a scratch budget) cover any
band. Rejections are tallied with ``cuda.atomic.add``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..codes import REJECT_GESD
from ..cpu import reduce as _reduce
from ..cpu import reject as _reject
from ..cpu import select as _select
from ..cpu.reject import HIGH, LOW
from ..cpu.tdist import gesd_critical_values
from .twins import device_twins

_dev = device_twins(_select, _reject, _reduce)
_reject_pixel = _dev.reject_pixel
_reduce_pixel = _dev.reduce_pixel

THREADS_PER_BLOCK = 128
# per stacked value and thread: vals, kv, work, work2, work3 (float64); frames, kp, kp2 (int32); flags (int8)
SCRATCH_BYTES_PER_VALUE = 5 * 8 + 3 * 4 + 1
# per thread: the median guesses carried from one pixel to the next (6 float64: the
# rejection centre's and the MAD's, then the reduction's)
HINTS = 6
SCRATCH_BYTES_PER_THREAD = HINTS * 8
DEFAULT_SCRATCH_BYTES = 256 * 1024 * 1024


@cuda.jit
def _combine_kernel(band, weights, reject, reduce, p_low, p_high, max_iter, crit, out, count, rejected,
                    s_vals, s_kv, s_work, s_work2, s_work3, s_frames, s_kp, s_kp2, s_flags, s_hints):
    t = cuda.grid(1)
    n_threads = s_vals.shape[1]
    if t >= n_threads:
        return
    n_frames = band.shape[0]
    h = band.shape[1]
    w = band.shape[2]
    vals = s_vals[:, t]
    kv = s_kv[:, t]
    work = s_work[:, t]
    work2 = s_work2[:, t]
    work3 = s_work3[:, t]
    frames = s_frames[:, t]
    kp = s_kp[:, t]
    kp2 = s_kp2[:, t]
    flags = s_flags[:, t]
    reject_hint = s_hints[0:4, t]
    reduce_hint = s_hints[4:6, t]
    for i in range(6):
        s_hints[i, t] = math.nan
    p = t
    while p < h * w:
        y = p // w
        x = p - y * w
        n = 0
        for i in range(n_frames):
            v = band[i, y, x]  # neighbouring threads, neighbouring x: coalesced
            if not (math.isnan(v) or math.isinf(v)):
                vals[n] = v
                frames[n] = i
                n += 1
        r = _reject_pixel(reject, vals, n, flags, p_low, p_high, max_iter, crit, kv, kp, work, work2, work3, kp2,
                          reject_hint)
        if r > 0:
            for j in range(n):
                f = flags[j]
                if f == LOW:
                    cuda.atomic.add(rejected, (frames[j], 0), 1)
                elif f == HIGH:
                    cuda.atomic.add(rejected, (frames[j], 1), 1)
        value, kept = _reduce_pixel(reduce, vals, frames, n, flags, weights, False, work, reduce_hint)
        out[y, x] = value
        count[y, x] = kept
        p += n_threads


def combine_scratch_nbytes(n_frames: int, n_threads: int) -> int:
    """Bytes of scratch :func:`combine_band_gpu` needs to run ``n_threads`` threads on an
    ``n_frames`` stack (pass a buffer at least this big as ``scratch`` to reuse memory
    across calls)."""
    return (SCRATCH_BYTES_PER_VALUE * max(n_frames, 1) + SCRATCH_BYTES_PER_THREAD) * n_threads


def _as_stream(stream):
    """0 / None, a numba stream, or a foreign stream with a ``ptr`` (CuPy's)."""
    if stream is None or (isinstance(stream, int) and stream == 0):
        return 0
    if hasattr(stream, "ptr") and not hasattr(stream, "handle"):
        return cuda.external_stream(stream.ptr)
    return stream


def _carve(scratch, n_frames: int, n_threads: int):
    """Typed (rows, n_threads) views into a flat uint8 device buffer, in the kernel's
    argument order. Laid out widest type first (float64, int32, int8), so every part is
    aligned without padding and :func:`combine_scratch_nbytes` is exact."""
    layout = (("vals", np.float64, n_frames), ("kv", np.float64, n_frames), ("work", np.float64, n_frames),
              ("work2", np.float64, n_frames), ("work3", np.float64, n_frames), ("hints", np.float64, HINTS), ("frames", np.int32, n_frames),
              ("kp", np.int32, n_frames), ("kp2", np.int32, n_frames), ("flags", np.int8, n_frames))
    views = {}
    offset = 0
    for name, dtype, rows in layout:
        size = rows * n_threads * np.dtype(dtype).itemsize
        views[name] = scratch[offset:offset + size].view(dtype).reshape(rows, n_threads)
        offset += size
    order = ("vals", "kv", "work", "work2", "work3", "frames", "kp", "kp2", "flags", "hints")
    return [views[name] for name in order]


def combine_band_gpu(band, weights, reject, reduce, p_low, p_high, max_iter, out, count, rejected, stream=0,
                     scratch=None, scratch_bytes=DEFAULT_SCRATCH_BYTES) -> None:
    """Reject outliers along axis 0 of an ``(N, h, W)`` band and reduce what is kept, on
    the GPU. Same contract as :func:`_skystack_kernels.cpu.combine.combine_band`.

    Parameters
    ----------
    band : (N, h, W) float32 device array
        CuPy array or numba device array (anything with ``__cuda_array_interface__``);
        NumPy arrays under the CUDA simulator. May be strided. NaN / inf = no data.
    weights : (N,) float32 device array
    reject, reduce : int
        ``codes.REJECT[...]``, ``codes.REDUCE[...]``.
    p_low, p_high : float
        Method parameters (see ``cpu/reject.py``).
    max_iter : int
        Pass cap of the iterative methods (<= 0: until convergence).
    out : (h, W) float32 device array
        Written.
    count : (h, W) int32 device array
        Written.
    rejected : (N, 2) int64 device array
        Accumulated (atomic adds).
    stream : int, numba stream or CuPy stream
        Where the kernel (and the small uploads) are queued; 0: the default stream.
    scratch : 1-d uint8 device array, optional
        Reusable scratch; the number of threads is then what it can hold
        (:func:`combine_scratch_nbytes`). Default: allocated per call.
    scratch_bytes : int
        Budget for the per-call scratch when ``scratch`` is None.
    """
    n_frames, h, w = band.shape
    if tuple(weights.shape) != (n_frames,) or tuple(rejected.shape) != (n_frames, 2):
        raise ValueError("weights must be (N,) and rejected (N, 2) for an (N, h, W) band")
    if tuple(out.shape) != (h, w) or tuple(count.shape) != (h, w):
        raise ValueError("out and count must be (h, W) for an (N, h, W) band")
    n_pix = h * w
    if n_pix == 0:
        return
    s = _as_stream(stream)
    per_thread = combine_scratch_nbytes(n_frames, 1)
    if scratch is not None:
        n_threads = min(n_pix, scratch.shape[0] // per_thread)
        if n_threads < 1:
            raise ValueError(f"scratch holds {scratch.shape[0]} bytes; one thread needs {per_thread}")
    else:
        n_threads = min(n_pix, max(THREADS_PER_BLOCK, scratch_bytes // per_thread))
        scratch = cuda.device_array(combine_scratch_nbytes(n_frames, n_threads), dtype=np.uint8, stream=s)
    parts = _carve(scratch, max(n_frames, 1), n_threads)
    crit = np.full(n_frames + 1, np.inf)
    if reject == REJECT_GESD:
        gesd_critical_values(float(p_low), crit)
    d_crit = cuda.to_device(crit, stream=s)
    blocks = (n_threads + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    _combine_kernel[blocks, THREADS_PER_BLOCK, s](*combine_launch_args(band, weights, reject, reduce, p_low, p_high,
                                                                       max_iter, d_crit, out, count, rejected, parts))


def combine_launch_args(band, weights, reject, reduce, p_low, p_high, max_iter, crit, out, count, rejected,
                        parts) -> tuple:
    """The arguments of ``_combine_kernel`` in order, with the scalar types it is launched
    with (Python int / float: int64 / float64). One function for the launch and for the
    PTX compilation tests, so those compile exactly the signature that runs."""
    return (band, weights, int(reject), int(reduce), float(p_low), float(p_high), int(max_iter), crit, out, count,
            rejected, *parts)
