"""Running a test module again under Numba's CUDA simulator, in a subprocess.

The simulator must be on before numba is imported, and the test session has imported it
already; so a module whose GPU tests cannot run natively (no device) has one launcher test
that runs the whole module again with ``NUMBA_ENABLE_CUDASIM=1`` and checks that
everything in it ran there but the launcher itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def native_gpu() -> bool:
    """A CUDA device CuPy can use, with the simulator off."""
    if SIMULATOR:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


def run_module_under_simulator(test_file: str, what: str) -> None:
    """Run ``test_file`` with the simulator on; fail with its output unless every test in it
    passed but the one launcher, which skips inside the simulator run."""
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "kernels"), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "pytest", str(Path(test_file)), "-q", "-p", "no:cacheprovider"],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"{what} under the CUDA simulator failed:\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and re.search(r"\b1 skipped\b", summary), tail


def simulated_module(test_file: str, what: str, native: bool):
    """The two pieces every GPU test module has: the ``here`` mark for its GPU tests (they
    run natively with a device, else inside the simulator run) and its launcher test,
    which the module binds to a ``test_*_under_cudasim`` name."""
    here = pytest.mark.skipif(
        not (SIMULATOR or native),
        reason="no CUDA device (CuPy + GPU) here: these run under the CUDA simulator in a subprocess, "
               "see this module's *_under_cudasim test")

    @pytest.mark.cudasim
    @pytest.mark.skipif(SIMULATOR, reason="this is the simulator run itself")
    @pytest.mark.skipif(native, reason=f"a CUDA device is present: the {what} ran natively")
    def launcher():
        run_module_under_simulator(test_file, what)

    return here, launcher
