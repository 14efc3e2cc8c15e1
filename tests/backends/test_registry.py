"""``--backend auto|cpu|cupy|cv2cuda``: resolution, fallbacks, errors, lazy GPU imports."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skystack.backends import registry
from skystack.errors import BackendUnavailableError, UsageError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_gpu(monkeypatch):
    """As on a machine without CUDA, whatever this one has."""
    monkeypatch.setattr(registry, "cupy_device_count", lambda: 0)
    monkeypatch.setattr(registry, "cv2_cuda_device_count", lambda: 0)


def test_auto_is_cpu_without_a_gpu(no_gpu):
    assert registry.resolve("auto").name == "cpu"
    assert registry.resolve("cpu").name == "cpu"


def test_auto_is_cpu_on_this_machine():
    if registry.cupy_device_count() or registry.cv2_cuda_device_count():
        pytest.skip("this machine has a CUDA device")
    assert registry.resolve("auto").name == "cpu"


@pytest.mark.parametrize("name,hint", [("cupy", "--backend cpu"), ("cv2cuda", "--backend cupy / cpu")])
def test_asking_for_a_missing_gpu_backend_is_a_clear_error(no_gpu, name, hint):
    with pytest.raises(BackendUnavailableError) as err:
        registry.resolve(name)
    msg = str(err.value)
    assert msg.startswith(f"--backend {name}:") and hint in msg
    assert err.value.exit_code == 7


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="expected auto, cpu, cupy or cv2cuda"):
        registry.resolve("opencl")


def test_auto_falls_back_to_cpu_when_the_gpu_stack_is_broken(monkeypatch, caplog):
    """A device that CuPy's runtime counts but a CuPy that cannot be imported (a broken
    install) must not stop a run that the CPU can do: auto warns and uses the CPU."""
    monkeypatch.setattr(registry, "cupy_device_count", lambda: 1)
    monkeypatch.setattr(registry, "cv2_cuda_device_count", lambda: 0)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with caplog.at_level(logging.WARNING, logger="skystack"):
        backend = registry.resolve("auto")
    assert backend.name == "cpu"
    assert any("CuPy backend unusable" in r.getMessage() for r in caplog.records)


def test_auto_picks_cv2cuda_when_opencv_has_cuda_and_cupy_does_not(monkeypatch, fake_cv2cuda):
    monkeypatch.setattr(registry, "cupy_device_count", lambda: 0)
    backend = registry.resolve("auto")
    assert backend.name == "cv2cuda"


def test_import_skystack_never_imports_cupy(tmp_path):
    """With a (stand-in) CuPy importable, importing skystack, its registry and both GPU
    backend modules still loads neither CuPy nor numba.cuda: they load only when a GPU
    backend is constructed."""
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("# stand-in: importable, so an eager import would show in sys.modules\n")
    code = (
        "import sys\n"
        "import skystack, skystack.backends.registry, skystack.backends.cupy, skystack.backends.cv2cuda\n"
        "import skystack.backends._device\n"
        "loaded = [m for m in ('cupy', 'cupyx', 'numba.cuda') if m in sys.modules]\n"
        "print('LOADED', loaded)\n"
        "import cupy\n"  # the stand-in really is importable in this process
        "assert 'cupy' in sys.modules\n"
    )
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO / "src"), str(REPO / "kernels"),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
