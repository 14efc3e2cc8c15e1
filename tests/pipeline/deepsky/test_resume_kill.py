"""Fault injection: kill -9 and Ctrl-C (SIGINT) at random points of phase 1, phase 2 (tiles)
and the streaming mean, with the memory limit, the worker count and so the plan changing
between the runs; ``--resume`` must give the output of an uninterrupted run to the bit.

Each case is a seeded random point (how many journal records, or a delay after the first
mean checkpoint) at which a real subprocess is signalled; the invariant is checked
whatever the point turns out to be.
"""
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

N_FRAMES = 12
STRIPS = ["--strip-cols", "96"]  # 3 strips of 100 columns: 2-D tiles on small frames


@pytest.fixture(scope="module")
def lights(tmp_path_factory):
    s = make_deepsky(n_frames=N_FRAMES, shape=(200, 300), seed=21, max_shift=10.0, max_rot_deg=1.5, trail_frame=3,
                     star_density=2e-3)
    folder = tmp_path_factory.mktemp("lights")
    s.write_fits(folder)
    return folder


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # works installed or from a checkout
    return env


def _cmd(lights, out, method, limit, workers, *extra):
    return [sys.executable, "-m", "skystack.cli", "stack", str(lights), "-o", str(out), "--method", method,
            "--memory-limit", limit, "--workers", str(workers), "-q", "--no-preview", *STRIPS, *extra]


@pytest.fixture(scope="module")
def uninterrupted(lights, tmp_path_factory):
    """The reference outputs, one per method (the tile engine's output does not depend on
    the limit or the workers; the mean is streamed at every limit used here)."""
    out = {}
    folder = tmp_path_factory.mktemp("ref")
    for method in ("sigma", "mean"):
        path = folder / f"{method}.fits"
        subprocess.run(_cmd(lights, path, method, "64M", 2), check=True, env=_env())
        out[method] = fits.getdata(path)
    return out


def _lines(path) -> int:
    try:
        return path.read_text().count("\n")
    except OSError:
        return 0


