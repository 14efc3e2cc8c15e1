"""Reading frames: one lazy reader per format behind :class:`~skystack.io.base.FrameSource`.

* :mod:`.registry` — the table of formats (extensions, magic bytes, reader); adding a
  format is one reader module plus one line there;
* :mod:`.resolve` — :func:`open_frames`: what the user typed (files, folders, globs, list
  files) into a :class:`FrameSet` with a global frame index;
* :mod:`.frameset` — :class:`FrameSet`: lazy reads by frame or by rows, raw steps
  (calibration) and demosaicing (:mod:`.bayer`), the one :func:`luminance`;
* :mod:`.cache` — :func:`ensure_sliceable` decodes compressed frames once into a cache
  read by :mod:`.npycache`; :func:`remove_cache` removes it after a run;
* one module per format: :mod:`.fits`, :mod:`.tiff`, :mod:`.image`, :mod:`.raw`,
  :mod:`.ser`, :mod:`.video`.
"""
from __future__ import annotations

from .base import FrameSource
from .cache import ensure_sliceable, remove_cache
from .fits import FitsSource
from .frameset import FrameSet, FrameSetSpec, RawStep, SourceEntry, luminance
from .image import ImageSource
from .raw import RawSource
from .registry import FORMATS, kind_from_extension, open_source, sniff_kind
from .resolve import discover, input_files, natural_key, open_frames
from .ser import SerSource, write_ser
from .tiff import TiffSource
from .video import VideoSource

__all__ = [
    "FrameSource", "FrameSet", "FrameSetSpec", "SourceEntry", "RawStep", "FORMATS",
    "open_frames", "discover", "input_files", "open_source", "ensure_sliceable", "remove_cache",
    "kind_from_extension", "sniff_kind", "natural_key", "luminance",
    "FitsSource", "TiffSource", "ImageSource", "RawSource", "SerSource", "VideoSource",
    "write_ser",
]
