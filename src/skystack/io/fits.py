"""FITS frames (astropy): 2-D images, 3-D cubes of frames, RGB images, compressed tiles.

The pixel array is memory-mapped with scaling switched off
(``do_not_scale_image_data=True``) and BZERO/BSCALE are applied to the rows actually
read, so :meth:`FitsSource.read_rows` costs only those rows even for a 2 GB cube.
Integer data with the unsigned-offset convention (BITPIX 16 + BZERO 32768) comes back as
``uint16``; other non-trivial scalings come back as float.

Bayer pattern: ``BAYERPAT`` is read the way Siril reads it (its default preference,
"from header, else top-down"): the pattern describes the first stored row unless
``ROWORDER = 'BOTTOM-UP'``, in which case the pattern is flipped for the image height
(:func:`~skystack.io.bayer.pattern_flip_rows`); then ``XBAYROFF``/``YBAYROFF``
shift it (:func:`~skystack.io.bayer.pattern_shift`). :attr:`FitsSource.bayer` is
the pattern of the array exactly as returned.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any

import numpy as np

from .bayer import normalize_pattern, pattern_flip_rows, pattern_shift
from ..errors import BadFrameError
from .base import SourceBase
from .pages import release

FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fz",
                   ".fits.gz", ".fit.gz", ".fts.gz")

# Header cards that describe the data layout, not the observation: left out of meta.
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "BZERO", "BSCALE", "BLANK", "PCOUNT",
    "GCOUNT", "XTENSION", "END", "COMMENT", "HISTORY", "", "CHECKSUM", "DATASUM",
    "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZCMPTYPE", "ZTILE1", "ZTILE2", "ZTILE3", "ZQUANTIZ",
    "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZTENSION", "ZPCOUNT", "ZGCOUNT", "ZBLANK",
    "ZNAME1", "ZVAL1", "ZNAME2", "ZVAL2", "ZHECKSUM", "ZDATASUM", "TFIELDS",
}

# CTYPE3 values that declare the third axis a colour axis (any other CTYPE3 names a
# frame axis: time, wavelength, ...).
_COLOUR_CTYPES = {"RGB", "COLOR", "COLOUR", "BGR"}


def format_bytes(n: int) -> str:
    """``2900160 -> '2 900 160'`` (the thousands separator our messages use)."""
    return f"{int(n):,}".replace(",", " ")


def _scaled_dtype(bitpix: int, bzero: float, bscale: float) -> np.dtype:
    """The dtype of the physical values (what astropy would return when scaling)."""
    if bitpix < 0:
        return np.dtype(np.float32 if bitpix == -32 else np.float64)
    if bscale == 1:
        unsigned = {8: (-128, np.int8), 16: (32768, np.uint16),
                    32: (2**31, np.uint32), 64: (2**63, np.uint64)}
        plain = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64}
        if bzero == 0:
            return np.dtype(plain[bitpix])
        if bzero == unsigned[bitpix][0]:
            return np.dtype(unsigned[bitpix][1])
    return np.dtype(np.float32 if bitpix <= 16 else np.float64)


class FitsSource(SourceBase):
    """One FITS file: a single image, an RGB image, or a cube of frames.

    Parameters
    ----------
    path : str or path-like
        The file.

    Raises
    ------
    BadFrameError
        Not FITS, no image HDU, truncated data, an unsupported axis layout.
    """

    sequential = False

    def __init__(self, path: str | os.PathLike[str]):
        from astropy.io import fits

        self.path = str(path)
        self.problems: list[str] = []
        try:
            with warnings.catch_warnings():
                # We check truncation ourselves and say it in the error, not as a log line.
                warnings.simplefilter("ignore")
                self._hdul = fits.open(
                    self.path, memmap=True, do_not_scale_image_data=True,
                    lazy_load_hdus=True, ignore_missing_end=True,
                )
                hdu = self._find_image_hdu()
        except BadFrameError:
            self._close_quietly()
            raise
        except FileNotFoundError as e:
            raise BadFrameError(self.path, "file does not exist") from e
        except Exception as e:  # astropy raises OSError, ValueError, TypeError, ...
            self._close_quietly()
            raise BadFrameError(self.path, f"not a readable FITS file ({e})") from e
        self._hdu = hdu
        self._compressed = isinstance(hdu, fits.CompImageHDU)
        self._gzipped = self.path.lower().endswith((".gz", ".bz2", ".zip"))
        h = hdu.header
        self.header = h
        try:
            self._setup_geometry(h)
        except BadFrameError:
            self._close_quietly()
            raise
        if not self._compressed:
            self._check_truncation(hdu)
        self._raw = None  # the memmapped, unscaled array, created on first read
        self._raw_lock = threading.Lock()
        self._compressed_hdul = None
        self._meta = _header_meta(h)
        self._bayer = self._read_bayer(h)

    # -- opening ------------------------------------------------------------------------
    def _find_image_hdu(self):
        from astropy.io import fits

        for hdu in self._hdul:
            if isinstance(hdu, fits.CompImageHDU):
                return hdu
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) >= 2:
                return hdu
        raise BadFrameError(self.path, "FITS file holds no image (every HDU is empty or a table)")

    def _setup_geometry(self, h) -> None:
        naxis = int(h.get("NAXIS", 0))
        dims = [int(h.get(f"NAXIS{k}", 0)) for k in range(1, naxis + 1)]
        # Trailing degenerate axes (NAXIS4 = 1 ...) carry no data.
        while len(dims) > 3 and dims[-1] == 1:
            dims.pop()
        if len(dims) < 2 or len(dims) > 3 or min(dims) <= 0:
            raise BadFrameError(self.path, f"unsupported FITS image axes {dims} (need 2 or 3 axes)")
        self._naxes = len(dims)
        self._w, self._h = dims[0], dims[1]
        depth = dims[2] if len(dims) == 3 else 1
        ctype3 = str(h.get("CTYPE3", "")).strip().upper()
        # NAXIS3 = 3 is an RGB image, as Siril, PixInsight and DSS write colour FITS,
        # unless CTYPE3 names a non-colour axis; any other depth is a stack of frames.
        self._rgb = len(dims) == 3 and depth == 3 and (not ctype3 or ctype3 in _COLOUR_CTYPES)
        self._n = 1 if (self._rgb or len(dims) == 2) else depth
        self._bitpix = int(h["BITPIX"])
        if self._bitpix not in (8, 16, 32, 64, -32, -64):  # astropy failed with a KeyError on read
            raise BadFrameError(self.path, f"BITPIX = {self._bitpix} is not a FITS pixel type "
                                           "(8, 16, 32, 64, -32 or -64)")
        self._bzero = float(h.get("BZERO", 0.0))
        self._bscale = float(h.get("BSCALE", 1.0))
        blank = h.get("BLANK")
        self._blank = int(blank) if (blank is not None and self._bitpix > 0) else None
        self._dtype = _scaled_dtype(self._bitpix, self._bzero, self._bscale)
        self._dims = dims

    def _check_truncation(self, hdu) -> None:
        expected = abs(self._bitpix) // 8 * math.prod(self._dims)
        try:
            start = int(hdu.fileinfo()["datLoc"])
        except Exception:  # fileinfo is unavailable for in-memory HDUs only
            return
        if self._gzipped:
            return  # sizes on disk are compressed sizes; decompression reports truncation
        found = max(0, os.path.getsize(self.path) - start)
        if found < expected:
            self._close_quietly()
            raise BadFrameError(
                self.path,
                f"truncated FITS (expected {format_bytes(expected)} bytes of data, "
                f"found {format_bytes(found)})",
            )

    def _read_bayer(self, h) -> str | None:
        pat = h.get("BAYERPAT")
        if pat is None or self._rgb:
            return None
        try:
            p = normalize_pattern(str(pat))
        except ValueError as e:
            self.problems.append(f"BAYERPAT {str(pat).strip()!r} is not supported ({e}); read as mono")
            return None
        if p is None:
            return None
        if str(h.get("ROWORDER", "")).strip().upper() == "BOTTOM-UP":
            p = pattern_flip_rows(p, self._h)
        xoff, yoff = h.get("XBAYROFF", 0), h.get("YBAYROFF", 0)
        try:
            p = pattern_shift(p, int(xoff or 0), int(yoff or 0))
        except (TypeError, ValueError):
            self.problems.append(f"ignored unreadable XBAYROFF/YBAYROFF ({xoff!r}, {yoff!r})")
        return p

    def _close_quietly(self) -> None:
        try:
            self._hdul.close()
        except Exception:
            pass

    # -- FrameSource --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._h, self._w, 3) if self._rgb else (self._h, self._w)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def bayer(self) -> str | None:
        return self._bayer

    @property
    def sliceable(self) -> bool:
        return not (self._compressed or self._gzipped)

    @property
    def thread_safe(self) -> bool:
        """Reads of a memory map are plain slicing; decompression keeps state."""
        return self.sliceable

    def name(self, i: int) -> str:
        self._check(i)
        return self.path if self._n == 1 else f"{self.path}#{i}"

    def meta(self, i: int) -> dict[str, Any]:
        self._check(i)
        return dict(self._meta)

    def read(self, i: int) -> np.ndarray:
        return self.read_rows(i, 0, self._h)

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        return self.read_block(i, y0, y1, 0, self._w)

    def read_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self._check(i)
        y0, y1 = max(0, int(y0)), min(self._h, int(y1))
        x0, x1 = max(0, int(x0)), min(self._w, int(x1))
        if y1 <= y0 or x1 <= x0:
            return np.empty((max(0, y1 - y0), max(0, x1 - x0)) + self.shape[2:], dtype=self._dtype)
        if self._compressed:
            return self._read_compressed(i, y0, y1, x0, x1)
        try:
            raw = self._raw_array()  # a file cut short after it was opened fails here
            if self._rgb:
                block = np.moveaxis(raw[:, y0:y1, x0:x1], 0, -1)
            elif self._naxes == 3:
                block = raw[i, y0:y1, x0:x1]
            else:
                block = raw[y0:y1, x0:x1]
            out = self._scale(block)
            release(raw)
            return out
        except (OSError, ValueError, TypeError) as e:
            raise BadFrameError(self.path, f"cannot read FITS data ({e})") from e

    def read_block_into(self, i: int, y0: int, y1: int, x0: int, x1: int, out: np.ndarray) -> bool:
        """:meth:`read_block` converted to float32 straight into ``out`` (``(y1 - y0,
        x1 - x0)``, float32): one pass from the mapped file, where :meth:`read_block` then
        the float conversion make two copies. For the pixel types whose float32 values are
        exact (8- and 16-bit integers, unsigned 16-bit by the BZERO convention, float32);
        False, leaving ``out`` alone, for any other (the caller reads the usual way)."""
        self._check(i)
        if self._compressed or self._rgb or not self._exact_in_float32():
            return False
        try:
            raw = self._raw_array()  # a file cut short after it was opened fails here
            block = raw[i, y0:y1, x0:x1] if self._naxes == 3 else raw[y0:y1, x0:x1]
            if block.shape != out.shape:
                raise BadFrameError(self.path, f"block is {block.shape}, the file's header said {out.shape}")
            if self._bitpix == 16 and self._dtype == np.uint16:
                # unsigned by the BZERO convention: the stored int16 plus 32768, exact in float32
                np.add(block, np.float32(32768.0), out=out, dtype=np.float32)
            else:
                np.copyto(out, block, casting="unsafe")
            release(raw)
            return True
        except (OSError, ValueError, TypeError) as e:
            raise BadFrameError(self.path, f"cannot read FITS data ({e})") from e

    def _exact_in_float32(self) -> bool:
        """Whether :meth:`read_block_into` may convert this file's pixels in one pass."""
        if self._blank is not None or self._bscale != 1:
            return False
        if self._bitpix == 16 and self._dtype == np.uint16:
            return self._bzero == 32768
        if self._bzero != 0:
            return False
        return self._bitpix in (8, 16, -32)

    def close(self) -> None:
        self._raw = None
        self._close_quietly()
        if self._compressed_hdul is not None:
            try:
                self._compressed_hdul.close()
            except Exception:
                pass
            self._compressed_hdul = None

    # -- internals ----------------------------------------------------------------------
    def _raw_array(self) -> np.ndarray:
        with self._raw_lock:  # astropy creates the map lazily, once
            if self._raw is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    data = self._hdu.data
                if data is None:
                    raise BadFrameError(self.path, "FITS image HDU has no data")
                self._raw = data.reshape(tuple(reversed(self._dims)))
            return self._raw

    def _scale(self, block: np.ndarray) -> np.ndarray:
        """Physical values of raw (big-endian, unscaled) pixels, in native byte order."""
        dt = self._dtype
        native = block.dtype.newbyteorder("=")
        if self._bitpix > 0 and dt.kind == "u" and native.kind == "i":
            # Unsigned-offset convention: adding 2**(bits-1) is flipping the sign bit.
            bits = native.itemsize * 8
            out = np.array(block, dtype=native).view(dt)  # always a copy, never the map
            out ^= dt.type(1 << (bits - 1))
            return out
        if self._bitpix == 8 and dt == np.int8:  # BZERO -128 on unsigned bytes
            return (np.asarray(block, dtype=np.int16) - 128).astype(np.int8)
        if self._bzero == 0 and self._bscale == 1:
            return np.array(block, dtype=native)  # a copy: the map may close after this
        out = np.array(block, dtype=dt)
        if self._blank is not None:
            out = np.where(np.asarray(block) == self._blank, np.nan, out).astype(dt)
        with np.errstate(invalid="ignore", over="ignore"):
            out = out * dt.type(self._bscale) + dt.type(self._bzero)
        return out.astype(dt, copy=False)

    def _read_compressed(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        # Tile-compressed images cannot be memory-mapped; astropy's ``section`` decodes
        # only the tiles that hold the requested rows and applies the scaling itself.
        from astropy.io import fits

        try:
            if self._compressed_hdul is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._compressed_hdul = fits.open(self.path, memmap=False)
            hdu = next(h for h in self._compressed_hdul if isinstance(h, fits.CompImageHDU))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self._rgb:
                    block = np.moveaxis(np.asarray(hdu.section[:, y0:y1, x0:x1]), 0, -1)
                elif self._naxes == 3:
                    block = np.asarray(hdu.section[i, y0:y1, x0:x1])
                else:
                    block = np.asarray(hdu.section[y0:y1, x0:x1])
        except BadFrameError:
            raise
        except Exception as e:
            raise BadFrameError(self.path, f"cannot decompress FITS data ({e})") from e
        return np.array(block, dtype=self._dtype)


def _finite_number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _header_meta(h) -> dict[str, Any]:
    """Cheap metadata from a header; absent or unparsable values are simply left out."""
    meta: dict[str, Any] = {}
    for key in ("EXPTIME", "EXPOSURE", "ITIME"):
        v = _finite_number(h.get(key))
        if v is not None:
            meta["exposure_s"] = v
            break
    for key in ("CCD-TEMP", "CCD_TEMP", "SET-TEMP"):
        v = _finite_number(h.get(key))
        if v is not None:
            meta["temperature_c"] = v
            break
    if h.get("DATE-OBS") is not None:
        meta["date"] = str(h.get("DATE-OBS")).strip()
    xb = _finite_number(h.get("XBINNING", h.get("CCDXBIN")))
    yb = _finite_number(h.get("YBINNING", h.get("CCDYBIN")))
    if xb is not None or yb is not None:
        meta["binning"] = (int(xb or yb or 1), int(yb or xb or 1))
    gain = _finite_number(h.get("GAIN"))
    if gain is not None:
        meta["gain"] = gain
    for key, name in (("IMAGETYP", "image_type"), ("FILTER", "filter"), ("OBJECT", "object"),
                      ("INSTRUME", "instrument"), ("ROWORDER", "row_order")):
        if h.get(key) is not None:
            meta[name] = str(h.get(key)).strip()
    cards: dict[str, Any] = {}
    for card in h.cards:
        key = card.keyword
        if key in _STRUCTURAL or key.startswith("NAXIS") or key in cards:
            continue
        v = card.value
        if isinstance(v, bool) or isinstance(v, (int, str)):
            cards[key] = v
        elif isinstance(v, float):
            cards[key] = v if math.isfinite(v) else str(v)
        else:  # Undefined, complex, ...
            cards[key] = str(v)
    meta["header"] = cards
    return meta
