#!/usr/bin/env python
"""skystack against Siril 1.0 (siril-cli), measured side by side in one run on this machine.
Prints tables: per-stage times, peak RSS and quality, and the ratios issue 11 asks for.

1. Synthetic set (100 frames 3000×2000 uint16, ±40 px, ±2°, hot pixels, cosmic rays, a
   satellite trail): register + sigma 3/3 with add+scale normalisation. Siril: ``register``
   then ``stack rej s 3 3 -norm=addscale``. skystack: ``--method sigma --norm addscale
   --memory-limit 256M``, bicubic (its default) and bilinear. Columns: wall time and peak
   RSS (``/usr/bin/time -v``), the stages (Siril's own "Execution time" per command;
   skystack's report timings, start-up = wall - the run's own total, open = opening the
   inputs: their headers and the FITS reader's first import, ~0.3 s), registration error
   against the generator's exact transforms (RMS over the frame, px; Siril's measured on
   its registered frames by skystack's star matcher, which reads ~0.003 px on these), the
   sky noise (input ADU, star-free boxes, the stack fitted linearly to the noise-free
   ideal), PSNR against the ideal and the trail's residual.
2. The same at 50, 100, 200 and 400 frames (hard links cycling over the set): wall, peak,
   tile height and read amplification; 400 frames against 100.
3. The real Seestar S50 subs of M94 (18 frames 1080×1920 GRBG, both sessions, from
   ../shared/data): Siril ``convert -debayer``, ``register``, ``stack rej s 3 3
   -norm=addscale``; skystack ``--method sigma`` at its default limit, at 64M, and with
   ``--no-preview`` (the FITS and report only: Siril writes no preview or plot; the
   preview and the quality plot cost ~0.2 s together, the plot drawn with OpenCV).

Peak RSS is compared with the run's baseline: the same command on 5 tiny frames (every
import, compiled kernel and thread it uses, no frame worth counting). The load average is
printed before and after: the machine is shared, and wall times move with it.

PSNR: 20·log10(range of the ideal / RMS of (stack - ideal)) over the field 120 px inside
the borders (covered by every frame), after fitting the stack linearly to the ideal (so normalisation and output scaling
drop out), in dB.

    SKYSTACK_BENCH_DATA=/tmp/bench python benchmarks/stack_vs_siril.py [--n 100] [--size 3000x2000]
        [--limit 256M] [--skip-sweep] [--skip-synthetic] [--skip-seestar] [--lanczos] [--naive] [--repeat 3]
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
from _common import DATA, REPO, compile_bytecode, run_measured, synthetic_set, table

SEESTAR = REPO.parent / "shared" / "data" / "seestar-m94"
if not SEESTAR.is_dir():
    SEESTAR = Path(os.environ.get("SKYSTACK_DATA", "/work/shared/data")) / "seestar-m94"


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} ({os.cpu_count()} cores)"


def robust_sigma(x):
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


class Truth:
    """The generator's ideal stack on a reference frame's grid, computed once per frame."""

    def __init__(self, synth):
        self.synth = synth
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def ideal(self, ref: int) -> tuple[np.ndarray, np.ndarray]:
        if ref not in self._cache:
            from skystack.pipeline.demo import ideal_on_reference_grid

            self._cache[ref] = (ideal_on_reference_grid(self.synth, ref),
                                ideal_on_reference_grid(self.synth, ref, background=False))
        return self._cache[ref]


# The field measured: this far inside the borders every frame covers every pixel (±40 px of
# shift, and ±2° of rotation move a 3000×2000 frame's corners by up to 52 px more), so a
# stack's own handling of partly covered pixels (Siril fills them with 0) does not count.
INNER_PX = 120


def stack_quality(img, truth: Truth, ref_index, box=32):
    """(sky noise in input ADU, PSNR against the ideal in dB, trail residual in σ) of a
    stack on the grid of frame ``ref_index`` (module docstring)."""
    synth = truth.synth
    ideal, light = truth.ideal(ref_index)
    h, w = ideal.shape
    e = INNER_PX
    inner = np.zeros_like(ideal, dtype=bool)
    inner[e:h - e, e:w - e] = True
    # stack ≈ a·ideal + b: fitted on everything but bright star cores, so the galaxy gives
    # the fit a lever arm (the sky alone spans too small a range), in centred coordinates
    fit = np.isfinite(img) & np.isfinite(ideal) & (light < 300.0) & inner
    x, y = ideal[fit][::5].astype(np.float64), img[fit][::5].astype(np.float64)
    xm, ym = np.median(x), np.median(y)
    a = float(np.sum((x - xm) * (y - ym)) / np.sum((x - xm) ** 2))
    b = float(ym - a * xm)
    resid = (img - b) / a - ideal
    field = np.isfinite(resid) & inner
    span = float(np.nanmax(ideal[field]) - np.nanmin(ideal[field]))
    psnr = 20 * math.log10(span / float(np.sqrt(np.mean(resid[field].astype(np.float64) ** 2))))
    sky = field & (light < 0.5)
    sigmas = []
    for y0 in range(e, h - e - box, box):
        for x0 in range(e, w - e - box, box):
            m = sky[y0:y0 + box, x0:x0 + box]
            if m.all():
                r = resid[y0:y0 + box, x0:x0 + box]
                sigmas.append(robust_sigma(r - np.median(r)))
    noise = float(np.median(sigmas))
    t_score = float("nan")
    if synth.trail_frame is not None:
        from skystack.types import Transform

        x0, y0, ang = synth._trail  # the generator's trail: a point and an angle (frame pixels)
        ts = np.linspace(-4000, 4000, 40001)
        pts = np.column_stack([x0 + ts * math.cos(ang), y0 + ts * math.sin(ang)])
        to_ref = synth.transforms[synth.trail_frame].then(synth.transforms[ref_index].inverse())
        p = Transform(to_ref.matrix).apply(pts)
        ok = (p[:, 0] > e) & (p[:, 0] < w - e) & (p[:, 1] > e) & (p[:, 1] < h - e)
        xi, yi = np.rint(p[ok, 0]).astype(int), np.rint(p[ok, 1]).astype(int)
        on = (light[yi, xi] < 0.5) & np.isfinite(resid[yi, xi])
        if on.any():
            local = np.median(resid[np.clip(yi[on] + 6, 0, h - 1), xi[on]])  # the sky just beside it
            t_score = float((np.median(resid[yi[on], xi[on]]) - local) / noise)
    return noise, psnr, t_score


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


def siril_stages(log: str) -> dict[str, float]:
    """Siril's own time per command (``Running command: X`` ... ``Execution time: T``);
    what the total has beyond them (``convert``, which prints no time of its own, and the
    script's start-up) as ``convert/other``."""
    def seconds(m):
        return float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)

    stages: dict[str, float] = {}
    current = None
    total = None
    for line in log.splitlines():
        m = re.search(r"Total execution time: ([\d.]+) (ms|s)", line)
        if m:
            total = seconds(m)
            continue
        m = re.search(r"Running command: (\w+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Execution time: ([\d.]+) (ms|s)", line)
        if m and current:
            stages[current] = stages.get(current, 0.0) + seconds(m)
    if total is not None:
        stages["convert/other"] = max(0.0, total - sum(stages.values()))
    return stages


