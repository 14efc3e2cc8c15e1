"""The output guard (every path a run writes, checked against its inputs before a frame is
read) and the product mark (what skystack wrote is never taken for a frame)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from astropy.io import fits

from skystack.errors import OutputError
from skystack.output import write as w
from skystack.output.guard import guard_outputs, is_product
from skystack.output.plots import plot_frames
from skystack.types import Fate, FrameResult


@pytest.fixture
def frame(tmp_path):
    p = tmp_path / "in" / "frame.fits"
    p.parent.mkdir()
    p.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    return p


def test_an_output_that_is_an_input_is_refused_by_name_link_and_hard_link(frame, tmp_path):
    with pytest.raises(OutputError, match=r"frame.fits \(report\): is one of the inputs"):
        guard_outputs([("image", tmp_path / "o.fits"), ("report", frame)], [frame])
    sym = tmp_path / "sym.fits"
    os.symlink(frame, sym)
    hard = tmp_path / "hard.fits"
    os.link(frame, hard)
    for alias in (sym, hard):
        with pytest.raises(OutputError, match=f"the same file as {frame}"):
            guard_outputs([("preview", alias)], [frame])
    # an input named through a link is protected too
    with pytest.raises(OutputError, match="is one of the inputs"):
        guard_outputs([("image", frame)], [sym])
    guard_outputs([("image", tmp_path / "new.fits")], [frame, tmp_path / "missing.fits"])


def test_two_outputs_on_one_path_are_refused(tmp_path):
    out = tmp_path / "o.fits"
    with pytest.raises(OutputError, match="the image and the report would both be written here"):
        guard_outputs([("image", out), ("report", out)], [])


def test_a_parent_that_is_a_file_and_a_folder_as_output_are_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    for target in (f / "o.fits", f / "sub" / "o.fits"):
        with pytest.raises(OutputError, match="afile is a file, not a folder"):
            guard_outputs([("image", target)], [])
    with pytest.raises(OutputError, match="is a folder"):
        guard_outputs([("image", tmp_path)], [])
    with pytest.raises(OutputError, match="exists and is not a folder"):
        guard_outputs([], [], folders=[("journal", f)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match="is not writable"):
            guard_outputs([("image", ro / "o.fits")], [])
    finally:
        ro.chmod(stat.S_IRWXU)


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    # the same refusal where the test runs as root (who may write anywhere): the guard asks
    # the operating system, as it does for any user
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(tmp_path) else real(p, mode))
    with pytest.raises(OutputError, match=f"the folder {tmp_path} is not writable"):
        guard_outputs([("image", tmp_path / "o.fits")], [])


def test_a_folder_the_run_fills_and_removes_may_not_hold_an_input(frame, tmp_path):
    with pytest.raises(OutputError, match=r"\(cache\): holds the input"):
        guard_outputs([], [frame], folders=[("cache", frame.parent)])
    guard_outputs([], [frame], folders=[("cache", tmp_path / ".skystack-cache")])


def test_writers_mark_products_and_leave_frames_unmarked(tmp_path):
    img = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    made = [w.write_fits(tmp_path / "a.fits", img), w.write_tiff(tmp_path / "b.tif", img),
            w.write_image(tmp_path / "c.png", img), w.write_preview(tmp_path / "d.preview.png", img),
            w.write_tiff(tmp_path / "e.tif", img, dtype="uint16")]
    results = [FrameResult(index=0, path="x", name="x", fate=Fate.USED, metrics={"fwhm_px": 2.0})]
    made.append(plot_frames(tmp_path / "f.quality.png", results, 0))
    for p in made:
        assert is_product(p), p
    # calibrated lights are frames: unmarked; and what other software wrote is a frame
    w.write_fits(tmp_path / "cal.fits", img, product=False)
    fits.PrimaryHDU(img).writeto(tmp_path / "other.fits")
    import cv2
    import tifffile

    cv2.imwrite(str(tmp_path / "other.png"), (img * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "other.tif", img)
    (tmp_path / "junk.fits").write_bytes(b"not a fits file")
    for name in ("cal.fits", "other.fits", "other.png", "other.tif", "junk.fits", "absent.fits"):
        assert not is_product(tmp_path / name), name
    # the mark does not change what readers see
    assert np.array_equal(fits.getdata(made[0]), img)
    assert cv2.imread(str(made[2]), cv2.IMREAD_UNCHANGED).shape == img.shape


def test_outputs_follow_the_umask(tmp_path):
    img = np.zeros((4, 4), np.float32)
    old = os.umask(0o022)
    try:
        a = w.write_fits(tmp_path / "a.fits", img)
        os.umask(0o077)
        b = w.write_png(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    assert stat.S_IMODE(b.stat().st_mode) == 0o600
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["a.fits", "b.png"]  # no temporary left
