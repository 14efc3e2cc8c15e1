"""Warp + sigma-clipped stack of 4K 16-bit frames: CPU backend vs GPU backend, one run.

    PYTHONPATH=src:kernels python benchmarks/gpu.py [--frames 24] [--size 3840x2160]
        [--band-rows 256] [--threads 2] [--method sigma] [--interpolation lanczos]
        [--dir bench-data] [--json results.json] [--skip-cpu]

Generates (once; reused if present) ``--frames`` synthetic 16-bit mono frames — a star
field under noise, each shifted by up to 20 px and rotated by up to 0.5 degrees — into a
raw ``.npy`` file, then stacks them with each backend exactly as the pipeline's band engine
does: output bands of ``--band-rows`` rows, each frame's source rows read from the file
(page cache after the first pass), warped on the 8-row tile grid, normalised, sigma-clipped
and averaged, on ``--threads`` band workers.

Reported per backend: frames/s (frames / wall time of the whole stack) and where the time
went. CPU: file reads / warp / combine kernel. GPU: file reads / host staging (copies
into and out of page-locked buffers) / PCIe transfers / kernels (CUDA events; copies and
kernels overlap, so the parts need not add up to the wall). For the GPU the PCIe transfer
bound is printed beside it: the bytes the stack must move (16-bit source rows up, float32
image + int32 count down) over the bus bandwidth measured with a 256 MiB pinned copy, as
frames/s — no implementation that moves the frames over PCIe can beat it.

Without CuPy and a CUDA device the GPU rows are skipped with the reason, and the PCIe bound
is shown for nominal PCIe 4.0 / 5.0 x16 bandwidths instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "kernels")]

from skystack.backends.cpu import CpuBackend  # noqa: E402

# achievable host→device rates of a x16 link with pinned memory (≈ 80 % of the raw rate)
NOMINAL_PCIE = {"PCIe 4.0 x16 (nominal 25 GB/s)": 25e9, "PCIe 5.0 x16 (nominal 50 GB/s)": 50e9}


# ---------------------------------------------------------------------------------
# data


def make_frames(path: Path, n: int, height: int, width: int, seed: int = 4) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` 16-bit frames in a ``.npy`` file (memory-mapped on return) and their
    frame → reference matrices (written beside it)."""
    import cv2

    from skystack.types import Transform

    rng = np.random.default_rng(seed)
    mats = [Transform.identity().matrix] + [
        Transform.from_params(dx=rng.uniform(-20, 20), dy=rng.uniform(-20, 20), angle_deg=rng.uniform(-0.5, 0.5),
                              center=(width / 2, height / 2)).matrix for _ in range(n - 1)]
    mpath = path.with_suffix(".matrices.npy")
    if path.exists() and mpath.exists():
        frames = np.load(path, mmap_mode="r")
        if frames.shape == (n, height, width):
            return frames, list(np.load(mpath))
    path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sky = np.zeros((height, width), np.float32)
    k = height * width // 2000  # one star per 2000 px
    ys, xs = rng.integers(0, height, k), rng.integers(0, width, k)
    sky[ys, xs] = rng.pareto(1.5, k).astype(np.float32) * 4000 + 500
    sky = cv2.GaussianBlur(sky, (0, 0), 1.6) * 2 * math.pi * 1.6**2 + 1500
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, height, width))
    for i in range(n):
        img = cv2.warpAffine(sky, cv2.invertAffineTransform(mats[i]), (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
        noise = rng.standard_normal((height, width), dtype=np.float32) * 40
        if i == n // 2:
            img[height // 3:height // 3 + 4] += 30000  # a satellite trail for the clipping to remove
        out[i] = np.clip(img + noise, 0, 65535).astype(np.uint16)
    out.flush()
    del out
    np.save(mpath, np.array(mats))
    print(f"generated {path} ({n} frames {width}x{height}, 16-bit) in {time.perf_counter() - t:.1f} s")
    return np.load(path, mmap_mode="r"), mats


# ---------------------------------------------------------------------------------
# the band loop, as pipeline.run.band_task does it


def band_jobs(frames: np.ndarray, mats: list[np.ndarray], y0: int, y1: int, interpolation: str):
    from skystack.backends.base import BandJob
    from skystack.stack.plan import WARP_TILE_ROWS, band_matrix, source_rows

    n, height, width = frames.shape
    y1_tiles = -(-y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    jobs = []
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    for i in range(n):
        rows = source_rows(mats[i], y0, y1_tiles, width, height, interpolation)
        if rows is None:
            continue
        sy0, sy1 = rows
        jobs.append(BandJob(rows=np.array(frames[i, sy0:sy1]), matrix=band_matrix(mats[i], sy0, y0), scale=one,
                            offset=zero, frame_matrix=mats[i], src_y0=sy0, band_y0=y0, src_height=height))
    return jobs


def stack(backend, frames: np.ndarray, mats, options, band_rows: int, threads: int) -> dict:
    """Stack every band; return wall time, summed file-read time and a checksum image."""
    n, height, width = frames.shape
    bands = [(y0, min(y0 + band_rows, height)) for y0 in range(0, height, band_rows)]
    image = np.empty((height, width), np.float32)
    reads = []
    lock = threading.Lock()

    def one(b):
        y0, y1 = b
        t = time.perf_counter()
        jobs = band_jobs(frames, mats, y0, y1, options.interpolation)
        dt = time.perf_counter() - t
        res = backend.combine_band(jobs, (y1 - y0, width), np.ones(len(jobs), np.float32), options)
        image[y0:y1] = res.image
        with lock:
            reads.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, bands))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "read_s": sum(reads), "image": image}


class TimedCpuBackend(CpuBackend):
    """The CPU backend with its warp time measured (the rest of ``combine_band`` is the
    normalisation and the combine kernel)."""

    def __init__(self) -> None:
        self.warp_s = 0.0
        self.total_s = 0.0
        self._lock = threading.Lock()

    def warp_job(self, job, dst, interpolation):
        t = time.perf_counter()
        super().warp_job(job, dst, interpolation)
        with self._lock:
            self.warp_s += time.perf_counter() - t

    def combine_band(self, jobs, out_shape, weights, options):
        t = time.perf_counter()
        res = super().combine_band(jobs, out_shape, weights, options)
        with self._lock:
            self.total_s += time.perf_counter() - t
        return res


# ---------------------------------------------------------------------------------
# GPU


def gpu_backend(allow_simulator: bool = False):
    """The CuPy backend with profiling on, or ``(None, reason)``."""
    from skystack.backends._device import simulator_enabled
    from skystack.errors import BackendUnavailableError

    if simulator_enabled() and not allow_simulator:
        return None, ("NUMBA_ENABLE_CUDASIM is set: the CUDA simulator is not something to benchmark "
                      "(--simulator runs the GPU rows in it anyway, on tiny sizes, to check the code path)")
    try:
        from skystack.backends.cupy import CupyBackend

        return CupyBackend(profile=True, simulator=simulator_enabled()), None
    except BackendUnavailableError as e:
        return None, str(e)


def pcie_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> dict:
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


def transfer_bound(n: int, bytes_up: int, bytes_down: int, h2d: float, d2h: float) -> float:
    """Frames/s if the bus were the only cost (uploads and downloads do not overlap each
    other on one copy direction, but the two directions can: the slower one bounds)."""
    return n / max(bytes_up / h2d, bytes_down / d2h)


# ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", default="3840x2160")
    ap.add_argument("--band-rows", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="band workers (as Dask threads in the pipeline)")
    ap.add_argument("--method", default="sigma")
    ap.add_argument("--interpolation", default="lanczos", choices=["lanczos", "bilinear"])
    ap.add_argument("--dir", default=str(REPO / "bench-data"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--simulator", action="store_true",
                    help="with NUMBA_ENABLE_CUDASIM=1: run the GPU rows in the simulator (a code-path check on tiny "
                         "sizes, not a measurement; PCIe bandwidth is then nominal)")
    args = ap.parse_args(argv)

    from skystack.options import StackOptions

    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.band_rows % 8:
        ap.error("--band-rows must be a multiple of 8 (the warp tile grid)")
    n = args.frames
    frames, mats = make_frames(Path(args.dir) / f"gpu-{n}x{width}x{height}-u16.npy", n, height, width)
    options = StackOptions(method=args.method, kappa_low=3.0, kappa_high=3.0, max_iter=5,
                           interpolation=args.interpolation)
    print(f"{n} frames {width}x{height} 16-bit, {args.method} stack, {args.interpolation} warp, "
          f"bands of {args.band_rows} rows, {args.threads} band worker(s), {os.cpu_count()} CPU cores")
    report: dict = {"frames": n, "width": width, "height": height, "method": args.method,
                    "interpolation": args.interpolation, "band_rows": args.band_rows, "threads": args.threads,
                    "cpu_cores": os.cpu_count()}

    # warm-up: JIT compilation (CPU kernels are cached on disk, GPU kernels compile on first
    # launch) must not be timed
    warm = frames[:, :64]
    cpu_image = None
    if not args.skip_cpu:
        cpu = TimedCpuBackend()
        stack(cpu, np.ascontiguousarray(warm), mats, options, 32, 1)
        cpu.warp_s = cpu.total_s = 0.0
        r = stack(cpu, frames, mats, options, args.band_rows, args.threads)
        cpu_image = r["image"]
        row = {"device": f"CPU ({os.cpu_count()} cores)", "fps": n / r["wall_s"], "wall_s": r["wall_s"],
               "read_s": r["read_s"], "warp_s": cpu.warp_s, "combine_s": cpu.total_s - cpu.warp_s}
        report["cpu"] = row
        print(f"  CPU  : {row['fps']:8.2f} frames/s  wall {row['wall_s']:7.2f} s | file reads {row['read_s']:6.2f} s"
              f" | warp {row['warp_s']:6.2f} s | normalise+combine {row['combine_s']:6.2f} s (summed over workers)")

    gpu, reason = gpu_backend(args.simulator)
    if gpu is None:
        print(f"  GPU  : skipped (no usable GPU on this machine) — {reason}")
        report["gpu"] = {"skipped": reason}
        # what the bus alone would allow, for the record: 16-bit frames up, float32 image +
        # int32 count down (band overlaps from rotation add a little, ignored here)
        up, down = n * width * height * 2, width * height * 8
        report["pcie_bound_nominal"] = {}
        for name, bw in NOMINAL_PCIE.items():
            fps = transfer_bound(n, up, down, bw, bw)
            report["pcie_bound_nominal"][name] = fps
            print(f"  PCIe transfer bound, {name}: {fps:8.1f} frames/s")
    else:
        name = gpu.device
        stack(gpu, np.ascontiguousarray(warm), mats, options, 32, 1)
        before = gpu.timings()
        r = stack(gpu, frames, mats, options, args.band_rows, args.threads)
        t = gpu.timings()
        row = {"device": name, "fps": n / r["wall_s"], "wall_s": r["wall_s"], "read_s": r["read_s"],
               "staging_s": t.host_io_s - before.host_io_s, "transfer_s": t.transfer_s - before.transfer_s,
               "kernel_s": t.kernel_s - before.kernel_s, "bytes_h2d": t.bytes_h2d - before.bytes_h2d,
               "bytes_d2h": t.bytes_d2h - before.bytes_d2h}
        if gpu.layer_name == "cupy":
            bw = pcie_bandwidth()
        else:  # the simulator: no bus to measure
            bw = {"h2d": NOMINAL_PCIE["PCIe 4.0 x16 (nominal 25 GB/s)"]} | {"d2h": 25e9}
            name += " — NOT A MEASUREMENT (code-path check), PCIe bandwidth nominal"
        row["pcie_h2d_GBps"], row["pcie_d2h_GBps"] = bw["h2d"] / 1e9, bw["d2h"] / 1e9
        row["pcie_bound_fps"] = transfer_bound(n, row["bytes_h2d"], row["bytes_d2h"], bw["h2d"], bw["d2h"])
        row["fraction_of_bound"] = row["fps"] / row["pcie_bound_fps"]
        if cpu_image is not None:
            both = np.isfinite(cpu_image) & np.isfinite(r["image"])
            row["max_rel_diff_vs_cpu"] = float(np.max(np.abs(r["image"][both] - cpu_image[both])
                                                      / np.maximum(np.abs(cpu_image[both]), 1e-6)))
            row["coverage_equal"] = bool(np.array_equal(np.isnan(cpu_image), np.isnan(r["image"])))
        report["gpu"] = row
        print(f"  GPU  : {row['fps']:8.2f} frames/s  wall {row['wall_s']:7.2f} s | file reads {row['read_s']:6.2f} s"
              f" | staging {row['staging_s']:6.2f} s | transfer {row['transfer_s']:6.2f} s"
              f" | kernels {row['kernel_s']:6.2f} s   [{name}]")
        print(f"  PCIe : {row['bytes_h2d'] / 1e9:.2f} GB up, {row['bytes_d2h'] / 1e9:.3f} GB down at "
              f"{row['pcie_h2d_GBps']:.1f} / {row['pcie_d2h_GBps']:.1f} GB/s measured -> transfer bound "
              f"{row['pcie_bound_fps']:.1f} frames/s; the GPU stack reaches {row['fraction_of_bound']:.0%} of it")
        if "max_rel_diff_vs_cpu" in row:
            print(f"  GPU vs CPU image: max relative difference {row['max_rel_diff_vs_cpu']:.2e}, "
                  f"same coverage: {row['coverage_equal']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
