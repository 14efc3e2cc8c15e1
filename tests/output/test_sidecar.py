"""The FITS writer process: the same file as a write here, the write's own errors, a
write here when the writer has gone, no writer left behind by a killed parent; and
``skystack lucky`` leaves astropy out of its own process when it has one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from skystack.errors import OutputError
from skystack.output.sidecar import FitsSidecar, SidecarGone, write_fits_via
from skystack.output.write import write_fits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the writer process is forked: Linux")

_HEADER = {"OBJECT": ("Jupiter", "observed object"), "NCOMBINE": (42, "frames stacked")}


def _image(colour: bool) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.random((37, 53, 3) if colour else (37, 53)).astype(np.float32)


@pytest.mark.parametrize("colour", [False, True])
def test_the_writer_writes_the_same_file_as_this_process(tmp_path, colour):
    image = _image(colour)
    here = write_fits(tmp_path / "here.fits", image, header=_HEADER, history=["a", "b" * 150])
    with FitsSidecar.start() as writer:
        assert writer.alive
        there = writer.write(tmp_path / "there.fits", image, header=_HEADER, history=["a", "b" * 150])
        assert writer.cpu_s >= 0.0
    assert there == tmp_path / "there.fits"
    assert there.read_bytes() == here.read_bytes()
    assert not writer.alive  # closed


def test_the_writes_own_error_comes_back_as_it_is(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with FitsSidecar.start() as writer:
        with pytest.raises(OutputError, match="cannot write") as there:
            writer.write(blocker / "out.fits", _image(False))
        assert writer.alive  # one failed write does not end the writer
        ok = writer.write(tmp_path / "after.fits", _image(False))
    with pytest.raises(OutputError) as here:
        write_fits(blocker / "out.fits", _image(False))
    assert str(there.value) == str(here.value)
    assert ok.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "after.fits"]  # nothing half-written


def test_a_killed_writer_is_replaced_by_a_write_here(tmp_path):
    image = _image(True)
    writer = FitsSidecar.start()
    try:
        os.kill(writer._proc.pid, signal.SIGKILL)
        writer._proc.join(5)
        with pytest.raises(SidecarGone):
            writer.write(tmp_path / "x.fits", image)
        out = write_fits_via(writer, tmp_path / "stack.fits", image, header=_HEADER)
    finally:
        writer.close()
    assert out.read_bytes() == write_fits(tmp_path / "ref.fits", image, header=_HEADER).read_bytes()
    assert not (tmp_path / "x.fits").exists()


def test_without_a_writer_the_write_is_here(tmp_path):
    out = write_fits_via(None, tmp_path / "s.fits", _image(False), header=_HEADER)
    assert out.read_bytes() == write_fits(tmp_path / "r.fits", _image(False), header=_HEADER).read_bytes()


_PARENT = r"""
import sys, time
from skystack.output.sidecar import FitsSidecar
w = FitsSidecar.start()
print(w._proc.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_writer_dies_with_a_killed_parent():
    run = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(run.stdout.readline())
        assert _alive(pid)
    finally:
        run.kill()
        run.wait()
        run.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the FITS writer outlived its killed parent")


_CLI = r"""
import sys
import skystack.api as api
from skystack.cli import main

run = api.lucky
def lucky(*a, **k):  # what the run starts with: its own timings begin inside
    print("astropy imported before the run:", "astropy.io.fits" in sys.modules)
    return run(*a, **k)
api.lucky = lucky
rc = main(sys.argv[1:])
print("astropy imported here:", "astropy.io.fits" in sys.modules)
sys.exit(rc)
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_lucky_writes_its_fits_in_the_writer_with_two_workers(tmp_path, workers):
    """With two workers the stack's FITS is written by the writer process, so astropy is
    never imported by the run itself; with one (one core) it is written here, astropy
    imported at start-up (before the run, whose timings are then the pipeline's alone as
    with two workers). The files are the same."""
    from astropy.io import fits

    from skystack.io import write_ser
    from skystack.testing.planetary import make_planet_video

    video = tmp_path / "v.ser"
    write_ser(video, make_planet_video(24, (120, 160), seed=5, radius_px=30.0).frames())
    out = tmp_path / f"w{workers}.fits"
    r = subprocess.run([sys.executable, "-c", _CLI, "lucky", str(video), "-o", str(out), "--workers", workers,
                        "--no-preview", "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"astropy imported here: {workers == '1'}" in r.stdout
    assert f"astropy imported before the run: {workers == '1'}" in r.stdout
    with fits.open(out) as hdul:
        assert hdul[0].header["NCOMBINE"] > 0 and np.isfinite(hdul[0].data).all()


def test_a_big_image_is_written_here(tmp_path, monkeypatch):
    """Over MAX_PIPED_BYTES the image is not pickled through the pipe (two more copies of
    a possibly huge stack): written here, the same file."""
    import skystack.output.sidecar as sidecar_module

    image = _image(True)
    monkeypatch.setattr(sidecar_module, "MAX_PIPED_BYTES", image.nbytes - 1)
    with FitsSidecar.start() as writer:
        sent = []
        monkeypatch.setattr(writer, "write", lambda *a, **k: sent.append(a))
        out = write_fits_via(writer, tmp_path / "big.fits", image, header=_HEADER)
    assert not sent
    assert out.read_bytes() == write_fits(tmp_path / "ref.fits", image, header=_HEADER).read_bytes()
