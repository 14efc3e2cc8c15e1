#!/usr/bin/env python
"""Register + sigma-clipped (3/3) stack of 100 synthetic 3000×2000 frames: skystack
against Siril (siril-cli, if installed: `apt-get install siril`) and against the naive
all-in-memory NumPy stack, measured in one run on this machine. Prints one table.

Columns: wall time and peak RSS (/usr/bin/time -v) of each whole run; registration error
against the generator's exact transforms (RMS over the frame, px); the noise of the stack
in star-free sky, in ADU of the input frames (the stack is fitted linearly to the
noise-free ideal there, so normalisation and output scaling do not matter); the satellite
trail's residual in the stack (in noise σ). Then peak RSS for N = 50, 100, 200, 400 frames
at a fixed --memory-limit, and the phase-1 speed-up from 1 to 2 workers.

Siril 1.0 writes registered frames and keeps no transforms, so its registration error is
measured by registering its output frames (r_*.fit) onto its reference with skystack's
star matcher (which itself reads ~0.003 px RMS on these frames).

    python benchmarks/stack_vs_siril.py [--n 100] [--size 3000x2000] [--limit 256M] [--skip-sweep]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import DATA, REPO, run_measured, synthetic_set, table

BASELINE_CODE = """
import resource, numpy as np
import skystack, skystack.pipeline.deepsky.run, skystack.io, skystack.backends.cpu, skystack.output.write
import cv2, astropy.io.fits, dask.threaded, tqdm
from _skystack_kernels.cpu.combine import combine_band
from skystack.options import RegisterOptions
from skystack.register.deepsky import Reference, register_frame, measure_frame
b = np.zeros((3, 8, 8), np.float32)
combine_band(b, np.ones(3, np.float32), 1, 0, 3.0, 3.0, 3, np.zeros((8, 8), np.float32),
             np.zeros((8, 8), np.int32), np.zeros((3, 2), np.int64))
img = np.random.default_rng(0).normal(100, 5, (64, 64)).astype(np.float32)
o = RegisterOptions(); measure_frame(img, o); register_frame(img, Reference.build(img, o), o)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def robust_sigma(x):
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def stack_quality(img, synth, ref_index, box=32):
    """(noise in star-free boxes in input ADU, trail residual in σ) of a stack on the grid
    of frame ``ref_index``.

    The stack is first fitted linearly to the noise-free ideal (so output scaling and
    normalisation drop out); the noise is the median, over ``box``×``box`` boxes free of
    star and galaxy light, of the robust σ of the residual about each box's own median (so
    smooth background differences, e.g. a reference frame's gradient, do not count as
    noise)."""
    from skystack.pipeline.demo import ideal_on_reference_grid

    ideal = ideal_on_reference_grid(synth, ref_index)
    light = ideal_on_reference_grid(synth, ref_index, background=False)
    h, w = ideal.shape
    inner = np.zeros_like(ideal, dtype=bool)
    inner[60:h - 60, 60:w - 60] = True  # away from the drift-limited borders
    # stack ≈ a·ideal + b: fitted on everything but bright star cores, so the galaxy gives
    # the fit a lever arm (the sky alone spans too small a range), in centred coordinates
    fit = np.isfinite(img) & np.isfinite(ideal) & (light < 300.0) & inner
    x, y = ideal[fit][::5].astype(np.float64), img[fit][::5].astype(np.float64)
    xm, ym = np.median(x), np.median(y)
    a = float(np.sum((x - xm) * (y - ym)) / np.sum((x - xm) ** 2))
    b = float(ym - a * xm)
    resid = (img - b) / a - ideal
    sky = np.isfinite(resid) & (light < 0.5) & inner
    sigmas = []
    for y0 in range(60, h - 60 - box, box):
        for x0 in range(60, w - 60 - box, box):
            m = sky[y0:y0 + box, x0:x0 + box]
            if m.all():
                r = resid[y0:y0 + box, x0:x0 + box]
                sigmas.append(robust_sigma(r - np.median(r)))
    noise = float(np.median(sigmas))
    # the trail: pixels along its line in the trail frame, mapped to the reference grid
    trail = synth.trail_frame
    t_score = float("nan")
    if trail is not None:
        from skystack.types import Transform

        x0, y0, ang = synth._trail  # the generator's trail: a point and an angle (frame pixels)
        ts = np.linspace(-4000, 4000, 40001)
        pts = np.column_stack([x0 + ts * math.cos(ang), y0 + ts * math.sin(ang)])
        to_ref = synth.transforms[trail].then(synth.transforms[ref_index].inverse())
        p = Transform(to_ref.matrix).apply(pts)
        ok = (p[:, 0] > 60) & (p[:, 0] < w - 60) & (p[:, 1] > 60) & (p[:, 1] < h - 60)
        xi, yi = np.rint(p[ok, 0]).astype(int), np.rint(p[ok, 1]).astype(int)
        on = (light[yi, xi] < 0.5) & np.isfinite(resid[yi, xi])
        if on.any():
            local = np.median(resid[np.clip(yi[on] + 6, 0, h - 1), xi[on]])  # the sky just beside it
            t_score = float((np.median(resid[yi[on], xi[on]]) - local) / noise)
    return noise, t_score


