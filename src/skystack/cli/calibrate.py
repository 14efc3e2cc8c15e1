"""``skystack master``, ``skystack calibrate`` and ``skystack colour``: arguments → one API call."""
from __future__ import annotations

import argparse

from .. import api, options
from ..io.cache import cache_summary
from .args import add_options, add_run_args, add_verbosity, command, given

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
or RGB with --debayer), plus OUTFOLDER/calibration.json. Masters are built in OUTFOLDER/.skystack-cache, which is
removed at the end; with --keep-cache it stays and the next run with the same calibration
files reuses the masters.

Calibration frames that do not fit the lights (another size, binning or CFA pattern; a dark
of unknown exposure, or of another exposure with no bias to scale it) stop the run with a
one-line message and exit code 2, before anything is written."""

_COLOUR_DESC = """\
Colour-balance a stacked RGB image (FITS or TIFF): --neutralize makes the sky background
grey (equal levels in R, G, B, by offsets only); --white-balance multiplies the channels:
auto (the median star made white), camera (the multipliers of a camera RAW file, see
--camera-from), or three factors R,G,B. Writes OUT and a stretched OUT.preview.png."""



def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``master``, ``calibrate`` and ``colour``."""
    p = command(sub, "master", "combine calibration frames into a master bias/dark/flat/dark-flat", _MASTER_DESC)
    p.add_argument("kind", choices=list(options.MASTER_KINDS), help="which master")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="calibration frames: files, folders, globs, list files")
    p.add_argument("-o", "--output", required=True, metavar="MASTER.fits", help="the master (FITS)")
    add_options(p, options.MasterOptions)
    add_options(p, options.CalibrationOptions, only=("bias", "dark_flats"))
    _add_memory(p)
    p.set_defaults(func=_cmd_master)

    p = command(sub, "calibrate", "calibrate light frames with bias/darks/flats into a folder", _CALIBRATE_DESC)
    p.add_argument("inputs", nargs="+", metavar="LIGHT", help="light frames: files, folders, globs, list files")
    p.add_argument("-o", "--output", required=True, metavar="OUTFOLDER", help="folder for the calibrated frames")
    g = p.add_argument_group("calibration (each: frames to build a master from, or a master FITS)")
    add_options(g, options.CalibrationOptions)
    g = p.add_argument_group("colour")
    g.add_argument("--debayer", action="store_true", default=argparse.SUPPRESS,
                   help="write demosaiced RGB frames instead of CFA mosaics")
    add_options(g, options.ReadOptions, only=("debayer_method", "bayer_override"))
    _add_memory(p)
    p.set_defaults(func=_cmd_calibrate)

    p = command(sub, "colour", "neutralise the background / white-balance an RGB stack", _COLOUR_DESC,
                aliases=["color"])
    p.add_argument("image", metavar="IMAGE", help="a stacked RGB image (.fits 3-plane or .tif)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".fits, .tif or .png")
    add_options(p, options.ColourOptions)
    p.add_argument("--camera-from", default=argparse.SUPPRESS, metavar="RAW",
                   help="a camera RAW file whose white balance --white-balance camera uses")
    add_options(p, options.OutputOptions, only=("preview",))
    add_verbosity(p)
    p.set_defaults(func=_cmd_colour)


def _add_memory(p: argparse.ArgumentParser) -> None:
    add_options(p.add_argument_group("memory"), options.StackOptions, only=("memory_limit",))
    add_run_args(p, run_fields=("workers", "keep_cache"))


def _cmd_master(a: argparse.Namespace) -> int:
    m = api.master(a.kind, a.inputs, a.output, **given(a))
    exp = f", {m.exposure_s:g} s" if m.exposure_s is not None else ""
    print(f"master {m.kind}: {m.n_frames} frames ({m.method}{exp}) -> {m.path}")
    for path, reason in m.skipped:
        print(f"  left out {path}: {reason}")
    return 0


def _cmd_calibrate(a: argparse.Namespace) -> int:
    paths, info = api.calibrate(a.inputs, a.output, **given(a))
    masters = ", ".join(f"{k} ({m['origin']}, {m['n_frames']} frames)" for k, m in info["masters"].items())
    print(f"calibrated {len(paths)} frame(s) with {masters}; "
          f"{info['cosmetic'].get('total', 0)} defective pixel(s) repaired per frame -> {a.output}; "
          f"{cache_summary(info.get('cache'))}")
    return 0


def _cmd_colour(a: argparse.Namespace) -> int:
    paths, info = api.colour(a.image, a.output, **given(a, drop=("quiet",)))
    f = ", ".join(f"{v:.4f}" for v in info["factors"])
    bg = ", ".join(f"{v:.1f}" for v in info["background_before"])
    print(f"background R,G,B was {bg}; white balance {info['white_balance']} ({f})"
          f"{'; background neutralised' if info['neutralize'] else ''}")
    for path in paths:
        print(f"  wrote {path}")
    return 0
