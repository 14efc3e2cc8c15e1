"""The synthetic deep-sky generator: determinism, exact truth, sensor effects, output."""
from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from skystack.testing.synthetic import StarField, make_deepsky, moffat_alpha, with_params
from skystack.types import Transform

SHAPE = (120, 160)


@pytest.fixture(scope="module")
def small():
    return make_deepsky(n_frames=4, shape=SHAPE, seed=3, trail_frame=2, hot_pixel_fraction=1e-3)


def test_same_seed_same_bytes_in_any_order(small):
    other = make_deepsky(n_frames=4, shape=SHAPE, seed=3, trail_frame=2, hot_pixel_fraction=1e-3)
    f3 = small.frame(3)
    other.frame(1)  # rendering another frame first must not change frame 3
    assert f3.dtype == np.uint16 and f3.shape == SHAPE
    assert f3.tobytes() == other.frame(3).tobytes()
    assert [t.to_list() for t in small.transforms] == [t.to_list() for t in other.transforms]


def test_other_seed_other_frames(small):
    other = make_deepsky(n_frames=4, shape=SHAPE, seed=4, trail_frame=2, hot_pixel_fraction=1e-3)
    assert small.frame(0).tobytes() != other.frame(0).tobytes()


def test_transforms_are_bounded_similarities():
    s = make_deepsky(n_frames=12, shape=SHAPE, seed=1, max_shift=10.0, max_rot_deg=1.5)
    assert np.allclose(s.transforms[0].matrix, np.eye(2, 3))
    c = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])
    for t in s.transforms[1:]:
        assert t.model == "similarity"
        assert abs(t.rotation_deg) <= 1.5 and t.scale == pytest.approx(1.0)
        # rotation is about the centre, so the centre moves by the shift alone
        d = t.apply(c)[0] - c
        assert np.all(np.abs(d) <= 10.0)


def test_noise_free_frame_is_the_quantised_signal():
    s = make_deepsky(n_frames=2, shape=SHAPE, seed=5, noise=False)
    f = s.frame(1, defects=False).astype(np.float64)
    expected = np.clip(np.rint(s.signal(1) + s.params.pedestal), 0, 65535)
    assert np.array_equal(f, expected)


def test_ideal_is_the_identity_frame_exactly():
    s = make_deepsky(n_frames=1, shape=SHAPE, seed=6, noise=False)
    ideal = s.ideal(background=True)
    assert np.allclose(ideal, s.signal(0) + s.params.pedestal, rtol=0, atol=1e-9)
    assert np.array_equal(s.frame(0, defects=False), np.rint(ideal).astype(np.uint16))


def test_ideal_matches_integer_shifted_frames():
    """With whole-pixel shifts the ideal is exactly the mean of the shifted noise-free
    frames, with and without the background."""
    s = make_deepsky(n_frames=3, shape=SHAPE, seed=7, noise=False, max_ellipticity=0.3)
    shifts = [(0, 0), (7, -4), (-5, 9)]
    for i, (dx, dy) in enumerate(shifts):  # frame (x, y) -> reference (x + dx, y + dy)
        s.transforms[i] = Transform.from_params(dx=dx, dy=dy)
    inner = (slice(12, -12), slice(12, -12))  # away from np.roll's wrap-around
    for sky in (False, True):
        ideal = s.ideal(background=sky)
        acc = np.mean([np.roll(s.signal(i, sky=sky), (dy, dx), axis=(0, 1))
                       for i, (dx, dy) in enumerate(shifts)], axis=0)
        if sky:
            acc += s.params.pedestal
        assert np.allclose(ideal[inner], acc[inner], rtol=1e-12, atol=1e-9)


def test_ideal_resamples_rotated_frames():
    """For a rotated frame the ideal equals the frame warped onto the reference grid, up
    to interpolation error (well-sampled stars, so Lanczos interpolation is accurate)."""
    import cv2

    s = make_deepsky(n_frames=2, shape=(200, 240), seed=8, noise=False, fwhm_range=(4.0, 4.5),
                     max_rot_deg=3.0, extended=False)
    t = s.transforms[1]
    sig = s.signal(1)
    warped = cv2.warpAffine(sig, t.matrix, (240, 200), flags=cv2.INTER_LANCZOS4)
    ideal = s.ideal(background=True, frames=[1]) - s.params.pedestal
    inner = (slice(50, -50), slice(50, -50))
    diff = np.abs(warped - ideal)[inner]
    assert diff.max() < 0.02 * (ideal[inner].max() - np.median(ideal[inner])) + 0.05


def test_star_flux_is_normalised():
    s = make_deepsky(n_frames=1, shape=(64, 64), seed=0, noise=False, extended=False, star_density=0.0)
    s.stars = StarField(np.array([31.3]), np.array([30.6]), np.array([5e4]))  # one star, known flux
    total = s.signal(0, sky=False).sum() * s.params.gain
    assert total == pytest.approx(5e4, rel=2e-3)  # the truncated wings hold < 0.2 %
    # the peak matches the Moffat normalisation (β − 1)/(π α²)
    a = moffat_alpha(s.fwhm[0], s.params.beta)
    peak = 5e4 * (s.params.beta - 1) / (math.pi * a * a)
    assert s.signal(0, sky=False).max() == pytest.approx(peak, rel=0.15)  # pixel-integrated, sub-pixel phase


