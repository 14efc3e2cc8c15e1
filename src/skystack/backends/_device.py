"""The device-array layer under the GPU backends: allocation, staging, copies, streams.

The GPU backends are written once against this small interface, and it has two
implementations:

- :class:`CupyLayer` (a real GPU): CuPy owns device memory, page-locked host staging
  buffers and streams; numba.cuda kernels are launched on CuPy arrays through
  ``__cuda_array_interface__`` (``numba.cuda.as_cuda_array``) on the backend's own streams
  (``numba.cuda.external_stream``).
- :class:`SimLayer` (``NUMBA_ENABLE_CUDASIM=1``, no GPU, CI): "device" arrays are NumPy
  arrays and the very same numba.cuda kernels run in Numba's CUDA simulator. Only on
  request (``simulator=True``): the backend registry never takes the simulator for a
  device, whatever the environment says.

Only the allocator/copy layer differs; the backends' band loop, staging, kernel launches,
normalisation and downloads are the same code in both cases, which is what lets CI test the
GPU path without a GPU. Nothing here imports CuPy or numba.cuda at module import time.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError


def simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` before numba was
    imported): numba.cuda kernels then run on the CPU, on NumPy arrays."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


class OnDevice:
    """What a device user (a backend, the lucky device path) says about the layer it runs
    on, ``self._layer`` (set by the subclass from :func:`device_layer`)."""

    _layer: Any

    @property
    def device(self) -> str:
        """The GPU's name (or the simulator's), for reports."""
        return self._layer.device_name()

    @property
    def layer_name(self) -> str:
        return self._layer.name


def device_layer(simulator: bool = False) -> CupyLayer | SimLayer:
    """The layer a GPU backend runs on.

    Parameters
    ----------
    simulator : bool
        Run on Numba's CUDA simulator (NumPy "device" arrays): only when asked, by the
        tests and the benchmarks' code-path check, never because an environment variable
        happens to be set. The simulator is not a device.

    Raises
    ------
    BackendUnavailableError
        ``simulator=False``: CuPy is missing or sees no CUDA device, or the simulator is on
        in this process (numba.cuda kernels then cannot run on a GPU).
        ``simulator=True``: the simulator is off (it must be on before numba is imported).
    """
    if simulator:
        if not simulator_enabled():
            raise BackendUnavailableError(
                "the CUDA simulator was asked for but is off: set NUMBA_ENABLE_CUDASIM=1 before numba "
                "is imported")
        return SimLayer()
    if simulator_enabled():
        # numba.cuda is the simulator in this process: its kernels run on host memory only,
        # so even with CuPy and a GPU present nothing could be launched on the device
        raise BackendUnavailableError(
            "NUMBA_ENABLE_CUDASIM=1 is set: numba.cuda runs in its CPU simulator in this process, so no "
            "kernel can run on a GPU; unset it, or use --backend cpu")
    return CupyLayer()


class _TimingMark:
    """A simulator "event": the host clock when it was recorded (the simulator runs every
    operation synchronously, so host time is device time)."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = time.perf_counter()


class _SimStream:
    """Stand-in for a CUDA stream: the simulator executes everything in call order."""

    def synchronize(self) -> None:
        return None


class SimLayer:
    """Device layer under Numba's CUDA simulator: NumPy arrays, synchronous copies."""

    name = "cuda-simulator"
    xp = np
    # The simulator keeps one global "current kernel" and mutates the kernel object on
    # each launch configuration, so launches from several threads must not interleave
    # (real CUDA has no such limit: CupyLayer's lock is a no-op).
    _launch_lock = threading.Lock()

    def device_name(self) -> str:
        return "Numba CUDA simulator (CPU)"

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def pinned(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)

    def stream(self) -> _SimStream:
        return _SimStream()

    def event(self) -> Any:
        return None

    def record(self, event: Any, stream: Any) -> None:
        return None

    def mark(self, stream: Any) -> _TimingMark:
        return _TimingMark()

    def wait(self, stream: Any, event: Any) -> None:
        return None

    def host_wait(self, event: Any) -> None:
        return None

    def sync(self, stream: Any) -> None:
        return None

    def h2d(self, dst: np.ndarray, src: np.ndarray, stream: Any) -> None:
        np.copyto(dst, src)

    def d2h(self, dst: np.ndarray, src: np.ndarray, stream: Any) -> None:
        np.copyto(dst, src)

    def on(self, stream: Any):
        return contextlib.nullcontext()

    def kernel_array(self, a: np.ndarray) -> np.ndarray:
        return a

    def kernel_stream(self, stream: Any) -> int:
        return 0

    def launching(self):
        return self._launch_lock

    def elapsed(self, start: _TimingMark, end: _TimingMark) -> float:
        return end.t - start.t


