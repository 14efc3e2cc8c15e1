"""Shared fixtures. Tests are CPU-only, deterministic and fast by default."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI included): a failure reproduces,
# and a pass is not luck of the draw. (They once drew at random: an asinh stretch 1e-7 above
# 1 turned up in one run in three.)
settings.register_profile("skystack", derandomize=True, database=None)
settings.load_profile("skystack")

from skystack.register.planetary import PhaseCorrelator, shift_image
from skystack.testing.planetary import Seeing, make_lunar_video, make_planet_video

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    # CI and developer machines keep the real captures in ../shared/data beside the clone
    # (a git worktree one folder deeper finds the same folder two levels up); SKYSTACK_DATA
    # overrides. They are never copied into the repo (their licences differ).
    env = os.environ.get("SKYSTACK_DATA")
    if env:
        return Path(env)
    candidates = [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_DATA = _shared_data()
_ABSENT = (f"real data folder {SHARED_DATA} is absent (put the captures in ../shared/data beside the "
           "repository, or point SKYSTACK_DATA at them)")


@pytest.fixture(scope="session", autouse=True)
def _interruptible_children():
    """Tests interrupt the commands they start with SIGINT, as a terminal's Ctrl-C does. A
    test run started in the background (``scripts/test &`` in a script, some CI runners)
    inherits SIGINT ignored, an ignored signal stays ignored through fork and exec, and
    the commands would never see the Ctrl-C. Python's own handler here instead: a fork
    inherits it, an exec resets it to the default (the command installs its own)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config):
    """Say which real data the run uses, so that a run without it does not skip silently."""
    return f"real data: {SHARED_DATA}" if SHARED_DATA.is_dir() else f"real data: none; {_ABSENT}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real captures; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(_ABSENT)
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_path():
    """``real_path("folder/file")``: a path inside the real data folder, or a skip naming
    what is missing. A fixture (not an importable helper): test modules are imported in
    importlib mode, where ``conftest`` is not a module name one can rely on."""
    def get(rel: str) -> Path:
        p = SHARED_DATA / rel
        if not p.exists():
            pytest.skip(f"real data {p} is absent" + ("" if SHARED_DATA.is_dir() else f"; {_ABSENT}"))
        return p
    return get


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# -- lucky imaging: small seeded synthetic videos with their truth (tests/pipeline/lucky,
# tests/register, tests/quality, tests/enhance, tests/stack share them) ------------------
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
    img = np.asarray(image, np.float32)
    filled = np.where(np.isfinite(img), img, np.float32(np.nanmedian(img)))
    s = PhaseCorrelator(truth.astype(np.float32), peak_sigma=2.0, window="tukey").measure(filled)
    moved = shift_image(filled, s.sx, s.sy)
    d = (moved.astype(np.float64) - truth)[margin:-margin, margin:-margin]
    return float(np.sqrt(np.mean(d ** 2)))


@pytest.fixture(scope="session")
def rmse_to():
    return rmse