def run_siril(lines: list[str], work: Path):
    script = work / "siril.ssf"
    script.write_text("requires 1.0.0\n" + "\n".join(lines) + "\nclose\n")
    m = run_measured(["siril-cli", "-s", str(script)])
    log = m.stdout + m.stderr
    stacked = re.search(r"(\d+) images have been stacked", log)
    return m, int(stacked.group(1)) if stacked else 0, siril_stages(log)


def siril_registration_errors(proc: Path, ref: int):
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


def skystack_cmd(inputs: list[str], out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "skystack.cli", "stack", *inputs, "-o", str(out), "-q", *flags]


def baseline_mb(work: Path, *flags: str) -> float:
    """Peak RSS of ``skystack stack`` with these flags on 5 tiny frames."""
    from skystack.testing.synthetic import make_deepsky

    tiny = work / "tiny"
    if not tiny.is_dir():
        make_deepsky(n_frames=5, shape=(128, 160), seed=2, max_shift=3.0, max_rot_deg=0.5,
                     star_density=4e-3).write_fits(tiny)
    return run_measured(skystack_cmd([str(tiny)], work / "tiny.fits", *flags)).peak_rss_mb


def stages_of(m, rep) -> dict[str, float]:
    t = rep["timings"]
    return {"start-up": m.wall_s - t["total_s"], "open": t.get("open_s", 0.0), "reference": t.get("reference_s", 0.0),
            "phase 1": t.get("phase1_s", 0.0) - t.get("reference_s", 0.0), "phase 2": t.get("phase2_s", 0.0),
            "write": t.get("write_s", 0.0)}


