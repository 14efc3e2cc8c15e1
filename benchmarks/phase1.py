#!/usr/bin/env python
"""Phase 1 per frame, stage by stage: CPU ms per frame and per megapixel, old vs new.

    python benchmarks/phase1.py                      # this checkout vs main before detect2
    python benchmarks/phase1.py --old c322793 --n 4 --repeat 5   # vs before detect-speed
    python benchmarks/phase1.py --old ""             # this checkout only

Phase 1 registers each frame and measures it: star detection (background mesh, candidates,
centroids), matching (triangles, hypotheses), estimation (RANSAC, refinement), quality
metrics, and the normalisation statistics the pipeline records. Each version runs in its own
subprocess (``--old``: a ``git archive`` of that revision), single-threaded (OpenCV 1
thread; the Numba kernels are serial), on the same frames:

* synthetic: ``--n`` frames 3000×2000 uint16 from ``skystack.testing.synthetic`` (±40 px,
  ±2°), registered onto frame 0 — as the CLI reads them, float32 — and as uint16, the
  sensor's dtype (the old code converted it first; the new reads it in place);
* real: the Seestar M94 subs (1080×1920 GRBG, debayered by ``skystack.io`` and averaged to
  luminance as the pipeline does) and the M13 frames (1040×1392), from ``../shared/data``
  (``SKYSTACK_DATA``), each set onto its first frame. Skipped when absent.

Times are ``time.process_time`` per stage (functions wrapped by name), the minimum over
``--repeat`` runs of each frame, then the median over frames; "ms/MP" divides by the frame's
megapixels. Registration RMS against the generator's exact transforms is printed for the
synthetic frames; for the real ones, the residual and matches (no truth exists) and the stars
detected (on the Seestar subs before detect2: ~1 500, of which ~85 are stars that reappear in
the next sub, the rest noise). Figures on a shared machine vary by ±20 %: compare the two
columns of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# main when detect2 branched off (the measured smoothed noise, faint broad stars); c322793:
# before detect-speed
DEFAULT_OLD = "f1e50d2"

# stage -> functions whose CPU time it is, as (module, attribute[, class]); a name missing in
# a version is skipped. "skystack.register" stands for the deep-sky registration module:
# skystack.register itself up to c322793, skystack.register.deepsky since the restructuring.
# "matching" is match_stars less the estimation nested in it, "other" is the rest of detection (conversion, FWHM passes' bookkeeping, deduplication, ...).
STAGES = {
    "conversion": [("skystack.register", "_as_lum")],
    "background": [("skystack.detect.stars", "background_mesh")],
    "candidates": [("skystack.detect.stars", "_repair_sharp_pixels"), ("skystack.detect.stars", "_peaks"),
                   ("skystack.detect.stars", "candidates", "_Detector")],
    "centroids": [("_skystack_kernels.cpu.stars", "measure_stars")],
    "detection": [("skystack.register", "_detect")],
    "match_stars": [("skystack.register", "match_stars")],
    "estimation": [("skystack.register.estimate", "ransac"), ("skystack.register.estimate", "refine")],
    "quality": [("skystack.detect.stars", "metrics", "Stars")],
}
ROWS = ["background", "candidates", "centroids", "detection other", "matching", "estimation", "quality",
        "conversion", "register_frame", "normalisation stats", "phase 1 total"]

CHILD = textwrap.dedent("""
    import importlib, json, sys, time
    import numpy as np
    import cv2
    cv2.setNumThreads(1)
    src, task_path = sys.argv[1], sys.argv[2]
    sys.path[:0] = [src + "/src", src + "/kernels"]
    from skystack.options import RegisterOptions
    try:
        REG = "skystack.register.deepsky"
        from skystack.register.deepsky import Reference, register_frame
    except ImportError:  # a revision before the restructuring
        REG = "skystack.register"
        from skystack.register import Reference, register_frame
    from skystack.stack.normalize import robust_stats
    assert sys.modules[REG].__file__.startswith(src), sys.modules[REG].__file__
    task = json.loads(open(task_path).read())
    stages = task["stages"]
    acc = {}

    def wrap(owner, name, key):
        fn = getattr(owner, name)
        def timed(*a, **k):
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.process_time() - c
        setattr(owner, name, timed)

    for key, places in stages.items():
        for place in places:
            mod = importlib.import_module(REG if place[0] == "skystack.register" else place[0])
            owner = getattr(mod, place[2], None) if len(place) > 2 else mod
            if owner is not None and hasattr(owner, place[1]):
                wrap(owner, place[1], key)

    def load(spec):
        if spec["kind"] == "npy":
            return [np.load(p) for p in spec["paths"]]
        from astropy.io import fits
        if spec["kind"] == "fits":
            return [fits.getdata(p).astype(np.float32) for p in spec["paths"]]
        from skystack.io import open_frames
        fs = open_frames(spec["paths"])
        out = []
        for i in range(len(fs)):
            im = fs.read(i)
            out.append(im.mean(axis=2, dtype=np.float32) if im.ndim == 3 else im)
        return out

    results = {}
    for name, spec in task["sets"].items():
        frames = load(spec)
        if spec.get("astype"):
            frames = [f.astype(spec["astype"]) for f in frames]
        opt = RegisterOptions(method="stars")
        ref = Reference.build(frames[0], opt)
        per = []
        for i, f in enumerate(frames[1:], 1):
            register_frame(f, ref, opt)  # warm: kernels loaded for this dtype
            best = None
            for _ in range(task["repeat"]):
                acc.clear()
                c = time.process_time()
                reg = register_frame(f, ref, opt)
                acc["register_frame"] = time.process_time() - c
                c = time.process_time()
                robust_stats(f)
                acc["normalisation stats"] = time.process_time() - c
                best = dict(acc) if best is None else {k: min(best.get(k, 1e9), v) for k, v in acc.items()}
            t = reg.transform
            per.append({"t": best, "matrix": None if t is None else t.matrix.tolist(), "n_stars": reg.n_stars,
                        "n_matches": reg.n_matches, "residual": reg.residual_px, "mp": f.size / 1e6})
        results[name] = per
    print(json.dumps(results))
