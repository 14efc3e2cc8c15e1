"""The band kernel: per output pixel, gather the frames' values, reject, reduce.

The kernel reduces an ``(N, h, w)`` block however the output was cut (full-width row
bands or 2-D tiles): each pixel depends only on its own N values. It reads the block in
tiles of 64 columns transposed to a frame-innermost layout (each pixel's N values
contiguous, in L1), optionally normalising them on the way (``scale``/``offset``: the
backends then skip a pass over every warped frame), and runs the per-pixel rejection
(``reject.py``) and reduction (``reduce.py``) on them. Measured CPU time per value on one
thread: ``benchmarks/kernels.py``.

Also the streaming mean (``accumulate_mean`` / ``finish_mean``) for the O(H x W) path
that a plain mean without rejection takes.

Developers: Numba's on-disk cache (``cache=True``) checks only the file that defines a
function, not the files of the functions it calls. After editing ``reject.py``,
``reduce.py``, ``select.py`` or ``tdist.py``, delete ``__pycache__/*.nbi``/``*.nbc`` here
(or touch this file), or ``combine_band`` keeps running the old code. Fresh installs and
CI are not affected.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uintp

from ..codes import REJECT_GESD
from .reduce import reduce_pixel
from .reject import HIGH, LOW, reject_pixel
from .tdist import gesd_critical_values


# Columns gathered per tile: the tile, (64, N) float32, stays in L1 up to N ~ 150 and in L2
# beyond, and reading each frame's row 64 values (4 cache lines) at a time is ~2.5x faster
# than hopping across the N frames for every pixel (one cache line per frame per pixel);
# 64 measured a few per cent faster than 32 at N = 100 and 400, 128 no better.
_TILE = 64


@njit(nogil=True, cache=True, _nrt=False)
def gather_finite(tile, row, vals, frames):
    """Copy the finite values of ``tile[row]`` (one pixel's values, frame order) into
    ``vals`` and their frame indices into ``frames``; return how many. NaN (and +-inf)
    mean "no data". (Indexing the tile here rather than passing ``tile[row]`` spares a
    reference-counted view per pixel.) Branch-free: every value is written, the count
    only advances past finite ones, so holes cost no mispredicted jumps."""
    n = 0
    for i in range(tile.shape[1]):
        v = tile[row, i]
        vals[uintp(n)] = v
        frames[uintp(n)] = i
        n += math.isfinite(v)
    return n


@njit(nogil=True, cache=True, _nrt=False)
def _load_tile(band, y, x0, x1, scale, offset, tile):
    """``tile[x - x0, i] = band[i, y, x]`` for the columns ``x0:x1``: the frame-innermost
    layout the per-pixel work reads (each pixel's N values contiguous). With ``scale`` and
    ``offset`` the values are normalised on the way, ``v * scale[i] + offset[i]`` in two
    float32 roundings, as the backends' ``x *= scale; x += offset`` on the warped frame."""
    for i in range(band.shape[0]):
        if scale is None:
            for x in range(x0, x1):
                tile[x - x0, i] = band[i, y, x]
        else:
            s = scale[i]
            o = offset[i]
            for x in range(x0, x1):
                tile[x - x0, i] = band[i, y, x] * s + o


@njit(nogil=True, cache=True)
def combine_band(band, weights, reject, reduce, p_low, p_high, max_iter, out, count, rejected, scale=None,
                 offset=None):
    """Reject outliers along axis 0 of an ``(N, h, W)`` block and reduce what is kept.

    The block is any piece of the output (a band of full rows or a 2-D tile): every output
    pixel depends only on its own N values, so the result does not depend on how the
    image was cut.

    Parameters
    ----------
    band : (N, h, W) float32 array
        N warped frames over h x W output pixels; may be a strided view (``band4d[..., c]``).
        NaN (or inf) marks "no data" (not covered, masked) and is ignored everywhere.
    weights : (N,) float32 array
        Per-frame weights of the mean (all ones: plain mean).
    reject : int
        ``codes.REJECT[...]``; definitions and small-stack rules in ``reject.py``.
    reduce : int
        ``codes.REDUCE[...]``: weighted mean or median of the kept values.
    p_low, p_high : float
        sigma/winsorized/mad/linear-fit: kappa low/high; percentile: fractions of the
        median; gesd: significance alpha / max outlier fraction; minmax: how many lowest /
        highest values to drop (rounded).
    max_iter : int
        Pass cap of the iterative methods (<= 0: until convergence).
    out : (h, W) float32 array
        Written: the reduced value, NaN where nothing is kept.
    count : (h, W) int32 array
        Written: number of values kept.
    rejected : (N, 2) int64 array
        Accumulated (+=): per frame, pixels rejected low (column 0) and high (column 1).
    scale, offset : (N,) float32 arrays, optional (both or neither)
        Per-frame normalisation applied to the values first, ``v * scale + offset``
        (float32, two roundings: bit-identical to normalising the frames beforehand with
        NumPy). Without them the values are used as they are.
    """
    n_frames = band.shape[0]
    h = band.shape[1]
    w = band.shape[2]
    if weights.shape[0] != n_frames or rejected.shape[0] != n_frames or rejected.shape[1] != 2:
        raise ValueError("weights must be (N,) and rejected (N, 2) for an (N, h, W) band")
    if out.shape[0] != h or out.shape[1] != w or count.shape[0] != h or count.shape[1] != w:
        raise ValueError("out and count must be (h, W) for an (N, h, W) band")
    if scale is not None and (scale.shape[0] != n_frames or offset.shape[0] != n_frames):
        raise ValueError("scale and offset must both be (N,) for an (N, h, W) band")
    vals = np.empty(n_frames, np.float64)
    frames = np.empty(n_frames, np.int32)
    flags = np.empty(n_frames, np.int8)
    kv = np.empty(n_frames, np.float64)
    kp = np.empty(n_frames, np.int32)
    work = np.empty(n_frames, np.float64)
    work2 = np.empty(n_frames, np.float64)
    work3 = np.empty(n_frames, np.float64)
    kp2 = np.empty(n_frames, np.int32)
    tile = np.empty((_TILE, n_frames), np.float32)
    # guesses of the next pixel's medians (rejection centre, MAD, reduction), speed only
    reject_hint = np.full(4, np.nan)
    reduce_hint = np.full(2, np.nan)
    crit = np.empty(n_frames + 1, np.float64)
    unit_weights = True
    for i in range(n_frames):
        unit_weights = unit_weights and weights[i] == 1.0
    if reject == REJECT_GESD:
        gesd_critical_values(p_low, crit)
    for y in range(h):
        for x0 in range(0, w, _TILE):
            x1 = min(x0 + _TILE, w)
            _load_tile(band, y, x0, x1, scale, offset, tile)
            for x in range(x0, x1):
                n = gather_finite(tile, x - x0, vals, frames)
                r = reject_pixel(reject, vals, n, flags, p_low, p_high, max_iter, crit, kv, kp, work, work2, work3,
                                 kp2, reject_hint)
                if r > 0:
                    for j in range(n):
                        f = flags[j]
                        if f == LOW:
                            rejected[frames[j], 0] += 1
                        elif f == HIGH:
                            rejected[frames[j], 1] += 1
                value, kept = reduce_pixel(reduce, vals, frames, n, flags, weights, unit_weights, work, reduce_hint)
                out[y, x] = value
                count[y, x] = kept


@njit(nogil=True, cache=True)
def accumulate_mean(frame, weight, sum_, wsum, count=None):
    """Streaming weighted mean: ``sum_ += weight * x`` and ``wsum += weight`` (and
    ``count += 1`` when given) wherever ``x`` of ``frame`` is finite.

    ``frame`` is any float array (one warped frame, NaN = not covered); ``sum_``, ``wsum``
    are float64 accumulators of the same shape, ``count`` an optional integer one. Frames
    must be accumulated in a fixed order for bit-identical results.
    """
    if frame.shape != sum_.shape or frame.shape != wsum.shape:
        raise ValueError("frame, sum_ and wsum must have the same shape")
    if count is not None and count.shape != frame.shape:
        raise ValueError("count must have the frame's shape")
    w = float(weight)
    for idx in np.ndindex(frame.shape):
        v = frame[idx]
        if math.isfinite(v):
            sum_[idx] += w * v
            wsum[idx] += w
            if count is not None:
                count[idx] += 1


@njit(nogil=True, cache=True)
def finish_mean(sum_, wsum, out):
    """``out = sum_ / wsum`` (float32) where ``wsum > 0``, NaN elsewhere (never covered)."""
    if sum_.shape != wsum.shape or out.shape != sum_.shape:
        raise ValueError("sum_, wsum and out must have the same shape")
    for idx in np.ndindex(sum_.shape):
        ws = wsum[idx]
        out[idx] = sum_[idx] / ws if ws > 0.0 else math.nan
