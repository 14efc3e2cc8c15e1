"""GPU warps through OpenCV's CUDA module (``cv2.cuda.warpAffine``), for OpenCV builds
with CUDA (the PyPI wheels have none: ``cv2.cuda.getCudaEnabledDeviceCount()`` is 0).

``cv2.cuda.warpAffine`` knows nearest, bilinear and bicubic interpolation only (its source
asserts it), and 1, 3 or 4 channels. So:

- bilinear warps run on ``cv2.cuda``, channel groups it cannot take (2, or more than 4
  channels) one plane at a time;
- Lanczos-4 warps, which it lacks, go to the numba.cuda kernel when CuPy (or the CUDA
  simulator) is there, else to the CPU backend's ``cv2.warpAffine``;
- the rejection and reduction run on the numba.cuda combine kernel when CuPy is there,
  else on the CPU kernel.

Warps follow the CPU backend's 8-row tile grid and its edge rules (:meth:`CpuBackend.warp`):
taps that fall off the source reuse its edge pixels (``BORDER_REPLICATE``), and a pixel
is covered when its centre maps inside the source. Each tile reads a row range (ROI) of
the uploaded rows; with a stream, OpenCV's CUDA warp treats an ROI's own edges as the
image border (``WarpDispatcherStream`` ignores the parent matrix), as the CPU warp of a row
slice does. Coverage comes from a nearest-neighbour warp of a framed mask plane (see
``_warp_cuda``: the CUDA nearest filter truncates where the CPU one rounds).

Numerics: OpenCV's CUDA warp computes source coordinates in float32. OpenCV 5's CPU
bilinear warp of 1, 3 or 4 float channels uses floating-point coordinates too (measured
here: within 7e-5 ADU of exact bilinear on values up to 1000), so values should agree to
float rounding; for 2 channels the CPU warp takes OpenCV's older fixed-point path with
1/32-pixel steps (``INTER_BITS = 5``), up to 1/64 pixel apart from the CUDA warp. The CPU
coverage test works in 1/1024-pixel fixed point, the CUDA one in float32: a pixel whose
centre lands within about 1e-3 px of a frame edge may be covered on one and not the other.
None of this was verified on a real CUDA build of OpenCV (none was available); the tests
use a stand-in module (tests/backends/fake_cv2cuda.py).
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from ..errors import BackendUnavailableError
from ..options import StackOptions
from ..stack.plan import tile_warps
from .base import BandJob, BandResult
from .cpu import CpuBackend, _normalise_inplace, combine_host_band

_NAN4 = (float("nan"),) * 4
_GROUP_CHANNELS = (1, 3, 4)  # what cv2.cuda.warpAffine accepts in one call
_NATIVE = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


class _Lane:
    """One calling thread's OpenCV stream and reusable device matrices."""

    def __init__(self, cv2) -> None:
        self.stream = cv2.cuda.Stream()
        self.src: dict[int, object] = {}
        self.srcf: dict[int, object] = {}
        self.dst: dict[int, object] = {}
        self.tile: dict[int, object] = {}
        self.mask: dict[int, object] = {}
        self.tile_mask: dict[int, object] = {}

    def mat(self, cv2, pool: dict, key: int, rows: int, cols: int, cv_type: int):
        """A GpuMat of the given size and type, reusing this lane's allocation (``create``
        reallocates only when the size or type changes)."""
        m = pool.get(key)
        if m is None:
            m = pool[key] = cv2.cuda.GpuMat()
        m.create(rows, cols, cv_type)
        return m


