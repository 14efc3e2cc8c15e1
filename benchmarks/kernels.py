"""CPU time per stacked value of the rejection/reduction kernel, old vs new.

Prints, for each rejection method and stack size N, the single-thread CPU time the CPU
kernel (``_skystack_kernels.cpu.combine.combine_band``) spends per value of an
``(N, h, w)`` block: this working tree's kernel ("new") against the kernel of a baseline
git revision ("old", default: the commit before the 0.2 kernel rewrite), each in its own
subprocess so the two never share a Numba cache or a module.

The block is a deep-sky patch as phase 2 sees it after warping: a smooth sky with a
gradient and stars (Moffat-like profiles, so a few per cent of the pixels are bright and
steep), per-frame sky level and transparency (undone by a per-frame scale and offset),
Gaussian read + shot noise, cosmic rays, one hot column, a satellite trail in one frame
and NaN borders where frames do not cover the patch. The new kernel also applies the
normalisation (``v * scale + offset``) itself; the old one gets pre-normalised values (so
"new" does strictly more work).

Timing: ``time.process_time`` around one kernel call on one thread, the minimum over
``--repeats`` calls after a warm-up call (compilation excluded). CPU time rather than wall
time, so other processes on a shared machine disturb the figures less; still, run it on a
quiet machine and say how loaded it was.

Usage::

    python benchmarks/kernels.py [--baseline REV] [--frames 20,100,400] [--repeats 7]
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The last commit before the kernels were rewritten for issue 11 (point 3).
DEFAULT_BASELINE = "c322793"
METHODS = ("none", "sigma", "winsorized", "mad", "linear-fit", "percentile", "gesd", "minmax")
PARAMS = {"percentile": (0.2, 0.2), "gesd": (0.05, 0.3), "minmax": (1.0, 1.0)}  # others: kappa 3 / 3
PIXELS = (16, 256)  # h, w of the block: 4096 output pixels


def make_block(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A warped, not yet normalised ``(n, h, w)`` float32 block and the per-frame
    ``scale``/``offset`` (float32) that normalise it (see the module docstring)."""
    rng = np.random.default_rng(seed)
    h, w = PIXELS
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sky = 800.0 + 0.3 * xx + 0.2 * yy
    stars = np.zeros((h, w))
    for _ in range(max(1, h * w // 400)):  # ~3 % of the pixels within a star's core
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        flux = rng.lognormal(8.0, 1.2)
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        stars += flux * (1.0 + r2 / 2.5) ** -3.0
    ideal = sky + stars
    transparency = rng.uniform(0.85, 1.0, n)
    level = rng.uniform(-60.0, 60.0, n)
    frames = ideal[None] * transparency[:, None, None] + level[:, None, None]
    frames += rng.normal(0.0, 1.0, frames.shape) * np.sqrt(np.maximum(frames, 1.0) + 25.0)
    cosmic = rng.random(frames.shape) < 5e-4
    frames[cosmic] += rng.uniform(500.0, 20000.0, cosmic.sum())
    frames[:, :, w // 3] += 3000.0  # a hot column (fixed on the sensor; here aligned: the worst case)
    t = n // 2
    frames[t, (np.abs(yy - 0.05 * xx - 4.0) < 1.2)] += 4000.0  # a satellite trail in one frame
    for i in range(n):  # uncovered borders: up to 6 columns / 2 rows per frame
        frames[i, :, : rng.integers(0, 7)] = np.nan
        frames[i, : rng.integers(0, 3), :] = np.nan
    scale = (1.0 / transparency).astype(np.float32)
    offset = (-level / transparency).astype(np.float32)
    return frames.astype(np.float32), scale, offset


def _worker(kernels_dir: str, frames: list[int], repeats: int) -> dict:
    """Time the kernel found in ``kernels_dir`` (run in a subprocess)."""
    sys.path.insert(0, kernels_dir)
    from _skystack_kernels.codes import REDUCE, REJECT
    from _skystack_kernels.cpu.combine import combine_band

    fused = "scale" in inspect.signature(combine_band.py_func).parameters
    results = {}
    for n in frames:
        raw, scale, offset = make_block(n)
        norm = raw * scale[:, None, None]  # the backends' two float32 steps
        norm += offset[:, None, None]
        _, h, w = raw.shape
        weights = np.ones(n, np.float32)
        for method in METHODS:
            p_low, p_high = PARAMS.get(method, (3.0, 3.0))
            out = np.empty((h, w), np.float32)
            count = np.empty((h, w), np.int32)
            rejected = np.zeros((n, 2), np.int64)
            args = (REJECT[method], REDUCE["mean"], p_low, p_high, 5, out, count, rejected)

            def call():
                if fused:
                    combine_band(raw, weights, *args, scale, offset)
                else:
                    combine_band(norm, weights, *args)

            call()  # compile / load from cache
            best = float("inf")
            for _ in range(repeats):
                t0 = time.process_time()
                call()
                best = min(best, time.process_time() - t0)
            results[f"{method}:{n}"] = best / raw.size * 1e9
    return results


def _run(kernels_dir: Path, frames: list[int], repeats: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import kernels as k; "
            f"print(json.dumps(k._worker({str(kernels_dir)!r}, {frames!r}, {repeats})))")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker for {kernels_dir} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _baseline_kernels(rev: str, into: Path) -> Path:
    """Extract ``kernels/`` of git revision ``rev`` into ``into``; returns its kernels dir."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "kernels"], cwd=str(REPO),
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "kernels"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the old kernel ('' for none)")
    ap.add_argument("--frames", default="20,100,400", help="stack sizes N, comma-separated")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    frames = [int(v) for v in args.frames.split(",")]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import table

    new = _run(REPO / "kernels", frames, args.repeats)
    old = {}
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            old = _run(_baseline_kernels(args.baseline, Path(tmp)), frames, args.repeats)
    rows = []
    for method in METHODS:
        for n in frames:
            key = f"{method}:{n}"
            o = old.get(key)
            rows.append([method, n, f"{o:.2f}" if o else "-", f"{new[key]:.2f}",
                         f"{o / new[key]:.2f}x" if o else "-"])
    print(f"CPU ns per value, one thread, min of {args.repeats}; block (N, {PIXELS[0]}, {PIXELS[1]}); "
          f"old = {args.baseline or 'none'}, new = working tree; load average {os.getloadavg()[0]:.2f}")
    print(table(rows, ["method", "N", "old ns/value", "new ns/value", "speed-up"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
