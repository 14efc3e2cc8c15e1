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
    d = (np.asarray(image, np.float64) - truth)[margin:-margin, margin:-margin]
    return float(np.sqrt(np.nanmean(d ** 2)))


@pytest.fixture(scope="session")
def rmse_to():
    return rmse
