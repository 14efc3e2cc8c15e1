"""``skystack master``, ``skystack calibrate`` and ``skystack colour``: argument parsing only.

:func:`add_parsers` adds the subcommands to the main parser; the work happens in
:mod:`skystack.calibrate.commands`.
"""
from __future__ import annotations

import argparse

from .errors import EXIT_CODES

_EPILOG = "exit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())

_MASTER_DESC = """\
Combine calibration frames into a master (float32 FITS, a raw CFA/mono plane, provenance in
the header: IMAGETYP, NCOMBINE, CALMETH, EXPTIME, CCD-TEMP, BAYERPAT). Frames are combined
band by band within the memory limit. Darks and dark-flats keep their bias (it is removed
when they are applied, so the thermal part can be scaled); flats have their offset (--dark-flats,
else --bias) removed, each frame normalised by its median, and the master normalised per CFA
colour to a mean of 1."""

_CALIBRATE_DESC = """\
Calibrate light frames with bias, darks and flats (frames to build masters from, or
masters) and write each as OUTFOLDER/<name>_cal.fits (float32; a CFA mosaic with BAYERPAT,
or RGB with --debayer), plus OUTFOLDER/calibration.json. Masters are cached in
OUTFOLDER/.skystack-cache and reused by the next run with the same calibration files.

Calibration frames that do not fit the lights (another size, binning or CFA pattern; a dark
of unknown exposure, or of another exposure with no bias to scale it) stop the run with a
one-line message and exit code 2, before anything is written."""

_COLOUR_DESC = """\
Colour-balance a stacked RGB image (FITS or TIFF): --neutralize makes the sky background
grey (equal levels in R, G, B, by offsets only); --white-balance multiplies the channels:
auto (the median star made white), camera (the multipliers of a camera RAW file, see
--camera-from), or three factors R,G,B. Writes OUT and a stretched OUT.preview.png."""


def _kinds() -> list[str]:
    from .calibrate.masters import KINDS

    return list(KINDS)


def _add_calibration_inputs(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--bias", nargs="+", default=(), metavar="B", help="bias/offset frames or a master bias")
    g.add_argument("--darks", nargs="+", default=(), metavar="D", help="dark frames or a master dark")
    g.add_argument("--flats", nargs="+", default=(), metavar="F", help="flat frames or a master flat")
    g.add_argument("--dark-flats", nargs="+", default=(), metavar="DF", help="dark-flat frames or a master")
    g.add_argument("--dark-scaling", default="auto", choices=["auto", "off", "optimize"],
                   help="scale the dark by exposure time (auto; needs --bias when exposures differ), "
                        "not at all (off), or fit the factor per light (optimize, needs --bias)")
    g.add_argument("--cosmetic", default="auto", choices=["auto", "off"],
                   help="repair hot/cold pixels found in the master dark and flat (auto)")
    g.add_argument("--hot-sigma", type=float, default=5.0, metavar="K",
                   help="a dark pixel this many σ above its neighbourhood is hot (default 5)")
    g.add_argument("--cold-sigma", type=float, default=5.0, metavar="K",
                   help="a dark pixel this many σ below its neighbourhood is cold (default 5)")
    g.add_argument("--master-method", default="winsorized", choices=["median", "sigma", "winsorized"],
                   help="how masters are combined (default winsorized sigma clipping)")


def _add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="working memory for building masters, e.g. 256M (default: half the free RAM)")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="parallel workers (default: all cores)")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages and tracebacks")


