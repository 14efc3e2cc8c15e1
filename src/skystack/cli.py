"""Command line: argument parsing → :mod:`skystack.api`. No logic of its own."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import EXIT_CODES, SkystackError

log = logging.getLogger("skystack")

METHODS = ["mean", "median", "sigma", "winsorized", "mad", "linear-fit", "percentile", "gesd", "minmax"]

EPILOG = "exit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())

INPUT_HELP = ("frames: files (FITS, TIFF, PNG/JPEG, SER, AVI/MP4/MOV, camera RAW), folders, "
              "globs, or a .txt/.lst file listing paths")


def _add_common_register(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registration")
    g.add_argument("--register", dest="register", default="auto", choices=["auto", "stars", "orb"],
                   help="stars: triangle star matching (deep sky); orb: ORB keypoints (Moon, Sun, "
                        "landscapes); auto: stars, falling back to orb (default)")
    g.add_argument("--model", default="similarity", choices=["shift", "similarity", "affine"],
                   help="transform model (default similarity: shift + rotation + uniform scale)")
    g.add_argument("--reference", type=int, default=None, metavar="N",
                   help="reference frame index, 0-based (default: best of the first few frames)")
    g.add_argument("--faint", action="store_true",
                   help="ORB: adaptive-threshold + erosion pre-treatment for faint frames")
    g.add_argument("--bayer", default=None, metavar="PATTERN",
                   help="force a CFA pattern (RGGB, BGGR, GRBG, GBRG) for raw mosaics")
    g.add_argument("--no-debayer", dest="debayer", action="store_const", const="none", default="auto",
                   help="keep CFA mosaics as mono data")


def _add_common_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="parallel workers (default: all cores)")
    g.add_argument("--scheduler", default=None, metavar="URL",
                   help="run on an existing dask.distributed cluster, e.g. tcp://host:8786 "
                        "(frames must be on a path every worker sees)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info; warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages and tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skystack", description="Align and stack astronomical frames, out of core.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skystack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="register and stack frames into one image", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image: .fits (float32), .tif/.tiff or .png")
    p.add_argument("--report", default=None, metavar="R.json", help="report path (default: OUT.report.json)")
    _add_common_register(p)
    g = p.add_argument_group("stacking")
    g.add_argument("--method", default="mean", choices=METHODS,
                   help="mean (streamed, no rejection), median, or a rejection + mean method (default mean)")
    g.add_argument("--kappa", nargs=2, type=float, default=(3.0, 3.0), metavar=("LOW", "HIGH"),
                   help="rejection parameters: σ multiples (sigma, winsorized, mad, linear-fit), "
                        "fractions (percentile), alpha and max outlier fraction (gesd), counts (minmax)")
    g.add_argument("--norm", default="auto", choices=["auto", "none", "add", "mul", "addscale", "mulscale"],
                   help="normalisation to the reference frame: auto (default) is additive for mean and "
                        "median, additive + scaling for rejection methods")
    g.add_argument("--weights", default="none", choices=["none", "noise", "stars", "fwhm"])
    g.add_argument("--interpolation", default="cubic", choices=["cubic", "lanczos", "bilinear"],
                   help="warp interpolation: cubic (bicubic, default, as Siril's register), lanczos "
                        "(Lanczos-4: a little sharper, 3.7x the warp cost, slightly higher noise), "
                        "bilinear (cheapest, smooths noise and stars)")
    g.add_argument("--keep", default=None, metavar="RULE",
                   help="keep the best frames: 80%%, best:80%%, 200 or best:200")
    g.add_argument("--max-fwhm", type=float, default=None, metavar="PX")
    g.add_argument("--max-roundness", type=float, default=None, metavar="R",
                   help="drop frames whose stars are more elongated (1 - minor/major)")
    g.add_argument("--min-stars", type=int, default=None, metavar="N")
    g.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="working memory for stacking, e.g. 256M or 2G (default: half the free RAM)")
    g.add_argument("--backend", default="auto", choices=["auto", "cpu", "cupy", "cv2cuda"])
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its journal")
    g.add_argument("--tiff-dtype", default="float32", choices=["float32", "uint16"])
    g.add_argument("--coverage", action="store_true", help="also write OUT.coverage.fits")
    g.add_argument("--no-preview", dest="preview", action="store_false", help="no PNG preview")
    g.add_argument("--band-rows", type=int, default=None, help=argparse.SUPPRESS)
    g = p.add_argument_group("calibration (each: frames to build a master from, or a master FITS)")
    g.add_argument("--bias", nargs="+", default=(), metavar="B", help="bias/offset frames or master")
    g.add_argument("--darks", nargs="+", default=(), metavar="D", help="dark frames or master dark")
    g.add_argument("--flats", nargs="+", default=(), metavar="F", help="flat frames or master flat")
    g.add_argument("--dark-flats", nargs="+", default=(), metavar="DF", help="dark-flat frames or master")
    g.add_argument("--dark-scaling", default="auto", choices=["auto", "off", "optimize"],
                   help="scale the dark by exposure time (auto), not at all, or optimise the factor")
    g.add_argument("--cosmetic", default="auto", choices=["auto", "off"],
                   help="fix hot/cold pixels found in the master dark (auto)")
    g.add_argument("--hot-sigma", type=float, default=5.0, help="hot-pixel threshold in the master dark (σ)")
    g.add_argument("--cold-sigma", type=float, default=5.0, help="cold-pixel threshold (σ)")
    g.add_argument("--master-method", default="winsorized", choices=["median", "sigma", "winsorized"],
                   help="how calibration frames are combined into masters")
    g = p.add_argument_group("colour")
    g.add_argument("--debayer-method", default="bilinear", choices=["bilinear", "ea", "vng"],
                   help="demosaicing of CFA frames: bilinear (default; unbiased colours of small stars), "
                        "ea (edge-aware), vng")
    g.add_argument("--neutralize", action="store_true", help="make the sky background grey in a colour stack")
    g.add_argument("--white-balance", default="none", metavar="WB",
                   help="none (default), auto (the average star made white), camera (RAW multipliers) "
                        "or factors R,G,B")
    _add_common_run(p)
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("register", help="register frames only; write the transforms to a report",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    p.add_argument("--report", required=True, metavar="R.json")
    _add_common_register(p)
    _add_common_run(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("demo", help="generate a synthetic set with known truth, stack it, check the result")
    p.add_argument("--dir", default=None, help="where to write it (default: a new temporary folder)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--method", default="sigma", choices=METHODS)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_demo)

    from . import cli_lucky

    cli_lucky.add_parsers(sub)
    try:
        from . import cli_calibrate
    except ImportError:  # the calibration commands arrive with the calibrate package
        cli_calibrate = None
    if cli_calibrate is not None:
        cli_calibrate.add_parsers(sub)
    return parser


def _cmd_stack(a: argparse.Namespace) -> int:
    from . import api

    r = api.stack(a.inputs, a.output, method=a.method, kappa=tuple(a.kappa), norm=a.norm, weights=a.weights,
                  interpolation=a.interpolation, register=a.register, model=a.model, reference=a.reference,
                  faint=a.faint, keep=a.keep, max_fwhm=a.max_fwhm, max_roundness=a.max_roundness,
                  min_stars=a.min_stars, memory_limit=a.memory_limit, workers=a.workers, scheduler=a.scheduler,
                  backend=a.backend, resume=a.resume, report=a.report, tiff_dtype=a.tiff_dtype,
                  preview=a.preview, coverage=a.coverage, debayer=a.debayer, bayer=a.bayer,
                  band_rows=a.band_rows, quiet=a.quiet, bias=a.bias, darks=a.darks, flats=a.flats,
                  dark_flats=a.dark_flats, dark_scaling=a.dark_scaling, cosmetic=a.cosmetic,
                  hot_sigma=a.hot_sigma, cold_sigma=a.cold_sigma, master_method=a.master_method,
                  debayer_method=a.debayer_method, neutralize=a.neutralize, white_balance=a.white_balance)
    s = r.report["summary"]
    print(f"stacked {s['stacked']} of {s['frames']} frames ({s['registered']} registered, "
          f"{s['failed_registration']} failed, {s['unreadable']} unreadable, {s['rejected']} rejected) "
          f"in {r.timings['total_s']:.1f} s, peak memory {r.peak_rss_mb:.0f} MiB")
    for p in r.report.get("outputs", []):
        print(f"  wrote {p}")
    print(f"  report {r.report_path}")
    return 0


def _cmd_register(a: argparse.Namespace) -> int:
    from . import api

    r = api.register(a.inputs, report=a.report, method=a.register, model=a.model, reference=a.reference,
                     faint=a.faint, workers=a.workers, scheduler=a.scheduler, debayer=a.debayer, bayer=a.bayer,
                     quiet=a.quiet)
    s = r.report["summary"]
    print(f"registered {s['registered']} of {s['frames']} frames to frame {r.reference}; report {r.report_path}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from . import api

    api.demo(a.dir, n_frames=a.frames, method=a.method, quiet=a.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .pipeline.progress import setup_logging

    setup_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except SkystackError as e:
        log.error("%s", e)
        if getattr(args, "verbose", False):
            raise
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command with --resume to continue")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