""")


def _export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src", "kernels"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _synthetic(tmp: Path, n: int, seed: int):
    from skystack.testing.synthetic import make_deepsky

    s = make_deepsky(n_frames=n, shape=(2000, 3000), seed=seed, max_shift=40.0, max_rot_deg=2.0)
    paths = []
    for i in range(n):
        p = tmp / f"synthetic_{i}.npy"
        np.save(p, s.frame(i))
        paths.append(str(p))
    return s, paths


def _real_sets() -> dict[str, dict]:
    data = Path(os.environ.get("SKYSTACK_DATA", REPO.parent / "shared" / "data"))
    if not data.is_dir():
        data = Path("/work/shared/data")
    out = {}
    seestar = sorted((data / "seestar-m94" / "session1").glob("*.fit"))
    if len(seestar) >= 2:
        out["Seestar M94 s1 (1920×1080 lum)"] = {"kind": "frameset", "paths": [str(p) for p in seestar]}
    m13 = sorted((data / "m13-ssdsi").glob("*.fits"))
    if len(m13) >= 2:
        out["M13 (1392×1040)"] = {"kind": "fits", "paths": [str(p) for p in m13]}
    return out


def _run(src: Path, task: dict, tmp: Path) -> dict:
    tp = tmp / f"task_{abs(hash(str(src)))}.json"
    tp.write_text(json.dumps(task))
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tp)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{src}: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _rows(per: list[dict]) -> dict[str, tuple[float, float]]:
    """Median over frames of each row: (ms per frame, ms per megapixel)."""
    def row(fn):
        v = np.array([fn(p["t"]) for p in per])
        mp = np.array([p["mp"] for p in per])
        return float(np.median(v)) * 1e3, float(np.median(v / mp)) * 1e3

    g = lambda k: (lambda t: t.get(k, 0.0))  # noqa: E731
    out = {
        "background": row(g("background")),
        "candidates": row(g("candidates")),
        "centroids": row(g("centroids")),
        "detection other": row(lambda t: t.get("detection", 0) - t.get("background", 0) - t.get("candidates", 0)
                               - t.get("centroids", 0)),
        "matching": row(lambda t: t.get("match_stars", 0) - t.get("estimation", 0)),
        "estimation": row(g("estimation")),
        "quality": row(g("quality")),
        "conversion": row(g("conversion")),
        "register_frame": row(g("register_frame")),
        "normalisation stats": row(g("normalisation stats")),
        "phase 1 total": row(lambda t: t.get("register_frame", 0) + t.get("normalisation stats", 0)),
    }
    return out


def _accuracy(per: list[dict], synth=None) -> str:
    if synth is not None:
        from skystack.types import Transform

        rms = []
        for i, p in enumerate(per, 1):
            if p["matrix"] is None:
                rms.append(np.inf)
            else:
                rms.append(Transform(np.array(p["matrix"])).rms_error(synth.transforms[i], synth.shape))
        rms = np.array(rms)
        return f"RMS vs truth mean {np.mean(rms):.4f} px, max {np.max(rms):.4f} px"
    ok = [p for p in per if p["matrix"] is not None]
    res = [p["residual"] for p in ok]
    return (f"registered {len(ok)}/{len(per)}, residual median {np.median(res):.3f} px, "
            f"matches median {int(np.median([p['n_matches'] for p in ok]))}, "
            f"stars median {int(np.median([p['n_stars'] for p in per]))}" if ok else f"registered 0/{len(per)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default=DEFAULT_OLD, help=f"revision to compare with (default {DEFAULT_OLD}; '' for none)")
    p.add_argument("--n", type=int, default=4, help="synthetic frames (the first is the reference; default 4)")
    p.add_argument("--repeat", type=int, default=3, help="runs per frame, the fastest counts (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-real", action="store_true", help="skip the real frames")
    a = p.parse_args(argv)
    sys.path[:0] = [str(REPO / "src"), str(REPO / "kernels")]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        synth, paths = _synthetic(tmp, max(2, a.n), a.seed)
        sets = {"synthetic 3000×2000 float32": {"kind": "npy", "paths": paths, "astype": "float32"},
                "synthetic 3000×2000 uint16": {"kind": "npy", "paths": paths}}
        if not a.no_real:
            sets.update(_real_sets())
        task = {"stages": STAGES, "sets": sets, "repeat": a.repeat}
        versions = {"new": REPO}
        if a.old:
            (tmp / "old").mkdir()
            versions = {"old": _export(a.old, tmp / "old"), **versions}
        results = {v: _run(src, task, tmp) for v, src in versions.items()}
    print(f"phase 1 per frame, single thread, CPU time (min of {a.repeat} runs, median over frames); "
          f"old = {a.old or '-'}, new = this checkout")
    for name in sets:
        print(f"\n{name}")
        rows = {v: _rows(results[v][name]) for v in versions}
        head = f"{'stage':<22}" + "".join(f"{v + ' ms':>10}{v + ' ms/MP':>11}" for v in versions)
        if "old" in versions:
            head += f"{'new/old':>9}"
        print(head)
        print("-" * len(head))
        for r in ROWS:
            line = f"{r:<22}" + "".join(f"{rows[v][r][0]:>10.1f}{rows[v][r][1]:>11.2f}" for v in versions)
            if "old" in versions:
                o, n = rows["old"][r][1], rows["new"][r][1]
                line += f"{n / o:>9.2f}" if o > 0.05 else f"{'':>9}"
            print(line)
        for v in versions:
            print(f"  {v}: {_accuracy(results[v][name], synth if name.startswith('synthetic') else None)}")
    print("\ndetection = background + candidates + centroids + other; register_frame = detection + matching "
          "+ estimation + quality + conversion (+ small glue); phase 1 total adds the normalisation statistics "
          "(skystack.stack.normalize.robust_stats) the pipeline records per frame; reading/decoding not included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