def add_parsers(sub) -> None:
    """Add ``master``, ``calibrate`` and ``colour`` to the main parser's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("master", help="combine calibration frames into a master bias/dark/flat/dark-flat",
                       description=_MASTER_DESC, epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("kind", choices=_kinds(), help="which master")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="calibration frames: files, folders, globs, list files")
    p.add_argument("-o", "--output", required=True, metavar="MASTER.fits")
    p.add_argument("--method", default="winsorized", choices=["median", "sigma", "winsorized"],
                   help="median, or sigma / winsorized-sigma clipping then mean (default winsorized)")
    p.add_argument("--kappa", nargs=2, type=float, default=(3.0, 3.0), metavar=("LOW", "HIGH"),
                   help="rejection thresholds in σ (default 3 3)")
    p.add_argument("--bias", nargs="+", default=(), metavar="B", help="flat: bias frames or master (offset)")
    p.add_argument("--dark-flats", nargs="+", default=(), metavar="DF",
                   help="flat: dark-flat frames or master (offset; preferred to --bias)")
    _add_run(p)
    p.set_defaults(func=_cmd_master)

    p = sub.add_parser("calibrate", help="calibrate light frames with bias/darks/flats into a folder",
                       description=_CALIBRATE_DESC, epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("inputs", nargs="+", metavar="LIGHT", help="light frames: files, folders, globs, list files")
    p.add_argument("-o", "--output", required=True, metavar="OUTFOLDER")
    _add_calibration_inputs(p.add_argument_group("calibration (each: frames to build a master from, or a master FITS)"))
    g = p.add_argument_group("colour")
    g.add_argument("--debayer", action="store_true", help="write demosaiced RGB frames instead of CFA mosaics")
    g.add_argument("--debayer-method", default="ea", choices=["bilinear", "vng", "ea"])
    g.add_argument("--bayer", default=None, metavar="PATTERN", help="force the lights' CFA pattern (RGGB, ...)")
    _add_run(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("colour", aliases=["color"], help="neutralise the background / white-balance an RGB stack",
                       description=_COLOUR_DESC, epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("image", metavar="IMAGE", help="a stacked RGB image (.fits 3-plane or .tif)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".fits, .tif or .png")
    p.add_argument("--neutralize", "--neutralise", action="store_true", help="make the sky background grey")
    p.add_argument("--white-balance", default="none", metavar="MODE",
                   help="none (default), auto, camera, or factors R,G,B (e.g. 1.9,1,1.4)")
    p.add_argument("--camera-from", default=None, metavar="RAW",
                   help="a camera RAW file whose white balance --white-balance camera uses")
    p.add_argument("--no-preview", dest="preview", action="store_false", help="no PNG preview")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_colour)


def _memory(text):
    from .stack.plan import parse_size

    return parse_size(text)


def _cmd_master(a: argparse.Namespace) -> int:
    from .calibrate.commands import make_master

    m = make_master(a.kind, a.inputs, a.output, method=a.method, kappa=tuple(a.kappa), bias=a.bias,
                    dark_flats=a.dark_flats, memory_limit=_memory(a.memory_limit), workers=a.workers,
                    quiet=a.quiet)
    exp = f", {m.exposure_s:g} s" if m.exposure_s is not None else ""
    print(f"master {m.kind}: {m.n_frames} frames ({m.method}{exp}) -> {m.path}")
    for path, reason in m.skipped:
        print(f"  left out {path}: {reason}")
    return 0


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from .calibrate.commands import calibrate_frames
    from .options import CalibrationOptions

    opts = CalibrationOptions(bias=tuple(a.bias), darks=tuple(a.darks), flats=tuple(a.flats),
                              dark_flats=tuple(a.dark_flats), dark_scaling=a.dark_scaling, cosmetic=a.cosmetic,
                              hot_sigma=a.hot_sigma, cold_sigma=a.cold_sigma, master_method=a.master_method,
                              memory_limit=_memory(a.memory_limit))
    paths, info = calibrate_frames(a.inputs, a.output, calibration=opts, debayer=a.debayer,
                                   debayer_method=a.debayer_method, bayer=a.bayer, workers=a.workers,
                                   quiet=a.quiet)
    masters = ", ".join(f"{k} ({m['origin']}, {m['n_frames']} frames)" for k, m in info["masters"].items())
    print(f"calibrated {len(paths)} frame(s) with {masters}; "
          f"{info['cosmetic'].get('total', 0)} defective pixel(s) repaired per frame -> {a.output}")
    return 0


def _cmd_colour(a: argparse.Namespace) -> int:
    from .calibrate.colour import parse_white_balance
    from .calibrate.commands import colour_balance_file

    wb = parse_white_balance(a.white_balance)
    paths, info = colour_balance_file(a.image, a.output, neutralize=a.neutralize, white_balance=wb,
                                      camera_from=a.camera_from, preview=a.preview)
    f = ", ".join(f"{v:.4f}" for v in info["factors"])
    bg = ", ".join(f"{v:.1f}" for v in info["background_before"])
    print(f"background R,G,B was {bg}; white balance {info['white_balance']} ({f})"
          f"{'; background neutralised' if info['neutralize'] else ''}")
    for p in paths:
        print(f"  wrote {p}")
    return 0
