"""TIFF frames (tifffile): 8/16/32-bit integer and float, mono and RGB, multi-page.

Each page is one frame (reduced-resolution pages, i.e. previews, are skipped).
Uncompressed pages stored in one contiguous run are memory-mapped, so reading a band of
rows costs those rows; compressed or tiled pages are decoded whole (``sliceable`` is
False and the decode-once cache takes over in phase 2). Planar (``SYX``) RGB is returned
interleaved ``(H, W, 3)``; an alpha channel is dropped.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import BadFrameError
from .base import SourceBase
from .pages import release

TIFF_EXTENSIONS = (".tif", ".tiff")


class TiffSource(SourceBase):
    """One TIFF file; each full-resolution page is a frame.

    Raises
    ------
    BadFrameError
        Not a TIFF, no page, or a layout we cannot turn into mono/RGB frames.
    """

    sequential = False
    thread_safe = False  # tifffile's file handle is shared between pages

    def __init__(self, path: str | os.PathLike[str]):
        import tifffile

        self.path = str(path)
        self.problems: list[str] = []
        try:
            self._tif = tifffile.TiffFile(self.path)
        except FileNotFoundError as e:
            raise BadFrameError(self.path, "file does not exist") from e
        except Exception as e:
            raise BadFrameError(self.path, f"not a readable TIFF file ({e})") from e
        try:
            pages = [p for p in self._tif.pages if not getattr(p, "is_reduced", False)]
            if not pages:
                raise BadFrameError(self.path, "TIFF file holds no image page")
            self._pages = pages
            first = pages[0]
            self._layout = self._page_layout(first)
            self._shape = self._layout[0]
            self._dtype = np.dtype(first.dtype)
            self._all_mappable = all(self._mappable(p) for p in pages)
        except BadFrameError:
            self._tif.close()
            raise
        except Exception as e:
            self._tif.close()
            raise BadFrameError(self.path, f"cannot read TIFF structure ({e})") from e
        self._meta: dict[str, Any] = {}
        software = getattr(first, "software", "")
        if software:
            self._meta["software"] = str(software)
        dt = getattr(first, "datetime", None)
        if dt is not None:
            self._meta["date"] = dt.isoformat()
        self._maps: dict[int, np.memmap] = {}

    def _page_layout(self, page) -> tuple[tuple[int, ...], str]:
        """(frame shape, page axes) of a page, or BadFrameError."""
        axes = page.axes
        shape = page.shape
        if page.dtype is None or np.dtype(page.dtype).kind not in "uif":
            raise BadFrameError(self.path, f"unsupported TIFF sample type {page.dtype}")
        if axes == "YX":
            return (shape[0], shape[1]), axes
        if axes == "YXS" and shape[2] in (3, 4):
            return (shape[0], shape[1], 3), axes
        if axes == "SYX" and shape[0] in (3, 4):
            return (shape[1], shape[2], 3), axes
        if axes in ("YXS", "SYX") and 1 in (shape[0], shape[2]):
            return (shape[1], shape[2]) if axes == "SYX" else (shape[0], shape[1]), axes
        raise BadFrameError(self.path, f"unsupported TIFF page layout {axes} {shape}")

    @staticmethod
    def _mappable(page) -> bool:
        return bool(getattr(page, "is_memmappable", False)) and page.compression == 1

    # -- FrameSource --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pages)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def bayer(self) -> str | None:
        return None

    @property
    def sliceable(self) -> bool:
        return self._all_mappable

    def name(self, i: int) -> str:
        self._check(i)
        return self.path if len(self._pages) == 1 else f"{self.path}#{i}"

    def meta(self, i: int) -> dict[str, Any]:
        self._check(i)
        m = dict(self._meta)
        m["page"] = i
        return m

    def read(self, i: int) -> np.ndarray:
        return self.read_rows(i, 0, self._shape[0])

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        return self.read_block(i, y0, y1, 0, self._shape[1])

    def read_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self._check(i)
        page = self._pages[i]
        try:
            shape, axes = self._page_layout(page)
        except BadFrameError:
            raise
        if shape != self._shape or np.dtype(page.dtype) != self._dtype:
            raise BadFrameError(
                self.path,
                f"page {i} is {shape} {page.dtype}, page 0 is {self._shape} {self._dtype}",
            )
        y0, y1 = max(0, int(y0)), min(shape[0], int(y1))
        x0, x1 = max(0, int(x0)), min(shape[1], int(x1))
        try:
            data = self._map(i, page) if self._mappable(page) else page.asarray()
            block = data[:, y0:y1, x0:x1] if axes == "SYX" else data[y0:y1, x0:x1]
        except Exception as e:
            raise BadFrameError(self.path, f"cannot decode TIFF page {i} ({e})") from e
        if axes == "SYX":
            block = np.moveaxis(block, 0, -1)
        if block.ndim == 3:
            block = block[..., :3] if len(self._shape) == 3 else block[..., 0]
        out = np.array(block, dtype=self._dtype)  # native order, a copy of the map
        release(data)
        return out

    def close(self) -> None:
        self._maps.clear()
        try:
            self._tif.close()
        except Exception:
            pass

    # -- internals ----------------------------------------------------------------------
    def _map(self, i: int, page) -> np.memmap:
        m = self._maps.get(i)
        if m is None:
            dt = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
            m = np.memmap(self.path, dtype=dt, mode="r", offset=page.dataoffsets[0], shape=page.shape)
            # One mapping per page would hold one descriptor per page: keep only the last.
            self._maps = {i: m}
        return m
