"""``skystack lucky`` and ``skystack enhance``: argument parsing only.

:func:`add_parsers` adds both subcommands to the main parser's subparsers; each sets
``func`` to a callable taking the parsed namespace and returning the exit code. The work
happens in :func:`skystack.pipeline.lucky.run_lucky` and :mod:`skystack.enhance.wavelets`.
"""
from __future__ import annotations

import argparse
import logging

from .errors import EXIT_CODES, UsageError

log = logging.getLogger("skystack")

_EPILOG = "exit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())

_LUCKY_DESC = """\
Lucky imaging of a video (SER, AVI, MP4, MOV) or frame sequence of the Moon, the Sun or a
planet: rank every frame by sharpness, keep the best, align them globally and (by default)
locally on a grid of alignment points, stack, and optionally drizzle and sharpen.

Writes OUT (.fits, .tif/.tiff or .png), OUT's .preview.png, .compare.png (best single frame
beside the stack), .quality.png (quality over time, used frames marked) and OUT.report.json
(every frame's quality, rank, fate and shift). With --wavelets also OUT_sharpened and a
before/after preview."""


def _floats(text: str) -> tuple[float, ...]:
    from .enhance.wavelets import parse_floats

    try:
        return parse_floats(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _drizzle(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a scale such as 1.5, 2 or 3, got {text!r}") from None
    if not 1.0 < v <= 4.0:
        raise argparse.ArgumentTypeError(f"drizzle scale must be in (1, 4], got {v:g}")
    return v


def _add_enhance_args(g: argparse._ArgumentGroup, *, default_gains: tuple[float, ...] | None) -> None:
    g.add_argument("--wavelets", type=_floats, default=default_gains, metavar="G1,G2,...",
                   help="à-trous wavelet gains per scale, finest first; the count sets the number "
                        "of scales (e.g. 1.8,1.4,1.0,1,1)")
    g.add_argument("--wavelet-noise", type=_floats, default=(3.0, 2.0, 1.0, 0.0, 0.0), metavar="K1,K2,...",
                   help="noise thresholds per scale in that scale's noise sigma; only detail above "
                        "them is amplified (default 3,2,1,0,0)")
    g.add_argument("--stretch", default="none", choices=["none", "linear", "midtone", "asinh", "auto"],
                   help="tone curve after sharpening (default none: keep the image's units)")
    g.add_argument("--black", type=float, default=None, help="black point, image units (default: 0.1th percentile)")
    g.add_argument("--white", type=float, default=None, help="white point, image units (default: 99.99th percentile)")
    g.add_argument("--midtone", type=float, default=0.5, help="midtone balance for --stretch midtone (0.5 = linear)")
    g.add_argument("--asinh-beta", type=float, default=10.0, help="softening for --stretch asinh")


def _enhance_options(a: argparse.Namespace):
    from .enhance.wavelets import EnhanceOptions

    gains = a.wavelets if a.wavelets is not None else (1.0,)
    try:
        return EnhanceOptions(gains=tuple(gains), thresholds=tuple(a.wavelet_noise), stretch=a.stretch,
                              black=a.black, white=a.white, midtone=a.midtone, asinh_beta=a.asinh_beta)
    except ValueError as e:
        raise UsageError(str(e)) from None


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``lucky`` and ``enhance`` subcommands to ``subparsers``."""
    p = subparsers.add_parser("lucky", help="lucky imaging of a video: rank, align, stack the best, sharpen",
                              description=_LUCKY_DESC, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video(s), SER file(s), frame folders or globs")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="stacked image: .fits, .tif/.tiff or .png")
    p.add_argument("--report", default=None, metavar="R.json", help="report path (default: OUT.report.json)")
    g = p.add_argument_group("selection and alignment")
    g.add_argument("--keep", default="10%", metavar="RULE",
                   help="best frames to stack: a percentage (10%%, the default) or a count (200)")
    g.add_argument("--mode", default="auto", choices=["auto", "planet", "surface"],
                   help="planet: disk on dark sky; surface: Moon/Sun filling the field (default auto)")
    g.add_argument("--ap-size", type=int, default=64, metavar="PX", help="alignment-point box side (default 64)")
    g.add_argument("--ap-spacing", type=float, default=None, metavar="PX",
                   help="alignment-point spacing (default: half the box)")
    g.add_argument("--no-multipoint", dest="multipoint", action="store_false",
                   help="global alignment only (faster; fine for a small planet in good seeing)")
    g.add_argument("--drizzle", type=_drizzle, default=None, metavar="SCALE",
                   help="drizzle onto a 1.5, 2 or 3 times finer grid (undersampled captures)")
    g.add_argument("--pixfrac", type=float, default=0.7, help="drizzle drop size, fraction of a pixel (default 0.7)")
    g.add_argument("--color", default="auto", choices=["auto", "rgb", "mono"],
                   help="colour handling (auto: RGB unless the channels are identical)")
    g.add_argument("--rgb-align", action="store_true",
                   help="shift R and B onto G after stacking (atmospheric dispersion)")
    g.add_argument("--tiff-dtype", default="float32", choices=["float32", "uint16"])
    g.add_argument("--no-preview", dest="preview", action="store_false", help="no PNG previews or plot")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="threads (default: all cores)")
    e = p.add_argument_group("sharpening (writes OUT_sharpened too)")
    _add_enhance_args(e, default_gains=None)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info; warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages and tracebacks")
    p.set_defaults(func=cmd_lucky)

    p = subparsers.add_parser("enhance", help="wavelet-sharpen and stretch a stacked image",
                              description="À-trous (B3-spline) wavelet sharpening with per-scale gains "
                                          "and noise thresholds, then an optional tone curve. Writes OUT "
                                          "and OUT's .before-after.png.",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="image (FITS, TIFF, PNG)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".fits, .tif/.tiff or .png")
    _add_enhance_args(p.add_argument_group("enhancement"), default_gains=(1.8, 1.4, 1.0, 1.0, 1.0))
    p.add_argument("--tiff-dtype", default="float32", choices=["float32", "uint16"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_enhance)


def cmd_lucky(a: argparse.Namespace) -> int:
    """Run ``skystack lucky``; returns the exit code."""
    from .pipeline.lucky import LuckyOptions, run_lucky

    opts = LuckyOptions(keep=a.keep, mode=a.mode, multipoint=a.multipoint, ap_size=a.ap_size,
                        ap_spacing=a.ap_spacing, drizzle=a.drizzle, pixfrac=a.pixfrac, color=a.color,
                        rgb_align=a.rgb_align, workers=a.workers, preview=a.preview, plot=a.preview,
                        tiff_dtype=a.tiff_dtype)
    enh = _enhance_options(a) if (a.wavelets is not None or a.stretch != "none") else None
    r = run_lucky(a.inputs, a.output, opts, enhance=enh, report=a.report, quiet=a.quiet)
    s = r.report["summary"]
    shift = s.get("shift_px", {})
    print(f"stacked {r.n_used} of {r.n_frames} frames ({r.mode} mode, keep {a.keep}"
          + (f", {r.alignment_points} alignment points" if r.alignment_points else "")
          + f") in {r.timings['total_s']:.1f} s ({r.n_frames / max(r.timings['total_s'], 1e-9):.0f} frames/s), "
          f"peak memory {r.peak_rss_mb:.0f} MiB")
    if shift:
        print(f"  shifts of used frames: x {shift['min'][0]:+.1f}..{shift['max'][0]:+.1f} px, "
              f"y {shift['min'][1]:+.1f}..{shift['max'][1]:+.1f} px")
    others = {k: s[k] for k in ("rejected", "failed_registration", "unreadable", "drifted_out_of_field", "blank")
              if s.get(k)}
    if others:
        print("  " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in others.items()))
    for p in r.outputs:
        print(f"  wrote {p}")
    if r.report_path is not None:
        print(f"  report {r.report_path}")
    return 0


def cmd_enhance(a: argparse.Namespace) -> int:
    """Run ``skystack enhance``; returns the exit code."""
    from .pipeline.lucky import run_enhance

    for p in run_enhance(a.input, a.output, _enhance_options(a), tiff_dtype=a.tiff_dtype):
        print(f"wrote {p}")
    return 0
