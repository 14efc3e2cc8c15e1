"""Camera RAW frames (rawpy / LibRaw): CR2, CR3, NEF, ARW, DNG, ORF, RAF, RW2, ...

We return the undemosaiced sensor plane (``raw_image_visible``, uint16, no black level
subtracted, no white balance) so that calibration and stacking see linear ADU exactly as
for a FITS from an astro camera, with its CFA pattern in the FITS convention.

Each read unpacks the file (RAW files are compressed, so ``sliceable`` is False and the
decode-once cache takes over in phase 2). Opening costs one unpack too: rawpy only
reports the CFA pattern once the raw data is unpacked. X-Trans and other non-2×2 sensors
are refused with a clear reason.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .bayer import normalize_pattern
from ..errors import BadFrameError
from .base import SourceBase

RAW_EXTENSIONS = (
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf",
    ".raf", ".rw2", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".mef", ".iiq", ".x3f",
)


def pattern_from_rawpy(raw_pattern: Any, color_desc: Any) -> str:
    """Convert LibRaw's pattern description to a FITS-convention pattern string.

    Parameters
    ----------
    raw_pattern : ndarray of int, or None
        ``RawPy.raw_pattern``: colour indices of the smallest repeating cell, relative to
        ``raw_image_visible``.
    color_desc : bytes
        ``RawPy.color_desc``: the colour letter of each index, e.g. ``b"RGBG"`` (the
        second green has its own index 3).

    Returns
    -------
    str
        E.g. ``"RGGB"``.

    Raises
    ------
    ValueError
        Not a 2×2 R/G/B Bayer cell (X-Trans 6×6, Foveon, CMYG sensors).
    """
    if raw_pattern is None:
        raise ValueError("not a Bayer sensor (LibRaw reports no CFA pattern)")
    pat = np.asarray(raw_pattern)
    desc = color_desc.decode("ascii") if isinstance(color_desc, (bytes, bytearray)) else str(color_desc)
    if pat.ndim != 2 or pat.shape[0] < 2 or pat.shape[1] < 2:
        raise ValueError(f"unsupported CFA pattern of shape {pat.shape}")
    if pat.shape != (2, 2):
        # A larger cell that is really 2-periodic is still Bayer; anything else is not.
        tiled = np.tile(pat[:2, :2], (pat.shape[0] // 2 + 1, pat.shape[1] // 2 + 1))
        if not np.array_equal(tiled[: pat.shape[0], : pat.shape[1]], pat):
            raise ValueError(
                f"unsupported {pat.shape[0]}x{pat.shape[1]} CFA (X-Trans or similar); "
                "only 2x2 Bayer sensors are supported"
            )
    letters = []
    for idx in pat[:2, :2].ravel():
        if not 0 <= int(idx) < len(desc):
            raise ValueError(f"CFA colour index {idx} is not described by {desc!r}")
        letters.append(desc[int(idx)])
    p = "".join(letters)
    try:
        return normalize_pattern(p)  # type: ignore[return-value]
    except ValueError as e:
        raise ValueError(f"unsupported CFA colours {p!r} ({desc!r})") from e


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def raw_meta(raw: Any) -> dict[str, Any]:
    """Metadata of an opened RawPy object (or anything with the same attributes)."""
    m: dict[str, Any] = {}
    try:
        m["black_level"] = [int(v) for v in raw.black_level_per_channel]
    except Exception:
        pass
    try:
        m["white_level"] = int(raw.white_level)
    except Exception:
        pass
    try:
        wb = [float(v) for v in raw.camera_whitebalance]
        if all(math.isfinite(v) for v in wb):
            m["camera_whitebalance"] = wb
    except Exception:
        pass
    other = getattr(raw, "other", None)
    if other is not None:
        exp = _finite(getattr(other, "shutter_speed", None))
        if exp is not None and exp > 0:
            m["exposure_s"] = exp
        iso = _finite(getattr(other, "iso_speed", None))
        if iso is not None and iso > 0:
            m["iso"] = iso
        ts = getattr(other, "timestamp", None)
        if ts is not None:
            try:
                m["date"] = ts.isoformat() if hasattr(ts, "isoformat") else str(ts)
            except Exception:
                pass
    return m


class RawSource(SourceBase):
    """One camera RAW file: its visible CFA plane, uint16.

    Parameters
    ----------
    path : str or path-like
    shape, bayer, meta : optional
        What an earlier opening of the same file found; given all three, opening does
        not touch LibRaw (the first read will).

    Raises
    ------
    BadFrameError
        Not a RAW file LibRaw can open, or a sensor that is not 2×2 Bayer.
    """

    sequential = False
    sliceable = False
    thread_safe = False  # LibRaw handles are not shared between threads

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shape: tuple[int, int] | None = None,
        bayer: str | None = None,
        meta: dict[str, Any] | None = None,
    ):
        import rawpy

        self.path = str(path)
        self.problems: list[str] = []
        if not os.path.exists(self.path):
            raise BadFrameError(self.path, "file does not exist")
        if shape is not None and bayer is not None and meta is not None:
            # Facts from an earlier opening (FrameSet reopening the file): skip the unpack.
            self._shape, self._bayer, self._meta = tuple(shape), bayer, dict(meta)
            return
        raw = rawpy.RawPy()
        try:
            raw.open_file(self.path)
            raw.unpack()  # rawpy's raw_pattern is None until the data is unpacked
            sizes = raw.sizes
            self._shape = (int(sizes.height), int(sizes.width))
            self._bayer = pattern_from_rawpy(raw.raw_pattern, raw.color_desc)
            self._meta = raw_meta(raw)
        except ValueError as e:
            raise BadFrameError(self.path, f"unsupported RAW sensor: {e}") from e
        except Exception as e:  # LibRawFileUnsupportedError, LibRawIOError, ...
            raise BadFrameError(self.path, f"not a RAW file LibRaw can read ({type(e).__name__}: {e})") from e
        finally:
            raw.close()

    def __len__(self) -> int:
        return 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    @property
    def bayer(self) -> str | None:
        return self._bayer

    def name(self, i: int) -> str:
        self._check(i)
        return self.path

    def meta(self, i: int) -> dict[str, Any]:
        self._check(i)
        return dict(self._meta)

    def read(self, i: int) -> np.ndarray:
        import rawpy

        self._check(i)
        try:
            with rawpy.imread(self.path) as raw:
                plane = np.array(raw.raw_image_visible, dtype=np.uint16)
        except Exception as e:
            raise BadFrameError(self.path, f"cannot decode RAW data ({type(e).__name__}: {e})") from e
        if plane.shape != self._shape:
            raise BadFrameError(self.path, f"RAW plane is {plane.shape}, its header said {self._shape}")
        return plane


