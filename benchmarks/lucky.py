"""Lucky-imaging throughput: frames per second and peak memory on a synthetic SER video.

    PYTHONPATH=src:kernels python benchmarks/lucky.py [--frames 2000] [--size 640x480]
        [--dir bench-data] [--workers N] [--skip-memory]

Generates (once; reused if present) an 8-bit mono SER of the synthetic Moon under seeing
(:mod:`skystack.testing.planetary`), then times :func:`skystack.pipeline.lucky.run_lucky`
on it for the global path (rank + global align + stack of the best 10 %) and the
multi-point path, and prints frames per second (all frames of the video / wall time).

Peak memory is measured in fresh subprocesses (``resource.getrusage`` ``ru_maxrss``) for
the global path on the first 500 and on all frames, to show it is flat in the frame count.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "kernels")]


def make_video(path: Path, n: int, size: tuple[int, int], seed: int = 2024) -> Path:
    from skystack.io import write_ser
    from skystack.testing.planetary import Seeing, make_lunar_video

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    video = make_lunar_video(n, (h, w), seed=seed, seeing=Seeing(jitter_px=3.0, distortion_px=1.0,
                                                                  distortion_cell_px=96.0,
                                                                  drift_px_per_frame=(0.01, 0.005)))
    t = time.perf_counter()
    write_ser(path, video.frames())
    print(f"generated {path} ({n} frames {w}x{h}, 8-bit) in {time.perf_counter() - t:.1f} s")
    return path


def run_once(path: Path, n: int | None, multipoint: bool, workers: int | None) -> dict:
    from skystack.io import open_frames
    from skystack.pipeline.lucky import LuckyOptions, run_lucky

    frames = open_frames([str(path)])
    if n is not None and n < len(frames):
        frames = _Prefix(frames, n)
    opts = LuckyOptions(keep="10%", multipoint=multipoint, workers=workers, preview=False, plot=False)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    r = run_lucky(frames, None, opts)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"frames": r.n_frames, "used": r.n_used, "wall_s": wall, "fps": r.n_frames / wall, "cpu_s": cpu,
            "timings": {k: round(v, 3) for k, v in r.timings.items()}, "peak_rss_mb": r.peak_rss_mb,
            "alignment_points": r.alignment_points}


class _Prefix:
    """The first ``n`` frames of a frame set (for the memory-vs-frame-count check)."""

    def __init__(self, frames, n: int):
        self._f = frames
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getattr__(self, name):
        return getattr(self._f, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--dir", default=str(REPO / "bench-data"))
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only", choices=["global", "multipoint"], default=None)
    ap.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    path = Path(a.dir) / f"lucky-moon-{a.frames}x{w}x{h}.ser"
    if a.child:
        res = run_once(path, int(a.child[0]), a.child[1] == "multipoint", a.workers)
        print(json.dumps(res))
        return 0
    make_video(path, a.frames, (w, h))
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}, "
          f"workers {a.workers or os.cpu_count()}")
    print("frames/s = video frames / wall time; cpu s = process CPU time (on a shared machine the wall")
    print("time includes waiting for cores that other processes hold; cpu s / cores is the idle-machine floor)")
    print(f"{'path':<12} {'frames':>6} {'used':>5} {'wall s':>7} {'frames/s':>9} {'cpu s':>7}  phases (s)")
    for mode in ("global", "multipoint"):
        if a.only and a.only != mode:
            continue
        r = run_once(path, None, mode == "multipoint", a.workers)
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items() if k not in ("total_s",))
        extra = f" ({r['alignment_points']} APs)" if r["alignment_points"] else ""
        print(f"{mode:<12} {r['frames']:>6} {r['used']:>5} {r['wall_s']:>7.2f} {r['fps']:>9.1f} "
              f"{r['cpu_s']:>7.2f}  {phases}{extra}")
    if not a.skip_memory:
        print("peak RSS of the global path in a fresh process (flat in the frame count):")
        for n in sorted({min(500, a.frames), a.frames}):
            cmd = [sys.executable, __file__, "--frames", str(a.frames), "--size", a.size, "--dir", a.dir,
                   "--child", str(n), "global"] + (["--workers", str(a.workers)] if a.workers else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {n:>5} frames: peak RSS {res['peak_rss_mb']:.0f} MiB, {res['fps']:.0f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