class CupyLayer:
    """Device layer on a real GPU: CuPy memory, pinned staging, streams and events;
    numba.cuda kernels launched on CuPy arrays."""

    name = "cupy"

    def __init__(self) -> None:
        try:
            import cupy
            import cupyx
            from numba import cuda
        except ImportError as e:
            raise BackendUnavailableError(
                f"the CuPy backend needs CuPy and numba-cuda ({e}); install skystack[gpu] on a "
                "machine with an NVIDIA GPU, or use --backend cpu") from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, or a driver too old for this CuPy
            raise BackendUnavailableError(f"CuPy sees no usable CUDA driver ({e}); use --backend cpu") from None
        if n == 0:
            raise BackendUnavailableError("CuPy sees no CUDA device; use --backend cpu")
        self.xp = cupy
        self._cupy = cupy
        self._cupyx = cupyx
        self._cuda = cuda
        self._rt = cupy.cuda.runtime
        self._ext = threading.local()

    def device_name(self) -> str:
        dev = self._cupy.cuda.Device()
        props = self._rt.getDeviceProperties(dev.id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def empty(self, shape: tuple[int, ...], dtype):
        return self._cupy.empty(shape, dtype=dtype)

    def pinned(self, nbytes: int) -> np.ndarray:
        # page-locked: the only host memory a copy engine can read while kernels run
        return self._cupyx.empty_pinned((nbytes,), dtype=np.uint8)

    def stream(self):
        # non-blocking: no implicit synchronisation with the legacy default stream, which
        # other libraries in the process (OpenCV, numba's own allocations) may use
        return self._cupy.cuda.Stream(non_blocking=True)

    def event(self):
        # timing off: the cheapest event, used only for ordering
        return self._cupy.cuda.Event(disable_timing=True)

    def record(self, event, stream) -> None:
        event.record(stream)

    def mark(self, stream):
        """A timing event recorded on ``stream`` now (read with :meth:`elapsed` after a sync)."""
        ev = self._cupy.cuda.Event()
        ev.record(stream)
        return ev

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def host_wait(self, event) -> None:
        event.synchronize()

    def sync(self, stream) -> None:
        stream.synchronize()

    def h2d(self, dst, src: np.ndarray, stream) -> None:
        assert dst.flags.c_contiguous and src.flags.c_contiguous and dst.nbytes == src.nbytes
        self._rt.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, self._rt.memcpyHostToDevice, stream.ptr)

    def d2h(self, dst: np.ndarray, src, stream) -> None:
        assert dst.flags.c_contiguous and src.flags.c_contiguous and dst.nbytes == src.nbytes
        self._rt.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes, self._rt.memcpyDeviceToHost, stream.ptr)

    def on(self, stream):
        return stream  # CuPy streams are context managers: element-wise ops run on them

    def kernel_array(self, a):
        # sync=False: CuPy exports the array's stream in the interface, and numba would
        # otherwise synchronise it on every launch, serialising the copy and compute streams
        return self._cuda.as_cuda_array(a, sync=False)

    def kernel_stream(self, stream):
        cache = getattr(self._ext, "streams", None)
        if cache is None:
            cache = self._ext.streams = {}
        ks = cache.get(stream.ptr)
        if ks is None:
            ks = cache[stream.ptr] = self._cuda.external_stream(stream.ptr)
        return ks

    def launching(self):
        return contextlib.nullcontext()

    def elapsed(self, start, end) -> float:
        return self._cupy.cuda.get_elapsed_time(start, end) / 1e3


class GrowBuffer:
    """A reusable flat allocation, viewed as whatever shape/dtype a call needs and grown
    (never shrunk) when a call needs more bytes. Used for device work buffers and pinned
    staging, so a band loop allocates nothing in steady state."""

    def __init__(self, alloc, before_grow=None) -> None:
        self._alloc = alloc
        self._before_grow = before_grow
        self._buf = None
        self._nbytes = 0

    def view(self, shape: tuple[int, ...], dtype) -> Any:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self._nbytes:
            if self._buf is not None and self._before_grow is not None:
                # the old block goes back to CuPy's pool, which may hand it out again at
                # once: queued copies and kernels must be done with it first
                self._before_grow()
            self._buf = None  # release first: the old and new blocks need not coexist
            # 1/8 headroom: band heights and source-block heights vary a little per call
            self._nbytes = max(nbytes + nbytes // 8, 256)
            self._buf = self._alloc(self._nbytes)
        return self._buf[:nbytes].view(dtype).reshape(shape)
