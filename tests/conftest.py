"""Shared fixtures. Tests are CPU-only, deterministic and fast by default."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    # CI and developer machines keep the real captures in ../shared/data beside the clone;
    # SKYSTACK_DATA overrides. They are never copied into the repo (their licences differ).
    env = os.environ.get("SKYSTACK_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real captures; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_path():
    """``real_path("folder/file")``: a path inside the real data folder, or a skip naming
    what is missing. A fixture (not an importable helper): test modules are imported in
    importlib mode, where ``conftest`` is not a module name one can rely on."""
    def get(rel: str) -> Path:
        p = SHARED_DATA / rel
        if not p.exists():
            pytest.skip(f"real data {p} is absent")
        return p
    return get


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