def register_errors(synth, transforms, ref_index):
    from skystack.types import Transform

    t_ref_inv = synth.transforms[ref_index].inverse()
    out = []
    for i, m in enumerate(transforms):
        if m is None:
            out.append(math.inf)
            continue
        truth = synth.transforms[i].then(t_ref_inv)
        out.append(Transform.from_list(m).rms_error(truth, synth.shape, step=64))
    return out


def run_siril(folder, work, n):
    script = work / "siril.ssf"
    proc = work / "process"
    script.write_text(
        "requires 1.0.0\n"
        f"cd {folder}\n"
        f"link synth -out={proc}\n"
        f"cd {proc}\n"
        "register synth\n"
        f"stack r_synth rej s 3 3 -norm=addscale -out={work / 'siril_result'}\n"
        "close\n")
    m = run_measured(["siril-cli", "-s", str(script)])
    log = m.stdout + m.stderr
    stacked = re.search(r"(\d+) images have been stacked", log)
    seq = (proc / "synth_.seq").read_text().splitlines()
    s_line = next(x for x in seq if x.startswith("S "))
    ref = int(s_line.split()[6])  # S 'name' start nb_images nb_selected fixed_len reference_image ...
    return m, int(stacked.group(1)) if stacked else 0, ref, proc


def siril_registration_errors(proc, ref, n):
    """Residual misalignment of Siril's registered frames: skystack's star matcher between
    each r_synth_ frame and Siril's registered reference (identity if Siril were exact)."""
    from astropy.io import fits

    from skystack.options import RegisterOptions
    from skystack.register.deepsky import Reference, register_frame
    from skystack.types import Transform

    o = RegisterOptions(method="stars")
    files = sorted(proc.glob("r_synth_*.fit"))
    ref_img = fits.getdata(files[ref]).astype(np.float32)
    reference = Reference.build(ref_img, o)
    errs = []
    for k, f in enumerate(files):
        if k == ref:
            continue
        r = register_frame(fits.getdata(f).astype(np.float32), reference, o)
        errs.append(math.inf if r.transform is None else
                    r.transform.rms_error(Transform.identity(), ref_img.shape, step=64))
    return errs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", default="3000x2000")
    ap.add_argument("--limit", default="256M")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--only-sweep", action="store_true")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    folder, synth = synthetic_set(f"siril-{a.n}-{w}x{h}", n_frames=a.n, shape=(h, w), seed=0, max_shift=40.0,
                                  max_rot_deg=2.0)
    if a.only_sweep:
        sweep(folder, a)
        return
    from astropy.io import fits

    baseline = float(run_measured([sys.executable, "-c", BASELINE_CODE]).stdout.split()[-1])
    limit_mb = float(a.limit.rstrip("Mm"))
    rows, figures = [], {}
    work = DATA / f"siril-bench-out-{a.n}-{w}x{h}"  # kept, to look at the stacks afterwards
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if True:
        # ---- Siril
        if shutil.which("siril-cli"):
            sm, s_stacked, s_ref, proc = run_siril(folder, work, a.n)
            s_img = fits.getdata(work / "siril_result.fit").astype(np.float32)
            s_noise, s_trail = stack_quality(s_img, synth, s_ref)
            s_err = siril_registration_errors(proc, s_ref, a.n)
            figures["siril"] = dict(wall=sm.wall_s, rss=sm.peak_rss_mb, noise=s_noise)
            rows.append(["Siril 1.0 (register + stack rej s 3 3 -norm=addscale)", f"{sm.wall_s:.1f}",
                         f"{sm.peak_rss_mb:.0f}", f"{np.sqrt(np.mean(np.square(s_err))):.4f}",
                         f"{s_stacked}/{a.n}", f"{s_noise:.3f}", f"{s_trail:+.1f}"])
            shutil.rmtree(proc)
        else:
            print("siril-cli not found: Siril rows skipped (apt-get install siril)", file=sys.stderr)
        # ---- skystack (default Lanczos-4 warp, and bicubic as Siril's register uses)
        for interp in ("lanczos", "cubic"):
            out = work / f"sky_{interp}.fits"
            m = run_measured([sys.executable, "-m", "skystack.cli", "stack", str(folder), "-o", str(out),
                              "--method", "sigma", "--kappa", "3", "3", "--norm", "addscale", "--memory-limit",
                              a.limit, "--interpolation", interp, "-q", "--no-preview"])
            if m.returncode:
                sys.exit(m.stderr[-3000:])
            rep = json.loads((work / f"sky_{interp}.fits.report.json").read_text())
            ref = rep["reference"]["index"]
            errs = register_errors(synth, [f["transform"] for f in rep["frames"]], ref)
            img = fits.getdata(out).astype(np.float32)
            noise, trail = stack_quality(img, synth, ref)
            kept = rep["frames"][synth.trail_frame]["fate"] if synth.trail_frame is not None else "-"
            figures[interp] = dict(wall=m.wall_s, rss=m.peak_rss_mb, noise=noise, timings=rep["timings"])
            rows.append([f"skystack --interpolation {interp} --memory-limit {a.limit}", f"{m.wall_s:.1f}",
                         f"{m.peak_rss_mb:.0f}", f"{np.sqrt(np.mean(np.square([e for e in errs if e > 0]))):.4f}",
                         f"{rep['summary']['stacked']}/{a.n} (trail frame {kept})", f"{noise:.3f}", f"{trail:+.1f}"])
            if interp == "lanczos":
                transforms_json = work / "transforms.json"
                transforms_json.write_text(json.dumps([f["transform"] for f in rep["frames"]]))
        # ---- naive all-in-memory NumPy stack (skystack's transforms, cv2 warps, numpy clipping)
        if not a.skip_naive:
            out = work / "naive.fits"
            m = run_measured([sys.executable, str(REPO / "benchmarks" / "naive_numpy_stack.py"), str(folder),
                              str(transforms_json), str(out)])
            if m.returncode == 0:
                noise, trail = stack_quality(fits.getdata(out).astype(np.float32), synth, 0)
                rows.append(["naive NumPy (all frames in RAM, np sigma clip)", f"{m.wall_s:.1f}",
                             f"{m.peak_rss_mb:.0f}", "(skystack's)", f"{a.n}/{a.n}", f"{noise:.3f}", f"{trail:+.1f}"])
                figures["naive"] = dict(wall=m.wall_s, rss=m.peak_rss_mb)
            else:
                rows.append(["naive NumPy (all frames in RAM)", "failed", f"{m.peak_rss_mb:.0f}", "", "", "",
                             m.stderr.strip().splitlines()[-1][:60] if m.stderr.strip() else ""])
    print(f"\n{a.n} frames {w}x{h} uint16 FITS, ±40 px, ±2°, hot pixels, cosmic rays, trail in frame "
          f"{synth.trail_frame}; one run on this machine ({os.cpu_count()} cores)\n")
    print(table(rows, ["pipeline", "wall s", "peak RSS MB", "reg RMS px", "stacked", "sky noise ADU",
                       "trail resid σ"]))
    print(f"\ninterpreter baseline (Python + skystack imports + kernels): {baseline:.0f} MB; "
          f"allowed peak at --memory-limit {a.limit}: {baseline + 1.1 * limit_mb:.0f} MB")
    if "siril" in figures:
        s = figures["siril"]
        for k in ("lanczos", "cubic"):
            f = figures[k]
            print(f"skystack ({k}) / Siril: wall {f['wall'] / s['wall']:.2f}, peak RSS {f['rss'] / s['rss']:.2f}, "
                  f"sky noise {f['noise'] / s['noise']:.3f}; phases {f['timings']}")
    if "naive" in figures:
        f, n = figures["lanczos"], figures["naive"]
        print(f"skystack (lanczos) / naive NumPy: wall {f['wall'] / n['wall']:.2f}, peak RSS {f['rss'] / n['rss']:.2f}")

    if not a.skip_sweep:
        sweep(folder, a)


