"""The machinery of option fields (used by :mod:`skystack.options`, which defines the
options themselves): command-line metadata (:func:`flag`, :func:`api_only`), choice
lists read from ``Literal`` annotations, value checks and parsers shared by many options,
and the one ``--keep`` rule parser of both pipelines.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from .errors import UsageError
from .runtime.memory import parse_size


# -- command-line metadata ------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line and as an API keyword.

    ``name`` is the API keyword and argparse ``dest`` when it differs from the field name
    (``--register`` sets :attr:`RegisterOptions.method`). ``parse`` turns what the user
    gave (CLI text or an API value) into the field's value. ``pair`` names a second field
    that the same flag sets (``--kappa LOW HIGH``). ``action`` is an argparse action for
    switches; ``const`` goes with ``store_const``.
    """

    flags: tuple[str, ...]
    help: str
    name: str | None = None
    metavar: str | tuple[str, ...] | None = None
    nargs: int | str | None = None
    parse: Callable[[Any], Any] | None = None
    choices: tuple[str, ...] | None = None
    pair: str | None = None
    action: str | None = None
    const: Any = None
    hidden: bool = False


def flag(*flags: str, help: str = "", **kw: Any) -> dict[str, Flag]:
    """Field metadata: ``field(default=..., metadata=flag("--method", help="..."))``."""
    return {"cli": Flag(tuple(flags), help, **kw)}


def api_only(help: str, **kw: Any) -> dict[str, Flag]:
    """Field metadata for an option the API takes by keyword but the CLI has no flag for."""
    return {"cli": Flag((), help, **kw)}


def cli_flag(f: dataclasses.Field) -> Flag | None:
    return f.metadata.get("cli")


def public_name(f: dataclasses.Field) -> str:
    """The API keyword (and argparse dest) of a field."""
    fl = cli_flag(f)
    return fl.name if fl is not None and fl.name else f.name


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    # evaluating a class's annotations costs ~0.3 ms; the parser asks once per field (40 ms
    # of every command's start-up before this cache)
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """The allowed values of field ``name`` of ``cls`` (from its flag or its Literal)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    fl = cli_flag(f)
    if fl is not None and fl.choices is not None:
        return fl.choices
    hint = _type_hints(cls)[name]
    lits = [a for a in (typing.get_args(hint) or (hint,)) if typing.get_origin(a) is Literal]
    if typing.get_origin(hint) is Literal:
        lits = [hint]
    if not lits:
        return None
    return tuple(v for lit in lits for v in typing.get_args(lit))


def default_of(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def flag_text(f: dataclasses.Field) -> str:
    fl = cli_flag(f)
    return fl.flags[0] if fl is not None and fl.flags else f.name


class Checked:
    """Checks every field whose values are a closed list (choices) on construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            allowed = choices(type(self), f.name)
            value = getattr(self, f.name)
            if allowed is not None and value is not None and value not in allowed:
                raise UsageError(f"{flag_text(f)} {value!r}: expected one of {', '.join(map(str, allowed))}")
        self.check()

    def check(self) -> None:
        """Range checks beyond the choice lists (subclasses)."""


def positive_int(value: Any, what: str, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} {value!r}: expected a whole number of at least 1")


def finite(value: Any, what: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hint: str = "") -> None:
    """A finite number in [lo, hi] (lo excluded with ``lo_open``), or a UsageError naming
    the option, the value and the bound, then ``hint`` in parentheses."""
    tail = f" ({hint})" if hint else ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {value!r}: expected a number{tail}") from None
    if not math.isfinite(v):
        raise UsageError(f"{what} {value!r}: expected a finite number{tail}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise UsageError(f"{what} {value!r}: must be {'>' if lo_open else '>='} {lo:g}{tail}")
    if hi is not None and v > hi:
        raise UsageError(f"{what} {value!r}: must be <= {hi:g}{tail}")


def parse_memory(value: Any) -> int | None:
    return parse_size(value)


def parse_floats(value: Any) -> tuple[float, ...]:
    """``"1.8,1.4,1.0"`` (CLI) or a sequence (API) → a tuple of floats."""
    try:
        if isinstance(value, str):
            vals = tuple(float(v) for v in value.replace(" ", "").split(",") if v != "")
        else:
            vals = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"expected comma-separated numbers, got {value!r}") from None
    if not vals:
        raise UsageError(f"expected comma-separated numbers, got {value!r}")
    return vals


