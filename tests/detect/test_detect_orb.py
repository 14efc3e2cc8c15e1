"""ORB keypoints on the robust 8-bit view."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from skystack.detect.orb import _is_sky, orb_features, stretch_u8
from skystack.testing.synthetic import make_deepsky


@pytest.fixture(scope="module")
def hot_frame():
    s = make_deepsky(n_frames=1, shape=(400, 600), seed=31, hot_pixel_fraction=1e-3)
    return s, s.frame(0).astype(np.float32)


def test_a_hot_pixel_does_not_set_the_white_point(hot_frame):
    _, f = hot_frame
    g = f.copy()
    g[10, 10] = 65535.0  # one saturated hot pixel, as min-max stretching would meet it
    assert np.array_equal(stretch_u8(f), stretch_u8(g))
    # the view is not collapsed: stars span the range, the sky is dark
    u8 = stretch_u8(f)
    assert np.percentile(u8, 50) < 30 and u8.max() == 255


def test_keypoints_avoid_hot_pixels(hot_frame):
    s, f = hot_frame
    feats = orb_features(f)
    assert len(feats) > 50
    d_hot = cKDTree(s.hot_pixels).query(feats.xy)[0]
    txy, _ = s.stars_in_frame(0, margin=-20)
    d_star = cKDTree(txy).query(feats.xy)[0]
    assert np.mean((d_hot < 2) & (d_star > 3)) < 0.01


def test_sky_keypoints_sit_on_star_centres(hot_frame):
    s, f = hot_frame
    feats = orb_features(f)
    txy, flux = s.stars_in_frame(0, margin=-20)
    visible = txy[flux > 1000]
    d = cKDTree(visible).query(feats.xy)[0]
    near = d < 3
    assert near.mean() > 0.5
    assert np.median(d[near]) < 0.3  # mean-shift refinement: centres, not FAST's rim points


def test_faint_view_is_binary_and_keeps_stars(hot_frame):
    _, f = hot_frame
    u8 = stretch_u8(f, faint=True)
    assert set(np.unique(u8)) <= {0, 255}
    assert len(orb_features(f, faint=True)) > 20


def test_scene_kinds():
    s = make_deepsky(n_frames=1, shape=(200, 300), seed=1)
    assert _is_sky(s.frame(0).astype(np.float32))
    rng = np.random.default_rng(0)
    import cv2

    texture = cv2.GaussianBlur(rng.normal(0, 50, (200, 300)).astype(np.float32), (0, 0), 4) + 1000
    assert not _is_sky(texture)


def test_empty_frame_has_no_keypoints():
    feats = orb_features(np.zeros((100, 100), np.float32))
    assert len(feats) == 0 and feats.descriptors.shape == (0, 32)
