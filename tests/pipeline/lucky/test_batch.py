"""Batch mode (``skystack lucky A.ser B.ser C.ser -o FOLDER/``) and the calibration of video
frames (``--darks``/``--flats``)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import skystack
from skystack.cli import main
from skystack.errors import BATCH_PARTIAL, EXIT_CODES
from skystack.io import write_ser
from skystack.testing.planetary import make_lunar_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two good SER videos and one corrupt one (a file that is not a SER at all)."""
    d = tmp_path_factory.mktemp("night")
    a, b, bad = d / "a.ser", d / "b.ser", d / "bad.ser"
    write_ser(a, make_lunar_video(16, (96, 128), seed=1).frames())
    write_ser(b, make_lunar_video(16, (96, 128), seed=2).frames())
    bad.write_bytes(b"this is not a SER file" * 20)
    return a, bad, b


def test_batch_of_three_with_one_corrupt(tmp_path, videos, capsys):
    out = tmp_path / "stacks"
    rc = main(["lucky", *map(str, videos), "-o", str(out) + "/", "--keep", "25%", "--no-multipoint", "-q"])
    assert rc == BATCH_PARTIAL == 11 and "some videos could not be stacked" in EXIT_CODES[rc]
    assert (out / "a.fits").exists() and (out / "b.fits").exists() and not (out / "bad.fits").exists()
    assert (out / "a.fits.report.json").exists() and (out / "b.preview.png").exists()
    summary = json.loads((out / "lucky-summary.json").read_text())
    assert summary["stacked"] == 2 and summary["failed"] == 1
    bad = [it for it in summary["items"] if it["status"] == "failed"]
    assert len(bad) == 1 and bad[0]["input"].endswith("bad.ser") and "SER" in bad[0]["error"]
    printed = capsys.readouterr().out
    assert "2 of 3 videos stacked" in printed and "FAILED" in printed
    # the help says which code that is (it said 10 once, while the code was 11)
    with pytest.raises(SystemExit):
        main(["lucky", "--help"])
    assert f"the exit code is then {BATCH_PARTIAL} " in capsys.readouterr().out


def test_batch_all_good_and_all_bad(tmp_path, videos):
    a, bad, b = videos
    res = skystack.api.lucky_batch([a, b], tmp_path / "ok", keep="25%", multipoint=False, preview=False)
    assert not res.failed and [it.result.n_used for it in res.items] == [4, 4]
    rc = main(["lucky", str(bad), "-o", str(tmp_path / "none") + "/", "-q"])
    assert rc == 3  # every video failed: the first one's own code (no readable frame)


def test_a_folder_of_videos_is_a_batch_of_them_and_a_folder_of_frames_one_clip(tmp_path, videos, capsys):
    # `skystack lucky night/ -o stacks/` made one clip of every video in the folder
    from astropy.io import fits

    night = videos[0].parent
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(make_lunar_video(8, (96, 128), seed=3).frames()):
        fits.PrimaryHDU(f).writeto(frames / f"f{i:02d}.fits")
    out = tmp_path / "stacks"
    rc = main(["lucky", str(night), str(frames), "-o", str(out) + "/", "--keep", "25%", "--no-multipoint", "-q"])
    assert rc == BATCH_PARTIAL  # bad.ser is one of the night's videos
    assert sorted(p.name for p in out.glob("*.fits")) == ["a.fits", "b.fits", "frames.fits"]
    summary = json.loads((out / "lucky-summary.json").read_text())
    assert [it["input"].rsplit("/", 1)[-1] for it in summary["items"]] == ["a.ser", "b.ser", "bad.ser", "frames"]
    assert json.loads((out / "frames.fits.report.json").read_text())["summary"]["frames"] == 8
    assert "3 of 4 videos stacked" in capsys.readouterr().out


def test_a_batch_into_a_file_is_refused_in_one_line(tmp_path, videos, capsys):
    a, _, b = videos
    (tmp_path / "afile").write_text("x")
    assert main(["lucky", str(a), str(b), "-o", str(tmp_path / "afile") + "/", "-q"]) == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile: is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "x"


def test_batch_refuses_two_videos_with_one_output_name(tmp_path, videos):
    a, _, _ = videos
    other = tmp_path / "x" / "a.ser"
    other.parent.mkdir()
    other.write_bytes(a.read_bytes())
    rc = main(["lucky", str(a), str(other), "-o", str(tmp_path / "o") + "/", "-q"])
    assert rc == 2


def test_darks_and_flats_calibrate_the_video_frames(tmp_path):
    """A video recorded through vignetting with a hot, offset sensor: stacking it with its
    darks and flats removes both (the calibration package's masters, applied to the raw
    frames before demosaicing; the flats' own offset removed by dark-flats, here the same
    exposure as the darks)."""
    v = make_lunar_video(20, (96, 128), seed=5)
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    flat = (1.0 - 0.35 * (((xx - 64) / 64.0) ** 2 + ((yy - 48) / 48.0) ** 2)).astype(np.float32)
    rng = np.random.default_rng(0)
    dark = np.full((h, w), 12.0, np.float32)
    dark[rng.integers(0, h, 30), rng.integers(0, w, 30)] = 200.0  # hot pixels
    raw = [np.clip(np.rint(f.astype(np.float32) * flat + dark), 0, 255).astype(np.uint8) for f in v.frames()]
    write_ser(tmp_path / "moon.ser", raw)
    darks, flats = tmp_path / "darks", tmp_path / "flats"
    darks.mkdir()
    flats.mkdir()
    for k in range(5):
        write_ser(darks / f"d{k}.ser", [np.clip(np.rint(dark + rng.normal(0, 1, (h, w))), 0, 255).astype(np.uint8)])
        write_ser(flats / f"f{k}.ser", [np.clip(np.rint(200 * flat + dark + rng.normal(0, 1, (h, w))), 0, 255)
                                        .astype(np.uint8)])
    plain = skystack.lucky([str(tmp_path / "moon.ser")], None, keep="50%", multipoint=False)
    cal = skystack.lucky([str(tmp_path / "moon.ser")], tmp_path / "out" / "moon.fits", keep="50%",
                         multipoint=False, preview=False, darks=[str(darks)], flats=[str(flats)],
                         dark_flats=[str(darks)])
    truth = v.truth

    def err(img):  # relative error after matching the mean level (the flat's scale)
        a = img[8:-8, 8:-8] / np.mean(img[8:-8, 8:-8])
        t = truth[8:-8, 8:-8] / np.mean(truth[8:-8, 8:-8])
        return float(np.sqrt(np.mean((a - t) ** 2)))

    assert err(cal.image) < 0.5 * err(plain.image)
    assert set(cal.report["calibration"]["masters"]) >= {"dark", "flat"}
    assert (tmp_path / "out" / ".skystack-cache").is_dir()
