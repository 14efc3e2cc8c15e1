"""À-trous wavelets and the tone curve."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import example
from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from skystack.enhance import stretch
from skystack.enhance.wavelets import NOISE_RATIO, apply_stretch, atrous, before_after, enhance, noise_sigma, sharpen
from skystack.errors import UsageError
from skystack.options import EnhanceOptions


def test_decomposition_is_exact(moon_video):
    img = moon_video.truth
    layers, res = atrous(img, 5)
    assert len(layers) == 5
    assert np.allclose(sum(layers) + res, img, atol=1e-3)
    # the residual is smooth: far less gradient energy than the image
    assert np.abs(np.diff(res, axis=1)).mean() < 0.2 * np.abs(np.diff(img, axis=1)).mean()
    rgb = np.stack([img, img * 0.5, img * 0.2], axis=-1)
    layers, res = atrous(rgb, 3)
    assert layers[0].shape == rgb.shape and np.allclose(sum(layers) + res, rgb, atol=1e-3)
    with pytest.raises(ValueError):
        atrous(img, 0)


def test_layer_noise_matches_the_b3_table(rng):
    noise = rng.normal(0, 1, (512, 512)).astype(np.float32)
    layers, _ = atrous(noise, 4)
    for j, w in enumerate(layers[:3]):
        assert abs(float(w[32:-32, 32:-32].std()) - NOISE_RATIO[j]) / NOISE_RATIO[j] < 0.06
    assert abs(noise_sigma(noise) - 1.0) < 0.03


def test_noise_estimate_ignores_structure(moon_video, rng):
    img = moon_video.truth + rng.normal(0, 3.0, moon_video.truth.shape).astype(np.float32)
    assert abs(noise_sigma(img) - 3.0) < 0.4


def test_unit_gains_are_identity(moon_video):
    img = moon_video.truth
    assert np.array_equal(sharpen(img, (1.0, 1.0, 1.0)), img)
    out = sharpen(img, (1.0, 1.0 + 1e-9, 1.0))
    assert np.allclose(out, img, atol=1e-3)


def test_sharpening_a_blurred_image_moves_it_towards_the_truth(moon_video):
    truth = moon_video.truth
    blurred = cv2.GaussianBlur(truth, (0, 0), 1.2)
    sharp = sharpen(blurred, (1.8, 1.4, 1.0, 1.0, 1.0), (0.0,))
    m = 16

    def err(x):
        return float(np.sqrt(np.mean((x - truth)[m:-m, m:-m] ** 2)))

    assert err(sharp) < 0.8 * err(blurred)
    assert abs(float(sharp.mean()) - float(blurred.mean())) < 0.05  # detail layers are zero-mean


def test_noise_thresholds_keep_noise_from_being_amplified(rng):
    flat = np.full((256, 256), 100.0, np.float32) + rng.normal(0, 5.0, (256, 256)).astype(np.float32)
    plain = sharpen(flat, (2.0, 2.0), (0.0, 0.0))
    guarded = sharpen(flat, (2.0, 2.0), (3.0, 3.0))
    s0 = float(flat.std())
    assert float(plain.std()) > 1.5 * s0
    assert float(guarded.std()) < 1.1 * s0


def test_nan_pixels_stay_nan_and_do_not_spread(moon_video):
    img = moon_video.truth.copy()
    img[100:110, 100:110] = np.nan
    out = sharpen(img, (1.5, 1.2))
    assert np.isnan(out[100:110, 100:110]).all()
    assert np.isfinite(out[:90]).all()


def test_stretches_map_black_and_white():
    img = np.linspace(10, 110, 101, dtype=np.float32).reshape(1, -1)
    lin = apply_stretch(img, EnhanceOptions(gains=(1.0,), stretch="linear", black=10, white=110))
    assert lin[0, 0] == 0.0 and lin[0, -1] == 1.0 and abs(lin[0, 50] - 0.5) < 1e-6
    mid = apply_stretch(img, EnhanceOptions(gains=(1.0,), stretch="midtone", black=10, white=110, midtone=0.25))
    assert abs(mid[0, 25] - 0.5) < 1e-5  # the midtone maps 0.25 to one half
    ash = apply_stretch(img, EnhanceOptions(gains=(1.0,), stretch="asinh", black=10, white=110))
    assert ash[0, 0] == 0.0 and abs(ash[0, -1] - 1.0) < 1e-6 and np.all(np.diff(ash[0]) > 0)
    assert ash[0, 10] > lin[0, 10]  # lifts the faint end
    auto = apply_stretch(img, EnhanceOptions(gains=(1.0,), stretch="auto"))
    assert auto.min() >= 0 and auto.max() <= 1
    assert np.array_equal(apply_stretch(img, EnhanceOptions(gains=(1.0,))), img)


def test_enhance_combines_and_accepts_field_overrides(moon_video):
    img = moon_video.truth
    a = enhance(img, EnhanceOptions(gains=(1.8, 1.4), thresholds=(0.0,), stretch="linear", black=0, white=255))
    b = enhance(img, gains=[1.8, 1.4], thresholds=[0.0], stretch="linear", black=0, white=255)
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_options_validation_and_parsing():
    # the CLI's list syntax and API sequences both become tuples of floats
    assert EnhanceOptions(gains="1.8,1.4,1.0,1,1").gains == (1.8, 1.4, 1.0, 1.0, 1.0)
    assert EnhanceOptions(gains=" 2 , 1.5 ").gains == (2.0, 1.5)
    assert EnhanceOptions(gains=[2, 1]).gains == (2.0, 1.0)
    for bad in ("", "a,b", ",", (), (1.0, -1.0), (1.0, float("nan"))):
        with pytest.raises(UsageError):
            EnhanceOptions(gains=bad)
    with pytest.raises(UsageError):
        EnhanceOptions(thresholds=(-1.0,))
    for midtone in (0.0, 1.0):
        with pytest.raises(UsageError):
            EnhanceOptions(midtone=midtone)
    with pytest.raises(UsageError):
        EnhanceOptions(stretch="fancy")


@pytest.mark.parametrize("kw", [
    {"gains": (1e30,)}, {"gains": (1.0, 101.0)}, {"black": float("nan")}, {"white": float("inf")},
    {"black": "dark"}, {"black": 5000.0, "white": 10.0}, {"black": 3.0, "white": 3.0},
    {"asinh_beta": 1e300}, {"asinh_beta": 1e-300}, {"asinh_beta": float("inf")},
])
def test_values_that_once_gave_a_blank_or_infinite_image_are_refused(kw):
    # each of these "succeeded" with an all-NaN, all-inf or all-zero image
    with pytest.raises(UsageError):
        EnhanceOptions(**kw)


def test_the_midtone_curve_keeps_its_end_points_for_any_midtone():
    x = np.array([0.0, 1e-30, 0.25, 0.5, 1.0, np.nan], np.float32)
    for m in (1e-300, 1e-40, 1e-6, 0.25, 0.75, 1 - 1e-7, 1 - 1e-12):
        y = stretch.mtf(x, m)
        assert y[0] == 0.0 and y[4] == 1.0 and np.isnan(y[5]), m
        assert np.all((y[:5] >= 0) & (y[:5] <= 1)) and np.all(np.diff(y[:5]) >= 0), m


def test_a_point_past_the_image_is_said(caplog):
    img = np.linspace(100, 200, 64 * 64, dtype=np.float32).reshape(64, 64)
    with caplog.at_level("WARNING", logger="skystack"):
        out = enhance(img, EnhanceOptions(gains=(1.0,), stretch="linear", black=500.0))
    assert np.all(out == 0)
    assert "--black 500 is past the image's white point" in caplog.text


_gain = st.floats(0, 100)
_point = st.one_of(st.none(), st.floats(-1e6, 1e6))


@settings(max_examples=60, deadline=None)
@example(gains=[0.0], thresholds=[0.0], stretch_kind="asinh", black=None, white=None, midtone=0.5, beta=0.001)
@example(gains=[1.0], thresholds=[], stretch_kind="midtone", black=None, white=None, midtone=1e-300, beta=10.0)
@for_all(gains=st.lists(_gain, min_size=1, max_size=6), thresholds=st.lists(st.floats(0, 1e30), max_size=6),
         stretch_kind=st.sampled_from(["none", "linear", "midtone", "asinh", "auto"]), black=_point,
         white=_point, midtone=st.floats(0, 1, exclude_min=True, exclude_max=True),
         beta=st.floats(1e-3, 1000))
def test_any_accepted_option_values_give_a_finite_image(gains, thresholds, stretch_kind, black, white,
                                                         midtone, beta):
    # the attack: every combination the options accept must give a usable image (finite,
    # in [0, 1] once stretched, NaN only where the input was NaN), never a blank one in disguise
    try:
        opts = EnhanceOptions(gains=tuple(gains), thresholds=tuple(thresholds), stretch=stretch_kind,
                              black=black, white=white, midtone=midtone, asinh_beta=beta)
    except UsageError:
        return
    img = _IMG.copy()
    out = enhance(img, opts)
    assert np.isnan(out).sum() == 1 and np.isnan(out[3, 5])
    assert np.isfinite(np.delete(out.ravel(), 3 * out.shape[1] + 5)).all()
    if stretch_kind != "none":
        assert np.nanmin(out) >= 0 and np.nanmax(out) <= 1


_IMG = (np.random.default_rng(3).normal(1000, 30, (48, 40)) + np.indices((48, 40))[0] * 20).astype(np.float32)
_IMG[3, 5] = np.nan



def test_before_after_preview(moon_video):
    img = moon_video.truth
    out = sharpen(img, (1.8, 1.4))
    pv = before_after(img, out)
    assert pv.dtype == np.uint8 and pv.shape == (256, 2 * 256 + 4)
    assert (pv[:, 256:260] == 0).all()
    rgb = np.stack([img] * 3, axis=-1)
    assert before_after(rgb, rgb).shape == (256, 516, 3)
