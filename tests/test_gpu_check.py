"""``scripts/gpu-check`` on a machine without a GPU: a clear message and exit code 77
("skipped"), before anything is installed or run."""
from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check"


def _gpu_here() -> bool:
    if glob.glob("/dev/nvidia[0-9]*"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    out = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return any(line.startswith("GPU ") for line in out.stdout.splitlines())


def test_the_script_documents_its_exit_codes():
    head = SCRIPT.read_text().split("set -uo pipefail")[0]
    for code, meaning in (("0", "every GPU test passed"), ("77", "no NVIDIA GPU"), ("7", "CuPy cannot use it"),
                          ("10", "differs from the CPU backend")):
        assert any(line.lstrip("# ").startswith(code) and meaning in line for line in head.splitlines()), code


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_without_a_gpu_it_skips_with_exit_77_and_installs_nothing(tmp_path):
    if _gpu_here():
        pytest.skip("this machine has an NVIDIA GPU: gpu-check would run for real")
    # a copy in an empty checkout: the script works in its own repository root
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / "gpu-check")
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu-check")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "gpu-check: skipped: no NVIDIA GPU on this machine (nvidia-smi lists none, no /dev/nvidia*); "
        "nothing installed or run (exit 77)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scripts"]  # no .venv, no out/
