#!/usr/bin/env python
"""skystack against the blog post's naive all-in-memory pipeline, on the acceptance set
(30 frames 2000×1500, ±40 px, ±2°, hot pixels, cosmic rays, a satellite trail): wall time,
peak RSS (/usr/bin/time -v) and registration error against the generator's truth, measured
in one run on this machine. Prints one table.

    python benchmarks/seed_vs_skystack.py [--n 30] [--size 2000x1500]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import REPO, run_measured, synthetic_set, table


def errors(synth, transforms, ref_index=0):
    from skystack.types import Transform

    t_ref_inv = synth.transforms[ref_index].inverse()
    errs = []
    for i, m in enumerate(transforms):
        if m is None:
            errs.append(float("inf"))
            continue
        truth = synth.transforms[i].then(t_ref_inv)
        est = Transform.from_list(m)
        errs.append(est.max_error(truth, synth.shape))
    return errs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--size", default="2000x1500")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    folder, synth = synthetic_set(f"acceptance-{a.n}-{w}x{h}", n_frames=a.n, shape=(h, w), seed=0,
                                  max_shift=40.0, max_rot_deg=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed = run_measured([sys.executable, str(REPO / "benchmarks" / "naive_seed.py"), str(folder),
                             str(tmp / "seed.fits"), str(tmp / "seed.json")])
        if seed.returncode:
            sys.exit(f"naive seed pipeline failed:\n{seed.stderr[-2000:]}")
        seed_err = errors(synth, json.loads((tmp / "seed.json").read_text()))
        sky = run_measured([sys.executable, "-m", "skystack.cli", "stack", str(folder), "-o", str(tmp / "sky.fits"),
                            "-q", "--reference", "0"])
        if sky.returncode:
            sys.exit(f"skystack failed:\n{sky.stderr[-2000:]}")
        rep = json.loads((tmp / "sky.fits.report.json").read_text())
        sky_err = errors(synth, [f["transform"] for f in rep["frames"]])

    def row(name, m, errs):
        bad = sum(e > 1.0 for e in errs)
        ok = [e for e in errs if e <= 1.0]
        return [name, f"{m.wall_s:.1f}", f"{m.peak_rss_mb:.0f}", f"{bad}/{len(errs)}",
                f"{max(ok):.3f}" if ok else "-"]

    rows = [row("naive seed (all in memory, ORB min-max)", seed, seed_err),
            row("skystack stack (defaults)", sky, sky_err)]
    print(f"\n{a.n} frames {w}x{h}, ±40 px, ±2°, hot pixels; one run, this machine\n")
    print(table(rows, ["pipeline", "wall s", "peak RSS MB", "misregistered (>1 px)", "worst max err px (registered)"]))
    print(f"\nratios skystack / naive: wall {sky.wall_s / seed.wall_s:.2f}, peak RSS {sky.peak_rss_mb / seed.peak_rss_mb:.2f}")


if __name__ == "__main__":
    main()
