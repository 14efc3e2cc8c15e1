"""PNG/JPEG/BMP reader: RGB order, 16-bit PNG, alpha, header-only opening, bad files."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from skystack.errors import BadFrameError
from skystack.io.image import ImageSource




def imwrite(path, rgb_or_mono):
    a = rgb_or_mono[..., ::-1] if rgb_or_mono.ndim == 3 else rgb_or_mono
    assert cv2.imwrite(str(path), np.ascontiguousarray(a))
    return path


def test_png_rgb_order_and_values(tmp_path, rng):
    rgb = rng.integers(0, 255, (9, 11, 3)).astype(np.uint8)
    rgb[0, 0] = (250, 20, 5)  # red
    src = ImageSource(imwrite(tmp_path / "c.png", rgb))
    assert src.shape == (9, 11, 3) and src.dtype == np.uint8 and not src.sliceable
    out = src.read(0)
    assert tuple(out[0, 0]) == (250, 20, 5)
    assert np.array_equal(out, rgb)
    assert np.array_equal(src.read_rows(0, 2, 6), rgb[2:6])


def test_png_16bit_mono_kept(tmp_path, rng):
    mono = rng.integers(0, 65535, (7, 5)).astype(np.uint16)
    src = ImageSource(imwrite(tmp_path / "m16.png", mono))
    assert src.shape == (7, 5) and src.dtype == np.uint16
    assert np.array_equal(src.read(0), mono)
    rgb16 = rng.integers(0, 65535, (4, 6, 3)).astype(np.uint16)
    src = ImageSource(imwrite(tmp_path / "c16.png", rgb16))
    assert src.shape == (4, 6, 3) and src.dtype == np.uint16 and np.array_equal(src.read(0), rgb16)


def _png(path, w, h, ctype, rows, palette=b""):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    data = b"".join(b"\0" + r for r in rows)
    extra = chunk(b"PLTE", palette) if palette else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
                     + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))
    return path


def test_grey_alpha_png_is_mono_and_palette_png_is_rgb(tmp_path):
    src = ImageSource(_png(tmp_path / "ga.png", 4, 3, 4, [bytes([10, 255, 20, 255, 30, 0, 40, 9])] * 3))
    assert src.shape == (3, 4)
    assert np.array_equal(src.read(0), np.tile(np.array([10, 20, 30, 40], np.uint8), (3, 1)))
    src = ImageSource(_png(tmp_path / "pal.png", 2, 2, 3, [bytes([0, 1])] * 2, palette=bytes([0, 0, 0, 255, 0, 0])))
    assert src.shape == (2, 2, 3)
    assert tuple(src.read(0)[0, 1]) == (255, 0, 0)


def test_jpeg_and_bmp(tmp_path):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 40, 40)
    rgb[:, 12:] = (30, 60, 220)
    src = ImageSource(imwrite(tmp_path / "c.jpg", rgb))
    assert src.shape == (16, 24, 3)
    out = src.read(0).astype(int)
    assert np.abs(out[4:12, 2:8] - (200, 40, 40)).max() < 12
    assert np.abs(out[4:12, 16:22] - (30, 60, 220)).max() < 12
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    src = ImageSource(imwrite(tmp_path / "g.jpeg", grey))
    assert src.shape == (6, 8) and np.abs(src.read(0).astype(int) - grey).max() <= 4
    src = ImageSource(imwrite(tmp_path / "c.bmp", rgb))
    assert src.shape == (16, 24, 3) and np.array_equal(src.read(0), rgb)
    src = ImageSource(imwrite(tmp_path / "g.bmp", grey))
    assert src.shape == (6, 8) and np.array_equal(src.read(0), grey)


def test_opening_reads_only_the_header(tmp_path, rng):
    rgb = rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)
    p = imwrite(tmp_path / "h.png", rgb)
    data = p.read_bytes()
    p.write_bytes(data[:60])  # header intact, image data cut
    src = ImageSource(p)  # opens: only IHDR was needed
    assert src.shape == (30, 40, 3)
    with pytest.raises(BadFrameError, match="cannot decode picture"):
        src.read(0)


@pytest.mark.parametrize("name", ["x.png", "x.jpg", "x.bmp"])
def test_not_a_picture(tmp_path, name):
    (tmp_path / name).write_bytes(b"plain text, no picture here" * 3)
    with pytest.raises(BadFrameError, match="not a readable PNG/JPEG/BMP"):
        ImageSource(tmp_path / name)


def test_real_hubble_jpeg(real_path):
    src = ImageSource(real_path("hubble-deep-field/hubble_deep_field.jpg"))
    assert src.shape == (872, 1000, 3) and src.dtype == np.uint8
    out = src.read(0)
    bgr = cv2.imread(str(real_path("hubble-deep-field/hubble_deep_field.jpg")))
    assert np.array_equal(out, bgr[..., ::-1])
    assert abs(out.mean() - 19.2) < 0.5
