"""Demosaicing: the OpenCV pattern mapping, pattern arithmetic, float paths, real data."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.io.bayer import (
    PATTERNS,
    cfa_masks,
    debayer,
    normalize_pattern,
    pattern_flip_rows,
    pattern_shift,
)




COLOURS = {"red": (1000.0, 0.0, 0.0), "green": (0.0, 1000.0, 0.0), "blue": (0.0, 0.0, 1000.0)}


def mosaic_of(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an (H, W, 3) image through a CFA of ``pattern`` (the sensor's view)."""
    masks = cfa_masks(pattern, rgb.shape[:2])
    out = np.zeros(rgb.shape[:2], dtype=rgb.dtype)
    for ch, c in enumerate("RGB"):
        out[masks[c]] = rgb[..., ch][masks[c]]
    return out


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", ["bilinear", "vng", "ea"])
def test_flat_colour_patch_comes_out_that_colour(pattern, dtype, method):
    # A flat patch of pure red (green, blue) photographed through the CFA must be
    # demosaiced to pure red: this pins OpenCV's shifted Bayer names to ours.
    for name, colour in COLOURS.items():
        scale = 0.2 if dtype == np.uint8 else 1.0
        rgb = np.empty((16, 20, 3), dtype=np.float64)
        rgb[...] = np.array(colour) * scale
        raw = mosaic_of(rgb.astype(dtype), pattern)
        out = debayer(raw, pattern, method)
        assert out.dtype == np.float32 and out.shape == (16, 20, 3)
        inner = out[3:-3, 3:-3].reshape(-1, 3)
        np.testing.assert_allclose(inner, np.broadcast_to(np.array(colour) * scale, inner.shape),
                                   atol=1e-3, err_msg=f"{name} patch, {pattern}, {method}")


def test_pattern_shift_matches_cropping():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, (12, 12, 3))
    for p in PATTERNS:
        masks = cfa_masks(p, (12, 12))
        for dx in range(3):
            for dy in range(3):
                shifted = pattern_shift(p, dx, dy)
                cropped = {c: m[dy:, dx:] for c, m in masks.items()}
                expect = cfa_masks(shifted, cropped["R"].shape)
                for c in "RGB":
                    assert np.array_equal(cropped[c], expect[c]), (p, dx, dy, c)
    assert pattern_shift("RGGB", 1, 0) == "GRBG"
    assert pattern_shift("RGGB", 0, 1) == "GBRG"
    assert pattern_shift("RGGB", 1, 1) == "BGGR"
    assert pattern_shift("GRBG", -1, 0) == "RGGB"
    del rgb


@pytest.mark.parametrize("height", [10, 11])
def test_pattern_flip_rows_matches_flipping_the_mosaic(height):
    for p in PATTERNS:
        masks = cfa_masks(p, (height, 8))
        flipped = {c: m[::-1] for c, m in masks.items()}
        expect = cfa_masks(pattern_flip_rows(p, height), (height, 8))
        for c in "RGB":
            assert np.array_equal(flipped[c], expect[c]), (p, height, c)
    assert pattern_flip_rows("RGGB", 10) == "GBRG"
    assert pattern_flip_rows("RGGB", 11) == "RGGB"


def test_normalize_pattern():
    assert normalize_pattern(" rggb ") == "RGGB"
    assert normalize_pattern("") is None and normalize_pattern(None) is None
    with pytest.raises(ValueError, match="unsupported CFA pattern"):
        normalize_pattern("CYYM")


def test_float_bilinear_equals_opencv_bilinear_on_integer_data():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 60000, (24, 30)).astype(np.uint16)
    for p in PATTERNS:
        ours = debayer(raw.astype(np.float32), p, "bilinear")
        cv = debayer(raw, p, "bilinear")
        # OpenCV rounds to integers; away from the 1-pixel border the two agree to 0.5 ADU
        np.testing.assert_allclose(ours[2:-2, 2:-2], cv[2:-2, 2:-2], atol=0.51)


