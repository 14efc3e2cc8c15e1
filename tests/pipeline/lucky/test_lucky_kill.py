"""kill -9 and Ctrl-C of ``skystack lucky`` at points through a two-worker run (start-up,
ranking, stacking, writing): no process of the run is left behind (the forked workers and
the FITS writer die with it), no stack is half-written, and Ctrl-C is one line."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from skystack.io import write_ser
from skystack.testing.planetary import make_lunar_video

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers: Linux")

# Runs the command as its child and becomes the subreaper of everything the command forks,
# so that an orphan (a worker whose parent was killed) comes back to it: it kills the
# command after a delay, waits for the orphans to end and prints those that did not.
_REAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
delay, how, cmd = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
time.sleep(delay)
finished = run.poll() is not None  # ended already (a loaded machine): reaped, no signal
if finished:
    pass
elif how == "kill":  # kill -9 of the command alone: its children are orphaned
    run.send_signal(signal.SIGKILL)
else:  # Ctrl-C: the terminal interrupts the whole foreground process group
    os.killpg(run.pid, signal.SIGINT)
err = run.communicate(timeout=60)[1]


def children():
    me = os.getpid()
    return [int(c) for t in os.listdir(f"/proc/{me}/task")
            for c in open(f"/proc/{me}/task/{t}/children").read().split()]


deadline = time.monotonic() + 10.0
while children() and time.monotonic() < deadline:
    try:
        os.waitpid(-1, os.WNOHANG)  # orphans that ended come back as zombies: reap them
    except ChildProcessError:
        break
    time.sleep(0.02)
left = children()
for pid in left:
    os.kill(pid, signal.SIGKILL)
print(json.dumps({"finished": finished, "left": left, "rc": run.returncode, "stderr": err}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 800-frame video and how long a whole two-worker run of it takes here (the kills
    fall at fractions of that, so that they hit the same phases on a slower machine)."""
    import subprocess
    import time

    frames = list(make_lunar_video(100, (240, 320), seed=8).frames())
    d = tmp_path_factory.mktemp("kill")
    video = d / "moon.ser"
    write_ser(video, (frames[k % len(frames)] for k in range(800)))
    t0 = time.perf_counter()
    subprocess.run(_command(video, d / "whole.fits"), check=True, capture_output=True, timeout=300)
    return video, time.perf_counter() - t0


def _run_and_stop(video, out, delay: float, how: str) -> dict:
    import json
    import subprocess

    r = subprocess.run([sys.executable, "-c", _REAPER, str(delay), how, *_command(video, out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _command(video, out) -> list[str]:
    return [sys.executable, "-m", "skystack.cli", "lucky", str(video), "-o", str(out), "--workers", "2", "-q"]


@pytest.mark.parametrize("fraction", [0.25, 0.45, 0.65, 0.85])
def test_a_killed_run_leaves_no_process_and_no_half_stack(tmp_path, run, fraction):
    from astropy.io import fits

    video, duration = run
    out = tmp_path / "out" / "stack.fits"
    got = _run_and_stop(video, out, fraction * duration, "kill")
    assert got["left"] == [], f"processes left behind after kill -9 at {fraction:.0%} of the run: {got['left']}"
    if out.exists():  # written before the kill: whole
        with fits.open(out) as hdul:
            assert np.isfinite(hdul[0].data).all()
    visible = [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] if out.parent.exists() else []
    assert all(n.startswith("stack.") for n in visible), visible


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.8, 0.9, 0.95])
def test_ctrl_c_stops_the_run_in_one_line(tmp_path, run, fraction):
    """Ctrl-C reaches every process of the run: the command says it was interrupted, in
    one line (no traceback from the workers or the FITS writer, no --resume the lucky
    command does not have), exits with 130 and leaves no process behind. An interrupt
    that comes once the work is done (the last fractions, on a machine as fast as the
    fixture's run) finds the process exiting: it ends as the run did, 0 and silent
    (``-q``), its outputs whole."""
    from astropy.io import fits

    video, duration = run
    out = tmp_path / "stack.fits"
    got = _run_and_stop(video, out, fraction * duration, "int")
    if got["finished"]:
        pytest.skip("the run ended before the interrupt")
    assert got["left"] == []
    if got["rc"] == 0:
        assert got["stderr"] == ""
        with fits.open(out) as hdul:
            assert np.isfinite(hdul[0].data).all()
        assert Path(str(out) + ".report.json").stat().st_size > 0
        return
    assert got["rc"] == 130, got
    assert got["stderr"].strip() == "skystack: interrupted; nothing was half-written: rerun the command to start over"


# Runs the command with a Ctrl-C (SIGINT to itself) raised by the first exit handler, i.e.
# while the finished command's process shuts down.
_INTERRUPTED_EXIT = r"""
import atexit, os, signal, sys
from skystack.cli.main import main

atexit.register(os.kill, os.getpid(), signal.SIGINT)  # registered last: runs first
sys.argv = ["skystack", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize("fails", [False, True], ids=["stacked", "error"])
def test_ctrl_c_while_the_finished_command_exits_changes_nothing(tmp_path, run, fails):
    """Once the command's work is done (stack written, or its error reported), a Ctrl-C
    that lands in the interpreter's shutdown neither kills the process by SIGINT nor prints
    a KeyboardInterrupt traceback from an exit handler: the exit code and output are the
    run's own. (Before, interrupts in the last tenth of a run did either, 8 times in 40.)"""
    import subprocess

    video, _ = run
    src = tmp_path / "missing.ser" if fails else video
    out = tmp_path / "stack.fits"
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_EXIT, "lucky", str(src), "-o", str(out), "-q",
                        "--workers", "2"], capture_output=True, text=True, timeout=120)
    if fails:
        assert r.returncode not in (0, 130, -2), r
        assert len(r.stderr.strip().splitlines()) == 1 and "missing.ser" in r.stderr, r.stderr
        assert not out.exists()
    else:
        assert (r.returncode, r.stderr) == (0, ""), r
        assert out.exists() and Path(str(out) + ".report.json").exists()
