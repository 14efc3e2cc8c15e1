"""Colour balance of RGB stacks: background neutralisation and white balance, against a
synthetic sky whose colours are known."""
from __future__ import annotations

import numpy as np
import pytest
from calib_cases import aperture_flux

from skystack.calibrate.colour import (auto_white_balance, background_levels, camera_white_balance, colour_balance,
                                       parse_white_balance, star_colours)
from skystack.errors import UsageError
from skystack.testing.synthetic import make_deepsky


@pytest.fixture(scope="module")
def sky():
    """An RGB 'stack' of a light-polluted sky (1.15, 1, 0.8), seen through a camera whose
    channels respond 0.6, 1, 0.8, with a little noise."""
    s = make_deepsky(n_frames=1, shape=(200, 260), seed=8, bayer="RGGB", star_density=2.5e-3, sky_level=600.0)
    ideal = s.ideal_rgb(background=True)
    gains = np.array([0.6, 1.0, 0.8])
    rng = np.random.default_rng(1)
    img = (ideal * gains + rng.normal(0.0, 2.0, ideal.shape)).astype(np.float32)
    return s, img, gains


def test_neutralised_sky_is_grey_and_objects_keep_their_colour(sky):
    s, img, gains = sky
    bg = background_levels(img)
    sky_true = (s.params.pedestal + np.array(s.params.sky_colour) * s.sky_level[0]) * gains
    assert np.allclose(bg, sky_true, rtol=0.01)
    out, info = colour_balance(img, neutralize=True)
    after = background_levels(out)
    assert np.ptp(after) < 0.002 * after.mean()  # grey: equal in R, G, B
    assert info["white_balance"] == "none" and info["factors"] == [1.0, 1.0, 1.0]
    # offsets only: the galaxy's colour above its local background is unchanged
    gx, gy = s.galaxy_xy
    a = aperture_flux(img.astype(np.float64), gx, gy, 15, 20, 26)
    b = aperture_flux(out.astype(np.float64), gx, gy, 15, 20, 26)
    assert np.allclose(a, b, rtol=1e-4)


def test_auto_white_balance_makes_the_median_star_white(sky):
    s, img, gains = sky
    factors, info = auto_white_balance(img)
    assert info["stars"] >= 15
    # the factors undo the camera's channel gains, up to the median true colour of the
    # stars used (measured without the gains, at the same places)
    xy = np.array(info["xy"])
    _, flux0, _ = star_colours((img / gains).astype(np.float32), xy=xy, fwhm=info["fwhm_px"])
    assert len(flux0) == len(xy)
    true_rg = np.median(flux0[:, 0] / flux0[:, 1])
    true_bg = np.median(flux0[:, 2] / flux0[:, 1])
    assert factors[0] * gains[0] * true_rg == pytest.approx(1.0, rel=0.01)
    assert factors[2] * gains[2] * true_bg == pytest.approx(1.0, rel=0.01)
    # stars are drawn around white (R/G, B/G uniform in 0.6..1.4): so is their median
    assert abs(true_rg - 1) < 0.15 and abs(true_bg - 1) < 0.15
    out, info2 = colour_balance(img, neutralize=True, white_balance="auto")
    _, flux, _ = star_colours(out, xy=xy, fwhm=info["fwhm_px"])
    assert np.median(flux[:, 0] / flux[:, 1]) == pytest.approx(1.0, abs=0.005)
    assert np.median(flux[:, 2] / flux[:, 1]) == pytest.approx(1.0, abs=0.005)
    after = background_levels(out)
    assert np.ptp(after) < 0.002 * after.mean()  # white-balanced and still a grey sky


def test_given_and_camera_factors(sky):
    s, img, gains = sky
    out, info = colour_balance(img, white_balance=(1 / 0.6, 1.0, 1 / 0.8))
    bg = background_levels(img)
    # the signal above the sky is scaled; the sky level itself scales with its channel
    assert np.allclose(background_levels(out), bg * [1 / 0.6, 1, 1 / 0.8], rtol=1e-3)
    meta = {"camera_whitebalance": [2.1, 1.0, 1.6, 1.0]}
    assert np.allclose(camera_white_balance(meta), [2.1, 1.0, 1.6])
    out2, info2 = colour_balance(img, white_balance="camera", meta=meta)
    assert info2["factors"] == pytest.approx([2.1, 1.0, 1.6])
    with pytest.raises(UsageError, match="records no camera white balance"):
        colour_balance(img, white_balance="camera", meta={"exposure_s": 10.0})
    with pytest.raises(UsageError, match="needs an RGB image"):
        colour_balance(img[..., 0], neutralize=True)


def test_parse_white_balance():
    assert parse_white_balance("auto") == "auto" and parse_white_balance("Camera") == "camera"
    assert parse_white_balance("1.9,1,1.4") == (1.9, 1.0, 1.4)
    assert parse_white_balance("100,1,0.01") == (100.0, 1.0, 0.01)
    # 1e300 made the red channel infinite, 1e-300 black, and both "succeeded"
    for bad in ("1,2", "a,b,c", "1,0,1", "sunny", "1e300,1,1", "1e-300,1,1", "101,1,1"):
        with pytest.raises(UsageError):
            parse_white_balance(bad)
