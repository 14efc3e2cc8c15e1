"""What ``skystack bench`` measured, and the report a person reads (:func:`format_report`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__

GPU_BACKENDS = ("cupy", "cv2cuda")
STAGES = ("decode", "register", "warp", "combine", "total")

# Parity of a GPU stack with the CPU stack. The backend tests hold the kernels to 1e-5
# relative on small bands (OpenCV's float32 bicubic sums 16 products in another order
# than the GPU twin); a large stack sums more values per pixel and a GPU contracts
# multiply-adds (FMA), so the bench allows ten times that. Relative to the CPU value, but
# never to less than 1e-3 of the image's largest magnitude: near-zero pixels of a
# calibrated frame would otherwise turn rounding into large ratios.
PARITY_RTOL = 1e-4
PARITY_FLOOR = 1e-3
# A value that sits on a rejection threshold within float rounding can be kept by one
# backend and rejected by the other: legitimate, and rare. More than this fraction of the
# pixels with another kept count is a real difference.
PARITY_MAX_FLIPPED = 1e-5


@dataclass(frozen=True)
class Parity:
    """A GPU backend's stack against the CPU backend's."""

    backend: str
    pixels: int  # pixel values compared (H × W × C)
    coverage_mismatch_px: int  # covered by one backend only
    count_mismatch_px: int  # covered by both, another number of values kept
    max_abs_diff: float  # over pixels covered by both
    max_rel_diff: float  # over pixels with the same kept count, relative as PARITY_RTOL says
    ok: bool
    reason: str = ""  # why not, in words

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "reference": "cpu", "pixels": self.pixels,
                "coverage_mismatch_px": self.coverage_mismatch_px, "count_mismatch_px": self.count_mismatch_px,
                "max_abs_diff": float(self.max_abs_diff), "max_rel_diff": float(self.max_rel_diff),
                "rtol": PARITY_RTOL, "max_flipped_fraction": PARITY_MAX_FLIPPED, "ok": self.ok,
                "reason": self.reason}


@dataclass(frozen=True)
class StageResult:
    """One backend's figures for one stage."""

    backend: str
    stage: str
    frames: int
    seconds: float
    frame_bytes: int  # bytes of one decoded (float32) frame
    threads: int | None  # None: the sum of other stages
    simulated: bool = False

    @property
    def frames_per_s(self) -> float | None:
        return self.frames / self.seconds if self.seconds > 0 else None

    @property
    def mb_per_s(self) -> float | None:
        fps = self.frames_per_s
        return fps * self.frame_bytes / 1e6 if fps is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "stage": self.stage, "frames": self.frames,
                "seconds": round(self.seconds, 6), "frames_per_s": _round(self.frames_per_s),
                "mb_per_s": _round(self.mb_per_s), "threads": self.threads, "simulated": self.simulated}


@dataclass
class BackendRun:
    """What became of one requested backend: measured, unusable (with the reason) or
    failed while running (with the error)."""

    name: str
    usable: bool
    reason: str = ""  # why it is unusable
    device: str = ""
    simulated: bool = False
    warmup_s: float | None = None  # first calls, JIT compilation included
    failed: str = ""  # the error that stopped it, in one line
    host_rss_mb: float | None = None  # resident set after this backend's stages
    device_used_mb: float | None = None  # device memory in use after its stages (all processes)
    transfer_bound_fps: float | None = None  # combine frames/s if the PCIe bus were the only cost
    backend: Any = field(default=None, repr=False)  # the instance measured
    image: np.ndarray | None = field(default=None, repr=False)  # its stack, for the parity check
    count: np.ndarray | None = field(default=None, repr=False)
    bytes_up: int = 0  # source rows its combine received (float32)
    bytes_down: int = 0  # image and count it returned

    def as_dict(self) -> dict[str, Any]:
        d = {"backend": self.name, "usable": self.usable, "reason": self.reason, "device": self.device,
             "simulated": self.simulated, "warmup_s": _round(self.warmup_s), "failed": self.failed,
             "host_rss_mb": _round(self.host_rss_mb, 1), "device_used_mb": _round(self.device_used_mb, 1)}
        if self.transfer_bound_fps is not None:
            d["transfer_bound_frames_per_s"] = _round(self.transfer_bound_fps)
        return d


@dataclass
class BenchResult:
    """Everything ``skystack bench`` measured (:meth:`as_json` is what ``--json`` writes)."""

    device: dict[str, Any]
    run: dict[str, Any]
    backends: list[BackendRun]
    results: list[StageResult]
    parity: list[Parity]
    json_path: Path | None = None

    @property
    def ok(self) -> bool:
        """No backend failed while running and every GPU stack matches the CPU's."""
        return all(p.ok for p in self.parity) and not any(b.failed for b in self.backends)

    def problems(self) -> list[str]:
        """One line per failure (empty when :attr:`ok`)."""
        out = [f"{b.name}: failed: {b.failed}" for b in self.backends if b.failed]
        out += [f"{p.backend}: {p.reason}" for p in self.parity if not p.ok and p.backend not in
                {b.name for b in self.backends if b.failed}]
        return out

    def as_json(self) -> dict[str, Any]:
        return {"skystack": __version__, "device": self.device, "run": self.run,
                "backends": [b.as_dict() for b in self.backends],
                "results": [r.as_dict() for r in self.results],
                "parity": [p.as_dict() for p in self.parity]}

    def table(self) -> str:
        """The report a person reads: the machine, one table per backend, the unusable
        backends with their reasons, parity and memory."""
        return format_report(self)


