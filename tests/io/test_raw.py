"""Camera RAW reader: LibRaw pattern conversion (no real RAW file is available here)."""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest

from skystack.io.bayer import cfa_masks
from skystack.errors import BadFrameError
from skystack.io.raw import RawSource, pattern_from_rawpy, raw_meta


@pytest.mark.parametrize("raw_pattern,desc,expect", [
    ([[0, 1], [3, 2]], b"RGBG", "RGGB"),
    ([[2, 3], [1, 0]], b"RGBG", "BGGR"),
    ([[1, 0], [2, 3]], b"RGBG", "GRBG"),
    ([[3, 2], [0, 1]], b"RGBG", "GBRG"),
    ([[0, 1], [1, 2]], b"RGBG", "RGGB"),   # both greens with index 1
    ([[0, 1], [1, 2]], "RGBG", "RGGB"),    # a str description
])
def test_pattern_conversion(raw_pattern, desc, expect):
    assert pattern_from_rawpy(np.array(raw_pattern, dtype=np.uint8), desc) == expect


def test_pattern_conversion_agrees_with_the_colour_of_every_site():
    # LibRaw describes each site by a colour index; our string must put the same colour
    # at every site of the visible plane.
    desc = b"RGBG"
    for raw_pattern in ([[0, 1], [3, 2]], [[1, 0], [2, 3]], [[3, 2], [0, 1]], [[2, 3], [1, 0]]):
        pat = np.array(raw_pattern)
        p = pattern_from_rawpy(pat, desc)
        colours = np.tile(pat, (3, 4))
        masks = cfa_masks(p, colours.shape)
        letters = np.array(list(desc.decode()))[colours]
        for c in "RGB":
            assert np.array_equal(masks[c], letters == c)


def test_periodic_4x4_pattern_reduces_to_2x2():
    pat = np.tile(np.array([[1, 0], [2, 3]]), (2, 2))
    assert pattern_from_rawpy(pat, b"RGBG") == "GRBG"


@pytest.mark.parametrize("raw_pattern,desc,match", [
    (None, b"RGBG", "not a Bayer sensor"),
    (np.arange(36).reshape(6, 6) % 3, b"RGBG", "X-Trans"),
    ([[0, 1], [3, 2]], b"CMYG", "unsupported CFA colours"),
    ([[0, 5], [3, 2]], b"RGBG", "not described"),
])
def test_unsupported_sensors(raw_pattern, desc, match):
    with pytest.raises(ValueError, match=match):
        pattern_from_rawpy(None if raw_pattern is None else np.array(raw_pattern), desc)


def test_raw_meta_from_a_fake_rawpy_object():
    fake = SimpleNamespace(
        black_level_per_channel=[512, 512, 512, 512], white_level=16383,
        camera_whitebalance=[2.1, 1.0, 1.6, 1.0],
        other=SimpleNamespace(shutter_speed=120.0, iso_speed=800.0,
                              timestamp=dt.datetime(2024, 8, 1, 23, 0, 0)),
    )
    m = raw_meta(fake)
    assert m == {"black_level": [512, 512, 512, 512], "white_level": 16383,
                 "camera_whitebalance": [2.1, 1.0, 1.6, 1.0], "exposure_s": 120.0,
                 "iso": 800.0, "date": "2024-08-01T23:00:00"}
    assert raw_meta(SimpleNamespace()) == {}  # nothing known: nothing claimed


def test_a_non_raw_file_named_cr2_is_a_bad_frame(tmp_path):
    p = tmp_path / "IMG_0001.CR2"
    p.write_bytes(b"not a raw file at all" * 40)
    with pytest.raises(BadFrameError) as ei:
        RawSource(p)
    assert "not a RAW file LibRaw can read" in ei.value.reason
    with pytest.raises(BadFrameError, match="does not exist"):
        RawSource(tmp_path / "missing.nef")


def test_reopening_with_known_facts_skips_libraw_until_the_read(tmp_path):
    p = tmp_path / "IMG_0002.NEF"
    p.write_bytes(b"still not a raw file" * 40)
    src = RawSource(p, shape=(4, 6), bayer="RGGB", meta={"exposure_s": 30.0})
    assert src.shape == (4, 6) and src.bayer == "RGGB" and src.meta(0) == {"exposure_s": 30.0}
    assert not src.sliceable and src.dtype == np.uint16
    with pytest.raises(BadFrameError, match="cannot decode RAW data"):
        src.read(0)
