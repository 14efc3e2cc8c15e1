"""The star detector against the field's own library: SEP (Source Extractor as a library)
for the sky background and noise and for windowed centroids. Only the public
``detect_stars`` results are compared."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.detect.stars import detect_stars
from skystack.testing.synthetic import make_deepsky

sep = pytest.importorskip("sep")


@pytest.fixture(scope="module")
def frame():
    s = make_deepsky(n_frames=1, shape=(300, 400), seed=1, extended=False, trail_frame=None, star_density=1.5e-3)
    return s, s.frame(0).astype(np.float64)


def test_background_and_noise_agree_with_sep(frame):
    s, f = frame
    stars = detect_stars(f.astype(np.float32), max_stars=25)
    bkg = sep.Background(f)
    assert abs(stars.background - bkg.globalback) < 0.05 * bkg.globalrms
    assert stars.noise == pytest.approx(bkg.globalrms, rel=0.05)


def test_centroids_agree_with_sep_windowed_positions_and_the_truth(frame):
    s, f = frame
    stars = detect_stars(f.astype(np.float32), max_stars=25)
    sub = f - sep.Background(f).back()
    wx, wy, flags = sep.winpos(sub, stars.x, stars.y, np.full(len(stars.x), s.fwhm[0] / 2.3548))
    assert not flags.any()
    assert np.median(np.hypot(wx - stars.x, wy - stars.y)) < 0.05
    truth, _ = s.stars_in_frame(0)

    def err(x, y):
        return np.hypot(x[:, None] - truth[None, :, 0], y[:, None] - truth[None, :, 1]).min(axis=1)

    ours, theirs = np.median(err(stars.x, stars.y)), np.median(err(wx, wy))
    assert ours <= 1.25 * theirs, (ours, theirs)  # measured: 0.081 px against SEP's 0.093 px
