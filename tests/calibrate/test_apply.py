"""Applying masters to lights: the calibrated plane against the generator's truth, strips
equal to whole frames, dark scaling by exposure and by optimisation, pickling."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from skystack.calibrate import CalibrationStep, prepare_calibration
from skystack.io import open_frames
from skystack.options import CalibrationOptions, ReadOptions, RunOptions
from skystack.testing.synthetic import make_deepsky

SHAPE = (64, 96)
SENSOR = dict(vignetting=0.35, dust_donuts=1, prnu=0.01, bias_structure=3.0, dark_current=0.5, amp_glow=20.0,
              hot_pixel_fraction=2e-3, cold_pixel_fraction=0.0, cosmic_rate=0.0)


def _setup(tmp, *, noise, dark_exptime=None, **kw):
    s = make_deepsky(n_frames=2, shape=SHAPE, seed=13, bayer="BGGR", noise=noise, trail_frame=None, **SENSOR, **kw)
    s.write_fits(tmp / "lights")
    s.write_calibration(tmp, bias=6, darks=6, flats=4, dark_exptime=dark_exptime)
    return s


def _opts(tmp, **kw):
    base = dict(bias=(str(tmp / "bias"),), darks=(str(tmp / "darks"),), flats=(str(tmp / "flats"),))
    base.update(kw)
    return CalibrationOptions(**base)


def _calibrated(tmp, opts, debayer="none"):
    frames = open_frames([str(tmp / "lights")], options=ReadOptions(debayer=debayer))
    return prepare_calibration(frames, opts, cache_dir=tmp / "cache", run=RunOptions(quiet=True))


def _truth(s, i):
    """What a perfect calibration gives: the light above bias and dark, divided by the flat
    normalised per colour (the response over its per-colour mean)."""
    from skystack.io.bayer import cfa_masks

    signal = s.electrons(i) / s.params.gain
    resp = s.flat_response()
    out = np.empty_like(signal)
    for m in cfa_masks(s.params.bayer, SHAPE).values():
        out[m] = signal[m] * resp[m].mean()
    return out


@pytest.fixture(scope="module")
def noiseless(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apply")
    return tmp, _setup(tmp, noise=False)


def _hot_mask(s):
    hot = np.zeros(SHAPE, bool)
    hot[s.hot_pixels[:, 1], s.hot_pixels[:, 0]] = True
    return hot


def test_calibrated_plane_is_the_truth(noiseless):
    # noise-free masters have no noise to measure defects against: cosmetic correction off
    # here (it is tested on noisy frames below and in test_cosmetic)
    tmp, s = noiseless
    frames, info = _calibrated(tmp, _opts(tmp, cosmetic="off"))
    hot = _hot_mask(s)
    for i in range(len(s)):
        got = frames.read(i).astype(np.float64)
        want = _truth(s, i)
        # what is left: the uint16 quantisation of light, bias and dark (0.5 ADU each),
        # divided by the flat, and the flats' own dark current (up to 40 e- of glow in a
        # flat of ~10 000 e-: no dark-flats here, so the bias is their offset)
        assert (np.abs(got - want) - 0.004 * np.abs(want))[~hot].max() < 1.5 / 0.65
    assert info["dark"]["mode"] == "thermal" and info["cosmetic"]["source"] == "off"


def test_hot_pixels_repaired_in_noisy_lights(tmp_path):
    s = _setup(tmp_path, noise=True)
    frames, info = _calibrated(tmp_path, _opts(tmp_path))
    assert info["cosmetic"]["hot"] >= len(s.hot_pixels) and not info["cosmetic"]["capped"]
    got = frames.read(0).astype(np.float64)
    want = _truth(s, 0)
    resid = got - want
    hot = _hot_mask(s)
    sigma = np.std(resid[~hot])
    # hot pixels (300 e- to saturated) read like their neighbours after the repair
    assert np.abs(resid[hot]).max() < 6 * sigma + 0.1 * np.abs(want[hot]).max(), (np.abs(resid[hot]).max(), sigma)
    uncorrected = frames.read_raw(0).astype(np.float64) - s.bias_level()
    assert np.abs(uncorrected - want)[hot].max() > 50 * sigma


def test_strips_equal_whole_frames(noiseless):
    tmp, s = noiseless
    frames, _ = _calibrated(tmp, _opts(tmp), debayer="auto")
    full = frames.read(1)
    assert full.shape == SHAPE + (3,)
    for y0, y1 in ((0, 7), (3, 20), (19, 40), (40, 64), (63, 64)):
        assert np.array_equal(frames.read_rows(1, y0, y1), full[y0:y1])


def test_step_pickles_as_paths_and_numbers(noiseless):
    tmp, s = noiseless
    frames, _ = _calibrated(tmp, _opts(tmp))
    step = frames.spec.raw_steps[0]
    assert isinstance(step, CalibrationStep)
    blob = pickle.dumps(step)
    assert len(blob) < 4000  # no arrays travel with the tasks
    raw = frames.read_raw(0)
    again = pickle.loads(blob)
    assert np.array_equal(again(raw, index=0, y0=0), step(raw, index=0, y0=0))
    assert pickle.loads(pickle.dumps(frames)).read(0).tobytes() == frames.read(0).tobytes()


def test_dark_of_another_exposure_is_scaled(tmp_path):
    s = _setup(tmp_path, noise=False, dark_exptime=30.0)
    frames, info = _calibrated(tmp_path, _opts(tmp_path, cosmetic="off"))
    assert info["dark"]["factors"] == [2.0, 2.0] and info["masters"]["dark"]["exposure_s"] == 30.0
    hot = np.zeros(SHAPE, bool)
    hot[s.hot_pixels[:, 1], s.hot_pixels[:, 0]] = True
    want = _truth(s, 0)
    # k = 2 doubles the dark's rounding; the flats' dark current as above
    assert (np.abs(frames.read(0) - want) - 0.004 * np.abs(want))[~hot].max() < 2.5 / 0.65
    # the dark alone, unscaled, leaves half the dark current (glow) in
    frames_off, info_off = _calibrated(tmp_path, _opts(tmp_path, dark_scaling="off", cosmetic="off"))
    left = frames_off.read(0) - _truth(s, 0)
    assert left[~hot].max() > 5 * 20.0 * 30.0 / 64  # glow 20 e-/s, spread over the frame
    assert any("unscaled" in w for w in info_off["warnings"])


def test_dark_optimisation_finds_the_factor(tmp_path):
    _setup(tmp_path, noise=True, dark_exptime=30.0, sky_level=300.0)
    frames, info = _calibrated(tmp_path, _opts(tmp_path, dark_scaling="optimize"))
    ks = info["dark"]["factors"]
    assert all(abs(k - 2.0) < 0.06 for k in ks), ks


def test_dark_without_bias_is_subtracted_whole(noiseless):
    tmp, s = noiseless
    frames, info = _calibrated(tmp, CalibrationOptions(darks=(str(tmp / "darks"),), cosmetic="off"))
    assert info["dark"]["mode"] == "whole"
    hot = np.zeros(SHAPE, bool)
    hot[s.hot_pixels[:, 1], s.hot_pixels[:, 0]] = True
    # L - D: the light's signal (not flat-fielded), bias and dark current gone
    want = s.electrons(0) * s.flat_response() / s.params.gain
    got = frames.read(0)
    assert np.abs(got - want)[~hot].max() <= 1.0