def format_report(r: BenchResult) -> str:
    """The printed report: the run and the machine, one table per measured backend, the
    unusable backends with their reasons, the parity checks and the memory used."""
    run, dev = r.run, r.device
    lines = []
    what = (f"synthetic, {run['dtype']} FITS" if run["source"] == "synthetic" else "INPUT")
    lines.append(f"skystack bench: {run['frames']} frames {run['width']}x{run['height']}"
                 f"{'x' + str(run['channels']) if run['channels'] > 1 else ''} ({what}), "
                 f"{run['frame_mb']:.1f} MB per decoded frame; {run['kept']} stacked, {run['method']} "
                 f"(kappa {run['kappa'][0]:g} {run['kappa'][1]:g}), {run['interpolation']} warp, "
                 f"bands of {run['band_rows']} rows, {run['workers']} worker(s)")
    host = dev["host"]
    lines.append(f"host:     {host['cpu']}, {host['cores']} threads, {host['memory_gb']:g} GB RAM; "
                 f"first calls of phase 1 {run['host_warmup_s']:.2f} s (compilation)")
    gpu = dev.get("gpu")
    if gpu:
        bits = [gpu.get("name") or "CUDA device"]
        if gpu.get("compute_capability"):
            bits.append(f"compute {gpu['compute_capability']}")
        if gpu.get("memory_gb"):
            bits.append(f"{gpu['memory_gb']:g} GB")
        if gpu.get("driver"):
            bits.append(f"driver {gpu['driver']}")
        if gpu.get("cuda_driver"):
            bits.append(f"CUDA {gpu['cuda_driver']} (driver) / {gpu.get('cuda_runtime')} (runtime)")
        if "pcie_h2d_GBps" in dev:
            bits.append(f"PCIe {dev['pcie_h2d_GBps']:.1f} GB/s up, {dev['pcie_d2h_GBps']:.1f} GB/s down")
        lines.append("GPU:      " + ", ".join(bits))
    else:
        lines.append(f"GPU:      none found ({dev.get('gpu_note') or 'no CUDA device'})")
    v = dev["versions"]
    lines.append(f"versions: skystack {v['skystack']}, Python {v['python']}, NumPy {v['numpy']}, "
                 f"numba {v['numba'] or '-'}, numba-cuda {v['numba_cuda'] or '-'}, CuPy {v['cupy'] or '-'}, "
                 f"OpenCV {v['opencv'] or '-'} ({dev['opencv_cuda_devices']} CUDA device(s))")
    lines.append("decode and register run on the host: measured once, the same for every backend; "
                 "warp is part of combine; total = register + combine")
    by_backend: dict[str, list[StageResult]] = {}
    for s in r.results:
        by_backend.setdefault(s.backend, []).append(s)
    for b in r.backends:
        if not b.usable:
            continue
        head = f"\n{b.name} on {b.device}"
        if b.warmup_s is not None:
            head += f"; first calls {b.warmup_s:.2f} s (compilation, buffers)"
        if b.simulated:
            head += "  [CUDA SIMULATOR: a code-path check, NOT a measurement]"
        lines.append(head)
        lines.append(f"  {'stage':<9} {'frames/s':>10} {'MB/s':>10} {'seconds':>9} {'threads':>8}")
        for s in by_backend.get(b.name, []):
            fps, mbs = s.frames_per_s, s.mb_per_s
            lines.append(f"  {s.stage:<9} {_num(fps):>10} {_num(mbs):>10} {s.seconds:>9.3f} "
                         f"{s.threads if s.threads is not None else '-':>8}")
        if b.transfer_bound_fps is not None:
            lines.append(f"  combine bound by the PCIe bus alone: {b.transfer_bound_fps:.1f} frames/s")
        if b.failed:
            lines.append(f"  FAILED: {b.failed}")
    unusable = [b for b in r.backends if not b.usable]
    if unusable:
        lines.append("")
        for k, b in enumerate(unusable):
            lines.append(f"{'unusable:' if k == 0 else '':<10}{b.name}: {b.reason}")
    if r.parity:
        lines.append("\nparity with the cpu backend:")
        for p in r.parity:
            if math.isnan(p.max_abs_diff):
                lines.append(f"  {p.backend}: FAILED: {p.reason}")
                continue
            lines.append(f"  {p.backend}: max |difference| {p.max_abs_diff:.3g} ({p.max_rel_diff:.2g} relative), "
                         f"{p.coverage_mismatch_px} pixel(s) covered by one only, kept counts differ at "
                         f"{p.count_mismatch_px} of {p.pixels}: {'ok' if p.ok else 'FAILED: ' + p.reason}")
    mem = f"\nmemory: peak host RSS {dev['peak_host_rss_mb']:.0f} MiB"
    if dev.get("peak_device_used_mb") is not None:
        mem += (f"; device memory in use at most {dev['peak_device_used_mb']:.0f} MiB (all processes, "
                f"{dev['device_used_mb_before']:.0f} MiB before the backends ran)")
    lines.append(mem)
    if r.json_path is not None:
        lines.append(f"figures written to {r.json_path}")
    return "\n".join(lines)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _round(v: float | None, digits: int = 4) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), digits)


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.3g}"
