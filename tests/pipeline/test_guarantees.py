"""What the README guarantees, attacked from the command line: inputs are never written
(every writer of every command aimed at an input is refused with exit 6 and one line, and
nothing at all is written), hostile options are refused before a frame is read (exit 2),
skystack's own outputs and cache are not taken for frames (a second run into the lights
folder stacks the same frames), outputs get the umask's permissions, and the cache goes
after a successful run unless --keep-cache."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits

import skystack.pipeline.deepsky.run as run_mod
from skystack.cli import main
from skystack.testing.synthetic import make_deepsky


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    s = make_deepsky(n_frames=6, shape=(200, 260), seed=5, max_shift=8.0, max_rot_deg=1.0, trail_frame=None,
                     star_density=2.5e-3)
    root = tmp_path_factory.mktemp("set")
    s.write_fits(root / "lights")
    (root / "lights" / "truth.json").unlink()
    s.write_calibration(root, bias=3)
    return s, root


@pytest.fixture
def work(synth, tmp_path):
    """A fresh copy of the set: ``lights/`` (6 FITS frames) and ``bias/`` (3 frames)."""
    s, root = synth
    shutil.copytree(root / "lights", tmp_path / "lights")
    shutil.copytree(root / "bias", tmp_path / "bias")
    return s, tmp_path


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with its content digest: any write shows."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _png16(path: Path, frame: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), frame.astype(np.uint16))
    return path


def _rgb_png(path: Path) -> Path:
    rgb = np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), rgb)
    return path


# -- every writer aimed at an input ---------------------------------------------------------
def _stack_report(s, t):
    return ["stack", str(t / "lights"), "-o", str(t / "o.fits"), "--report", str(t / "lights/synth_0002.fits")], \
        "synth_0002.fits (report)"


def _stack_preview(s, t):
    _png16(t / "lights" / "out.preview.png", s.frame(1))  # a real frame that happens to have this name
    return ["stack", str(t / "lights"), "-o", str(t / "lights/out.fits")], "out.preview.png (preview)"


def _stack_coverage(s, t):
    fits.PrimaryHDU(s.frame(2)).writeto(t / "lights" / "out.coverage.fits")
    return ["stack", str(t / "lights"), "-o", str(t / "lights/out.fits"), "--coverage"], \
        "out.coverage.fits (coverage map)"


def _stack_quality_plot(s, t):
    _png16(t / "lights" / "out.quality.png", s.frame(3))
    return ["stack", str(t / "lights"), "-o", str(t / "lights/out.fits")], "out.quality.png (quality plot)"


def _stack_image_hard_link(s, t):
    os.link(t / "lights" / "synth_0000.fits", t / "alias.fits")
    return ["stack", str(t / "lights"), "-o", str(t / "alias.fits")], "the same file as"


def _stack_list_file(s, t):
    (t / "list.txt").write_text("lights/synth_0000.fits\nlights/synth_0001.fits\n")
    return ["stack", str(t / "list.txt"), "-o", str(t / "o.fits"), "--report", str(t / "list.txt")], \
        "list.txt (report)"


def _stack_calibration_frame(s, t):
    return ["stack", str(t / "lights"), "-o", str(t / "o.fits"), "--bias", str(t / "bias"),
            "--report", str(t / "bias/bias_0000.fits")], "bias_0000.fits (report)"


def _stack_journal_holds_input(s, t):
    journal = t / "o.fits.skystack-journal"
    journal.mkdir()
    shutil.copy(t / "lights" / "synth_0000.fits", journal / "x.fits")
    return ["stack", str(t / "lights"), str(journal / "x.fits"), "-o", str(t / "o.fits")], "(journal): holds the input"


def _register_report(s, t):
    return ["register", str(t / "lights"), "--report", str(t / "lights/synth_0001.fits")], "synth_0001.fits (report)"


def _master_output(s, t):
    return ["master", "bias", str(t / "bias"), "-o", str(t / "bias/bias_0001.fits")], "bias_0001.fits (master)"


def _calibrate_output(s, t):
    # a calibrated frame's name is a hard link to a light (the output folder holding a light
    # by path is refused earlier, with exit 2: see test_cli_calibrate)
    (t / "cal").mkdir()
    os.link(t / "lights" / "synth_0001.fits", t / "cal" / "synth_0000_cal.fits")
    return ["calibrate", str(t / "lights"), "-o", str(t / "cal"), "--bias", str(t / "bias")], \
        "synth_0000_cal.fits (calibrated frame)"


def _colour_output(s, t):
    _rgb_png(t / "rgb.png")
    return ["colour", str(t / "rgb.png"), "-o", str(t / "rgb.png")], "rgb.png (image)"


def _colour_preview(s, t):
    _rgb_png(t / "c.preview.png")
    return ["colour", str(t / "c.preview.png"), "-o", str(t / "c.tif")], "c.preview.png (preview)"


def _enhance_output(s, t):
    return ["enhance", str(t / "lights/synth_0000.fits"), "-o", str(t / "lights/synth_0000.fits")], \
        "synth_0000.fits (image)"


def _enhance_before_after(s, t):
    _png16(t / "e.before-after.png", s.frame(0))
    return ["enhance", str(t / "e.before-after.png"), "-o", str(t / "e.fits")], \
        "e.before-after.png (before/after preview)"


ATTACKS = [_stack_report, _stack_preview, _stack_coverage, _stack_quality_plot, _stack_image_hard_link,
           _stack_list_file, _stack_calibration_frame, _stack_journal_holds_input, _register_report,
           _master_output, _calibrate_output, _colour_output, _colour_preview, _enhance_output,
           _enhance_before_after]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__[1:])
def test_every_writer_aimed_at_an_input_is_refused(attack, work, capsys, monkeypatch):
    s, t = work
    argv, words = attack(s, t)
    before = _tree(t)
    monkeypatch.setattr(run_mod, "register_all", _must_not_run)  # refused before phase 1
    assert main(argv + ["-q"]) == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err  # one line naming the file
    assert "Traceback" not in err
    assert _tree(t) == before  # inputs unchanged; no output, journal, cache or temporary file


def _must_not_run(*a, **k):
    raise AssertionError("a frame was read before the options and outputs were checked")


# -- hostile options: refused before any frame is read -------------------------------------
@pytest.mark.parametrize("extra", [
    ["--kappa", "-1", "nan"], ["--kappa", "nan", "3"], ["-o", "x.jpg"], ["--workers", "0"], ["--workers", "-3"],
    ["--scheduler", ""], ["--scheduler", " "], ["--min-registered", "1.5"], ["--min-registered", "-2"],
    ["--memory-limit", "0"], ["--memory-limit=-5M"], ["--keep", "0%"], ["--reference", "-1"],
    ["--max-roundness", "2"], ["--white-balance", "1,0,1"], ["--max-fwhm", "inf"], ["--tile-rows", "0"],
    ["--hot-sigma", "nan"], ["--hot-sigma", "1e300"], ["--cold-sigma", "1e300"], ["--report", ""],
], ids=lambda e: " ".join(e) or "empty")
def test_hostile_options_are_refused_before_a_frame_is_read(extra, work, capsys, monkeypatch):
    s, t = work
    before = _tree(t)
    monkeypatch.setattr(run_mod, "open_frames", _must_not_run)
    monkeypatch.chdir(t)
    argv = ["stack", "lights", "-o", "o.fits", "-q"]
    if extra[0] == "-o":
        argv = argv[:2] + argv[4:]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert _tree(t) == before  # no journal, no output


def test_an_output_name_too_long_for_its_side_files_is_exit_6_with_one_line(work, capsys):
    # legal itself (240 bytes), but the journal folder's name passes 255: a traceback (OSError
    # from the guard) before; the image's own temporary name is shortened (test_write)
    s, t = work
    before = _tree(t)
    out = t / ("s" * 235 + ".fits")
    assert main(["stack", str(t / "lights"), "-o", str(out), "-q"]) == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "(journal): cannot be made (File name too long: 257 bytes" in err and "shorter output name" in err
    assert _tree(t) == before


def test_unwritable_destinations_are_exit_6_with_one_line(work, capsys):
    s, t = work
    (t / "afile").write_text("x")
    before = _tree(t)
    for out in ("afile/o.fits", "afile/deeper/o.fits"):
        assert main(["stack", str(t / "lights"), "-o", str(t / out), "-q"]) == 6
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "afile is a file, not a folder" in err
    assert main(["stack", str(t / "lights"), "-o", str(t / "lights"), "-q"]) == 2  # no image extension
    capsys.readouterr()
    assert _tree(t) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_output_folder_is_exit_6(work, capsys):
    s, t = work
    ro = t / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["stack", str(t / "lights"), "-o", str(ro / "o.fits"), "-q"]) == 6
        assert "is not writable" in capsys.readouterr().err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(stat.S_IRWXU)


# -- skystack's own outputs are not frames --------------------------------------------------
def test_a_second_run_into_the_lights_folder_stacks_the_same_frames(work, capsys):
    s, t = work
    lights = t / "lights"
    argv = ["stack", str(lights), "-o", str(lights / "s.fits"), "--coverage", "--method", "sigma"]
    assert main(argv + ["-q"]) == 0
    first = json.loads((lights / "s.fits.report.json").read_text())
    image = fits.getdata(lights / "s.fits")
    assert {p.name for p in lights.iterdir()} >= {"s.fits", "s.preview.png", "s.quality.png", "s.coverage.fits"}
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    second = json.loads((lights / "s.fits.report.json").read_text())
    assert [f["path"] for f in second["frames"]] == [f["path"] for f in first["frames"]]
    assert len(second["frames"]) == 6
    for name in ("s.fits", "s.preview.png", "s.quality.png", "s.coverage.fits"):
        assert f"{name}: written by skystack" in err and "left out" in err
    assert np.array_equal(fits.getdata(lights / "s.fits"), image, equal_nan=True)
    # a journal or cache folder matched by a glob is not searched either
    (lights / "x.fits.skystack-journal").mkdir()
    shutil.copy(lights / "synth_0000.fits", lights / "x.fits.skystack-journal" / "stray.fits")
    assert main(["stack", str(lights / "*"), "-o", str(t / "g.fits"), "-q"]) == 0
    assert len(json.loads((t / "g.fits.report.json").read_text())["frames"]) == 6


def test_a_product_named_explicitly_is_used_with_a_warning(work, capsys):
    s, t = work
    assert main(["stack", str(t / "lights"), "-o", str(t / "a.fits"), "-q"]) == 0
    capsys.readouterr()
    assert main(["stack", str(t / "a.fits"), str(t / "lights"), "-o", str(t / "b.fits"), "-q"]) == 0
    assert "a.fits: written by skystack" in capsys.readouterr().err
    assert len(json.loads((t / "b.fits.report.json").read_text())["frames"]) == 7


def test_calibrated_lights_are_frames_for_the_next_stack(work, capsys):
    s, t = work
    assert main(["calibrate", str(t / "lights"), "-o", str(t / "cal"), "--bias", str(t / "bias"), "-q"]) == 0
    assert main(["stack", str(t / "cal"), "-o", str(t / "cal/stack.fits"), "-q"]) == 0
    rep = json.loads((t / "cal" / "stack.fits.report.json").read_text())
    assert rep["summary"]["frames"] == 6 and rep["summary"]["used"] == 6


# -- permissions and the cache --------------------------------------------------------------
def test_outputs_are_created_with_the_umask(work, capsys):
    s, t = work
    old = os.umask(0o022)
    try:
        assert main(["stack", str(t / "lights"), "-o", str(t / "o.tif"), "--coverage", "-q"]) == 0
    finally:
        os.umask(old)
    written = [p for p in t.iterdir() if p.name.startswith("o.")]
    assert len(written) == 5  # image, coverage, preview, quality plot, report
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@pytest.fixture
def png_lights(synth, tmp_path):
    """The set as 16-bit PNG frames: not sliceable, so phase 2 reads them from the cache."""
    s, _ = synth
    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(len(s)):
        _png16(folder / f"f_{i:02d}.png", s.frame(i))
    return folder


def test_the_cache_goes_after_a_successful_run_and_its_size_is_reported(png_lights, tmp_path, capsys):
    out = tmp_path / "o.fits"
    assert main(["stack", str(png_lights), "-o", str(out), "--method", "sigma", "-q"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    rep = json.loads((tmp_path / "o.fits.report.json").read_text())
    frame_bytes = 200 * 260 * 2
    assert rep["cache"]["removed"] and rep["cache"]["bytes"] >= 6 * frame_bytes
    assert f"cache {rep['cache']['bytes'] / 1e6:.1f} MB removed" in line
    assert not (tmp_path / ".skystack-cache").exists()

    assert main(["stack", str(png_lights), "-o", str(out), "--method", "sigma", "--keep-cache", "-q"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    rep = json.loads((tmp_path / "o.fits.report.json").read_text())
    assert not rep["cache"]["removed"] and "kept in" in line
    assert len(list((tmp_path / ".skystack-cache").glob("*.npy"))) == 6


def test_an_interrupted_run_keeps_its_cache_for_resume(png_lights, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "combine", interrupted)
    assert main(["stack", str(png_lights), "-o", str(tmp_path / "o.fits"), "--method", "sigma", "-q"]) == 130
    assert len(list((tmp_path / ".skystack-cache").glob("*.npy"))) == 6
    monkeypatch.undo()
    assert main(["stack", str(png_lights), "-o", str(tmp_path / "o.fits"), "--method", "sigma", "--resume",
                 "-q"]) == 0
    assert not (tmp_path / ".skystack-cache").exists()


# -- lucky imaging ------------------------------------------------------------------------
def test_lucky_sharpened_copy_aimed_at_an_input_is_refused(tmp_path, capsys):
    from skystack.testing.planetary import make_planet_video

    v = make_planet_video(12, (96, 120), seed=1, radius_px=25.0)
    folder = tmp_path / "v"
    folder.mkdir()
    for i in range(len(v)):
        name = "m_sharpened.tif" if i == 5 else f"f_{i:02d}.tif"
        import tifffile

        tifffile.imwrite(folder / name, v.frame(i))
    before = _tree(tmp_path)
    rc = main(["lucky", str(folder), "-o", str(folder / "m.tif"), "--wavelets", "1.5,1.2", "--keep", "50%", "-q"])
    assert rc == 6 and _tree(tmp_path) == before


# -- outputs that are not files --------------------------------------------------------------
def _device(path: Path, major: int, minor: int) -> None:
    try:
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making a device node needs root")


def test_a_report_into_dev_null_leaves_the_device_a_device(work, capsys):
    # renaming the temporary report onto it replaced the node: as root, /dev/null became a
    # regular file. A node of /dev/null's kind, made here, stands in for the real one.
    s, t = work
    null = t / "null"
    _device(null, 1, 3)
    assert main(["register", str(t / "lights"), "--report", str(null), "-q"]) == 0
    assert stat.S_ISCHR(null.stat().st_mode) and null.stat().st_rdev == os.makedev(1, 3)
    assert [p.name for p in t.iterdir() if p.name.startswith(".")] == []


def test_another_device_is_refused_and_left_alone(work, capsys):
    s, t = work
    mem = t / "mem"
    _device(mem, 1, 1)  # /dev/mem's kind: never opened, never replaced
    before = _tree(t / "lights")
    assert main(["register", str(t / "lights"), "--report", str(mem), "-q"]) == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a character device, not a file; refusing to write into it" in err
    assert stat.S_ISCHR(mem.stat().st_mode) and _tree(t / "lights") == before


def test_a_report_into_a_pipe_reaches_its_reader(work):
    import threading

    s, t = work
    fifo = t / "report.fifo"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("text", fifo.read_text()))
    reader.start()
    assert main(["register", str(t / "lights"), "--report", str(fifo), "-q"]) == 0
    reader.join(30)
    assert len(json.loads(got["text"])["frames"]) == 6 and stat.S_ISFIFO(fifo.stat().st_mode)


def _stdout_link(t: Path) -> Path:
    # what /dev/stdout is, made here: a failure must not replace the machine's own
    link = t / "stdout"
    link.symlink_to("/proc/self/fd/1")
    return link


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="needs Linux's /proc/self/fd")
def test_stdout_closed_by_its_reader_ends_the_run_quietly(work):
    # `skystack register lights --report /dev/stdout | head -c 50`: the report went out, then
    # the closing summary met a closed pipe: a BrokenPipeError traceback
    import subprocess
    import sys

    s, t = work
    out = _stdout_link(t)
    p = subprocess.Popen([sys.executable, "-m", "skystack.cli", "register", str(t / "lights"), "--report",
                          str(out), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(50).startswith(b"{")
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(60) == 141 and err == "", err


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="needs Linux's /proc/self/fd")
def test_a_report_to_stdout_redirected_to_a_file_goes_into_that_file(work):
    # `--report /dev/stdout > r.json`: the rename replaced the /dev/stdout link with a file
    import subprocess
    import sys

    s, t = work
    out = _stdout_link(t)
    with open(t / "r.json", "wb") as f:
        r = subprocess.run([sys.executable, "-m", "skystack.cli", "register", str(t / "lights"), "--report", str(out),
                            "-q"], stdout=f, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_symlink() and os.readlink(out) == "/proc/self/fd/1"
    assert len(json.loads((t / "r.json").read_text())["frames"]) == 6


def test_an_output_that_is_a_link_is_written_through_it(work):
    s, t = work
    (t / "night3").mkdir()
    (t / "night3" / "m13.json").write_text("old")
    (t / "latest.json").symlink_to(t / "night3" / "m13.json")
    assert main(["register", str(t / "lights"), "--report", str(t / "latest.json"), "-q"]) == 0
    assert (t / "latest.json").is_symlink()
    assert len(json.loads((t / "night3" / "m13.json").read_text())["frames"]) == 6
