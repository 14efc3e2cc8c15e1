"""Which reader opens which file: one table of formats.

Each :class:`Format` names a reader kind, the file extensions that select it, how to
recognise its files by their first bytes (for files without a known extension), and how
to open one. To add a format: write its reader module (a class following
:class:`~skystack.io.base.FrameSource`, importing its decoding library only when it opens
a file), add one :class:`Format` line to :data:`FORMATS`, and a test in ``tests/io/``.
Input discovery (:mod:`.resolve`) and reopening (:mod:`.frameset`) go through this table
and nothing else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .fits import FITS_EXTENSIONS, FitsSource
from .image import IMAGE_EXTENSIONS, PNG_MAGIC, ImageSource
from .npycache import NpyCacheSource
from .raw import RAW_EXTENSIONS, RawSource
from .ser import SER_EXTENSIONS, SerSource
from .tiff import TIFF_EXTENSIONS, TiffSource
from .video import VIDEO_EXTENSIONS, VideoSource


@dataclass(frozen=True)
class Format:
    """One readable file format."""

    kind: str
    extensions: tuple[str, ...]
    magic: Callable[[bytes], bool] | None  # the first 16 bytes are this format's
    open: Callable[[str, dict[str, Any]], Any]  # (path, reader hints) -> FrameSource


def _video_magic(head: bytes) -> bool:
    return (head.startswith(b"RIFF") and head[8:12] == b"AVI ") or head[4:8] == b"ftyp" \
        or head.startswith(b"\x1a\x45\xdf\xa3")


FORMATS: tuple[Format, ...] = (
    Format("fits", FITS_EXTENSIONS, lambda h: h.startswith(b"SIMPLE  ="), lambda p, h: FitsSource(p)),
    Format("tiff", TIFF_EXTENSIONS, lambda h: h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
           lambda p, h: TiffSource(p)),
    Format("image", IMAGE_EXTENSIONS,
           lambda h: h.startswith(PNG_MAGIC) or h.startswith(b"\xff\xd8\xff") or h.startswith(b"BM"),
           lambda p, h: ImageSource(p)),
    Format("raw", RAW_EXTENSIONS, None, lambda p, h: RawSource(p, **h)),
    Format("ser", SER_EXTENSIONS, lambda h: h.startswith(b"LUCAM-RECORDER"),
           lambda p, h: SerSource(p, endianness=h.get("endianness", "compat"))),
    Format("video", VIDEO_EXTENSIONS, _video_magic,
           lambda p, h: VideoSource(p, mono=h.get("mono"), frame_count=h.get("frame_count"), bits=h.get("bits"))),
    # frames decoded once into the cache (see .cache); never found by extension or magic
    Format("npy-cache", (), None,
           lambda p, h: NpyCacheSource(p, reopen=lambda: open_source(p, h["orig_kind"], h["orig_hints"]), **h)),
)
_BY_KIND = {f.kind: f for f in FORMATS}
# Longest suffix first so that ".fits.gz" wins over ".gz".
_SUFFIXES = sorted(((ext, f.kind) for f in FORMATS for ext in f.extensions), key=lambda t: -len(t[0]))


def kind_from_extension(path: str | os.PathLike[str]) -> str | None:
    """The reader kind a file name implies (``"fits"``, ``"video"``, ...), or ``None``."""
    name = os.fspath(path).lower()
    for ext, kind in _SUFFIXES:
        if name.endswith(ext):
            return kind
    return None


def sniff_kind(path: str | os.PathLike[str]) -> str | None:
    """The reader kind a file's first bytes imply, or ``None`` (unreadable or unknown)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    for fmt in FORMATS:
        if fmt.magic is not None and fmt.magic(head):
            return fmt.kind
    return None


def open_source(path: str, kind: str, hints: dict[str, Any] | None = None):
    """Open one file with the reader for ``kind``; ``hints`` are reader keyword arguments
    learnt when the file was first opened (they spare a video its counting pass)."""
    fmt = _BY_KIND.get(kind)
    if fmt is None:
        raise ValueError(f"unknown reader kind {kind!r}")
    return fmt.open(path, dict(hints or {}))
