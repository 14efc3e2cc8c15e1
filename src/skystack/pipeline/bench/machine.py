"""The machine ``skystack bench`` ran on: host, GPU, driver, CUDA and library versions,
device memory in use, host↔device bandwidth. GPU libraries are imported inside the
functions, and a missing one is a ``None``, never an error."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ... import __version__
from ...backends._device import simulator_enabled
from ...backends.registry import cv2_cuda_device_count
from ...runtime.memory import peak_rss_mb
from .results import GPU_BACKENDS, BackendRun, one_line

log = logging.getLogger("skystack")

# Host↔device bandwidth is measured with one pinned copy of this size (large enough that
# the copy's fixed latency is negligible), best of PCIE_REPEATS.
PCIE_PROBE_BYTES = 256 * 2**20
PCIE_REPEATS = 5


def describe_machine() -> dict[str, Any]:
    """Host, GPU, driver, CUDA and library versions (``None`` where absent)."""

    gpu, why = _gpu_info()
    return {
        "host": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                 "memory_gb": round(psutil.virtual_memory().total / 1e9, 1), "os": platform.platform()},
        "gpu": gpu,
        "gpu_note": why,
        "versions": {"skystack": __version__, "python": platform.python_version(), "numpy": np.__version__,
                     "numba": _dist_version("numba"), "numba_cuda": _dist_version("numba-cuda"),
                     "cupy": _cupy_version(), "opencv": _opencv_version()},
        "opencv_cuda_devices": cv2_cuda_device_count(),
        "cuda_simulator": simulator_enabled(),
        "device_used_mb_before": device_memory_used_mb(),
    }


def _gpu_info() -> tuple[dict[str, Any] | None, str]:
    """The first CUDA device as CuPy sees it, completed by ``nvidia-smi`` (the driver's
    own version); or ``nvidia-smi`` alone when CuPy cannot see it. ``(None, why)`` when
    neither finds one."""
    info: dict[str, Any] = {}
    notes = []
    try:
        import cupy

        rt = cupy.cuda.runtime
        if rt.getDeviceCount() > 0:
            props = rt.getDeviceProperties(0)
            name = props["name"]
            info = {"name": name.decode() if isinstance(name, bytes) else str(name),
                    "compute_capability": f"{props['major']}.{props['minor']}",
                    "memory_gb": round(props["totalGlobalMem"] / 1e9, 1),
                    "cuda_driver": _cuda_version(rt.driverGetVersion()),
                    "cuda_runtime": _cuda_version(rt.runtimeGetVersion())}
        else:
            notes.append("CuPy sees no CUDA device")
    except ImportError:
        notes.append("CuPy is not installed")
    except Exception as e:  # no driver, or one too old for this CuPy
        notes.append(f"CuPy: {one_line(e)}")
    smi = _nvidia_smi()
    if smi is None:
        notes.append("no nvidia-smi")
    else:
        info.setdefault("name", smi.get("name"))
        info.setdefault("memory_gb", smi.get("memory_gb"))
        info.setdefault("compute_capability", smi.get("compute_capability"))
        info["driver"] = smi.get("driver")
    return (info or None), "; ".join(notes)


def _nvidia_smi() -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        return None
    parts = [p.strip() for p in lines[0].split(",")]
    d: dict[str, Any] = {"name": parts[0]}
    if len(parts) > 1:
        d["driver"] = parts[1]
    if len(parts) > 2:
        try:
            d["memory_gb"] = round(float(parts[2]) * 2**20 / 1e9, 1)  # MiB
        except ValueError:
            pass
    if len(parts) > 3:
        d["compute_capability"] = parts[3]
    return d


def device_memory_used_mb() -> float | None:
    """Memory in use on CUDA device 0 (all processes; ``cudaMemGetInfo``), in MiB, or None
    without a device. Sampled after each backend's stages: the GPU backends keep their
    buffers (and CuPy its memory pool) between calls, so this is their footprint."""
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                free, total = cupy.cuda.runtime.memGetInfo()
                return round((total - free) / 2**20, 1)
        except Exception:  # no driver, no device: nothing to sample
            pass
    if cv2_cuda_device_count() > 0:
        try:
            import cv2

            dev = cv2.cuda.DeviceInfo()
            return round((dev.totalMemory() - dev.freeMemory()) / 2**20, 1)
        except Exception:  # an OpenCV without DeviceInfo
            return None
    return None


def describe_use(device: dict[str, Any], runs: list[BackendRun], n_kept: int) -> None:
    """Add what the run used to ``device``: peak host and device memory and, with a real
    CuPy device, the host↔device bandwidth and each GPU backend's combine bound by it
    (the bytes a band loop must move: the float32 source rows up, the image and count
    down)."""
    device["peak_host_rss_mb"] = round(peak_rss_mb(), 1)
    used = [r.device_used_mb for r in runs if r.device_used_mb is not None]
    device["peak_device_used_mb"] = max(used) if used else None
    gpu_runs = [r for r in runs if r.name in GPU_BACKENDS and r.usable and not r.simulated and not r.failed]
    if not gpu_runs or device.get("gpu") is None or importlib.util.find_spec("cupy") is None:
        return
    try:
        bw = pcie_bandwidth()
    except Exception as e:  # a device that refuses pinned memory, ...
        log.debug("bus bandwidth not measured: %s", e)
        return
    device["pcie_h2d_GBps"] = round(bw["h2d"] / 1e9, 2)
    device["pcie_d2h_GBps"] = round(bw["d2h"] / 1e9, 2)
    for r in gpu_runs:
        if r.bytes_up and r.bytes_down:
            r.transfer_bound_fps = n_kept / max(r.bytes_up / bw["h2d"], r.bytes_down / bw["d2h"])


def pcie_bandwidth(nbytes: int = PCIE_PROBE_BYTES, repeats: int = PCIE_REPEATS) -> dict[str, float]:
    """Best-of host→device and device→host rates of a pinned ``nbytes`` copy (bytes/s)."""
    import cupy
    import cupyx

    host = cupyx.empty_pinned((nbytes,), np.uint8)
    host[...] = 1
    dev = cupy.empty((nbytes,), np.uint8)
    s = cupy.cuda.Stream(non_blocking=True)
    rt = cupy.cuda.runtime
    rates = {}
    for name, kind, dst, src in (("h2d", rt.memcpyHostToDevice, dev.data.ptr, host.ctypes.data),
                                 ("d2h", rt.memcpyDeviceToHost, host.ctypes.data, dev.data.ptr)):
        best = math.inf
        for _ in range(repeats):
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record(s)
            rt.memcpyAsync(dst, src, nbytes, kind, s.ptr)
            b.record(s)
            b.synchronize()
            best = min(best, cupy.cuda.get_elapsed_time(a, b) / 1e3)
        rates[name] = nbytes / best
    return rates


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy_version() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        import cupy

        return str(cupy.__version__)
    except Exception as e:  # installed but broken (a CUDA library missing)
        return f"unusable ({one_line(e)})"


def _opencv_version() -> str | None:
    try:
        import cv2

        return str(cv2.__version__)
    except ImportError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
