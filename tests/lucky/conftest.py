"""Fixtures for the lucky-imaging tests: small seeded synthetic videos with their truth."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.testing.planetary import Seeing, make_lunar_video, make_planet_video

# 120 frames of 256x256: the Moon under seeing whose local distortions (1 px RMS over ~64 px)
# are large enough that global alignment alone leaves visible smear
MOON_SEEING = Seeing(jitter_px=2.0, distortion_px=1.0, distortion_cell_px=64.0, blur_sigma=(0.6, 2.6),
                     noise_adu=2.0)


@pytest.fixture(scope="session")
def moon_video():
    return make_lunar_video(120, (256, 256), seed=5, seeing=MOON_SEEING)


@pytest.fixture(scope="session")
def moon_frames(moon_video):
    return moon_video.as_frameset()


@pytest.fixture(scope="session")
def planet_video():
    return make_planet_video(60, (160, 200), seed=11, radius_px=40.0)


@pytest.fixture(scope="session")
def planet_frames(planet_video):
    return planet_video.as_frameset()


def rmse(image: np.ndarray, truth: np.ndarray, margin: int = 16) -> float:
    """RMS difference from the truth after registering the image onto it.

    A stack lands on its reference's grid, which sits wherever the mean of the best frames'
    jitter put it (a fraction of a pixel from the generator's origin); that offset says
    nothing about the stack's quality, so it is measured and removed first.
    """
    from skystack.register.planetary import PhaseCorrelator, shift_image

    img = np.asarray(image, np.float32)
    filled = np.where(np.isfinite(img), img, np.float32(np.nanmedian(img)))
    s = PhaseCorrelator(truth.astype(np.float32), peak_sigma=2.0, window="tukey").measure(filled)
    moved = shift_image(filled, s.sx, s.sy)
    d = (moved.astype(np.float64) - truth)[margin:-margin, margin:-margin]
    return float(np.sqrt(np.mean(d ** 2)))


@pytest.fixture(scope="session")
def rmse_to():
    return rmse