def fmt_stages(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in d.items())


def synthetic(a, work: Path) -> None:
    from astropy.io import fits

    w, h = (int(v) for v in a.size.split("x"))
    folder, synth = synthetic_set(f"siril-{a.n}-{w}x{h}", n_frames=a.n, shape=(h, w), seed=0, max_shift=40.0,
                                  max_rot_deg=2.0)
    truth = Truth(synth)
    limit_mb = float(a.limit.rstrip("Mm"))
    rows, figures = [], {}
    print(f"\n[synthetic] start: {load()}", flush=True)
    if shutil.which("siril-cli"):
        proc = work / "process"
        sm, s_stacked, stages = run_siril([f"cd {folder}", f"link synth -out={proc}", f"cd {proc}", "register synth",
                                           f"stack r_synth rej s 3 3 -norm=addscale -out={work / 'siril_result'}"],
                                          work)
        seq = (proc / "synth_.seq").read_text().splitlines()
        s_ref = int(next(x for x in seq if x.startswith("S ")).split()[6])
        s_img = fits.getdata(work / "siril_result.fit").astype(np.float32)
        s_noise, s_psnr, s_trail = stack_quality(s_img, truth, s_ref)
        s_err = siril_registration_errors(proc, s_ref)
        figures["siril"] = dict(wall=sm.wall_s, rss=sm.peak_rss_mb, noise=s_noise, psnr=s_psnr)
        rows.append(["Siril 1.0.6 register + stack rej s 3 3 -norm=addscale", f"{sm.wall_s:.1f}",
                     f"{sm.peak_rss_mb:.0f}", f"{np.sqrt(np.mean(np.square(s_err))):.4f}", f"{s_stacked}/{a.n}",
                     f"{s_noise:.3f}", f"{s_psnr:.1f}", f"{s_trail:+.1f}", fmt_stages(stages)])
        shutil.rmtree(proc)
    else:
        print("siril-cli not found: Siril rows skipped (apt-get install siril)", file=sys.stderr)
    interps = ["cubic", "bilinear"] + (["lanczos"] if a.lanczos else [])
    for interp in interps:
        out = work / f"sky_{interp}.fits"
        m = run_measured(skystack_cmd([str(folder)], out, "--method", "sigma", "--kappa", "3", "3", "--norm",
                                      "addscale", "--memory-limit", a.limit, "--interpolation", interp,
                                      "--no-preview"))
        if m.returncode:
            sys.exit(m.stderr[-3000:])
        rep = json.loads((work / f"sky_{interp}.fits.report.json").read_text())
        ref = rep["reference"]["index"]
        errs = register_errors(synth, [f["transform"] for f in rep["frames"]], ref)
        noise, psnr, trail = stack_quality(fits.getdata(out).astype(np.float32), truth, ref)
        figures[interp] = dict(wall=m.wall_s, rss=m.peak_rss_mb, noise=noise, psnr=psnr, stages=stages_of(m, rep),
                               rms=float(np.sqrt(np.mean(np.square([e for e in errs if e > 0])))), stack=rep["stack"])
        rows.append([f"skystack --interpolation {interp} --memory-limit {a.limit}", f"{m.wall_s:.1f}",
                     f"{m.peak_rss_mb:.0f}", f"{figures[interp]['rms']:.4f}", f"{rep['summary']['stacked']}/{a.n}",
                     f"{noise:.3f}", f"{psnr:.1f}", f"{trail:+.1f}", fmt_stages(figures[interp]["stages"])])
        if interp == "cubic":
            (work / "transforms.json").write_text(json.dumps([f["transform"] for f in rep["frames"]]))
    if a.naive:
        out = work / "naive.fits"
        m = run_measured([sys.executable, str(REPO / "benchmarks" / "naive_numpy_stack.py"), str(folder),
                          str(work / "transforms.json"), str(out)])
        if m.returncode == 0:
            noise, psnr, trail = stack_quality(fits.getdata(out).astype(np.float32), truth, 0)
            rows.append(["naive NumPy (all frames in RAM, np sigma clip)", f"{m.wall_s:.1f}", f"{m.peak_rss_mb:.0f}",
                         "(skystack's)", f"{a.n}/{a.n}", f"{noise:.3f}", f"{psnr:.1f}", f"{trail:+.1f}", ""])
    base = baseline_mb(work, "--no-preview")
    print(f"\n{a.n} frames {w}x{h} uint16 FITS, ±40 px, ±2°, hot pixels, cosmic rays, trail in frame "
          f"{synth.trail_frame}; one run on this machine; end: {load()}\n")
    print(table(rows, ["pipeline", "wall s", "peak RSS MB", "reg RMS px", "stacked", "sky noise ADU", "PSNR dB",
                       "trail σ", "stages s"]))
    print(f"\nskystack baseline (the same command on 5 tiny frames): {base:.0f} MB; allowed peak at --memory-limit "
          f"{a.limit}: {base + 1.1 * limit_mb:.0f} MB")
    c = figures["cubic"]
    print(f"skystack tiles: {c['stack']['tiles']} of {c['stack']['tile_rows']}×{c['stack']['strip_cols']}, "
          f"{c['stack']['in_flight']} in flight, read amplification {c['stack']['read_amplification']}")
    if "siril" in figures:
        s = figures["siril"]
        print(f"wall: skystack (bicubic) / Siril = {c['wall'] / s['wall']:.2f} (target ≤ 0.5); peak "
              f"{c['rss']:.0f} MB vs allowed {base + 1.1 * limit_mb:.0f} MB; reg RMS {c['rms']:.4f} px (target ≤ 0.01); "
              f"PSNR {c['psnr']:.1f} vs Siril {s['psnr']:.1f} dB; sky noise bilinear / Siril = "
              f"{figures['bilinear']['noise'] / s['noise']:.4f} (target ≤ 1), bicubic / Siril = "
              f"{c['noise'] / s['noise']:.4f}")
    if not a.skip_sweep:
        sweep(folder, a, work, base)


