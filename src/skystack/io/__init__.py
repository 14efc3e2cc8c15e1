"""Reading frames: one lazy reader per format behind :class:`~skystack.io.base.FrameSource`,
and :func:`open_frames`, which turns user inputs into a :class:`FrameSet` with a global
frame index. :func:`ensure_sliceable` decodes compressed frames once into a cache."""
from __future__ import annotations

from .base import FrameSource
from .cache import CachedFrames, ensure_sliceable
from .discover import (
    FrameSet,
    FrameSetSpec,
    RawStep,
    SourceEntry,
    kind_from_extension,
    natural_key,
    open_frames,
    open_source,
    sniff_kind,
    luminance,
)
from .fits import FitsSource
from .image import ImageSource
from .raw import RawSource
from .ser import SerSource, write_ser
from .tiff import TiffSource
from .video import VideoSource

__all__ = [
    "FrameSource", "FrameSet", "FrameSetSpec", "SourceEntry", "RawStep", "CachedFrames",
    "open_frames", "open_source", "ensure_sliceable", "kind_from_extension", "sniff_kind",
    "natural_key", "luminance",
    "FitsSource", "TiffSource", "ImageSource", "RawSource", "SerSource", "VideoSource",
    "write_ser",
]
