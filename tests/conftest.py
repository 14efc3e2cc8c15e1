"""Shared fixtures. Tests are CPU-only, deterministic and fast by default."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