def _signal_when(proc, ready, sig, delay_s, timeout=120.0) -> bool:
    """Send ``sig`` to ``proc`` ``delay_s`` after ``ready()`` first holds; False when the run
    ended first."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and proc.poll() is None:
        if ready():
            if delay_s:
                time.sleep(delay_s)  # the random point: a little later than the trigger
            if proc.poll() is not None:
                return False
            proc.send_signal(sig)
            proc.wait()
            return True
        time.sleep(0.002)  # polling the journal, not waiting for an outcome
    proc.wait()
    return False


# (stage, signal, seed, method, first run (limit, workers, extra), resumed run (limit, workers, extra))
CASES = [
    ("phase 1", signal.SIGKILL, 1, "sigma", ("6M", 1, []), ("64M", 2, [])),
    ("phase 1", signal.SIGINT, 2, "sigma", ("64M", 2, []), ("12M", 1, [])),
    # the resumed run is told to use shorter tiles: the plan is refined, nesting in the recorded one
    ("phase 2", signal.SIGKILL, 3, "sigma", ("64M", 1, ["--tile-rows", "32"]), ("8M", 2, ["--tile-rows", "8"])),
    ("phase 2", signal.SIGINT, 4, "sigma", ("8M", 1, ["--tile-rows", "8"]), ("64M", 2, [])),
    ("mean", signal.SIGKILL, 5, "mean", ("64M", 1, []), ("16M", 2, [])),
    ("mean", signal.SIGINT, 6, "mean", ("16M", 2, []), ("64M", 1, [])),
]


@pytest.mark.parametrize("stage,sig,seed,method,first,second", CASES,
                         ids=[f"{c[0]}-{signal.Signals(c[1]).name}-{c[2]}" for c in CASES])
def test_interrupt_then_resume_is_identical(lights, uninterrupted, tmp_path, stage, sig, seed, method, first,
                                            second):
    rng = np.random.default_rng(seed)
    out = tmp_path / "out.fits"
    journal = tmp_path / "out.fits.skystack-journal"
    limit, workers, extra = first
    proc = subprocess.Popen(_cmd(lights, out, method, limit, workers, *extra), env=_env(),
                            stderr=subprocess.DEVNULL)
    if stage == "phase 1":
        k = int(rng.integers(1, N_FRAMES - 2))
        ready = lambda: _lines(journal / "phase1.jsonl") >= k  # noqa: E731
    elif stage == "phase 2":
        k = int(rng.integers(1, 6))
        ready = lambda: _lines(journal / "tiles.jsonl") >= k  # noqa: E731
    else:
        ready = lambda: (journal / "mean.npz").exists()  # noqa: E731
    if not _signal_when(proc, ready, sig, float(rng.uniform(0, 0.02))):
        pytest.skip(f"the run finished before it could be interrupted in {stage} (machine too fast)")
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert not out.exists(), "nothing may be left under the output name after an interruption"
    frames_done, tiles_done = _lines(journal / "phase1.jsonl"), _lines(journal / "tiles.jsonl")
    limit, workers, extra = second
    r = subprocess.run(_cmd(lights, out, method, limit, workers, "--resume", *extra), env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(fits.getdata(out), uninterrupted[method], equal_nan=True)
    rep = json.loads((tmp_path / "out.fits.report.json").read_text())
    assert rep["resumed"]["phase1_frames_reused"] >= min(frames_done, N_FRAMES) - 1  # a torn last line
    if stage == "phase 2":
        assert rep["stack"]["plan_from_journal"] and rep["resumed"]["tiles_reused"] >= tiles_done - 1
        if "--tile-rows" in extra:
            assert rep["stack"]["tile_rows"] == 8  # refined from the recorded 32
    assert not journal.exists()  # cleaned up after success


def test_resume_that_cannot_hold_the_recorded_tiles_is_refused_then_works(lights, uninterrupted, tmp_path):
    out = tmp_path / "o.fits"
    journal = tmp_path / "o.fits.skystack-journal"
    proc = subprocess.Popen(_cmd(lights, out, "sigma", "64M", 1, "--tile-rows", "8"), env=_env(),
                            stderr=subprocess.DEVNULL)
    if not _signal_when(proc, lambda: _lines(journal / "tiles.jsonl") >= 2, signal.SIGKILL, 0):
        pytest.skip("the run finished before it could be killed")
    r = subprocess.run(_cmd(lights, out, "sigma", "1k", 1, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr and "memory-limit" in r.stderr, r.stderr
    assert journal.exists()  # the refusal keeps what was done
    r = subprocess.run(_cmd(lights, out, "sigma", "64M", 2, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(fits.getdata(out), uninterrupted["sigma"], equal_nan=True)


def test_resume_with_other_options_is_refused(lights, tmp_path):
    out = tmp_path / "o.fits"
    proc = subprocess.Popen(_cmd(lights, out, "sigma", "64M", 1), env=_env(), stderr=subprocess.DEVNULL)
    if not _signal_when(proc, lambda: _lines(tmp_path / "o.fits.skystack-journal" / "phase1.jsonl") >= 1,
                        signal.SIGKILL, 0):
        pytest.skip("the run finished before it could be killed")
    r = subprocess.run(_cmd(lights, out, "winsorized", "64M", 1, "--resume"), env=_env(), capture_output=True,
                       text=True)
    assert r.returncode == 2 and "different" in r.stderr and "without --resume" in r.stderr, r.stderr[-3000:]


# (what the limit trips, method, file size limit in bytes): the manifest (~2 kB), a phase-1
# line (~640 B each), the phase-2 accumulator (200x300 float32: 240 kB), the mean's checkpoint
FILE_LIMITS = [("run.json.part", "sigma", 1_000), ("phase1.jsonl", "sigma", 4_000),
               ("image.part.npy", "sigma", 60_000), ("mean.part.npz", "mean", 60_000)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
@pytest.mark.parametrize("trips,method,limit", FILE_LIMITS, ids=[c[0] for c in FILE_LIMITS])
def test_a_journal_the_disk_refuses_is_one_line_then_resumes(lights, uninterrupted, tmp_path, trips, method, limit):
    """A full disk, a quota or a file-size limit (FAT32's 4 GiB) that refuses the journal
    (a phase-1 line, the accumulator, the mean's checkpoint) ends the run with the output
    error, one line naming the journal's file and the reason, not a traceback; with room
    again, ``--resume`` finishes the run as if nothing had happened. The limit stands in for
    the disk: the kernel refuses writes past it with EFBIG, as a file system does past its
    largest file."""
    import resource

    from skystack.errors import OutputError

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the refusal as an error, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out.fits"
    r = subprocess.run(_cmd(lights, out, method, "64M", 2), env=_env(), capture_output=True, text=True,
                       preexec_fn=limited)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == OutputError.exit_code and len(lines) == 1, r.stderr[-3000:]
    assert trips in lines[0] and "file too large" in lines[0] and "--resume" in lines[0], lines[0]
    assert not out.exists()
    r = subprocess.run(_cmd(lights, out, method, "64M", 2, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(fits.getdata(out), uninterrupted[method], equal_nan=True)
    assert not (tmp_path / "out.fits.skystack-journal").exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(lights, uninterrupted, tmp_path):
    """Two runs on one output (a script started twice): the second would empty the first's
    journal under it, or add its records to it. It is refused instead, exit 6 and one line
    saying why, and the first run finishes with its own output; once the first has ended
    (even killed: the lock goes with the process) the output is free again."""
    out = tmp_path / "out.fits"
    journal = tmp_path / "out.fits.skystack-journal"
    first = subprocess.Popen(_cmd(lights, out, "sigma", "64M", 1, "--tile-rows", "8"), env=_env(),
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    # paused while it holds its journal, so that the second surely comes while it runs
    t_end = time.monotonic() + 120
    while _lines(journal / "phase1.jsonl") < 1 and first.poll() is None and time.monotonic() < t_end:
        time.sleep(0.002)
    if first.poll() is not None:
        pytest.skip("the first run finished before it could be paused")
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(_cmd(lights, out, "mean", "64M", 2), env=_env(), capture_output=True, text=True,
                                timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    first_err = first.communicate(timeout=120)[1]
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 6 and len(lines) == 1 and "another skystack run is writing this output" in lines[0], \
        second.stderr
    assert first.returncode == 0, first_err
    assert np.array_equal(fits.getdata(out), uninterrupted["sigma"], equal_nan=True)

    # killed mid-run: the journal stays, its lock does not
    killed = subprocess.Popen(_cmd(lights, out, "sigma", "64M", 1, "--tile-rows", "8"), env=_env(),
                              stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if not _signal_when(killed, lambda: _lines(journal / "phase1.jsonl") >= 1, signal.SIGKILL, 0):
        pytest.skip("the run finished before it could be killed")
    r = subprocess.run(_cmd(lights, out, "sigma", "64M", 2, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(fits.getdata(out), uninterrupted["sigma"], equal_nan=True)