def sweep(folder: Path, a, work: Path, base: float) -> None:
    """Wall and peak RSS at a fixed budget for N = 50..400 frames (hard links cycling over
    the set: distinct paths, so none is taken for a duplicate input)."""
    files = sorted(folder.glob("*.fits"))
    rows, walls, peaks = [], {}, {}
    print(f"\n[sweep] start: {load()}", flush=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        for n in (50, 100, 200, 400):
            d = tmp / f"n{n}"
            d.mkdir()
            for k in range(n):
                os.link(files[k % len(files)], d / f"f{k:04d}.fits")
            m = run_measured(skystack_cmd([str(d)], tmp / f"o{n}.fits", "--method", "sigma", "--norm", "addscale",
                                          "--memory-limit", a.limit, "--no-preview"))
            rep = json.loads((tmp / f"o{n}.fits.report.json").read_text()) if m.returncode == 0 else {}
            st = rep.get("stack", {})
            walls[n], peaks[n] = m.wall_s, m.peak_rss_mb
            rows.append([n, rep.get("summary", {}).get("stacked", "failed"), f"{m.wall_s:.1f}", f"{m.peak_rss_mb:.0f}",
                         st.get("tile_rows", "-"), st.get("tiles", "-"), st.get("read_amplification", "-"),
                         fmt_stages(stages_of(m, rep)) if rep else m.stderr[-200:]])
            shutil.rmtree(d)
    print(f"\nframe count sweep, --memory-limit {a.limit}, sigma 3/3 addscale; end: {load()}\n")
    print(table(rows, ["frames", "stacked", "wall s", "peak RSS MB", "tile rows", "tiles", "read ampl.", "stages s"]))
    if 100 in walls and 400 in walls:
        print(f"\n400 frames / 100 frames: wall {walls[400] / walls[100]:.2f}× (target ≤ 4.4), peak "
              f"{peaks[400] / peaks[100]:.2f}× (target ≤ 1.1); above the baseline: "
              f"{peaks[100] - base:.0f} MB and {peaks[400] - base:.0f} MB")


def seestar(a, work: Path) -> None:
    """Siril and skystack on the real subs, run ``a.repeat`` times in turn (the machine is
    shared: each configuration's fastest run is shown, with its stages; the peak is the
    largest of its runs)."""
    sessions = [SEESTAR / "session1", SEESTAR / "session2"]
    if not all(s.is_dir() for s in sessions):
        print(f"\n{SEESTAR} not found: Seestar rows skipped")
        return
    print(f"\n[seestar] start: {load()}", flush=True)
    configs: dict[str, list[str] | None] = {}
    if shutil.which("siril-cli"):
        # Siril converts one folder: links to both sessions' subs in one (names without spaces)
        src = work / "seestar-links"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        for s in sessions:
            for f in sorted(s.glob("*.fit*")):
                (src / f.name.replace(" ", "_")).symlink_to(f)
        configs["Siril 1.0.6 convert -debayer + register + stack rej s 3 3"] = None
    sky = {"default limit": [], "--memory-limit 64M": ["--memory-limit", "64M"],
           "--no-preview (one FITS, as Siril)": ["--no-preview"]}
    for label, flags in sky.items():
        configs[f"skystack --method sigma, {label}"] = flags
    best: dict[str, dict] = {}
    for _ in range(max(1, a.repeat)):
        for name, flags in configs.items():
            if flags is None:
                proc = work / "seestar-proc"
                shutil.rmtree(proc, ignore_errors=True)
                m, n, stages = run_siril([f"cd {work / 'seestar-links'}", f"convert light -debayer -out={proc}",
                                          f"cd {proc}", "register light",
                                          f"stack r_light rej s 3 3 -norm=addscale -out={work / 'siril_m94'}"], work)
                shutil.rmtree(proc, ignore_errors=True)
            else:
                out = work / "m94.fits"
                m = run_measured(skystack_cmd([str(s) for s in sessions], out, "--method", "sigma", *flags))
                if m.returncode:
                    sys.exit(m.stderr[-3000:])
                rep = json.loads(Path(str(out) + ".report.json").read_text())
                n, stages = rep["summary"]["stacked"], stages_of(m, rep)
            old = best.get(name)
            if old is None or m.wall_s < old["wall"]:
                best[name] = dict(wall=m.wall_s, rss=max(m.peak_rss_mb, old["rss"] if old else 0.0), n=n,
                                  stages=stages)
            else:
                old["rss"] = max(old["rss"], m.peak_rss_mb)
    base = baseline_mb(work, "--method", "sigma")
    print(f"\nSeestar S50 M94, 18 subs 1080×1920 GRBG (two sessions), fastest of {max(1, a.repeat)} run(s) each, "
          f"in turn; end: {load()}\n")
    print(table([[name, f"{b['wall']:.1f}", f"{b['rss']:.0f}", f"{b['n']}/18", fmt_stages(b["stages"])]
                 for name, b in best.items()], ["pipeline", "wall s", "peak RSS MB", "stacked", "stages s"]))
    print(f"\nskystack baseline (the same command on 5 tiny frames, preview and plot included): {base:.0f} MB; "
          f"allowed at 64M: {base + 1.1 * 64:.0f} MB")
    siril = next((b for name, b in best.items() if name.startswith("Siril")), None)
    if siril is not None:
        for label in sky:
            f = best[f"skystack --method sigma, {label}"]
            print(f"{label}: wall / Siril {f['wall'] / siril['wall']:.2f} (target ≤ 1), peak / Siril "
                  f"{f['rss'] / siril['rss']:.2f} (target ≤ 1.5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", default="3000x2000")
    ap.add_argument("--limit", default="256M")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-seestar", action="store_true")
    ap.add_argument("--lanczos", action="store_true", help="also skystack with Lanczos-4")
    ap.add_argument("--naive", action="store_true", help="also the naive all-in-memory NumPy stack")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each Seestar configuration (the fastest shown)")
    a = ap.parse_args()
    compile_bytecode()
    work = DATA / "siril-bench-out"  # kept, to look at the stacks afterwards
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if not a.skip_seestar:
        seestar(a, work)
    if not a.skip_synthetic:
        synthetic(a, work)


if __name__ == "__main__":
    main()