class Cv2CudaBackend:
    """Warp with ``cv2.cuda``; stack on the numba.cuda kernel (CuPy) or the CPU kernel.

    Parameters
    ----------
    simulator : bool
        Run the numba.cuda kernels (combine, Lanczos warps) on Numba's CUDA simulator
        (tests): only when asked, see :class:`~.cupy.CupyBackend`.

    Raises
    ------
    BackendUnavailableError
        This OpenCV has no CUDA module or sees no CUDA device.
    """

    name = "cv2cuda"

    def __init__(self, simulator: bool = False) -> None:
        import cv2

        cuda = getattr(cv2, "cuda", None)
        if cuda is None or not hasattr(cuda, "warpAffine") or cuda.getCudaEnabledDeviceCount() == 0:
            raise BackendUnavailableError(
                "--backend cv2cuda: this OpenCV has no CUDA device or no cudawarping module (PyPI "
                "wheels are built without CUDA); build OpenCV with CUDA, or use --backend cupy / cpu")
        self._cv2 = cv2
        self._cpu = CpuBackend()
        try:
            from .cupy import CupyBackend

            self._gpu = CupyBackend(simulator=simulator)
        except BackendUnavailableError:  # OpenCV has CUDA but CuPy (or the simulator asked for) is not there
            self._gpu = None
        self._local = threading.local()

    @property
    def stacks_on(self) -> str:
        """Where rejection/reduction and Lanczos warps run: ``"cupy"``, ``"cuda-simulator"`` or ``"cpu"``."""
        return self._gpu.layer_name if self._gpu is not None else "cpu"

    def warp(self, rows: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int], interpolation: str,
             out: np.ndarray | None = None) -> np.ndarray:
        """As :meth:`CpuBackend.warp` (one warp, no tile grid); bilinear on ``cv2.cuda``."""
        if interpolation != "bilinear":
            return self._lanczos().warp(rows, matrix, out_shape, interpolation, out=out)
        h, w = out_shape
        c = rows.shape[2] if rows.ndim == 3 else 1
        if out is None:
            out = np.empty((h, w, c) if c > 1 else (h, w), dtype=np.float32)
        self._warp_cuda(rows, [(0, h, 0, h, 0, rows.shape[0], np.asarray(matrix, np.float64))], out, 0, 0,
                        fill=False)
        return out

    def combine_band(self, jobs: Sequence[BandJob], out_shape: tuple[int, ...], weights: np.ndarray,
                     options: StackOptions) -> BandResult:
        """Same contract and results as :meth:`CpuBackend.combine_band`."""
        if options.interpolation != "bilinear":
            return self._lanczos().combine_band(jobs, out_shape, weights, options)
        h, w = out_shape[:2]
        c = out_shape[2] if len(out_shape) == 3 else 1
        n = len(jobs)
        band = np.empty((n, h, w, c) if c > 1 else (n, h, w), dtype=np.float32)
        for k, job in enumerate(jobs):
            rows = job.load_rows()  # may read the frame now: one frame's rows at a time
            hs = rows.shape[0]
            if job.frame_matrix is None:
                pieces = [(0, h, 0, h, 0, hs, np.asarray(job.matrix, np.float64))]
                self._warp_cuda(rows, pieces, band[k], 0, 0, fill=False)
            else:
                pieces = tile_warps(job.frame_matrix, job.band_y0, job.band_y0 + h, job.src_y0,
                                    job.src_y0 + hs, w, job.src_height, "bilinear")
                self._warp_cuda(rows, pieces, band[k], job.band_y0, job.src_y0, fill=True)
            del rows
            _normalise_inplace(band[k], job.scale, job.offset)
        if self._gpu is not None:
            return self._gpu.combine_warped(band, weights, options)
        return combine_host_band(band, weights, options)

    # -- internals ------------------------------------------------------------------

    def _lanczos(self):
        # cv2.cuda.warpAffine has no Lanczos: the numba.cuda kernel, or OpenCV on the CPU
        return self._gpu if self._gpu is not None else self._cpu

    def _lane(self) -> _Lane:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            lane = self._local.lane = _Lane(self._cv2)
        return lane

    def _warp_cuda(self, rows: np.ndarray, pieces, dst: np.ndarray, y_band: int, y_src: int, fill: bool) -> None:
        """Warp ``rows`` (hs, Ws[, C]) into host ``dst`` (h, W[, C]) on ``cv2.cuda``, one
        ``warpAffine`` per piece ``(ty0, ty1, a, b, sy0, sy1, matrix)`` (tile rows, the part
        of them inside ``dst``, source rows; absolute, offset by ``y_band``/``y_src``)."""
        cv2 = self._cv2
        lane = self._lane()
        st = lane.stream
        c = rows.shape[2] if rows.ndim == 3 else 1
        h, w = dst.shape[:2]
        pieces = list(pieces)
        if c in _GROUP_CHANNELS:
            groups = [(rows, dst, c)]
        else:  # 2 or > 4 channels: one plane at a time
            groups = [(rows[..., ch], dst[..., ch], 1) for ch in range(c)]
        results = []
        # coverage (CpuBackend.warp): an output pixel is covered when its centre maps inside
        # the source, [-0.5, w - 0.5) x [-0.5, h - 0.5). OpenCV's CUDA nearest-neighbour warp
        # truncates toward zero (PointFilter: __float2int_rz), so it cannot tell (-1, 0) from
        # [0, 1): warp a mask plane that has a 1-pixel frame of 255 around a zero inside,
        # through the matrix shifted by +1.5 px. Then index trunc(s + 1.5) lands in the zero
        # inside exactly when s + 0.5 is in [0, w), and on the frame or off the plane
        # (border 255) otherwise.
        hs, ws = rows.shape[:2]
        mask_src = lane.mat(cv2, lane.mask, 0, hs + 2, ws + 2, cv2.CV_8UC1)
        mask_src.setTo((255.0,) * 4, st)
        mask_src.rowRange(1, hs + 1).colRange(1, ws + 1).setTo((0.0,) * 4, st)
        for gi, (src_host, dst_host, gc) in enumerate(groups):
            if src_host.dtype not in _NATIVE:
                src_host = src_host.astype(np.float32)
            src_host = np.ascontiguousarray(src_host)
            src = lane.src.get(gi)
            if src is None:
                src = lane.src[gi] = cv2.cuda.GpuMat()
            src.upload(src_host, st)  # native dtype over the bus; float32 on the device
            if src_host.dtype != np.float32:
                srcf = lane.mat(cv2, lane.srcf, gi, src_host.shape[0], src_host.shape[1], cv2.CV_32FC(gc))
                src.convertTo(cv2.CV_32F, st, srcf)
                src = srcf
            out = lane.mat(cv2, lane.dst, gi, h, w, cv2.CV_32FC(gc))
            if fill:
                out.setTo(_NAN4, st)  # rows that no tile reaches are not covered
            for ty0, ty1, a, b, sy0, sy1, m in pieces:
                r0, r1 = sy0 - y_src, sy1 - y_src
                whole = (a, b) == (ty0, ty1)
                # the image's last tile, cut by its bottom edge: warp it whole, keep the top
                tile = out.rowRange(a - y_band, b - y_band) if whole else \
                    lane.mat(cv2, lane.tile, gi, ty1 - ty0, w, cv2.CV_32FC(gc))
                # taps off the source edge reuse the edge pixels, as on the CPU
                cv2.cuda.warpAffine(src.rowRange(r0, r1), m, (w, ty1 - ty0), tile, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE, stream=st)
                m_mask = np.array(m, dtype=np.float64)
                m_mask[:, 2] -= 1.5 * (m_mask[:, 0] + m_mask[:, 1])
                uncovered = lane.mat(cv2, lane.tile_mask, 0, ty1 - ty0, w, cv2.CV_8UC1)
                cv2.cuda.warpAffine(mask_src.rowRange(r0, r1 + 2), m_mask, (w, ty1 - ty0), uncovered,
                                    flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=(255.0,) * 4, stream=st)
                tile.setTo(_NAN4, uncovered, st)
                if not whole:
                    tile.rowRange(a - ty0, b - ty0).copyTo(st, out.rowRange(a - y_band, b - y_band))
            results.append((out.download(st), dst_host))
        st.waitForCompletion()  # downloads on a stream are asynchronous
        for host, dst_host in results:
            dst_host[...] = host.reshape(dst_host.shape)
