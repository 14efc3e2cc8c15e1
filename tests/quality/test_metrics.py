"""Sharpness metric: ranks frames by their true blur, ignores brightness changes."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from skystack.quality.metrics import (BLANK_SPAN, frame_quality, gaussian_ksize, gradient_energy,
                                      gradient_energy_map, quality_of_view, region_quality, sharpness_view,
                                      signal_span)


def test_quality_ranks_frames_by_true_blur(moon_video):
    q = np.array([frame_quality(moon_video.frame(i)).quality for i in range(len(moon_video))])
    rho, _ = spearmanr(q, moon_video.blur)
    assert rho < -0.95  # sharper (smaller sigma) frames score higher, almost perfectly in order
    top = np.argsort(-q)[:12]
    # the 12 frames chosen are among the sharpest: their blur is well below the median
    assert np.median(moon_video.blur[top]) < np.percentile(moon_video.blur, 20)


def test_quality_is_invariant_to_gain_and_offset(moon_video):
    f = moon_video.frame(int(np.argmin(moon_video.blur))).astype(np.float32)
    q0 = frame_quality(f).quality
    q1 = frame_quality(0.37 * f + 55.0).quality
    assert abs(q1 - q0) / q0 < 1e-3
    # but not to blur
    import cv2

    assert frame_quality(cv2.GaussianBlur(f, (0, 0), 2.0)).quality < 0.75 * q0


def test_blank_frames():
    z = np.zeros((64, 64), np.uint8)
    q = frame_quality(z)
    assert q.blank and q.quality == 0.0
    c = np.full((64, 64), 200.0, np.float32)
    assert frame_quality(c).blank
    n = np.random.default_rng(1).normal(100, 3, (64, 64)).astype(np.float32)
    assert not frame_quality(n).blank
    assert BLANK_SPAN > 0


def test_view_and_gradient_energy():
    img = np.tile(np.arange(64, dtype=np.float32), (32, 1))  # a unit ramp along x
    v = sharpness_view(img, downsample=2, sigma=0.0)
    assert v.shape == (16, 32)
    # a unit ramp on the full grid is a ramp of 2 per view pixel: energy 4 inside
    g = gradient_energy_map(v)
    assert np.allclose(g[2:-2, 2:-2], 4.0, atol=1e-4)
    assert abs(gradient_energy(v) - float(g.mean())) < 1e-3


def test_signal_span_uses_the_dark_end():
    img = np.full((100, 100), 10.0, np.float32)
    img[20:80, 20:80] = 110.0
    bg, span = signal_span(img)
    assert bg == 10.0
    assert abs(span - (img.mean() - 10.0)) < 1e-4


def test_region_quality_prefers_textured_regions(rng):
    img = np.full((64, 128), 50.0, np.float32)
    img[:, :64] += rng.normal(0, 10, (64, 64)).astype(np.float32)
    view = sharpness_view(img, downsample=1, sigma=1.0)
    q = region_quality(view, np.array([[32.0, 32.0], [96.0, 32.0], [-100.0, -100.0]]), 32, signal=50.0)
    assert q[0] > 20 * q[1]
    assert np.isnan(q[2])


def test_quality_of_view_matches_frame_quality(moon_video):
    f = moon_video.frame(9)
    a = frame_quality(f)
    b = quality_of_view(sharpness_view(f, downsample=2, sigma=0.7))
    assert a == b


def test_gaussian_ksize():
    assert gaussian_ksize(1.0) == 7 and gaussian_ksize(0.5) == 5 and gaussian_ksize(2.0) == 11
