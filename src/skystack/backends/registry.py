"""Resolve ``--backend auto|cpu|cupy|cv2cuda`` once per run (:func:`resolve`; the lucky
pipeline's ``auto|cpu|cupy``: :func:`resolve_lucky`).

``auto`` picks CuPy when a CUDA device is present, else the cv2.cuda warp when OpenCV was
built with CUDA and sees a device, else the CPU. GPU libraries are imported here, lazily,
so ``import skystack`` never needs CUDA.
"""
from __future__ import annotations

import logging

from ..errors import BackendUnavailableError, UsageError

log = logging.getLogger("skystack")


def cupy_device_count() -> int:
    try:
        import cupy  # noqa: F401

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no cupy, no driver, no device: all mean "not usable"
        return 0


def cv2_cuda_device_count() -> int:
    try:
        import cv2

        return int(cv2.cuda.getCudaEnabledDeviceCount())
    except Exception:  # OpenCV without the cuda module
        return 0


def resolve(name: str = "auto"):
    """Return a backend instance for ``name``.

    Raises
    ------
    BackendUnavailableError
        When ``cupy`` or ``cv2cuda`` is asked for explicitly and is not usable here.
    """
    from .cpu import CpuBackend

    if name == "cpu":
        return CpuBackend()
    if name == "cupy":
        if cupy_device_count() == 0:
            raise BackendUnavailableError(
                "--backend cupy: no usable CUDA device (CuPy missing, no driver or no GPU); "
                "install skystack[gpu] on a machine with an NVIDIA GPU, or use --backend cpu")
        from .cupy import CupyBackend

        return CupyBackend()
    if name == "cv2cuda":
        if cv2_cuda_device_count() == 0:
            raise BackendUnavailableError(
                "--backend cv2cuda: this OpenCV has no CUDA device (PyPI wheels are built without "
                "CUDA); build OpenCV with CUDA, or use --backend cupy / cpu")
        from .cv2cuda import Cv2CudaBackend

        return Cv2CudaBackend()
    if name == "auto":
        if cupy_device_count() > 0:
            try:
                from .cupy import CupyBackend

                return CupyBackend()
            except Exception as e:  # a broken GPU stack must not stop a CPU-capable run
                log.warning("CuPy backend unusable (%s); falling back", e)
        if cv2_cuda_device_count() > 0:
            try:
                from .cv2cuda import Cv2CudaBackend

                return Cv2CudaBackend()
            except Exception as e:
                log.warning("cv2.cuda backend unusable (%s); falling back to CPU", e)
        return CpuBackend()
    raise UsageError(f"--backend {name!r}: expected auto, cpu, cupy or cv2cuda")


def resolve_lucky(name: str = "auto"):
    """The lucky pipeline's GPU, or ``None`` for the CPU path.

    ``auto`` takes a CUDA device through CuPy when one is usable (never Numba's CUDA
    simulator: with ``NUMBA_ENABLE_CUDASIM=1`` it falls back to the CPU), else the CPU.
    ``cv2cuda`` has nothing to offer lucky imaging (OpenCV's CUDA module has no batched
    phase correlation) and is refused by :class:`skystack.options.LuckyOptions`.

    Returns
    -------
    LuckyDevice or None

    Raises
    ------
    BackendUnavailableError
        ``cupy`` asked for explicitly and not usable here.
    """
    if name == "cpu":
        return None
    if name == "cupy":
        if cupy_device_count() == 0:
            raise BackendUnavailableError(
                "--backend cupy: no usable CUDA device (CuPy missing, no driver or no GPU); "
                "install skystack[gpu] on a machine with an NVIDIA GPU, or use --backend cpu")
        from .lucky_gpu import LuckyDevice

        return LuckyDevice()
    if name == "auto":
        if cupy_device_count() > 0:
            try:
                from .lucky_gpu import LuckyDevice

                return LuckyDevice()
            except Exception as e:  # a broken GPU stack must not stop a CPU-capable run
                log.warning("CuPy unusable for lucky imaging (%s); ranking on the CPU", e)
        return None
    raise UsageError(f"--backend {name!r}: expected auto, cpu or cupy")
