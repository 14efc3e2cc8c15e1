"""From what the user typed to a :class:`~skystack.io.frameset.FrameSet`.

:func:`open_frames` resolves files, folders, globs and list files (``.txt``/``.lst``, one
path per line) into candidate files in natural order (``frame_2`` before ``frame_10``),
picks each file's reader from :mod:`.registry`, reads each header once, and hands the
entries to a :class:`~skystack.io.frameset.FrameSet`.

What skystack wrote itself is not a frame: files carrying the product mark (stacks,
coverage maps, previews, plots: :func:`skystack.output.guard.is_product`) found in a
folder or by a glob are left out, and so are the journal (``*.skystack-journal``) and
cache (``.skystack-cache``) folders, so a second run into the lights folder stacks the same
frames as the first. A product named explicitly is used, with a warning.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadFrameError, NoFramesError
from ..options import ReadOptions
from ..output.guard import is_product
from .frameset import DEFAULT_MAX_OPEN, FrameSet, SourceEntry, fingerprint
from .registry import kind_from_extension, open_source, sniff_kind

LIST_EXTENSIONS = (".txt", ".lst")
# Folders skystack makes beside its outputs; never searched for frames.
OWN_FOLDERS = (".skystack-journal", ".skystack-cache")

log = logging.getLogger("skystack")


_NATURAL = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key putting ``frame_2`` before ``frame_10`` (digits compare as numbers)."""
    parts = _NATURAL.split(name)
    return tuple((int(p) if k % 2 else p.casefold()) for k, p in enumerate(parts)) + (name,)


def _natural_sorted(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=lambda p: natural_key(os.path.basename(p)) + (p,))


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


@dataclass
class _Candidate:
    path: str
    explicit: bool  # named by the user (or a list file) rather than found in a folder
    kind: str | None = None
    error: str | None = None


def _resolve(inputs: Sequence[str | os.PathLike[str]], searched: list[str], lists: list[str],
             depth: int = 0, base: str | None = None) -> list[_Candidate]:
    out: list[_Candidate] = []
    for raw in inputs:
        s = os.path.expanduser(os.fspath(raw))
        if base is not None and not os.path.isabs(s):
            s = os.path.join(base, s)
        searched.append(s)
        if os.path.isdir(s):
            names = [os.path.join(s, n) for n in os.listdir(s) if not n.startswith(".")]
            out += [_Candidate(p, False) for p in _natural_sorted(names) if os.path.isfile(p)]
        elif os.path.isfile(s):
            if s.lower().endswith(LIST_EXTENSIONS):
                lists.append(s)
                if depth >= 4:
                    out.append(_Candidate(s, True, error="list files nested too deeply"))
                    continue
                out += _resolve(_read_list(s), searched, lists, depth + 1, os.path.dirname(os.path.abspath(s)))
            else:
                out.append(_Candidate(s, True))
        elif _has_glob(s):
            for m in _natural_sorted(glob.glob(s)):
                if os.path.isdir(m):
                    if not m.rstrip(os.sep).endswith(OWN_FOLDERS):
                        out += _resolve([m], [], lists, depth + 1)
                elif os.path.isfile(m):
                    out.append(_Candidate(m, False))
        else:
            out.append(_Candidate(s, True, error="file does not exist"))
    return out


def _subfolder_hint(searched: list[str]) -> str:
    """For folders that hold only folders (a night per subfolder, say): name them, since
    folders are not searched recursively."""
    subs = []
    for s in searched:
        if os.path.isdir(s):
            subs += sorted(os.path.join(s, n) for n in os.listdir(s)
                           if not n.startswith(".") and os.path.isdir(os.path.join(s, n)))
    if not subs:
        return ""
    shown = ", ".join(subs[:5]) + (f" (and {len(subs) - 5} more)" if len(subs) > 5 else "")
    example = os.path.join(searched[0], "*") if len(searched) == 1 else "each folder"
    return (f"; it holds only the folder(s) {shown}: folders are not searched recursively, so name them as "
            f"inputs (e.g. {example})")


@dataclass
class Discovery:
    """What the inputs name, before any file is opened."""

    candidates: list[_Candidate]  # one per file, in order; kinds set; products found in folders left out
    searched: list[str]  # what was looked in (for the "nothing found" message)
    list_files: list[str]  # .txt/.lst files read
    products: list[str]  # skystack products found in folders or globs, left out
    named_products: list[str]  # skystack products named explicitly (used)

    @property
    def files(self) -> list[str]:
        """Every file the run reads: the candidates and the list files."""
        return [c.path for c in self.candidates] + self.list_files


