"""``skystack lucky`` and ``skystack enhance``: arguments → one API call."""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from .. import api, jobs, options
from ..errors import BATCH_PARTIAL, UsageError
from .args import INPUT_HELP, add_options, add_verbosity, command, given

_LUCKY_DESC = f"""\
Lucky imaging of a video (SER, AVI, MP4, MOV) or frame sequence of the Moon, the Sun or a
planet: rank every frame by sharpness, keep the best, align them globally and (by default)
locally on a grid of alignment points, stack, and optionally drizzle and sharpen.

Writes OUT (.fits, .tif/.tiff or .png), OUT's .preview.png, .compare.png (best single frame
beside the stack), .quality.png (quality over time, used frames marked) and OUT.report.json
(every frame's quality, rank, fate and shift). With --wavelets or --stretch also
OUT_sharpened and a before/after preview. FITS stacks of SER videos carry DATE-OBS (the
mid-time of the stacked frames, from the SER timestamps) and EXPSTART/EXPEND.

Several videos at once: give a folder as OUT (ending in / or existing), e.g.
`skystack lucky *.ser -o stacks/`: each video is stacked on its own into FOLDER/NAME.fits
with its report and previews, and FOLDER/lucky-summary.json lists them all. A video that
cannot be stacked is reported and skipped; the exit code is then {BATCH_PARTIAL} (0 when all
succeeded; the first failure's own code when none did).

--darks/--flats/--bias (frames to combine, or master FITS files) calibrate the raw frames
before demosaicing; masters are cached in .skystack-cache beside the output."""

_ENHANCE_DESC = """\
À-trous (B3-spline) wavelet sharpening with per-scale gains and noise thresholds, then an
optional tone curve. Writes OUT and OUT's .before-after.png."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``lucky`` and ``enhance``."""
    p = command(sub, "lucky", "lucky imaging: stack the sharpest frames of a Moon/Sun/planet video",
                _LUCKY_DESC)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="stacked image: .fits, .tif/.tiff or .png; or a FOLDER/ for one stack per input video")
    g = p.add_argument_group("selection and alignment")
    add_options(g, options.LuckyOptions, exclude=("workers", "backend"))
    add_options(g, options.ReadOptions, only=("debayer_method", "bayer_override"),
                defaults=jobs.LuckyJob().read)
    g = p.add_argument_group("calibration (raw frames, before demosaicing)")
    add_options(g, options.CalibrationOptions, only=("bias", "darks", "flats", "dark_flats"))
    g = p.add_argument_group("output")
    add_options(g, options.OutputOptions, only=("report", "tiff_dtype", "preview"))
    g = p.add_argument_group("sharpening (writes OUT_sharpened too)")
    add_options(g, options.EnhanceOptions)
    g = p.add_argument_group("execution")
    add_options(g, options.LuckyOptions, only=("workers", "backend"))
    add_verbosity(g)
    p.set_defaults(func=cmd_lucky)

    p = command(sub, "enhance", "wavelet-sharpen and stretch a stacked image", _ENHANCE_DESC)
    p.add_argument("input", metavar="IN", help="image (FITS, TIFF, PNG)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".fits, .tif/.tiff or .png")
    add_options(p.add_argument_group("enhancement"), options.EnhanceOptions)
    add_options(p.add_argument_group("output"), options.OutputOptions, only=("tiff_dtype",))
    add_verbosity(p)
    p.set_defaults(func=cmd_enhance)


def _is_folder(output: str) -> bool:
    return output.endswith(("/", os.sep)) or os.path.isdir(output)


def cmd_lucky(a: argparse.Namespace) -> int:
    """Run ``skystack lucky`` (one video, or one per input into a folder); returns the exit code."""
    with _fits_writer(a) as fits_writer:
        if _is_folder(a.output):
            return _batch(a, fits_writer)
        r = api.lucky(a.inputs, a.output, fits_writer=fits_writer, **given(a))
    _summary(r)
    return 0


def _fits_writer(a: argparse.Namespace):
    """The FITS writer process (:mod:`skystack.output.sidecar`), started now, before the
    pipeline's imports, so that astropy's import runs beside them on another core: when
    the stack is a FITS file and the run has two workers or more (one worker is one
    core: there astropy is imported here, at start-up too, so that the run's own timings
    are the pipeline's alone with any worker count, and compare). A context manager that
    ends it; ``None`` inside when not started."""
    from ..output.sidecar import FitsSidecar
    from ..output.write import FITS_SUFFIXES

    try:  # the option's text: the run reads it (and refuses what it cannot read)
        workers = int(getattr(a, "workers", None) or 0) or os.cpu_count() or 1
    except ValueError:
        workers = 1
    fits = _is_folder(a.output) or Path(a.output).suffix.lower() in FITS_SUFFIXES
    writer = FitsSidecar.start() if workers > 1 and fits else None
    if writer is None and fits:
        import astropy.io.fits  # noqa: F401
    return writer if writer is not None else contextlib.nullcontext()


def _summary(r) -> None:
    s = r.report["summary"]
    shift = s.get("shift_px", {})
    keep = r.report["options"]["keep"]
    kept = s.get("kept", r.n_used)
    # multi-point blends more frames than --keep (each alignment point takes its own best
    # ones): say both, so that "20 of 101 frames" is not read as a broken --keep 10%
    blended = f", blended per point from {r.n_used}" if r.alignment_points and r.n_used != kept else ""
    where = (f"{r.alignment_points} alignment point{'s' if r.alignment_points != 1 else ''}"
             if r.alignment_points else "global alignment")
    print(f"kept {kept} of {r.n_frames} frames (--keep {keep}){blended}; {r.mode} mode, {where}; "
          f"{r.timings['total_s']:.1f} s ({r.n_frames / max(r.timings['total_s'], 1e-9):.0f} frames/s), "
          f"peak memory {r.peak_rss_mb:.0f} MiB")
    if shift:
        print(f"  shifts of used frames: x {shift['min'][0]:+.1f}..{shift['max'][0]:+.1f} px, "
              f"y {shift['min'][1]:+.1f}..{shift['max'][1]:+.1f} px")
    others = {k: s[k] for k in ("rejected", "failed_registration", "unreadable", "drifted_out_of_field", "blank")
              if s.get(k)}
    if others:
        print("  " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in others.items()))
    for path in r.outputs:
        print(f"  wrote {path}")
    if r.report_path is not None:
        print(f"  report {r.report_path}")