def parse_white_balance(value: Any) -> str | tuple[float, float, float]:
    """"none", "auto", "camera" or three factors "R,G,B" (or a 3-sequence)."""
    if isinstance(value, str) and value.strip().lower() in ("none", "auto", "camera"):
        return value.strip().lower()
    try:
        vals = parse_floats(value)
    except (UsageError, TypeError, ValueError):
        vals = ()
    lo, hi = WHITE_BALANCE_RANGE
    if len(vals) != 3 or not all(math.isfinite(v) and lo <= v <= hi for v in vals):
        raise UsageError(f"--white-balance {value!r}: expected none, auto, camera or three factors R,G,B "
                         f"from {lo:g} to {hi:g} (e.g. 1.9,1,1.4)")
    return (vals[0], vals[1], vals[2])


# a white-balance factor: cameras' run 1 to 4; 1e300 made a channel infinite, 1e-300 black,
# and both "succeeded"
WHITE_BALANCE_RANGE = (0.01, 100.0)


def paths(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, (str, os.PathLike)):
        return (os.fspath(value),)
    return tuple(os.fspath(v) for v in value)


# -- how many frames must register -----------------------------------------------------
@dataclass(frozen=True)
class MinRegistered:
    """A parsed ``--min-registered``: a fraction of the run's frames or a count of them."""

    value: float
    fraction: bool

    def required(self, n: int) -> int:
        """How many of ``n`` frames must register (never more than ``n``)."""
        if self.fraction:
            # the epsilon keeps half of 10 at 5 where 10 * 0.5 might round above it
            return min(n, math.ceil(n * self.value - 1e-9))
        return min(n, int(self.value))

    @property
    def text(self) -> str:
        if not self.fraction:
            return str(int(self.value))
        pct = f"{self.value * 100:g}%"
        return pct if float(pct[:-1]) / 100 == self.value else repr(self.value)


def parse_min_registered(value: Any) -> MinRegistered:
    """``"50%"`` or ``0.5`` (a fraction of the frames), ``"3"`` or ``3`` (a count);
    ``0`` asks for no minimum. A whole number is a count, a number with a point or a
    percentage a fraction.

    Raises
    ------
    UsageError
        Anything else, a fraction outside [0, 1], a negative or fractional count.
    """
    bad = UsageError(f"--min-registered {value!r}: expected a fraction of the frames (0.5 or 50%) "
                     "or a count (3)")
    if isinstance(value, MinRegistered):
        return value
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        if value < 0:
            raise bad
        return MinRegistered(float(value), False)
    if isinstance(value, float):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise bad
        return MinRegistered(value, True)
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%?)", text)
    if not m:
        raise bad
    number, percent = m.group(1), bool(m.group(2))
    if percent:
        v = float(number) / 100.0
    elif "." in number:
        v = float(number)
    else:
        return MinRegistered(float(int(number)), False)
    if not 0 <= v <= 1:
        raise bad
    return MinRegistered(v, True)


def min_registered_text(value: Any) -> str:
    """The canonical text of a ``--min-registered`` value (what the option field holds)."""
    return parse_min_registered(value).text


# -- the keep rule (both pipelines) ---------------------------------------------------
_KEEP = re.compile(r"^\s*(?:best:)?\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class KeepRule:
    """A parsed ``--keep``: a percentage of the usable frames or a count of them."""

    value: float
    percent: bool
    text: str

    def count(self, n: int) -> int:
        """How many of ``n`` usable frames the rule keeps (at least one when ``n > 0``)."""
        if self.percent:
            # the epsilon keeps 10% of 30 at 3 where 30 * 10 / 100 rounds to 3.0000000000000004
            return max(1 if n else 0, min(n, math.ceil(n * self.value / 100.0 - 1e-9)))
        return min(n, int(self.value))

    @property
    def requested(self) -> int | None:
        """The count asked for (to tell the user a clip was shorter), None for a percentage."""
        return None if self.percent else int(self.value)


def parse_keep(text: str | None) -> KeepRule | None:
    """``"80%"``, ``"best:80%"``, ``"200"``, ``"best:200"`` → a :class:`KeepRule`; ``None``
    keeps every frame.

    Raises
    ------
    UsageError
        Not a rule, a percentage outside (0, 100], or a count below 1 or not whole.
    """
    if text is None:
        return None
    m = _KEEP.match(str(text))
    if not m:
        raise UsageError(f"--keep {text!r}: expected a percentage (80%), a count (200) or best:N / best:N%")
    value, percent = float(m.group(1)), bool(m.group(2))
    if percent and not 0 < value <= 100:
        raise UsageError(f"--keep {text!r}: a percentage must be in (0, 100]")
    if not percent and (value < 1 or value != int(value)):
        raise UsageError(f"--keep {text!r}: a count must be a whole number of at least 1")
    return KeepRule(value, percent, str(text))


# -- building option dataclasses from keywords ---------------------------------------
def parse_frame_size(value: Any) -> str:
    """``"1024x768"`` (CLI) or ``(1024, 768)`` (API): width × height → ``"1024x768"``."""
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = []
    try:
        w, h = (int(v) for v in parts)
    except (TypeError, ValueError):
        raise UsageError(f"--size {value!r}: expected WIDTHxHEIGHT in pixels, e.g. 3840x2160") from None
    return f"{w}x{h}"


def parse_drizzle(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--drizzle {value!r}: expected a scale such as 1.5, 2 or 3") from None
    return v


def job_groups(job: type) -> dict[str, type]:
    """``{group name: options class}`` of a job dataclass."""
    hints = typing.get_type_hints(job)
    out = {}
    for f in dataclasses.fields(job):
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)] or [t]
        if dataclasses.is_dataclass(args[0]):
            out[f.name] = args[0]
    return out


