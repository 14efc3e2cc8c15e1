"""Global alignment: phase correlation, planet centroid, mode choice, resampling."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.register.planetary import (GlobalAligner, PhaseCorrelator, crop_shifted, disk_centroid,
                                         fast_len_below, pick_mode, shift_image, valid_rect)
from skystack.testing.planetary import Seeing, make_lunar_video, make_planet_video


def fourier_shift(img: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """``out(p) = img(p - s)`` exactly (band-limited, circular): the frame shows the
    reference content displaced by ``+s``."""
    h, w = img.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fx * sx + fy * sy)))).astype(np.float32)


@pytest.fixture(scope="module")
def texture(moon_video):
    return moon_video.truth.astype(np.float32)


@pytest.mark.parametrize("sx,sy", [(0.0, 0.0), (0.3, -0.7), (-3.45, 2.2), (12.6, -9.1)])
def test_phase_correlation_recovers_subpixel_shifts(texture, sx, sy):
    corr = PhaseCorrelator(texture, peak_sigma=1.5, window="tukey")
    s = corr.measure(fourier_shift(texture, sx, sy))
    assert abs(s.sx - sx) < 0.03 and abs(s.sy - sy) < 0.03
    assert s.response > 0.5


def test_convention_frame_at_p_plus_s_is_reference_at_p(texture):
    """A frame whose content sits 5 px further right and 3 px lower has s = (5, 3), and
    shift_image(frame, s) puts it back on the reference grid."""
    frame = np.zeros_like(texture)
    frame[3:, 5:] = texture[:-3, :-5]
    corr = PhaseCorrelator(texture, peak_sigma=1.5, window="tukey")
    s = corr.measure(frame)
    assert abs(s.sx - 5) < 0.05 and abs(s.sy - 3) < 0.05
    back = shift_image(frame, 5.0, 3.0)
    y0, y1, x0, x1 = valid_rect(frame.shape, 5.0, 3.0)
    assert (y0, y1, x0, x1) == (0, 253, 0, 251)
    assert np.allclose(back[10:240, 10:240], texture[10:240, 10:240], atol=1e-3)


def test_batched_correlation_equals_single(texture, rng):
    patches = np.stack([texture[i * 32:i * 32 + 64, 40:104] for i in range(4)])
    moved = np.stack([fourier_shift(p, float(dx), float(dy)) for p, (dx, dy) in
                      zip(patches, rng.uniform(-2, 2, (4, 2)))])
    corr = PhaseCorrelator(patches, peak_sigma=2.0, window="hann")
    many, resp = corr.measure_many(moved)
    for k in range(4):
        one = PhaseCorrelator(patches[k], peak_sigma=2.0, window="hann").measure(moved[k])
        assert abs(one.sx - many[k, 0]) < 1e-6 and abs(one.sy - many[k, 1]) < 1e-6
        assert abs(one.response - resp[k]) < 1e-6
    with pytest.raises(ValueError, match="differs from the reference"):
        corr.measure_many(moved[:, :32, :32])


def test_no_match_has_a_low_response(texture, rng):
    corr = PhaseCorrelator(texture, peak_sigma=1.5, window="tukey")
    noise = rng.normal(0, 1, texture.shape).astype(np.float32)
    assert corr.measure(noise).response < 0.05


@pytest.mark.parametrize("downsample", [1, 2])
def test_global_aligner_on_synthetic_frames(downsample):
    v = make_lunar_video(20, (240, 320), seed=8, seeing=Seeing(jitter_px=6.0, distortion_px=0.0, noise_adu=2.0))
    al = GlobalAligner(v.truth, (16, 224, 16, 304), peak_sigma=2.0, downsample=downsample)
    err = []
    for i in range(len(v)):
        coarse = (round(v.shifts[i, 0] + 1.4), round(v.shifts[i, 1] - 0.8))  # an imperfect hint
        s, inside = al.measure(v.frame(i).astype(np.float32), coarse)
        err.append((s.sx - v.shifts[i, 0], s.sy - v.shifts[i, 1]))
        assert inside > 0.9
    # frames blurred by up to 2.6 px with 2 ADU of noise on a low-contrast scene
    assert np.sqrt(np.mean(np.square(err))) < 0.07
    assert np.all(np.abs(np.mean(err, axis=0)) < 0.02)  # no bias


def test_global_aligner_far_hint_pads_and_still_measures(texture):
    frame = fourier_shift(texture, 30.4, -20.2)
    al = GlobalAligner(texture, (40, 216, 40, 216))
    s, inside = al.measure(frame, (30, -20))
    assert abs(s.sx - 30.4) < 0.05 and abs(s.sy + 20.2) < 0.05
    assert inside == 1.0


def test_crop_shifted_pads_outside():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    crop, inside = crop_shifted(img, (0, 4, 0, 4), 8, 8)
    assert crop.shape == (4, 4)
    assert inside == 0.25
    assert np.array_equal(crop[:2, :2], img[8:10, 8:10])
    assert np.allclose(crop[2:, 2:], img[8:10, 8:10].mean())
    crop, inside = crop_shifted(img, (0, 4, 0, 4), 20, 20)
    assert inside == 0.0


def test_disk_centroid_tracks_the_planet(planet_video):
    v = planet_video
    c0 = disk_centroid(v.frame(0).astype(np.float32))
    assert c0 is not None and not c0.touches_edge
    assert abs(c0.radius - 40.0 * np.sqrt(0.935)) < 2.5
    err = []
    for i in range(1, 20):
        d = disk_centroid(v.frame(i).astype(np.float32))
        err.append((d.cx - c0.cx - (v.shifts[i, 0] - v.shifts[0, 0]),
                    d.cy - c0.cy - (v.shifts[i, 1] - v.shifts[0, 1])))
    # blur and the local seeing field (its mean over the disk is not zero) move the
    # centroid a little: it is the coarse position that phase correlation then refines
    assert np.sqrt(np.mean(np.square(err))) < 0.35


def test_disk_touching_the_edge_and_empty_frames():
    v = make_planet_video(1, (120, 120), seed=1, radius_px=30.0)
    f = v.frame(0).astype(np.float32)
    edge = np.zeros_like(f)
    edge[:, :60] = f[:, 40:100]  # the disk cut by the left border
    assert disk_centroid(edge).touches_edge
    assert disk_centroid(np.zeros((50, 50), np.float32)) is None


def test_pick_mode(planet_video, moon_video):
    assert pick_mode(planet_video.frame(0).astype(np.float32))[0] == "planet"
    mode, why = pick_mode(moon_video.frame(0).astype(np.float32))
    assert mode == "surface" and "lit" in why
    assert pick_mode(np.zeros((40, 40), np.float32))[0] == "surface"
    # the Moon's limb crossing the field (half lit, touching the border) is a surface too
    half = moon_video.frame(0).astype(np.float32)
    half[:, 128:] = 3.0
    assert pick_mode(half)[0] == "surface"


def test_fast_len_below():
    assert fast_len_below(480) == 480
    assert fast_len_below(491) == 486  # 2 * 3^5
    assert fast_len_below(1) == 1


def test_fast_len_below_keeps_the_lengths_scipy_calls_fast():
    from scipy.fft import next_fast_len
    fast = [m for m in range(1, 2049) if next_fast_len(m, real=True) == m]
    for n in range(1, 2049):
        assert fast_len_below(n) == max(m for m in fast if m <= n)
