"""``skystack bench``: arguments → one API call; prints the tables."""
from __future__ import annotations

import argparse

from .. import api, jobs, options
from ..errors import ParityError
from .args import add_options, add_verbosity, command, given

_BENCH_DESC = """\
Measure how fast each backend stacks on this machine: a synthetic deep-sky set (or INPUT)
is decoded, registered, warped and combined as `skystack stack` does it, and each backend
gets a table of frames/s and MB/s per stage (decode, register, warp, combine, total), with
the device, driver, CUDA, CuPy, OpenCV and numba versions and the peak host and device
memory. The CPU backend always runs too: every GPU backend's stack must equal it (same
pixels covered, same values kept, values within float rounding; the largest difference is
printed). Backends that cannot run here are listed with the reason.

--backend all measures every usable backend; naming a GPU backend that is not usable
stops with exit code 7. A GPU backend that fails or whose stack differs from the CPU's
gives exit code 10, after the tables (and --json) are written."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``bench``."""
    p = command(sub, "bench", "measure each backend (CPU, GPU) per stage and check the GPU against the CPU",
                _BENCH_DESC)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="frames to measure on (default: a generated synthetic set, see --frames/--size/--dtype)")
    g = p.add_argument_group("bench")
    add_options(g, options.BenchOptions)
    g = p.add_argument_group("stacking")
    add_options(g, options.StackOptions, defaults=jobs.BenchJob().stack)
    g = p.add_argument_group("registration (of INPUT)")
    add_options(g, options.RegisterOptions)
    add_options(g, options.ReadOptions)
    add_verbosity(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(a: argparse.Namespace) -> int:
    """Run ``skystack bench``; print the report; exit code 10 when parity fails."""
    r = api.bench(a.inputs or None, **given(a))
    print(r.table())
    if not r.ok:
        raise ParityError("bench: " + "; ".join(r.problems()))
    return 0
