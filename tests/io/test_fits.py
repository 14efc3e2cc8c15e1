"""FITS reader: dtypes and scaling, cubes, RGB, Bayer keywords, bad files, real frames."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from skystack.errors import BadFrameError
from skystack.io.fits import FitsSource, format_bytes




def write(path, data, **cards):
    hdu = fits.PrimaryHDU(data)
    for k, v in cards.items():
        hdu.header[k.replace("_", "-") if k in ("CCD_TEMP", "DATE_OBS") else k] = v
    hdu.writeto(path, overwrite=True)
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_dtypes_round_trip_exactly(tmp_path, rng, dtype):
    if np.dtype(dtype).kind == "f":
        data = rng.normal(100, 30, (17, 23)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (17, 23), endpoint=True).astype(dtype)
    p = write(tmp_path / "a.fits", data)
    src = FitsSource(p)
    assert len(src) == 1 and src.shape == (17, 23) and src.dtype == np.dtype(dtype)
    assert src.sliceable and not src.sequential
    out = src.read(0)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert np.array_equal(out, data)
    assert np.array_equal(src.read_rows(0, 5, 11), data[5:11])
    src.close()


def test_bzero_bscale_applied(tmp_path):
    raw = np.arange(-50, 70, dtype=np.int16).reshape(10, 12)
    # astropy would rescale on write; store the raw integers with the cards beside them.
    hdu = fits.PrimaryHDU(raw, do_not_scale_image_data=True)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    hdu.writeto(tmp_path / "s.fits")
    src = FitsSource(tmp_path / "s.fits")
    assert src.dtype == np.float32
    np.testing.assert_array_equal(src.read(0), raw.astype(np.float32) * 0.5 + 100.0)
    np.testing.assert_array_equal(src.read_rows(0, 3, 4), raw[3:4].astype(np.float32) * 0.5 + 100.0)


def test_uint16_bzero_32768_is_unsigned(tmp_path):
    data = np.array([[0, 1, 32767], [32768, 60000, 65535]], dtype=np.uint16)
    write(tmp_path / "u.fits", data)
    h = fits.getheader(tmp_path / "u.fits")
    assert h["BITPIX"] == 16 and h["BZERO"] == 32768
    out = FitsSource(tmp_path / "u.fits").read(0)
    assert out.dtype == np.uint16 and np.array_equal(out, data)


def test_cube_is_a_stack_of_frames(tmp_path, rng):
    cube = rng.integers(0, 4000, (5, 9, 11)).astype(np.uint16)
    write(tmp_path / "c.fits", cube)
    src = FitsSource(tmp_path / "c.fits")
    assert len(src) == 5 and src.shape == (9, 11)
    for k in range(5):
        assert np.array_equal(src.read(k), cube[k])
        assert src.name(k).endswith(f"c.fits#{k}")
    assert np.array_equal(src.read_rows(3, 2, 7), cube[3, 2:7])
    with pytest.raises(IndexError):
        src.read(5)


def test_naxis3_3_is_rgb_unless_ctype3_says_otherwise(tmp_path, rng):
    planes = rng.integers(0, 255, (3, 6, 8)).astype(np.uint8)
    write(tmp_path / "rgb.fits", planes)
    src = FitsSource(tmp_path / "rgb.fits")
    assert len(src) == 1 and src.shape == (6, 8, 3)
    out = src.read(0)
    assert np.array_equal(out, np.moveaxis(planes, 0, -1))
    assert np.array_equal(src.read_rows(0, 2, 5), np.moveaxis(planes, 0, -1)[2:5])
    write(tmp_path / "rgb2.fits", planes, CTYPE3="RGB")
    assert FitsSource(tmp_path / "rgb2.fits").shape == (6, 8, 3)
    write(tmp_path / "time.fits", planes, CTYPE3="TIME")
    src = FitsSource(tmp_path / "time.fits")
    assert len(src) == 3 and src.shape == (6, 8)


@pytest.mark.parametrize("cards,height,expect", [
    ({"BAYERPAT": "RGGB"}, 10, "RGGB"),
    ({"BAYERPAT": "rggb", "ROWORDER": "TOP-DOWN"}, 10, "RGGB"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP"}, 10, "GBRG"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP"}, 11, "RGGB"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1}, 10, "GRBG"),
    ({"BAYERPAT": "RGGB", "YBAYROFF": 1}, 10, "GBRG"),
    ({"BAYERPAT": "GRBG", "XBAYROFF": 1, "YBAYROFF": 1}, 10, "GBRG"),
    ({}, 10, None),
])
def test_bayer_keywords(tmp_path, cards, height, expect):
    write(tmp_path / "b.fits", np.zeros((height, 8), np.uint16), **cards)
    assert FitsSource(tmp_path / "b.fits").bayer == expect


def test_unsupported_bayerpat_is_a_problem_not_an_error(tmp_path):
    write(tmp_path / "x.fits", np.zeros((6, 6), np.uint16), BAYERPAT="GGRGGBGGBGGRBRGRBGGGBGGRGGRGGBRBGBRG")
    src = FitsSource(tmp_path / "x.fits")
    assert src.bayer is None and "not supported" in src.problems[0]


def test_meta(tmp_path):
    data = np.zeros((4, 4), np.float32)
    data[1, 1] = np.nan
    data[2, 2] = np.inf
    write(tmp_path / "m.fits", data, EXPOSURE=30.0, CCD_TEMP=-10.5, DATE_OBS="2024-01-02T03:04:05",
          XBINNING=2, YBINNING=2, GAIN=120, IMAGETYP="Light Frame", NANCARD=1.5)
    src = FitsSource(tmp_path / "m.fits")
    m = src.meta(0)
    assert m["exposure_s"] == 30.0 and m["temperature_c"] == -10.5
    assert m["date"] == "2024-01-02T03:04:05" and m["binning"] == (2, 2) and m["gain"] == 120.0
    assert m["image_type"] == "Light Frame" and m["header"]["NANCARD"] == 1.5
    assert "BITPIX" not in m["header"] and "NAXIS1" not in m["header"]
    out = src.read(0)  # NaN and inf come back as they are
    assert np.isnan(out[1, 1]) and np.isinf(out[2, 2])
    write(tmp_path / "e.fits", data, EXPTIME=5.0, EXPOSURE=99.0, **{"SET-TEMP": -20.0})
    m = FitsSource(tmp_path / "e.fits").meta(0)
    assert m["exposure_s"] == 5.0 and m["temperature_c"] == -20.0


def test_image_in_extension_and_compressed(tmp_path, rng):
    data = rng.integers(0, 65535, (40, 30)).astype(np.uint16)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)]).writeto(tmp_path / "ext.fits")
    src = FitsSource(tmp_path / "ext.fits")
    assert src.sliceable and np.array_equal(src.read(0), data)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]).writeto(
        tmp_path / "comp.fits")
    src = FitsSource(tmp_path / "comp.fits")
    assert not src.sliceable and src.dtype == np.uint16 and src.shape == (40, 30)
    assert np.array_equal(src.read(0), data)
    assert np.array_equal(src.read_rows(0, 7, 19), data[7:19])
    src.close()


def test_truncated_fits_names_the_sizes(tmp_path):
    data = np.zeros((40, 30), np.uint16)  # 2 400 bytes of data
    write(tmp_path / "t.fits", data)
    b = (tmp_path / "t.fits").read_bytes()
    (tmp_path / "t.fits").write_bytes(b[: 2880 + 1000])
    with pytest.raises(BadFrameError) as ei:
        FitsSource(tmp_path / "t.fits")
    assert ei.value.reason == "truncated FITS (expected 2 400 bytes of data, found 1 000)"
    assert ei.value.path.endswith("t.fits")
    # Data complete but the last 2880-byte block not padded: many writers do that; fine.
    (tmp_path / "t.fits").write_bytes(b[: 2880 + 2400])
    assert np.array_equal(FitsSource(tmp_path / "t.fits").read(0), data)


@pytest.mark.parametrize("content", [b"", b"hello world" * 50, b"SIMPLE  =" + b" " * 30])
def test_not_fits_is_a_bad_frame(tmp_path, content):
    (tmp_path / "n.fits").write_bytes(content)
    with pytest.raises(BadFrameError) as ei:
        FitsSource(tmp_path / "n.fits")
    assert "FITS" in ei.value.reason


def test_no_image_hdu(tmp_path):
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "empty.fits")
    with pytest.raises(BadFrameError, match="holds no image"):
        FitsSource(tmp_path / "empty.fits")


def test_format_bytes():
    assert format_bytes(2900160) == "2 900 160" and format_bytes(12) == "12"


def test_real_seestar_header_and_pixels(real_path):
    path = sorted(real_path("seestar-m94/session1").glob("*.fit"))[0]
    src = FitsSource(path)
    assert src.shape == (1920, 1080) and src.dtype == np.uint16 and src.bayer == "GRBG"
    m = src.meta(0)
    assert m["exposure_s"] == 10.0 and 20 < m["temperature_c"] < 30 and m["gain"] == 80
    assert m["date"].startswith("2025-03-27T01:")
    img = src.read(0)
    assert np.array_equal(img, fits.getdata(path))
    assert 700 < np.median(img) < 1100 and img.max() > 15000
    assert np.array_equal(src.read_rows(0, 1000, 1010), img[1000:1010])


def test_real_m13_and_m51(real_path):
    m13 = FitsSource(real_path("m13-ssdsi/M13_blue_0001.fits"))
    assert m13.shape == (1040, 1392) and m13.dtype == np.uint16 and m13.bayer is None
    a = m13.read(0)
    assert 500 < np.median(a) < 520 and 600 < a.max() < 2000
    assert m13.meta(0)["exposure_s"] == 5.0
    m51 = FitsSource(real_path("iraf-m51/m51_B_600s_devpix.fits"))
    b = m51.read(0)
    assert b.dtype == np.int16 and b.dtype.isnative and b.shape == (512, 512)
    assert b.min() == -1 and b.max() == 19936 and abs(b.mean() - 108.3) < 0.5
    assert m51.meta(0)["exposure_s"] == 600.0
