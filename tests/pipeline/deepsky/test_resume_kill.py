"""--resume after a kill (SIGKILL) at any point gives the output of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from astropy.io import fits

from skystack.testing.synthetic import make_deepsky


@pytest.fixture(scope="module")
def lights(tmp_path_factory):
    s = make_deepsky(n_frames=10, shape=(320, 400), seed=21, max_shift=10.0, max_rot_deg=1.0, trail_frame=3)
    folder = tmp_path_factory.mktemp("lights")
    s.write_fits(folder)
    return folder


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # works installed or from a checkout
    return env


def _cmd(lights, out, *extra):
    return [sys.executable, "-m", "skystack.cli", "stack", str(lights), "-o", str(out), "--method", "sigma",
            "--band-rows", "8", "--workers", "1", "-q", *extra]


def _kill_when(proc, path, lines, timeout=120.0):
    """SIGKILL ``proc`` as soon as ``path`` holds ``lines`` complete lines."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and proc.poll() is None:
        try:
            if path.read_text().count("\n") >= lines:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        except OSError:
            pass
        time.sleep(0.002)  # polling the journal, not waiting for an outcome
    proc.wait()
    return False


@pytest.fixture(scope="module")
def uninterrupted(lights, tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "ref.fits"
    subprocess.run(_cmd(lights, ref), check=True, env=_env())
    return fits.getdata(ref)


@pytest.mark.parametrize("stage,journal_file,lines", [("phase 1", "phase1.jsonl", 3), ("phase 2", "bands.jsonl", 2)])
def test_kill_then_resume_is_identical(lights, uninterrupted, tmp_path, stage, journal_file, lines):
    out = tmp_path / "out.fits"
    proc = subprocess.Popen(_cmd(lights, out), env=_env(), stderr=subprocess.DEVNULL)
    journal = tmp_path / "out.fits.skystack-journal"
    killed = _kill_when(proc, journal / journal_file, lines)
    if not killed:
        pytest.skip(f"the run finished before it could be killed in {stage} (machine too fast)")
    assert not out.exists(), "nothing may be left under the output name after a kill"
    done = (journal / journal_file).read_text().count("\n")
    r = subprocess.run(_cmd(lights, out, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(fits.getdata(out), uninterrupted, equal_nan=True)
    rep = json.loads((tmp_path / "out.fits.report.json").read_text())
    key = "phase1_frames_reused" if stage == "phase 1" else "bands_reused"
    assert rep["resumed"][key] >= min(done, lines)
    assert not journal.exists()  # cleaned up after success


def test_resume_with_other_options_is_refused(lights, tmp_path):
    out = tmp_path / "o.fits"
    proc = subprocess.Popen(_cmd(lights, out), env=_env(), stderr=subprocess.DEVNULL)
    if not _kill_when(proc, tmp_path / "o.fits.skystack-journal" / "phase1.jsonl", 1):
        pytest.skip("the run finished before it could be killed")
    cmd = _cmd(lights, out, "--resume")
    cmd[cmd.index("sigma")] = "winsorized"
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "different" in r.stderr and "without --resume" in r.stderr
