"""Lucky imaging on the shared benchmark videos: detail, frames/s, peak RSS, worker scaling
and how well the quality metrics follow the true seeing.

    python benchmarks/lucky.py [--seeds 1,2,3] [--kinds moon,planet,moon0] [--frames 1000]
        [--cache /tmp/lucky-bench] [--workers 2] [--scaling] [--metrics] [--repeat 1]
        [--src DIR] [--extra "--keep 10%"] [--no-global] [--long 4000] [--json rows.json]

Videos come from the shared generators (``../shared/bench/lucky``: ``make_video.py`` for
the Moon, ``--patchy 0`` for ``moon0`` (uniform seeing across the field), ``make_planet.py``
for the RGGB Jupiter-like disk), 640×480, generated once into ``--cache`` (about 40 s each)
and reused. Each run is the command line, ``python -m skystack.cli lucky VIDEO -o OUT.fits``
with the default options (previews, plot and report included), in a fresh process under
``/usr/bin/time -v``:

* ``frames/s``: video frames / wall time of the whole command (start-up included);
* ``cpu fps``: video frames / (process CPU time / cores): what an idle machine would give
  at best; on a shared machine the wall time also counts waiting for cores;
* ``peak MB``: the process's maximum resident set;
* ``detail``: ``score_lucky.py``'s band-pass correlation of the stack with the truth;
* ``phases``: the report's wall / CPU seconds per phase (CPU of the process and its forked
  workers, ``cpu_timings``): on a shared machine the CPU figures say what the wall would be
  alone, and CPU over wall how many cores a phase kept busy.

``global`` runs add ``--no-multipoint``. ``--scaling`` times ``--workers 1`` against
``--workers 2``, for the whole command and for the pipeline alone (the report's
``total_s``, without the interpreter's start-up) and for each pass that runs on the workers
(ranking, reference, alignment and stacking); ``--metrics`` prints the Spearman
correlation of the global ranking metric (the report's per-frame ``quality``) with the true
seeing, how many of the true best 100 frames the ranking puts into the top 200, and the
median per-region Spearman of the local metric (:func:`skystack.quality.metrics.local_quality`)
with the true *local* seeing, which the benchmark recomputes by replaying the generator's
random stream (checked against ``truth.json``).

``--long N`` also stacks an N-frame Moon video (seed 6) and the 1000-frame one of the same
seed and prints their peak RSS (memory must not grow with the frame count).

``--src DIR`` runs another checkout's ``src`` (e.g. an export of skystack 0.1) with the same
harness, for before/after tables. The defaults are the ones PlanetarySystemStacker users
run with (``--keep 10%``, multi-point alignment, 64-pixel alignment points).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "kernels")]

from _common import compile_bytecode  # noqa: E402

# the phases whose passes run on the workers (the report's timings): --scaling prints each
# one's 1 -> 2 worker ratio beside the whole command's, to show where a ratio below 2 is
# lost. The rest of the command is serial (start-up, alignment points, writing); the rank
# phase also holds the serial scoring and selection after its pass, and with two workers
# the FITS writer process imports astropy beside it
_PASSES = ("rank_s", "reference_s", "align_stack_s")


def bench_dir() -> Path:
    """The shared generators: ``$SKYSTACK_LUCKY_BENCH``, else ``shared/bench/lucky`` beside
    the checkout (or beside the worktrees' parent)."""
    env = os.environ.get("SKYSTACK_LUCKY_BENCH")
    if env:
        return Path(env)
    for base in (REPO.parent, REPO.parent.parent):
        p = base / "shared" / "bench" / "lucky"
        if p.is_dir():
            return p
    raise SystemExit("shared lucky benchmark generators not found; set SKYSTACK_LUCKY_BENCH")


def video(kind: str, seed: int, n: int, cache: Path, gen: Path) -> Path:
    """Directory with video.ser/truth.fits/truth.json, generated once."""
    name = f"{kind}-s{seed}" + ("" if n == 1000 else f"-n{n}")
    d = cache / name
    if (d / "truth.json").exists() and (d / "video.ser").exists():
        return d
    script = "make_planet.py" if kind == "planet" else "make_video.py"
    cmd = [sys.executable, str(gen / script), "--out", str(d), "-n", str(n), "--seed", str(seed)]
    if kind == "moon0":
        cmd += ["--patchy", "0"]
    print(f"generating {d} ...", file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return d


def _scorer(gen: Path):
    spec = importlib.util.spec_from_file_location("score_lucky", gen / "score_lucky.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def run_cli(d: Path, out: Path, args: list[str], src: Path) -> dict:
    """One ``skystack lucky`` run in a fresh process; wall, CPU, peak RSS and its report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src / "src"), str(src / "kernels")]))
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "skystack.cli", "lucky", str(d / "video.ser"),
           "-o", str(out), "-q"] + args
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")

    def field(label: str) -> float:
        m = re.search(rf"{re.escape(label)}: ([\d.]+)", p.stderr)
        return float(m.group(1)) if m else float("nan")

    rep = json.loads(Path(str(out) + ".report.json").read_text())
    return {"wall": wall, "cpu": field("User time (seconds)") + field("System time (seconds)"),
            "rss": field("Maximum resident set size (kbytes)") / 1024, "report": rep}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


# -- the generators' local seeing, replayed ----------------------------------------------------

def local_seeing(d: Path):
    """Yield each frame's true local seeing field ``s_loc`` (H, W) by replaying the
    generator's random stream (the same draws in the same order, without rendering)."""
    import cv2

    meta = json.loads((d / "truth.json").read_text())
    W, H, n, patchy = meta["width"], meta["height"], meta["n"], meta["patchy"]
    planet = meta.get("bayer") is not None
    rng = np.random.default_rng(meta["seed"])
    if planet:
        rng.normal(0, 1, (H + 128, W + 128))  # planet_scene's turbulence (pad 64 each side)
    for i in range(n):
        rng.normal(0, 1.2 if planet else 1.5, 2)
        seeing = float(rng.gamma(2.0, 0.5))
        if abs(seeing - meta["frames"][i]["seeing"]) > 1e-9:
            raise RuntimeError(f"{d}: replay of the generator diverged at frame {i}")
        g = rng.normal(0, 1, (H // 48 + 2, W // 48 + 2)).astype(np.float32)
        g = cv2.GaussianBlur(cv2.resize(g, (W, H), interpolation=cv2.INTER_CUBIC), (0, 0), 20)
        g /= g.std() + 1e-6
        rng.normal(0, 1, (2, H // 8 + 2, W // 8 + 2))
        rng.normal(0, 1, (H, W))
        rng.normal(0, 1, (H, W))
        yield seeing * np.exp(patchy * g)


def metric_figures(d: Path, rep: dict, pool: int = 200, box: int = 64, step: int = 32) -> dict:
    """Spearman of the global metric (report) and of the local metric with the truth."""

    from skystack.io import open_frames
    from skystack.quality import metrics

    meta = json.loads((d / "truth.json").read_text())
    seeing = np.array([f["seeing"] for f in meta["frames"]])
    q = np.array([f["metrics"].get("quality", np.nan) for f in rep["frames"]], float)
    out = {"global_rho": spearman(q, -seeing)}
    best = set(np.argsort(seeing)[:100].tolist())
    top = set(np.argsort(-np.nan_to_num(q, nan=-np.inf))[:pool].tolist())
    out["best100_in_top200"] = len(best & top)
    if not hasattr(metrics, "local_quality"):
        return out
    W, H = meta["width"], meta["height"]
    frames = open_frames([str(d / "video.ser")])
    xs = np.arange(box // 2 + 32, W - box // 2 - 32 + 1, step, dtype=float)
    ys = np.arange(box // 2 + 32, H - box // 2 - 32 + 1, step, dtype=float)
    cx, cy = np.meshgrid(xs, ys)
    centres = np.column_stack([cx.ravel(), cy.ravel()])
    lq = np.empty((meta["n"], len(centres)))
    ls = np.empty_like(lq)
    for i, s_loc in enumerate(local_seeing(d)):
        f = meta["frames"][i]
        lum = np.asarray(frames.luminance(i), np.float32)
        # truth point p sits at frame pixel p - offset
        c = centres - np.array([f["dx"], f["dy"]])
        lq[i] = metrics.local_quality(lum, c, box)
        ix = np.clip(np.round(c[:, 0]).astype(int), 0, W - 1)
        iy = np.clip(np.round(c[:, 1]).astype(int), 0, H - 1)
        ls[i] = s_loc[iy, ix]
    rho = [spearman(lq[:, k], -ls[:, k]) for k in range(len(centres))]
    if meta.get("bayer") is not None:  # only boxes on the disk carry detail
        from astropy.io import fits

        truth = fits.getdata(d / "truth.fits")
        lit = truth[centres[:, 1].astype(int), centres[:, 0].astype(int)] > 0.3 * truth.max()
        rho = [r for r, keep in zip(rho, lit) if keep]
    out["local_rho"] = float(np.nanmedian(rho)) if rho else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--kinds", default="moon,planet,moon0")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--cache", default="/tmp/lucky-bench")
    ap.add_argument("--workers", type=int, default=None, help="--workers of the runs (default: the CLI's)")
    ap.add_argument("--scaling", action="store_true", help="also time --workers 1 and 2")
    ap.add_argument("--metrics", action="store_true", help="Spearman of the metrics with the true seeing")
    ap.add_argument("--no-global", action="store_true", help="skip the --no-multipoint runs")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (the fastest is shown)")
    ap.add_argument("--src", default=str(REPO), help="checkout whose src/ runs (default: this one)")
    ap.add_argument("--extra", default="", help="more skystack lucky arguments for every run")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--long", type=int, default=0, metavar="N",
                    help="also stack an N-frame Moon video (seed 6): peak RSS against the frame count")
    a = ap.parse_args(argv)
    gen = bench_dir()
    cache = Path(a.cache)
    src = Path(a.src).resolve()
    compile_bytecode(src)
    score = _scorer(gen)
    from astropy.io import fits

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cpus, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; src {src}")
    rows = []
    configs: list[tuple[str, list[str]]] = [("default", [])]
    if not a.no_global:
        configs.append(("global", ["--no-multipoint"]))
    base_args = shlex.split(a.extra) + (["--workers", str(a.workers)] if a.workers else [])
    print(f"{'video':<12} {'config':<9} {'detail':>7} {'frames/s':>8} {'cpu fps':>8} {'peak MB':>8} "
          f"{'used':>5}  phases (wall/CPU s; CPU includes forked workers)")
    for kind in a.kinds.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            d = video(kind, seed, a.frames, cache, gen)
            truth = fits.getdata(d / "truth.fits").astype(np.float32)
            for cname, cargs in configs:
                out = cache / "out" / f"{src.name}-{d.name}-{cname}.fits"
                runs = [run_cli(d, out, base_args + cargs, src) for _ in range(a.repeat)]
                r = min(runs, key=lambda x: x["wall"])
                n = r["report"]["summary"]["frames"]
                det = score.detail(score.load(str(out)), truth)[0]
                t = r["report"]["timings"]
                cpu = r["report"].get("cpu_timings") or {}
                phases = ", ".join(f"{k[:-2]} {v:.2f}" + (f"/{cpu[k]:.2f}" if k in cpu else "")
                                   for k, v in t.items() if k != "total_s")
                if "total_s" in cpu:
                    phases += f" (pipeline {t['total_s']:.2f}/{cpu['total_s']:.2f})"
                row = {"video": d.name, "config": cname, "detail": det, "fps": n / r["wall"],
                       "cpu_fps": n / (r["cpu"] / cores), "rss": r["rss"], "used": r["report"]["summary"]["used"],
                       "timings": t, "load": os.getloadavg()[0]}
                print(f"{d.name:<12} {cname:<9} {det:7.4f} {row['fps']:8.0f} {row['cpu_fps']:8.0f} "
                      f"{r['rss']:8.0f} {row['used']:5d}  {phases}", flush=True)
                if a.metrics and cname == "default":
                    m = metric_figures(d, r["report"])
                    row["metrics"] = m
                    print(f"{'':<12} metrics: global rho {m['global_rho']:.3f}, best 100 in top 200: "
                          f"{m['best100_in_top200']}" + (f", local rho {m['local_rho']:.3f}" if "local_rho" in m
                                                         else ""), flush=True)
                rows.append(row)
            if a.scaling:
                out = cache / "out" / f"{src.name}-{d.name}-scaling.fits"
                w, p, ph = {}, {}, {}
                for k in (1, 2):
                    runs = [run_cli(d, out, shlex.split(a.extra) + ["--workers", str(k)], src) for _ in range(a.repeat)]
                    w[k] = min(r["wall"] for r in runs)
                    p[k] = min(r["report"]["timings"]["total_s"] for r in runs)
                    ph[k] = {n: min(r["report"]["timings"].get(n, math.nan) for r in runs) for n in _PASSES}
                passes = {n: ph[1][n] / ph[2][n] for n in _PASSES if ph[2][n] > 0}
                print(f"{d.name:<12} scaling: command 1 worker {w[1]:.2f} s, 2 workers {w[2]:.2f} s: x{w[1] / w[2]:.2f}; "
                      f"pipeline (no start-up) {p[1]:.2f} s, {p[2]:.2f} s: x{p[1] / p[2]:.2f}; phases "
                      + ", ".join(f"{n[:-2]} x{v:.2f}" for n, v in passes.items())
                      + f" (load {os.getloadavg()[0]:.2f})", flush=True)
                rows.append({"video": d.name, "config": "scaling", "w1_s": w[1], "w2_s": w[2], "p1_s": p[1],
                             "p2_s": p[2], "phases": passes})
    if a.long:
        for n in (a.frames, a.long):
            d = video("moon", 6, n, cache, gen)
            r = run_cli(d, cache / "out" / f"{src.name}-{d.name}.fits", base_args, src)
            print(f"{d.name:<12} memory: {n} frames, peak RSS {r['rss']:.0f} MB, {n / r['wall']:.0f} frames/s",
                  flush=True)
            rows.append({"video": d.name, "config": "memory", "frames": n, "rss": r["rss"], "fps": n / r["wall"]})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
