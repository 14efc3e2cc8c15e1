"""TIFF reader: sample types, mono/RGB, planar, multi-page, compression, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from skystack.errors import BadFrameError
from skystack.io.tiff import TiffSource


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_mono_types_memory_mapped(tmp_path, rng, dtype):
    data = (rng.uniform(0, 200, (13, 17))).astype(dtype)
    tifffile.imwrite(tmp_path / "m.tif", data)
    src = TiffSource(tmp_path / "m.tif")
    assert len(src) == 1 and src.shape == (13, 17) and src.dtype == np.dtype(dtype)
    assert src.sliceable and not src.sequential and src.bayer is None
    assert np.array_equal(src.read(0), data)
    assert np.array_equal(src.read_rows(0, 4, 9), data[4:9])
    src.close()


def test_big_endian_tiff(tmp_path, rng):
    data = rng.integers(0, 65535, (8, 9)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">")
    out = TiffSource(tmp_path / "be.tif").read(0)
    assert out.dtype.isnative and np.array_equal(out, data)


def test_rgb_contiguous_and_planar(tmp_path, rng):
    rgb = rng.integers(0, 65535, (10, 12, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("c.tif", "p.tif"):
        src = TiffSource(tmp_path / name)
        assert src.shape == (10, 12, 3) and src.sliceable
        assert np.array_equal(src.read(0), rgb)
        assert np.array_equal(src.read_rows(0, 3, 8), rgb[3:8])


def test_rgba_drops_alpha(tmp_path, rng):
    rgba = rng.integers(0, 255, (6, 7, 4)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    src = TiffSource(tmp_path / "a.tif")
    assert src.shape == (6, 7, 3) and np.array_equal(src.read(0), rgba[..., :3])


def test_multipage_is_multiframe(tmp_path, rng):
    stack = rng.integers(0, 255, (4, 5, 6)).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "s.tif") as w:
        for page in stack:
            w.write(page)
    src = TiffSource(tmp_path / "s.tif")
    assert len(src) == 4
    for k in range(4):
        assert np.array_equal(src.read(k), stack[k])
    assert src.name(2).endswith("s.tif#2")


def test_compressed_is_not_sliceable(tmp_path, rng):
    data = rng.integers(0, 4000, (20, 16)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", data, compression="zlib")
    src = TiffSource(tmp_path / "z.tif")
    assert not src.sliceable
    assert np.array_equal(src.read(0), data)
    assert np.array_equal(src.read_rows(0, 11, 20), data[11:20])


def test_page_of_another_size_is_a_bad_frame(tmp_path):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as w:
        w.write(np.zeros((4, 4), np.uint8))
        w.write(np.zeros((6, 4), np.uint8))
    src = TiffSource(tmp_path / "mixed.tif")
    assert len(src) == 2 and src.read(0).shape == (4, 4)
    with pytest.raises(BadFrameError, match="page 1 is"):
        src.read(1)


def test_not_a_tiff(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"this is text, not a TIFF")
    with pytest.raises(BadFrameError, match="not a readable TIFF"):
        TiffSource(tmp_path / "x.tif")
    with pytest.raises(BadFrameError, match="does not exist"):
        TiffSource(tmp_path / "missing.tif")
