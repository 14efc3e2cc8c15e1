"""PNG, JPEG and BMP frames (OpenCV ``imdecode`` with ``IMREAD_UNCHANGED``).

One file is one frame. Colour comes back in RGB order (OpenCV decodes BGR); 16-bit PNG
stays 16-bit; an alpha channel is dropped; grey + alpha becomes mono. These formats are
compressed, so ``sliceable`` is False: every read decodes the whole picture.

Opening reads only the header (PNG ``IHDR``, JPEG ``SOFn``, BMP ``BITMAPINFOHEADER``) so
that listing a folder of thousands of JPEGs does not decode them; a picture whose decoded
geometry disagrees with its header is reported as a bad frame when read.
"""
from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from ..errors import BadFrameError
from .base import SourceBase

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_header(head: bytes) -> tuple[tuple[int, ...], np.dtype]:
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise ValueError("PNG has no IHDR chunk")
    w, h = struct.unpack(">II", head[16:24])
    depth, colour = head[24], head[25]
    dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    # colour type: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
    mono = colour in (0, 4)
    if colour == 3:
        dtype = np.dtype(np.uint8)
    return ((h, w) if mono else (h, w, 3)), dtype


def _jpeg_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise ValueError("not a JPEG (no SOI marker)")
        while True:
            b = f.read(1)
            if not b:
                raise ValueError("JPEG ended before its frame header")
            if b != b"\xff":
                continue
            marker = f.read(1)
            while marker == b"\xff":
                marker = f.read(1)
            if not marker:
                raise ValueError("JPEG ended before its frame header")
            m = marker[0]
            if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
                continue  # markers without a length
            seg = f.read(2)
            if len(seg) < 2:
                raise ValueError("JPEG ended inside a segment")
            length = struct.unpack(">H", seg)[0]
            if m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                body = f.read(6)
                if len(body) < 6:
                    raise ValueError("JPEG frame header is truncated")
                precision, h, w, comps = struct.unpack(">BHHB", body)
                dtype = np.dtype(np.uint16 if precision > 8 else np.uint8)
                return ((h, w) if comps == 1 else (h, w, 3)), dtype
            f.seek(length - 2, os.SEEK_CUR)


def _bmp_header(head: bytes) -> tuple[tuple[int, ...], np.dtype]:
    if len(head) < 30 or head[:2] != b"BM":
        raise ValueError("not a BMP (no 'BM' signature)")
    w, h = struct.unpack("<ii", head[18:26])
    bpp = struct.unpack("<H", head[28:30])[0]
    # OpenCV decodes 8-bit palettes with a grey palette as mono, others as colour; the
    # palette is not worth parsing here, the decode settles it (see read()).
    shape = (abs(h), w) if bpp in (1, 8) else (abs(h), w, 3)
    return shape, np.dtype(np.uint8)


class ImageSource(SourceBase):
    """One PNG/JPEG/BMP picture.

    Raises
    ------
    BadFrameError
        The header cannot be parsed (not the format its name says, truncated).
    """

    sequential = False
    sliceable = False
    thread_safe = True
    bayer = None

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        self.problems: list[str] = []
        try:
            with open(self.path, "rb") as f:
                head = f.read(64)
        except FileNotFoundError as e:
            raise BadFrameError(self.path, "file does not exist") from e
        except OSError as e:
            raise BadFrameError(self.path, f"cannot read file ({e})") from e
        try:
            if head.startswith(PNG_MAGIC):
                shape, dtype = _png_header(head)
            elif head.startswith(b"\xff\xd8"):
                shape, dtype = _jpeg_header(self.path)
            elif head.startswith(b"BM"):
                shape, dtype = self._decode_shape()
            else:
                raise ValueError(f"unknown picture format (first bytes {head[:8]!r})")
        except BadFrameError:
            raise
        except Exception as e:
            raise BadFrameError(self.path, f"not a readable PNG/JPEG/BMP picture ({e})") from e
        if shape[0] <= 0 or shape[1] <= 0:
            raise BadFrameError(self.path, f"picture header gives an empty size {shape[1]}x{shape[0]}")
        self._shape = shape
        self._dtype = dtype

    def _decode_shape(self) -> tuple[tuple[int, ...], np.dtype]:
        # BMP: whether an 8-bit palette decodes to mono or colour depends on the palette,
        # and BMPs are rare and small, so decode once to know.
        a = self._decode()
        return a.shape, a.dtype

    def _decode(self, mono: bool | None = None) -> np.ndarray:
        """Decode to (H, W) or (H, W, 3) RGB; ``mono`` True takes the grey of a picture
        OpenCV expands to colour (PNG grey + alpha decodes as BGRA)."""
        import cv2

        try:
            buf = np.fromfile(self.path, dtype=np.uint8)  # handles non-ASCII paths
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        except FileNotFoundError as e:
            raise BadFrameError(self.path, "file does not exist") from e
        except Exception as e:
            raise BadFrameError(self.path, f"cannot decode picture ({e})") from e
        if img is None:
            raise BadFrameError(self.path, "cannot decode picture (corrupt or truncated)")
        if img.ndim == 3:
            ch = img.shape[2]
            if ch <= 2 or mono:  # grey (+ alpha): every colour plane is the grey
                img = img[..., 0]
            else:  # BGR or BGRA
                img = img[..., 2::-1]
        return np.ascontiguousarray(img)

    # -- FrameSource --------------------------------------------------------------------
    def __len__(self) -> int:
        return 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def name(self, i: int) -> str:
        self._check(i)
        return self.path

    def meta(self, i: int) -> dict[str, Any]:
        self._check(i)
        return {}

    def read(self, i: int) -> np.ndarray:
        self._check(i)
        img = self._decode(mono=len(self._shape) == 2)
        if img.shape != self._shape or img.dtype != self._dtype:
            raise BadFrameError(
                self.path,
                f"decoded picture is {img.shape} {img.dtype}, its header said "
                f"{self._shape} {self._dtype}",
            )
        return img