@pytest.mark.parametrize("dtype,method", [(np.uint16, "ea"), (np.float32, "ea"), (np.float32, "bilinear"),
                                          (np.uint8, "vng")])
def test_smooth_scene_is_recovered(dtype, method):
    # A smooth colour gradient is reconstructed to within a small fraction of its range.
    yy, xx = np.mgrid[0:40, 0:48].astype(np.float64)
    scale = 200.0 if dtype == np.uint8 else 20000.0
    rgb = np.stack([0.2 + 0.5 * xx / 48, 0.3 + 0.4 * yy / 40, 0.6 - 0.3 * (xx + yy) / 88], axis=-1) * scale
    for p in PATTERNS:
        out = debayer(mosaic_of(rgb, p).astype(dtype), p, method)
        err = np.abs(out[3:-3, 3:-3] - rgb[3:-3, 3:-3]).max() / scale
        assert err < 0.012, (p, err)


def test_vng_on_16_bit_falls_back_to_edge_aware():
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 65535, (20, 20)).astype(np.uint16)
    assert np.array_equal(debayer(raw, "RGGB", "vng"), debayer(raw, "RGGB", "ea"))


def test_nan_stays_local_and_raises_no_warning():
    raw = np.full((20, 20), 100.0, dtype=np.float32)
    raw[10, 10] = np.nan
    raw[3, 15] = np.inf
    for method in ("bilinear", "ea"):
        out = debayer(raw, "GRBG", method)  # -W error::RuntimeWarning would fail here
        bad = ~np.isfinite(out).all(axis=2)
        assert bad[10, 10]
        ys, xs = np.nonzero(bad)
        near = (np.abs(ys - 10) <= 3) & (np.abs(xs - 10) <= 3) | (np.abs(ys - 3) <= 3) & (np.abs(xs - 15) <= 3)
        assert near.all()
        assert np.allclose(out[16:, :6], 100.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", ["bilinear", "ea"])
def test_crop_equals_cropping_the_result(dtype, method):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 200 if dtype == np.uint8 else 60000, size=(40, 52)).astype(dtype)
    full = debayer(raw, "GRBG", method)
    got = debayer(raw, "GRBG", method, crop=(6, 31, 4, 47))
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, full[6:31, 4:47])


def test_bad_arguments():
    with pytest.raises(ValueError):
        debayer(np.zeros((4, 4), np.uint16), "RGGB", "ahd")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        debayer(np.zeros((4, 4, 3), np.uint16), "RGGB")
    with pytest.raises(ValueError):
        debayer(np.zeros((4, 4), np.uint16), "XYZW")


def test_seestar_frames_are_grbg(real_path):
    from astropy.io import fits

    folder = real_path("seestar-m94/session1")
    path = sorted(folder.glob("*.fit"))[0]
    h = fits.getheader(path)
    assert h["BAYERPAT"].strip() == "GRBG"
    raw = fits.getdata(path)
    means = {(dy, dx): float(raw[dy::2, dx::2].mean()) for dy in (0, 1) for dx in (0, 1)}
    # GRBG puts green on the main diagonal of each 2x2 cell: the two green sites see the
    # same sky, the red and blue sites each see something else.
    assert abs(means[0, 0] - means[1, 1]) / means[0, 0] < 0.01
    assert abs(means[0, 1] - means[0, 0]) / means[0, 0] > 0.05
    assert abs(means[1, 0] - means[0, 0]) / means[0, 0] > 0.05
    rgb = debayer(raw, "GRBG", "bilinear")
    # Bilinear keeps each site's own colour sample: R at (0, 1), B at (1, 0), G at (0, 0).
    assert np.array_equal(rgb[2:-2:2, 3:-2:2, 0], raw[2:-2:2, 3:-2:2].astype(np.float32))
    assert np.array_equal(rgb[3:-2:2, 2:-2:2, 2], raw[3:-2:2, 2:-2:2].astype(np.float32))
    assert np.array_equal(rgb[2:-2:2, 2:-2:2, 1], raw[2:-2:2, 2:-2:2].astype(np.float32))
