"""Fixtures of the backend tests: the GPU backends run under Numba's CUDA simulator (in a
subprocess), and the stand-in for ``cv2.cuda``.

This folder's helper modules (backend_cases, fake_cv2cuda, gpu_runner) are put on
``sys.path`` here, so test modules import them by name.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from backend_cases import gpu_tasks  # noqa: E402


@pytest.fixture
def fake_cv2cuda(monkeypatch):
    """Put the stand-in ``cv2.cuda`` (see fake_cv2cuda.py) in place for one test."""
    import cv2

    import fake_cv2cuda as fake

    monkeypatch.setattr(cv2, "cuda", fake.module(), raising=False)
    return fake


# ---------------------------------------------------------------------------------
# The numba.cuda kernels under Numba's CUDA simulator, in a subprocess

REPO = HERE.parents[1]
SIM_TIMEOUT_S = 600  # a generous cap; the whole run takes well under a minute on 2 cores


@pytest.fixture(scope="session")
def cudasim(tmp_path_factory):
    """Run :func:`gpu_tasks` through the GPU backends with ``NUMBA_ENABLE_CUDASIM=1`` in a
    subprocess (numba is already imported here without the simulator). Returns
    ``(results, cases, tasks)`` by task key."""
    import os
    import pickle
    import subprocess
    import sys

    tasks, cases = gpu_tasks()
    d = tmp_path_factory.mktemp("cudasim")
    tasks_path, results_path = d / "tasks.pkl", d / "results.pkl"
    with open(tasks_path, "wb") as f:
        pickle.dump(tasks, f)
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "kernels"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE / "gpu_runner.py"), str(tasks_path), str(results_path)],
                          env=env, cwd=str(REPO), capture_output=True, text=True, timeout=SIM_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"GPU backends under the CUDA simulator failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}", pytrace=False)
    with open(results_path, "rb") as f:
        results = pickle.load(f)
    return results, cases, tasks