def keywords(cls: type) -> dict[str, tuple[str, ...]]:
    """``{API keyword: (field, ...)}`` for an options class (a paired flag sets two fields).

    Fields without :func:`flag` or :func:`api_only` metadata are internal tuning, not
    keywords."""
    out: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        fl = cli_flag(f)
        if fl is None:
            continue  # internal tuning: not a keyword (pass the dataclass to change it)
        if any(f.name == (cli_flag(g).pair if cli_flag(g) else None) for g in dataclasses.fields(cls)):
            continue  # set through its pair's keyword
        out[public_name(f)] = (f.name, fl.pair) if fl is not None and fl.pair else (f.name,)
    return out


def build(cls: type, values: dict[str, Any], *, base: Any = None) -> Any:
    """An instance of options class ``cls`` from API keywords / CLI dests in ``values``
    (consumed: every key used is removed); missing ones keep ``base``'s values, else the
    defaults. Values go through each flag's ``parse``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for key, names in keywords(cls).items():
        if key not in values:
            continue
        value = values.pop(key)
        fl = cli_flag(fields[names[0]])
        if len(names) == 2:  # a pair: (low, high)
            try:
                lo, hi = value
            except (TypeError, ValueError):
                raise UsageError(f"{_label(fl, key)} {value!r}: expected two values") from None
            pair = (lo, hi)
            if fl is not None and fl.parse is not None:
                pair = tuple(_apply(fl, v, key) for v in pair)
            kw[names[0]], kw[names[1]] = pair
        else:
            kw[names[0]] = _apply(fl, value, key) if fl is not None and fl.parse is not None and value is not None \
                else value
    if base is not None:
        return dataclasses.replace(base, **kw)
    return cls(**kw)


def _label(fl: Flag | None, key: str) -> str:
    """How the user names an option: its flag, or the API keyword of an API-only one."""
    return fl.flags[0] if fl is not None and fl.flags else key


def _apply(fl: Flag, value: Any, key: str) -> Any:
    try:
        return fl.parse(value)  # type: ignore[misc]
    except UsageError:
        raise
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows
        raise UsageError(f"{_label(fl, key)} {value!r}: not a valid value") from None


def build_job(job: type, values: dict[str, Any], **fixed: Any) -> Any:
    """A job dataclass from keyword arguments: each keyword goes to the one option group
    that declares it; ``fixed`` are group instances or job fields given directly.

    Raises
    ------
    UsageError
        A keyword no group of this job knows (the message lists the known ones).
    """
    values = dict(values)
    kw: dict[str, Any] = {}
    defaults = job()
    for name, cls in job_groups(job).items():
        if name in fixed:
            continue
        base = getattr(defaults, name)
        if base is None:
            mine = {k: values.pop(k) for k in list(values) if k in keywords(cls)}
            kw[name] = build(cls, mine) if mine else None
        else:
            kw[name] = build(cls, values, base=base)
    for f in dataclasses.fields(job):
        if f.name in values and f.name not in kw:
            kw[f.name] = values.pop(f.name)
    if values:
        known = sorted(k for cls in job_groups(job).values() for k in keywords(cls))
        raise UsageError(f"unknown option(s) {', '.join(sorted(values))}; known: {', '.join(known)}")
    return job(**kw, **fixed)