def test_noise_level_matches_the_sensor_model():
    s = make_deepsky(n_frames=1, shape=(200, 200), seed=2, star_density=0.0, extended=False,
                     sky_gradient=0.0, hot_pixel_fraction=0.0, cold_pixel_fraction=0.0, cosmic_rate=0.0,
                     sky_level=900.0, read_noise=6.0, gain=1.5, pedestal=500.0)
    f = s.frame(0).astype(np.float64)
    expected_sigma = math.sqrt(s.sky_level[0] + 6.0 ** 2) / 1.5
    assert f.std() == pytest.approx(expected_sigma, rel=0.05)
    assert f.mean() == pytest.approx(500.0 + s.sky_level[0] / 1.5, abs=0.5)


def test_hot_pixels_are_fixed_on_the_sensor(small):
    hot = small.hot_pixels
    rate = small.sensor.hot_rate * small.params.exptime
    bright = hot[rate > 5000]
    assert len(bright) >= 5
    for i in range(len(small)):
        f = small.frame(i).astype(np.float64)
        vals = f[bright[:, 1], bright[:, 0]]
        assert np.all(vals > np.median(f) + 2000), f"hot pixels missing in frame {i}"
    # and the sky moves under them: the same star is elsewhere in frame 1
    assert not np.allclose(small.transforms[1].matrix, small.transforms[0].matrix)


def test_trail_only_in_its_frame():
    small = make_deepsky(n_frames=4, shape=SHAPE, seed=3, trail_frame=2, extended=False)
    x0, y0, ang = small._trail
    # pixels on the trail line, away from the frame edge
    t = np.linspace(-40, 40, 81)
    xs = np.rint(x0 + t * math.cos(ang)).astype(int)
    ys = np.rint(y0 + t * math.sin(ang)).astype(int)
    ok = (xs >= 0) & (xs < SHAPE[1]) & (ys >= 0) & (ys < SHAPE[0])
    xs, ys = xs[ok], ys[ok]
    for i in range(len(small)):
        f = small.frame(i, defects=False).astype(np.float64)
        level = np.median(f[ys, xs]) - np.median(f)
        if i == small.trail_frame:
            assert level > 1000
        else:
            assert level < 200


def test_cosmic_rays_land_in_the_frame():
    s = make_deepsky(n_frames=2, shape=(300, 300), seed=9, cosmic_rate=2e-4, noise=False,
                     hot_pixel_fraction=0.0, cold_pixel_fraction=0.0)
    hits = s.cosmic_rays(1)
    assert len(hits) > 5
    clean = s.frame(1, defects=False).astype(np.float64)
    dirty = s.frame(1).astype(np.float64)
    for ys, xs, q in hits:
        assert np.all(dirty[ys, xs] - clean[ys, xs] >= np.minimum(q / s.params.gain, 65535 - clean[ys, xs]) - 1)


def test_saturated_stars_clip_at_full_scale():
    s = make_deepsky(n_frames=1, shape=SHAPE, seed=1, n_saturated=2, noise=False)
    f = s.frame(0, defects=False)
    assert np.sum(f == 65535) >= 2 * 4  # flat tops of several pixels


def test_write_fits_and_truth(tmp_path):
    from astropy.io import fits

    s = make_deepsky(n_frames=3, shape=(40, 48), seed=11, trail_frame=1)
    paths = s.write_fits(tmp_path)
    assert [p.name for p in paths] == ["synth_0000.fits", "synth_0001.fits", "synth_0002.fits"]
    with fits.open(paths[2]) as hdul:
        hd = hdul[0].header
        assert hd["BITPIX"] == 16 and hd["BZERO"] == 32768 and hd["EXPTIME"] == s.params.exptime
        assert np.array_equal(hdul[0].data, s.frame(2))
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["trail_frame"] == 1 and truth["files"] == [p.name for p in paths]
    t1 = Transform.from_list(truth["transforms"][1])
    assert np.allclose(t1.matrix, s.transforms[1].matrix)
    assert truth["params"]["shape"] == [40, 48]


def test_make_synthetic_script(tmp_path, monkeypatch):
    argv = ["make_synthetic.py", str(tmp_path / "out"), "--n", "2", "--size", "64x48", "--seed", "3",
            "--max-shift", "5", "--max-rot", "1", "--quiet"]
    monkeypatch.setattr(sys, "argv", argv)
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_synthetic.py"
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code == 0
    files = sorted((tmp_path / "out").glob("*.fits"))
    assert len(files) == 2
    truth = json.loads((tmp_path / "out" / "truth.json").read_text())
    ref = make_deepsky(n_frames=2, shape=(48, 64), seed=3, max_shift=5.0, max_rot_deg=1.0)
    assert np.allclose(Transform.from_list(truth["transforms"][1]).matrix, ref.transforms[1].matrix)


def test_with_params_keeps_the_layout():
    s = make_deepsky(n_frames=3, shape=SHAPE, seed=2)
    quiet = with_params(s, noise=False)
    assert np.allclose(quiet.transforms[2].matrix, s.transforms[2].matrix)
    assert np.array_equal(quiet.stars.x, s.stars.x)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        make_deepsky(n_frames=0)
    with pytest.raises(ValueError):
        make_deepsky(fwhm_range=(3.0, 2.0))
    with pytest.raises(IndexError):
        make_deepsky(n_frames=2, shape=SHAPE).frame(2)