def sweep(folder: Path, a) -> None:
    """Peak RSS at a fixed budget for N = 50..400 frames (hard links cycling over the set:
    distinct paths, so none is taken for a duplicate input), and phase-1 speed-up from 1 to
    2 workers."""
    files = sorted(folder.glob("*.fits"))
    rows = []
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        tmp = Path(tmp)
        for n in (50, 100, 200, 400):
            d = tmp / f"n{n}"
            d.mkdir()
            for k in range(n):
                os.link(files[k % len(files)], d / f"f{k:04d}.fits")
            m = run_measured([sys.executable, "-m", "skystack.cli", "stack", str(d), "-o", str(tmp / f"o{n}.fits"),
                              "--method", "sigma", "--memory-limit", a.limit, "-q", "--no-preview"])
            rep = json.loads((tmp / f"o{n}.fits.report.json").read_text()) if m.returncode == 0 else {}
            rows.append([n, rep.get("summary", {}).get("stacked", "failed"), f"{m.wall_s:.1f}",
                         f"{m.peak_rss_mb:.0f}", rep.get("stack", {}).get("band_rows", "failed")])
        print(f"\npeak RSS against the number of frames, --memory-limit {a.limit}, sigma 3/3\n")
        print(table(rows, ["frames", "stacked", "wall s", "peak RSS MB", "band rows"]))
        times = {}
        for wk in (1, 2):
            m = run_measured([sys.executable, "-m", "skystack.cli", "register", str(folder), "--report",
                              str(tmp / f"r{wk}.json"), "--workers", str(wk), "-q"])
            times[wk] = json.loads((tmp / f"r{wk}.json").read_text())["timings"]["phase1_s"]
        print(f"\nphase 1 (register {len(files)} frames): 1 worker {times[1]:.1f} s, 2 workers {times[2]:.1f} s, "
              f"speed-up {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
