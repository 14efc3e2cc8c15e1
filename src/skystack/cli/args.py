"""What every command's parser shares: arguments generated from the option fields, the
execution and verbosity groups, and the exit-code epilog (built once, here).

Every option's flag, help, choices and default come from its field in
:mod:`skystack.options` (:func:`add_options`); argparse keeps no default of its own
(``SUPPRESS``), so what a command hands to :mod:`skystack.api` is exactly what the user
typed, and the API's defaults apply to the rest. Each command module
(:mod:`~skystack.cli.deepsky`, :mod:`~skystack.cli.lucky`,
:mod:`~skystack.cli.calibrate`) maps its arguments to one API call and prints a summary.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable

from .. import options
from ..errors import EXIT_CODES

EPILOG = "exit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())
FORMATTER = argparse.RawDescriptionHelpFormatter

INPUT_HELP = ("frames: files (FITS, TIFF, PNG/JPEG, SER, AVI/MP4/MOV, camera RAW), folders, "
              "globs, or a .txt/.lst file listing paths")

# argparse dests that are not API keywords
_NOT_OPTIONS = {"command", "func", "resumable", "verbose", "inputs", "input", "output", "kind", "image"}


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if value else "none"
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_options(group: argparse._ActionsContainer, cls: type, *, only: Iterable[str] | None = None,
                exclude: Iterable[str] = (), defaults: Any = None) -> None:
    """Add an argument for every flagged field of options class ``cls``.

    ``only``/``exclude`` pick fields by name; ``defaults`` (an instance of ``cls``) is the
    default shown in the help when a command's job overrides the class default.
    """
    only = set(only) if only is not None else None
    exclude = set(exclude)
    for f in dataclasses.fields(cls):
        fl = options.cli_flag(f)
        if fl is None or not fl.flags or f.name in exclude or (only is not None and f.name not in only):
            continue
        dest = options.public_name(f)
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        if fl.hidden:
            kw["help"] = argparse.SUPPRESS
        else:
            default = getattr(defaults, f.name) if defaults is not None else options.default_of(cls, f.name)
            shown = _default_text(default)
            if fl.pair:
                pair = getattr(defaults, fl.pair) if defaults is not None else options.default_of(cls, fl.pair)
                shown = f"{_default_text(default)} {_default_text(pair)}"
            help_text = fl.help
            if fl.action not in ("store_true", "store_false", "store_const") and shown:
                # argparse %-formats help text: a default such as --keep's 10% must be escaped
                help_text += f" (default: {shown.replace('%', '%%')})"
            kw["help"] = help_text
        if fl.action is not None:
            kw["action"] = fl.action
            if fl.action == "store_const":
                kw["const"] = fl.const
        else:
            allowed = options.choices(cls, f.name)
            if allowed is not None:
                kw["choices"] = list(allowed)
            if fl.nargs is not None:
                kw["nargs"] = fl.nargs
            if fl.metavar is not None:
                kw["metavar"] = fl.metavar
        group.add_argument(*fl.flags, **kw)


def add_run_args(p: argparse.ArgumentParser, *, run_fields: Iterable[str] = ("workers", "scheduler")) -> None:
    """The execution group: workers (and the scheduler), -q, -v."""
    g = p.add_argument_group("execution")
    add_options(g, options.RunOptions, only=run_fields)
    add_verbosity(g)


def add_verbosity(g: argparse._ActionsContainer) -> None:
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars or progress messages: the closing summary (stdout) and warnings (one line per bad frame) only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages and tracebacks")


def given(args: argparse.Namespace, *, drop: Iterable[str] = ()) -> dict[str, Any]:
    """The options the user gave, as API keywords (``drop``: CLI-only ones)."""
    skip = _NOT_OPTIONS | set(drop)
    return {k: v for k, v in vars(args).items() if k not in skip}


def command(sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None,
            **kw: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the shared epilog (exit codes) and formatting."""
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                          epilog=EPILOG, formatter_class=FORMATTER, **kw)