def discover(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Discovery:
    """Resolve ``inputs`` (files, folders, globs, list files) into the files a run reads,
    without opening any: each file once, in order; files of unknown kind in folders and
    skystack's own products found in folders or globs left out (see the module notes)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    searched: list[str] = []
    lists: list[str] = []
    candidates = _resolve(list(inputs), searched, lists)
    seen: set[str] = set()
    chosen: list[_Candidate] = []
    products: list[str] = []
    named: list[str] = []
    for c in candidates:
        key = os.path.normcase(os.path.realpath(c.path))
        if key in seen:
            continue
        if c.error is None:
            c.kind = kind_from_extension(c.path) or sniff_kind(c.path)
            if c.kind is None:
                if not c.explicit:
                    continue  # an unrelated file in a folder: ignored silently
                ext = Path(c.path).suffix or "(none)"
                c.error = f"not an image or video file skystack can read (extension {ext})"
            elif is_product(c.path):
                if not c.explicit:
                    products.append(c.path)
                    continue
                named.append(c.path)
        seen.add(key)
        chosen.append(c)
    return Discovery(chosen, searched, lists, products, named)


def input_files(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Every file a run given ``inputs`` reads (frames, list files), opening none of them:
    what :func:`skystack.output.guard.guard_outputs` protects."""
    return discover(inputs).files if inputs else []


def _read_list(path: str) -> list[str]:
    # One path per line; a line starting with '#' is a comment, and so is the rest of a
    # line after ' #' (a '#' inside a file name, 'frame#1.fits', is kept).
    lines = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = re.split(r"\s#", line, maxsplit=1)[0].strip()
            if line:
                lines.append(line)
    return lines


def _entry_for(c: _Candidate, hints: dict[str, Any]) -> tuple[SourceEntry, Any]:
    """Open one candidate; returns its entry and the open source (or None)."""
    fp = fingerprint(c.path)
    if c.error is not None:
        return SourceEntry(path=c.path, kind=None, error=c.error, fingerprint=fp), None
    try:
        src = open_source(c.path, c.kind, hints.get(c.kind))  # type: ignore[arg-type]
    except BadFrameError as e:
        return SourceEntry(path=c.path, kind=None, error=e.reason, fingerprint=fp), None
    except Exception as e:  # a reader bug or an exotic file must not stop the listing
        return SourceEntry(path=c.path, kind=None, fingerprint=fp,
                           error=f"cannot open ({type(e).__name__}: {e})"), None
    n = len(src)
    meta = src.meta(0) if n == 1 else _file_meta(src)
    # Header cards stay in the file (meta(i) rereads them): a spec shipped with every
    # task should not carry a thousand FITS headers.
    meta.pop("header", None)
    entry_hints = dict(hints.get(c.kind) or {})
    if c.kind == "video":
        entry_hints.update(frame_count=n, mono=src.is_mono, bits=src.bits)
    elif c.kind == "raw":  # reopening then needs no LibRaw unpack before the read
        entry_hints.update(shape=tuple(src.shape), bayer=src.bayer, meta=dict(meta))
    entry = SourceEntry(
        path=c.path, kind=c.kind, n_frames=n, shape=tuple(src.shape), dtype=np.dtype(src.dtype).name,
        bayer=src.bayer, sliceable=bool(src.sliceable), sequential=bool(src.sequential),
        meta=meta, fingerprint=fp, hints=entry_hints, warnings=tuple(getattr(src, "problems", ())),
    )
    return entry, src


def _file_meta(src) -> dict[str, Any]:
    # File-level metadata of a multi-frame source: frame 0's, without per-frame keys.
    m = dict(src.meta(0))
    for key in ("timestamp", "timestamp_s", "time_s", "page"):
        m.pop(key, None)
    return m


def open_frames(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    options: ReadOptions = ReadOptions(),
    ser_endianness: str = "compat",
    max_open: int = DEFAULT_MAX_OPEN,
) -> FrameSet:
    """Find and open the input frames.

    Parameters
    ----------
    inputs : path, or sequence of paths
        Files, folders (their files with a known image/video extension, not recursive;
        hidden files skipped), glob patterns, or ``.txt``/``.lst`` files listing one path
        per line (``#`` starts a comment; relative paths are relative to the list file).
        Files within a folder or glob are in natural order; the order of the inputs is
        kept; a file named twice is used once.
    options : ReadOptions
        Demosaicing choices.
    ser_endianness : {"compat", "spec", "little", "big"}
        How to read the SER ``LittleEndian`` flag (see :mod:`skystack.io.ser`).
    max_open : int
        Most files kept open at once.

    Returns
    -------
    FrameSet

    Raises
    ------
    NoFramesError
        Nothing found, or nothing readable among what was found; the message names what
        was searched and why the files were refused.
    UsageError
        An invalid ``options.bayer_override``.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise NoFramesError("no input given")
    found = discover(inputs)
    chosen = found.candidates
    for p in found.products:
        log.info("%s: written by skystack (a stack, preview or plot), not a frame; left out", p)
    for p in found.named_products:
        log.warning("%s: written by skystack (a stack, preview or plot); used as a frame because it was "
                    "named", p)

    if not chosen:
        left = f" (left out {len(found.products)} file(s) skystack wrote)" if found.products else ""
        raise NoFramesError(
            "no image or video files found in " + ", ".join(repr(s) for s in found.searched) + left
            + _subfolder_hint(found.searched)
        )

    hints = {"ser": {"endianness": ser_endianness}}
    entries: list[SourceEntry] = []
    open_sources: OrderedDict[str, Any] = OrderedDict()
    for c in chosen:
        entry, src = _entry_for(c, hints)
        entries.append(entry)
        if src is not None:
            open_sources[c.path] = src
            while len(open_sources) > max_open:  # keep the most recent few open
                _, old = open_sources.popitem(last=False)
                old.close()

    if not any(e.readable for e in entries):
        reasons = "; ".join(f"{e.path}: {e.error}" for e in entries[:5])
        more = f" (and {len(entries) - 5} more)" if len(entries) > 5 else ""
        for s in open_sources.values():
            s.close()
        raise NoFramesError(f"no readable frame among {len(entries)} files: {reasons}{more}")

    return FrameSet(entries, options, inputs=[os.fspath(i) for i in inputs],
                    max_open=max_open, _open_sources=open_sources)