def _batch(a: argparse.Namespace, fits_writer=None) -> int:
    kw = given(a, drop=("report",))
    if getattr(a, "report", None):
        raise UsageError("--report names one file; with an output folder each video's report is written "
                         "beside its stack")
    b = api.lucky_batch(a.inputs, a.output, fits_writer=fits_writer, **kw)
    rows = [it.row() for it in b.items]
    w = max(len(Path(r["input"]).name) for r in rows)
    print(f"{'video':<{w}}  {'status':<6} {'frames':>6} {'used':>5} {'mode':<7} {'frames/s':>8}  output / reason")
    for r in rows:
        name = Path(r["input"]).name
        if r["status"] == "ok":
            print(f"{name:<{w}}  {'ok':<6} {r['frames']:>6} {r['used']:>5} {r['mode']:<7} "
                  f"{r['frames_per_s'] or 0:>8.0f}  {r['output']}")
        else:
            print(f"{name:<{w}}  {'FAILED':<6} {'':>6} {'':>5} {'':<7} {'':>8}  {r['error']}")
    print(f"{len(rows) - len(b.failed)} of {len(rows)} videos stacked; summary {b.summary_path}")
    if not b.failed:
        return 0
    if len(b.failed) == len(rows):
        return b.failed[0].exit_code
    return BATCH_PARTIAL


def cmd_enhance(a: argparse.Namespace) -> int:
    """Run ``skystack enhance``; returns the exit code."""
    for path in api.enhance_file(a.input, a.output, **given(a, drop=("quiet",))):
        print(f"wrote {path}")
    return 0
