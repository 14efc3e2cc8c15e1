"""``skystack stack``, ``skystack register`` and ``skystack demo``: arguments → one API call."""
from __future__ import annotations

import argparse

from .. import api, options
from ..io.cache import cache_summary
from .args import INPUT_HELP, add_options, add_run_args, command, given

_STACK_DESC = """\
Register frames (deep-sky subs: FITS, TIFF, camera RAW, also colour Bayer frames; or any
frame sequence) to a reference frame, select, and stack them into OUT, with OUT.report.json
(every frame's fate, transform and metrics) and a stretched OUT.preview.png beside it."""


def _add_read_register(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registration")
    add_options(g, options.RegisterOptions)
    add_options(g, options.ReadOptions)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``stack``, ``register`` and ``demo``."""
    p = command(sub, "stack", "register and stack frames into one image", _STACK_DESC)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image: .fits (float32), .tif/.tiff or .png")
    _add_read_register(p)
    g = p.add_argument_group("selection")
    add_options(g, options.SelectOptions)
    g = p.add_argument_group("stacking")
    add_options(g, options.StackOptions)
    g = p.add_argument_group("calibration (each: frames to build a master from, or a master FITS)")
    add_options(g, options.CalibrationOptions)
    g = p.add_argument_group("colour")
    add_options(g, options.ColourOptions)
    g = p.add_argument_group("output")
    add_options(g, options.OutputOptions)
    add_run_args(p, run_fields=("workers", "scheduler", "backend", "resume", "keep_cache"))
    p.set_defaults(func=_cmd_stack, resumable=True)  # an interrupted stack says: --resume

    p = command(sub, "register", "register frames only; write the transforms to a report")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    p.add_argument("--report", required=True, metavar="R.json", help="where the transforms are written (JSON)")
    _add_read_register(p)
    add_run_args(p, run_fields=("workers", "scheduler", "keep_cache"))
    p.set_defaults(func=_cmd_register)

    p = command(sub, "demo", "generate a synthetic set with known truth, stack it, check the result")
    p.add_argument("--dir", default=None, help="where to write it (default: a new temporary folder)")
    p.add_argument("--frames", type=int, default=16, help="how many frames (default: 16)")
    p.add_argument("--method", default="sigma", choices=list(options.STACK_METHODS),
                   help="stacking method (default: sigma)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages and tracebacks")
    p.set_defaults(func=_cmd_demo)


def _cmd_stack(a: argparse.Namespace) -> int:
    r = api.stack(a.inputs, a.output, **given(a))
    s = r.report["summary"]
    print(f"stacked {s['stacked']} of {s['frames']} frames ({s['registered']} registered, "
          f"{s['failed_registration']} failed, {s['unreadable']} unreadable, {s['rejected']} rejected) "
          f"in {r.timings['total_s']:.1f} s, peak memory {r.peak_rss_mb:.0f} MiB, "
          f"{cache_summary(r.report.get('cache'))}")
    for path in r.report.get("outputs", []):
        print(f"  wrote {path}")
    print(f"  report {r.report_path}")
    return 0


def _cmd_register(a: argparse.Namespace) -> int:
    r = api.register(a.inputs, **given(a))
    s = r.report["summary"]
    print(f"registered {s['registered']} of {s['frames']} frames to frame {r.reference}; report {r.report_path}; "
          f"{cache_summary(r.report.get('cache'))}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    api.demo(a.dir, n_frames=a.frames, method=a.method, quiet=a.quiet)
    return 0
