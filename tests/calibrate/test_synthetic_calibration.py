"""The generator's calibration effects: bias, dark current with hot pixels scaling with
exposure, vignetting + dust-donut flats, a CFA mosaic — each against its kept truth."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from skystack.io.bayer import cfa_masks
from skystack.testing.synthetic import make_deepsky

SHAPE = (96, 128)
SENSOR = dict(vignetting=0.35, dust_donuts=2, prnu=0.01, bias_structure=3.0, dark_current=0.5, amp_glow=20.0,
              hot_pixel_fraction=1e-3)


@pytest.fixture(scope="module")
def quiet():
    """Noise-free, so every frame is its truth quantised."""
    return make_deepsky(n_frames=2, shape=SHAPE, seed=4, noise=False, bayer="GRBG", cosmic_rate=0.0, **SENSOR)


def _q(x):
    return np.clip(np.rint(x), 0, 65535)


def test_bias_frame_is_the_bias_map(quiet):
    b = quiet.bias_frame(0).astype(np.float64)
    assert np.array_equal(b, _q(quiet.bias_level()))
    # the fixed pattern is there: columns differ, and the mean is the pedestal
    assert quiet.bias_level().std() > 1.0 and abs(quiet.bias_level().mean() - 1000.0) < 3.0


def test_dark_current_and_hot_pixels_scale_with_exposure(quiet):
    g = quiet.params.gain
    for t in (30.0, 60.0, 120.0):
        d = quiet.dark_frame(0, exptime=t).astype(np.float64)
        assert np.array_equal(d, _q(quiet.bias_level() + quiet.dark_rate() * t / g))
    hx, hy = quiet.hot_pixels[:, 0], quiet.hot_pixels[:, 1]
    th30 = quiet.dark_frame(0, exptime=30.0).astype(np.float64) - quiet.bias_level()
    th60 = quiet.dark_frame(0, exptime=60.0).astype(np.float64) - quiet.bias_level()
    ok = th60[hy, hx] < 60000  # not clipped at full scale
    assert ok.sum() >= 5
    assert np.allclose(th60[hy, hx][ok], 2 * th30[hy, hx][ok], atol=1.5)
    # the amplifier glow sits in the top-right corner
    rate = quiet.dark_rate(hot=False)
    assert rate[0, -1] > 5 * rate[-1, 0] and rate[0, -1] == rate.max()


def test_flat_is_vignetting_dust_and_panel_colour_through_the_cfa(quiet):
    p = quiet.params
    resp = quiet.flat_response()
    assert abs(resp.min() - (1 - p.vignetting)) < 0.1 and resp.max() <= 1.05
    f = quiet.flat_frame(0).astype(np.float64)
    masks = cfa_masks("GRBG", SHAPE)
    for c, name in enumerate("RGB"):
        expected = quiet.bias_level() + p.flat_level * p.flat_colour[c] * resp / p.gain \
            + quiet.dark_rate() * p.flat_exptime / p.gain
        m = masks[name]
        cold = np.zeros(SHAPE, bool)
        cold[quiet.cold_pixels[:, 1], quiet.cold_pixels[:, 0]] = True
        assert np.array_equal(f[m & ~cold], _q(expected)[m & ~cold])
    # dust donuts: the same optics without them differ only in a few dark rings
    from skystack.testing.synthetic import with_params

    a = with_params(quiet, prnu=0.0).flat_response()
    b = with_params(quiet, prnu=0.0, dust_donuts=0).flat_response()
    ratio = a / b
    assert ratio.max() <= 1.0 and ratio.min() < 1 - 0.4 * p.dust_depth * 0.9
    assert (ratio == 1.0).mean() > 0.5  # most of the sensor is clean


def test_lights_are_the_cfa_mosaic_of_the_coloured_scene(quiet):
    p = quiet.params
    e = quiet.electrons_rgb(1)
    mos = quiet.sensor.mosaic(e)
    masks = cfa_masks("GRBG", SHAPE)
    for c, name in enumerate("RGB"):
        assert np.array_equal(mos[masks[name]], e[..., c][masks[name]])
    f = quiet.frame(1, defects=False).astype(np.float64)
    # defects=False leaves out hot/cold pixels; the uniform dark current and glow stay
    expected = quiet.bias_level() + (mos * quiet.flat_response() + quiet.dark_rate(hot=False) * p.exptime) / p.gain
    assert np.array_equal(f, _q(expected))
    # with defects: the hot pixels' dark current is added on top
    hot = quiet.bias_level() + (mos * quiet.flat_response() + quiet.dark_rate() * p.exptime) / p.gain
    cold = np.zeros(SHAPE, bool)
    cold[quiet.cold_pixels[:, 1], quiet.cold_pixels[:, 0]] = True
    g = quiet.frame(1).astype(np.float64)
    assert np.array_equal(g[~cold], _q(hot)[~cold])
    assert (g != f).sum() >= len(quiet.hot_pixels) // 2


def test_ideal_rgb_carries_the_objects_colours():
    s = make_deepsky(n_frames=1, shape=SHAPE, seed=5, noise=False, bayer="RGGB", star_density=0.0)
    ideal = s.ideal_rgb(background=False)
    gal = ideal.reshape(-1, 3).sum(axis=0)
    assert np.allclose(gal / gal[1], s.params.galaxy_colour, rtol=1e-9)
    sky = s.ideal_rgb(background=True) - s.params.pedestal - ideal
    assert np.allclose(sky[..., 0] / sky[..., 1], s.params.sky_colour[0])
    # G has colour 1: the green ideal is the colourless (mono) scene
    assert np.allclose(s.ideal_rgb(background=False)[..., 1], s.ideal(background=False), rtol=1e-12)
    stars = make_deepsky(n_frames=1, shape=SHAPE, seed=5, bayer="RGGB", extended=False)
    assert stars.star_colours.shape == (len(stars.stars), 3)
    assert np.all(stars.star_colours[:, 1] == 1.0)
    assert 0.55 <= stars.star_colours[:, 0].min() and stars.star_colours[:, 0].max() <= 1.45


def test_write_calibration_headers(tmp_path):
    s = make_deepsky(n_frames=1, shape=(32, 48), seed=1, bayer="RGGB", ccd_temp=-10.0, **SENSOR)
    out = s.write_calibration(tmp_path, bias=2, darks=2, flats=1, dark_flats=1, dark_exptime=30.0)
    assert {k: len(v) for k, v in out.items()} == {"bias": 2, "darks": 2, "flats": 1, "dark_flats": 1}
    h = fits.getheader(out["darks"][0])
    assert h["IMAGETYP"] == "Dark Frame" and h["EXPTIME"] == 30.0 and h["BAYERPAT"] == "RGGB"
    assert h["CCD-TEMP"] == -10.0
    assert fits.getheader(out["flats"][0])["EXPTIME"] == s.params.flat_exptime
    assert fits.getheader(out["bias"][0])["EXPTIME"] == 0.0
    noexp = s.write_calibration(tmp_path / "n", darks=1, write_exptime=False)
    h = fits.getheader(noexp["darks"][0])
    assert "EXPTIME" not in h and "EXPOSURE" not in h
    light = s.write_fits(tmp_path / "l")[0]
    assert fits.getheader(light)["BAYERPAT"] == "RGGB"
    truth = s.truth()
    assert truth["params"]["bayer"] == "RGGB" and "calibration" in truth
    assert len(truth["calibration"]["hot_rate_e_per_s"]) == len(s.hot_pixels)
