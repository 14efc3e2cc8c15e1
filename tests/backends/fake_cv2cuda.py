"""A stand-in for OpenCV's ``cv2.cuda`` module, for testing the cv2.cuda backend on machines
whose OpenCV has no CUDA (every PyPI wheel, and CI).

It models the parts of the real module the backend relies on, including its rules, so
that a backend misusing the library fails here as it would on a CUDA build:

- ``warpAffine`` accepts only ``GpuMat`` sources, nearest/bilinear/bicubic interpolation,
  1, 3 or 4 channels of depth up to CV_32F (the asserts of opencv_contrib's
  ``cudawarping/src/warp.cpp``), and writes into ``dst`` only when ``dst`` already has the
  requested size and type (``create`` is a no-op then, so an ROI of a parent writes into the
  parent; otherwise ``dst`` is reallocated and the parent is left untouched).
- With a stream, the source's own row range is the image (border) — the stream path of the
  real CUDA warp ignores the parent matrix of an ROI.
- Nearest-neighbour warps truncate the source coordinate toward zero, as OpenCV's CUDA
  ``PointFilter`` does (the CPU warp rounds): modelled in NumPy, not with the CPU warp.
- Work queued on a ``Stream`` runs only at ``waitForCompletion``: an array returned by
  ``download(stream)`` holds garbage until then, as on a GPU.

Bilinear pixel arithmetic is OpenCV's CPU ``cv2.warpAffine`` with the same flags and border. (The
real CUDA warp computes coordinates in float32 rather than in 1/32-pixel fixed point, so on
a real build results differ from the CPU warp by sub-1/64-pixel interpolation, which this
fake does not model: tests with it check the backend's plumbing — matrices, tiles, ROIs,
borders, channels, dtypes, streams — not OpenCV's CUDA numerics.)
"""
from __future__ import annotations

import types

import cv2
import numpy as np

_DEPTH_OF = {np.dtype(np.uint8): cv2.CV_8U, np.dtype(np.int8): cv2.CV_8S, np.dtype(np.uint16): cv2.CV_16U,
             np.dtype(np.int16): cv2.CV_16S, np.dtype(np.int32): cv2.CV_32S, np.dtype(np.float32): cv2.CV_32F,
             np.dtype(np.float64): cv2.CV_64F}
_DTYPE_OF = {v: k for k, v in _DEPTH_OF.items()}
# the channel count's place in a type code (OpenCV 4: 8, OpenCV 5: 32), from cv2 itself
_CN_STEP = cv2.CV_8UC2 - cv2.CV_8UC1


def _make_type(depth: int, cn: int) -> int:
    return depth + (cn - 1) * _CN_STEP


def _split_type(cv_type: int) -> tuple[np.dtype, int]:
    return _DTYPE_OF[cv_type % _CN_STEP], cv_type // _CN_STEP + 1


class Stream:
    """Queues work; runs it, in order, at ``waitForCompletion``."""

    def __init__(self) -> None:
        self._queue: list = []

    def waitForCompletion(self) -> None:
        queue, self._queue = self._queue, []
        for fn in queue:
            fn()

    def queryIfComplete(self) -> bool:
        return not self._queue


def _run(stream, fn) -> None:
    if stream is None:
        fn()
    elif isinstance(stream, Stream):
        stream._queue.append(fn)
    else:
        raise cv2.error(f"expected a cv2.cuda.Stream, got {type(stream).__name__}")


class GpuMat:
    """Device matrix: a NumPy array, or a row-range view of a parent's."""

    def __init__(self, *args) -> None:
        self._a: np.ndarray | None = None
        if args:
            rows, cols, cv_type = args
            self.create(rows, cols, cv_type)

    def _shape_for(self, rows: int, cols: int, cn: int) -> tuple[int, ...]:
        return (rows, cols) if cn == 1 else (rows, cols, cn)

    def create(self, rows: int, cols: int, cv_type: int) -> None:
        if self._a is not None and self.size() == (cols, rows) and self.type() == cv_type:
            return
        dtype, cn = _split_type(cv_type)
        # fresh garbage, as cudaMalloc gives: code must not rely on new memory being zero
        self._a = np.full(self._shape_for(rows, cols, cn), 77, dtype=dtype)

    def empty(self) -> bool:
        return self._a is None

    def size(self) -> tuple[int, int]:
        return (self._a.shape[1], self._a.shape[0])

    def channels(self) -> int:
        return 1 if self._a.ndim == 2 else self._a.shape[2]

    def depth(self) -> int:
        return _DEPTH_OF[self._a.dtype]

    def type(self) -> int:
        return _make_type(self.depth(), self.channels())

    def upload(self, arr: np.ndarray, stream: Stream | None = None) -> None:
        if not isinstance(arr, np.ndarray) or arr.dtype not in _DEPTH_OF or arr.ndim not in (2, 3):
            raise cv2.error("upload: expected a 2-D or 3-D NumPy array of a CV depth")
        cn = 1 if arr.ndim == 2 else arr.shape[2]
        self.create(arr.shape[0], arr.shape[1], _make_type(_DEPTH_OF[arr.dtype], cn))
        dst = self._a
        _run(stream, lambda: np.copyto(dst, arr))

    def download(self, stream: Stream | None = None) -> np.ndarray:
        out = np.full_like(self._a, 77)
        src = self._a
        _run(stream, lambda: np.copyto(out, src))
        return out

    def rowRange(self, start: int, end: int) -> GpuMat:
        if not 0 <= start <= end <= self._a.shape[0]:
            raise cv2.error(f"rowRange({start}, {end}) outside 0..{self._a.shape[0]}")
        roi = GpuMat()
        roi._a = self._a[start:end]
        return roi

    def colRange(self, start: int, end: int) -> GpuMat:
        if not 0 <= start <= end <= self._a.shape[1]:
            raise cv2.error(f"colRange({start}, {end}) outside 0..{self._a.shape[1]}")
        roi = GpuMat()
        roi._a = self._a[:, start:end]
        return roi

    def setTo(self, s, mask_or_stream=None, stream: Stream | None = None) -> GpuMat:
        """``setTo(s[, stream])`` or ``setTo(s, mask[, stream])`` (mask: CV_8UC1, nonzero
        where to set)."""
        mask = None
        if isinstance(mask_or_stream, GpuMat):
            mask = mask_or_stream
        else:
            stream = mask_or_stream
        a, cn = self._a, self.channels()
        value = np.asarray(s, dtype=np.float64)[:cn]
        value = value if cn > 1 else value[0]
        if mask is None:
            _run(stream, lambda: a.__setitem__(Ellipsis, value))
        else:
            if mask.type() != cv2.CV_8UC1 or mask.size() != self.size():
                raise cv2.error("setTo: mask must be CV_8UC1 of the matrix's size")
            m = mask._a
            _run(stream, lambda: a.__setitem__(m != 0, value))
        return self

    def convertTo(self, rtype: int, stream: Stream, dst: GpuMat | None = None) -> GpuMat:
        dst = GpuMat() if dst is None else dst
        dst.create(self._a.shape[0], self._a.shape[1], _make_type(rtype % _CN_STEP, self.channels()))
        src, out = self._a, dst._a
        _run(stream, lambda: np.copyto(out, src, casting="unsafe"))
        return dst

    def copyTo(self, stream: Stream, dst: GpuMat | None = None) -> GpuMat:
        dst = GpuMat() if dst is None else dst
        dst.create(self._a.shape[0], self._a.shape[1], self.type())
        src, out = self._a, dst._a
        _run(stream, lambda: np.copyto(out, src))
        return dst


