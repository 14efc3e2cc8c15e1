"""Cosmetic correction: the defect map from the masters against the generator's truth,
and same-colour repairs on CFA and mono planes."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.calibrate.cosmetic import find_defects, fix_defects, neighbour_offsets
from skystack.calibrate.masters import get_master
from skystack.testing.synthetic import make_deepsky

SHAPE = (96, 128)


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    # strong amplifier glow (up to 2400 e- in 60 s) whose shot noise must not read as hot pixels
    s = make_deepsky(n_frames=1, shape=SHAPE, seed=9, bayer="GBRG", vignetting=0.3, dust_donuts=1,
                     bias_structure=3.0, dark_current=0.3, amp_glow=40.0, hot_pixel_fraction=2e-3,
                     cold_pixel_fraction=1e-3)
    root = tmp_path_factory.mktemp("cos")
    s.write_calibration(root, bias=8, darks=8, flats=6)
    cache = root / "cache"
    bias = get_master("bias", [str(root / "bias")], cache_dir=cache)
    dark = get_master("dark", [str(root / "darks")], cache_dir=cache)
    flat = get_master("flat", [str(root / "flats")], cache_dir=cache, offset=bias)
    return s, bias, dark, flat


def _set(arr):
    return {tuple(int(v) for v in p) for p in arr}


def test_hot_pixels_found_in_the_dark_and_not_in_the_glow(masters):
    s, bias, dark, flat = masters
    defects, info = find_defects(dark=dark, bias=bias)
    truth = {(int(y), int(x)) for x, y in s.hot_pixels}
    found = _set(defects)
    assert truth <= found  # every hot pixel (300 e- and up) is found
    extra = found - truth
    assert len(extra) <= 2, sorted(extra)
    # the noise model follows the glow's shot noise (variance grows ~1/N per ADU of signal)
    assert 0.05 < info["dark_noise_model"]["var_per_adu"] < 0.3
    assert info["hot"] >= len(truth) and info["cold_flat"] == 0


def test_cold_pixels_found_in_the_flat(masters):
    s, bias, dark, flat = masters
    defects, info = find_defects(flat=flat)
    truth = {(int(y), int(x)) for x, y in s.cold_pixels}
    assert len(truth) >= 5
    assert truth <= _set(defects)
    assert len(_set(defects) - truth) <= 1
    assert info["cold_flat"] == len(defects)


def _mosaic_of(rgb, pattern):
    out = np.empty(rgb.shape[:2], dtype=np.float32)
    for r in range(2):
        for c in range(2):
            out[r::2, c::2] = rgb[r::2, c::2, "RGB".index(pattern[2 * r + c])]
    return out


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "BGGR", "GBRG"])
def test_repairs_use_same_colour_neighbours(pattern):
    h, w = 20, 24
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # a smooth field of very different colours: a repair from any other colour is way off,
    # and on a linear ramp the median of symmetric same-colour neighbours is exact
    rgb = np.stack([1000 + 3 * xx + 2 * yy, 200 + xx, 50 + 0.5 * yy], axis=2)
    truth = _mosaic_of(rgb, pattern)
    plane = truth.copy()
    ys = np.array([6, 6, 7, 7, 10, 10, 11, 0, 19])
    xs = np.array([6, 7, 6, 7, 10, 12, 11, 0, 23])
    plane[ys, xs] = 65535.0
    plane[3, 3] = np.nan  # a non-finite neighbour is left out too
    n = fix_defects(plane, ys, xs, pattern)
    assert n == len(ys)
    # a 2x2 block of defects (one of each CFA cell): on a linear ramp the median of the
    # symmetric same-colour ring is exact
    assert np.allclose(plane[ys[:4], xs[:4]], truth[ys[:4], xs[:4]], atol=1e-3)
    # next to other defects or at the corners the neighbourhood is one-sided: the right
    # colour (the others differ by hundreds of ADU), within a few ADU of the ramp
    assert np.all(np.abs(plane[ys[4:], xs[4:]] - truth[ys[4:], xs[4:]]) < 15)
    untouched = np.ones((h, w), bool)
    untouched[ys, xs] = False
    untouched[3, 3] = False
    assert np.array_equal(plane[untouched], truth[untouched])


def test_mono_repairs_use_the_eight_adjacent_pixels():
    plane = np.arange(100, dtype=np.float32).reshape(10, 10)
    plane[4, 4] = 1e6
    fix_defects(plane, np.array([4]), np.array([4]), None)
    assert plane[4, 4] == 44.0
    assert neighbour_offsets(None) != neighbour_offsets("R")
    # a defect surrounded by defects and edges has no neighbour: no data
    tiny = np.ones((1, 1), np.float32)
    fix_defects(tiny, np.array([0]), np.array([0]), None)
    assert np.isnan(tiny[0, 0])


def test_a_dark_equal_to_the_bias_finds_nothing_and_warns_nothing(masters, recwarn):
    # a dark with no thermal signal and no noise left after the bias (here: the bias master
    # given as both) has a zero noise model; the 0/0 this once produced read as NaN z-scores
    s, bias, dark, flat = masters
    defects, info = find_defects(dark=bias, bias=bias)
    assert len(defects) == 0
    assert info["hot"] == 0 and info["cold_dark"] == 0
    assert info["dark_noise_model"]["var0"] > 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
