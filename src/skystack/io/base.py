"""The one protocol every reader implements.

A :class:`FrameSource` is one file (or one video/cube) holding ``len(source)`` frames of
the same geometry. Sources are lazy: opening one reads the header only, ``read(i)``
decodes one frame, and no source ever holds all of its frames in memory. Values are in the
file's native dtype with FITS BZERO/BSCALE applied (so BITPIX 16 + BZERO 32768 is uint16).
Colour frames are ``(H, W, 3)`` in **RGB** order (not OpenCV's BGR); CFA mosaics are the
raw ``(H, W)`` plane with :attr:`bayer` naming the pattern in FITS ``BAYERPAT``
convention (the 2×2 cell at row 0, column 0 of the array as returned, read row-major).

Readers signal a bad frame with :class:`skystack.errors.BadFrameError` naming the file and
the reason; the pipeline records it and goes on.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FrameSource(Protocol):
    path: str

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]:
        """Raw frame shape: ``(H, W)`` for mono/CFA, ``(H, W, 3)`` for RGB."""
        ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def bayer(self) -> str | None:
        """CFA pattern (FITS convention, e.g. ``"GRBG"``) or ``None``."""
        ...

    @property
    def sliceable(self) -> bool:
        """True when :meth:`read_rows` costs about the rows read (memmap, uncompressed)."""
        ...

    @property
    def sequential(self) -> bool:
        """True when random access is expensive (compressed video: a seek per frame)."""
        ...

    def read(self, i: int) -> np.ndarray: ...

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of frame ``i`` (native dtype), without decoding more than needed
        where the format allows it."""
        ...

    def read_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` of frame ``i`` (native dtype): only that block
        where the file is memory-mapped (phase 2's tiles read their blocks this way)."""
        ...

    def name(self, i: int) -> str:
        """A human name for frame ``i``: the path, plus ``#k`` inside a multi-frame file."""
        ...

    def meta(self, i: int) -> dict[str, Any]:
        """Cheap per-frame metadata: ``exposure_s``, ``temperature_c``, ``timestamp``,
        ``binning``, header cards worth keeping. Missing keys are simply absent."""
        ...

    def close(self) -> None: ...


class SourceBase:
    """Plumbing every reader shares: a context manager that closes, closing when
    collected, the frame-index check, and ``read_rows``/``read_block`` by decoding the whole frame
    (what compressed formats must do; memory-mapped readers override them)."""

    path: str

    def __len__(self) -> int:  # pragma: no cover - every reader defines it
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:  # pragma: no cover - every reader defines it
        raise NotImplementedError

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        return self.read(i)[max(0, y0):max(0, y1)].copy()

    def read_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.ascontiguousarray(self.read_rows(i, y0, y1)[:, max(0, x0):max(0, x1)])

    def close(self) -> None:
        """Release file handles and maps (nothing to release by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def _check(self, i: int) -> None:
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range for {self.path} ({n} frame{'' if n == 1 else 's'})")