_BORDERS = (cv2.BORDER_CONSTANT, cv2.BORDER_REPLICATE, cv2.BORDER_REFLECT, cv2.BORDER_WRAP, cv2.BORDER_REFLECT_101)


def warpAffine(src, M, dsize, dst=None, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
               borderValue=(0.0, 0.0, 0.0, 0.0), stream=None):
    if not isinstance(src, GpuMat):
        raise cv2.error("cv2.cuda.warpAffine: src must be a cv2.cuda.GpuMat")
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (2, 3):
        raise cv2.error("cv2.cuda.warpAffine: M.rows == 2 && M.cols == 3")
    interpolation = flags & cv2.INTER_MAX
    if interpolation not in (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC):
        raise cv2.error("cv2.cuda.warpAffine: interpolation == INTER_NEAREST || INTER_LINEAR || INTER_CUBIC")
    if src.depth() > cv2.CV_32F or src.channels() not in (1, 3, 4):
        raise cv2.error("cv2.cuda.warpAffine: unsupported format (depth <= CV_32F, 1, 3 or 4 channels)")
    if borderMode not in _BORDERS:
        raise cv2.error("cv2.cuda.warpAffine: unsupported border mode")
    w, h = int(dsize[0]), int(dsize[1])
    dst = GpuMat() if dst is None else dst
    dst.create(h, w, src.type())
    a, out = src._a, dst._a

    def work() -> None:
        if interpolation == cv2.INTER_NEAREST:
            out[...] = _nearest_cuda(a, M, flags, borderMode, borderValue, h, w).reshape(out.shape)
            return
        res = cv2.warpAffine(np.ascontiguousarray(a), M, (w, h), flags=flags, borderMode=borderMode,
                             borderValue=tuple(float(v) for v in borderValue))
        out[...] = res.reshape(out.shape)

    _run(stream, work)
    return dst


def _nearest_cuda(a: np.ndarray, M: np.ndarray, flags: int, border_mode: int, border_value, h: int, w: int):
    """OpenCV CUDA's nearest-neighbour warp, which differs from the CPU one: the inverse
    matrix in float32, source coordinates ``c0*x + c1*y + c2`` in float32, and the index
    *truncated toward zero* (``PointFilter``: ``__float2int_rz``), not rounded."""
    if border_mode != cv2.BORDER_CONSTANT:
        raise NotImplementedError("the stand-in models nearest-neighbour warps with a constant border only")
    inv = M if flags & cv2.WARP_INVERSE_MAP else cv2.invertAffineTransform(M)
    c = inv.astype(np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    sx = c[0, 0] * x + c[0, 1] * y + c[0, 2]
    sy = c[1, 0] * x + c[1, 1] * y + c[1, 2]
    ix, iy = np.trunc(sx).astype(np.int64), np.trunc(sy).astype(np.int64)
    inside = (ix >= 0) & (ix < a.shape[1]) & (iy >= 0) & (iy < a.shape[0])
    out = np.empty((h, w) + a.shape[2:], dtype=a.dtype)
    cn = 1 if a.ndim == 2 else a.shape[2]
    fill = np.asarray(border_value, dtype=np.float64)[:cn]
    out[...] = (fill if cn > 1 else fill[0]).astype(a.dtype)
    out[inside] = a[iy[inside], ix[inside]]
    return out


def getCudaEnabledDeviceCount() -> int:
    return 1


def module() -> types.SimpleNamespace:
    """A namespace to put in place of ``cv2.cuda``."""
    return types.SimpleNamespace(GpuMat=GpuMat, Stream=Stream, warpAffine=warpAffine,
                                 getCudaEnabledDeviceCount=getCudaEnabledDeviceCount)
