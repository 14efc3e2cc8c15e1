"""``skystack``: the top-level parser and the one place where errors become exit codes.

Each command module (:mod:`~skystack.cli.deepsky`: stack, register, demo;
:mod:`~skystack.cli.lucky`: lucky, enhance; :mod:`~skystack.cli.calibrate`: master,
calibrate, colour; :mod:`~skystack.cli.bench`: bench) adds its parsers and maps its
arguments to one :mod:`skystack.api` call; :mod:`~skystack.cli.args` holds what they share.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from typing import Sequence

from .. import __version__
from ..errors import STDOUT_CLOSED, SkystackError
from ..runtime.progress import setup_logging
from . import bench, calibrate, deepsky, lucky
from .args import EPILOG, FORMATTER

log = logging.getLogger("skystack")

# Generation-1 collections between full ones in a process that is one command (Python's
# default: 10); see main.
_FULL_COLLECTION_EVERY = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skystack", description="Align and stack astronomical frames, out of core.",
                                     epilog=EPILOG, formatter_class=FORMATTER)
    parser.add_argument("--version", action="version", version=f"skystack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    deepsky.add_parsers(sub)
    lucky.add_parsers(sub)
    calibrate.add_parsers(sub)
    bench.add_parsers(sub)
    return parser


def _ignore_interrupts_from_now_on() -> None:
    """The command's work is over (its outputs written or its error reported) and the
    process only exits: a Ctrl-C now would interrupt the interpreter's shutdown instead, and
    end a finished run killed by SIGINT without a word, or with a KeyboardInterrupt
    traceback from an atexit callback (logging's, multiprocessing's). Interrupts at random
    points of the last tenth of a two-worker lucky run did one or the other 8 times in 40,
    every output already complete. So the process ignores them from here on."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not this call's to set
        pass


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error there)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        # The process is this command: a full collection every 100 young ones, not 10. The
        # imports a stack makes (numba, astropy) trigger three of them, 0.18 s over objects
        # that live until exit (measured on an 18-sub Seestar stack); the stages free their
        # arrays by reference counting, not through cycles.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, _FULL_COLLECTION_EVERY)
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    setup_logging(quiet=getattr(args, "quiet", False), verbose=verbose)
    try:
        rc = int(args.func(args) or 0)
        if argv is None:
            _ignore_interrupts_from_now_on()  # inside the try: an interrupt before it is the handler's below
        return rc
    except SkystackError as e:
        if argv is None:
            _ignore_interrupts_from_now_on()
        log.error("%s", e)
        if verbose:
            raise
        return e.exit_code
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # one of the run's own pipes: a bug, with its traceback
        # stdout's reader went away (`skystack register ... --report /dev/stdout | head`):
        # nothing is left to say to it. Python's recipe: point stdout at /dev/null, so the
        # interpreter's final flush does not fail again
        if argv is None:
            _ignore_interrupts_from_now_on()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return STDOUT_CLOSED
    except KeyboardInterrupt:
        # only `skystack stack` keeps a journal to resume from; the others start over
        log.error("interrupted; rerun the same command with --resume to continue" if getattr(args, "resumable", False)
                  else "interrupted; nothing was half-written: rerun the command to start over")
        if argv is None:
            # The process is this command: end it now. A worker thread that the interrupt
            # left waiting on a lock the main thread held would otherwise keep the
            # interpreter's exit (which joins pool threads) waiting for ever; what is done is
            # in the journal, written atomically as it finished.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    finally:
        if argv is None:
            # The process is this command (the console script, python -m skystack.cli) and
            # ends now: the interpreter's shutdown would run full garbage collections over
            # every object the imports made (numba's, astropy's), 0.35 s of a 4 s stack of
            # 18 Seestar subs (measured on the 2-core project machine). Frozen objects are
            # skipped; the memory goes back with the process. A caller that passes argv
            # (tests, scripts) keeps collecting as usual.
            gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
