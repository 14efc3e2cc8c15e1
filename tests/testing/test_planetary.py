"""The synthetic lucky-imaging generator: its truth must be exact for the other tests to mean anything."""
from __future__ import annotations

import cv2
import numpy as np

from skystack.errors import BadFrameError
from skystack.testing.planetary import (ArrayFrames, Seeing, bad_frame, debayer_bilinear, make_lunar_video,
                                        make_planet_video, mosaic)


def _dewarp(frame, sx, sy):
    h, w = frame.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(frame.astype(np.float32), gx + sx, gy + sy, cv2.INTER_CUBIC)


def test_frames_are_deterministic_and_order_free():
    a = make_lunar_video(10, (64, 64), seed=3)
    b = make_lunar_video(10, (64, 64), seed=3)
    f7 = a.frame(7)
    assert np.array_equal(f7, b.frame(7))
    a.frame(2)
    assert np.array_equal(a.frame(7), f7)
    assert not np.array_equal(a.frame(6), f7)
    assert f7.dtype == np.uint8 and f7.shape == (64, 64)


def test_displacement_truth_reproduces_the_frame(moon_video):
    """Undoing the known displacement field gives the blurred truth up to the noise; using
    the global shift alone leaves a larger error (the local field is real)."""
    v = moon_video
    for i in (0, 17, 42):
        sx, sy = v.displacement(i)
        blurred = cv2.GaussianBlur(v.truth, (0, 0), float(v.blur[i]))
        f = v.frame(i)
        full = _dewarp(f, sx, sy)
        glob = _dewarp(f, np.full_like(sx, v.shifts[i, 0]), np.full_like(sy, v.shifts[i, 1]))
        m = 20
        e_full = np.sqrt(np.mean((full - blurred)[m:-m, m:-m] ** 2))
        e_glob = np.sqrt(np.mean((glob - blurred)[m:-m, m:-m] ** 2))
        assert e_full < 1.15 * v.seeing.noise_adu  # noise 2 ADU (+ quantisation, - interpolation smoothing)
        assert e_glob > 1.2 * e_full


def test_distortion_is_zero_mean_with_the_requested_rms():
    v = make_lunar_video(3, (128, 160), seed=1, seeing=Seeing(distortion_px=1.5, distortion_cell_px=40))
    dx, dy = v.distortion(1)
    assert dx.shape == (128, 160)
    assert abs(float(dx.mean())) < 1e-4 and abs(float(dy.mean())) < 1e-4
    assert abs(np.sqrt(np.mean(dx ** 2 + dy ** 2)) - 1.5) < 1e-4


def test_blur_draw_is_skewed_to_soft_frames(moon_video):
    lo, hi = moon_video.seeing.blur_sigma
    b = moon_video.blur
    assert lo <= b.min() and b.max() <= hi
    assert np.mean(b < lo + 0.25 * (hi - lo)) < 0.25  # sharp frames are the lucky few


def test_blank_frames_and_float_output():
    v = make_lunar_video(5, (32, 32), seed=2, blank_frames=[3], dtype="float32")
    assert not v.frame(3).any()
    assert v.frame(2).dtype == np.float32


def test_planet_scene_is_a_disk_of_the_requested_radius():
    v = make_planet_video(4, (160, 200), seed=1, radius_px=40.0, seeing=Seeing(distortion_px=0.0, jitter_px=0.0,
                                                                                  noise_adu=0.0))
    t = v.truth
    lit = t > v.black_adu + 1.0
    area = float(lit.sum())
    assert abs(area - np.pi * 40.0 * 40.0 * 0.935) / area < 0.05  # oblate by Jupiter's flattening
    ys, xs = np.nonzero(lit)
    assert abs(xs.mean() - 99.5) < 0.5 and abs(ys.mean() - 79.5) < 0.5  # centred


def test_mosaic_and_debayer_keep_colour_order():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
        m = mosaic(rgb, pattern)
        back = debayer_bilinear(m, pattern)
        inner = back[2:-2, 2:-2]
        assert inner[..., 0].min() > 150 and inner[..., 1].max() < 30 and inner[..., 2].max() < 30, pattern


def test_colour_video_with_dispersion_and_bayer():
    v = make_planet_video(2, (100, 120), seed=4, radius_px=25, color=True,
                          dispersion_px=((0.0, -2.0), (0.0, 0.0), (0.0, 2.0)),
                          seeing=Seeing(jitter_px=0.0, distortion_px=0.0, noise_adu=0.0, blur_sigma=(0.5, 0.6)))
    f = v.frame(0).astype(np.float32)
    assert f.shape == (100, 120, 3)

    def cy(plane):
        w = np.clip(plane - 10, 0, None)
        return float((w.sum(axis=1) * np.arange(plane.shape[0])).sum() / w.sum())

    # red is displaced up (-y) and blue down relative to green by the requested amounts
    assert abs(cy(f[..., 0]) - cy(f[..., 1]) + 2.0) < 0.3
    assert abs(cy(f[..., 2]) - cy(f[..., 1]) - 2.0) < 0.3
    b = make_planet_video(2, (100, 120), seed=4, radius_px=25, bayer="RGGB")
    assert b.frame(1).shape == (100, 120)


def test_array_frames_interface_and_bad_frames():
    v = make_lunar_video(3, (32, 32), seed=2)
    fs = ArrayFrames([v.frame(0), bad_frame("clip.ser", "truncated"), v.frame(2)], name="clip.ser")
    assert len(fs) == 3 and fs.name(2) == "clip.ser#2"
    assert fs.read(0).dtype == np.float32 and fs.luminance(0).shape == (32, 32)
    try:
        fs.read(1)
    except BadFrameError as e:
        assert e.reason == "truncated" and e.path == "clip.ser"
    else:
        raise AssertionError("frame 1 should be unreadable")
    assert fs.info(0).shape == (32, 32)
