"""``skystack master``, ``skystack calibrate`` and ``skystack colour`` from the command line."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits

from skystack.cli import main
from skystack.testing.synthetic import make_deepsky

SHAPE = (64, 96)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    s = make_deepsky(n_frames=2, shape=SHAPE, seed=31, bayer="GRBG", vignetting=0.3, bias_structure=2.0,
                     dark_current=0.5, hot_pixel_fraction=2e-3, star_density=3e-3, extended=False)
    s.write_fits(root / "lights")
    s.write_calibration(root, bias=4, darks=4, flats=3)
    return root, s


def test_master_commands(data, tmp_path, capsys):
    root, s = data
    out = tmp_path / "mbias.fits"
    assert main(["master", "bias", str(root / "bias"), "-o", str(out), "--method", "median", "-q"]) == 0
    assert "master bias: 4 frames (median, 0 s)" in capsys.readouterr().out
    h = fits.getheader(out)
    assert h["IMAGETYP"] == "Master Bias" and h["NCOMBINE"] == 4 and h["BAYERPAT"] == "GRBG"
    flat = tmp_path / "mflat.fits"
    assert main(["master", "flat", str(root / "flats"), "--bias", str(out), "-o", str(flat), "-q"]) == 0
    f = fits.getdata(flat)
    assert abs(f[0::2, 1::2].mean() - 1) < 1e-5 and f.min() > 0.6
    # an input is never overwritten
    victim = sorted((root / "bias").iterdir())[0]
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    assert main(["master", "bias", str(root / "bias"), "-o", str(victim), "-q"]) == 6
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == digest
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert main(["master", "dark", str(root / "darks"), "--bias", str(out), "-o", str(tmp_path / "d.fits")]) == 2


def test_calibrate_command_writes_calibrated_frames(data, tmp_path, capsys):
    root, s = data
    args = ["calibrate", str(root / "lights"), "-o", str(tmp_path / "cal"), "--bias", str(root / "bias"),
            "--darks", str(root / "darks"), "--flats", str(root / "flats"), "-q"]
    assert main(args + ["--debayer", "--keep-cache"]) == 0
    out = capsys.readouterr().out
    assert "calibrated 2 frame(s)" in out and "kept in" in out
    files = sorted((tmp_path / "cal").glob("*_cal.fits"))
    assert [p.name for p in files] == ["synth_0000_cal.fits", "synth_0001_cal.fits"]
    img = fits.getdata(files[0])
    h = fits.getheader(files[0])
    assert img.shape == (3,) + SHAPE and h["CALSTAT"] == "BDF" and h["EXPTIME"] == s.params.exptime
    # sky above zero and flat after calibration: no pedestal, no vignetting left
    lum = img.mean(axis=0)
    q = [np.median(lum[:32, :48]), np.median(lum[32:, 48:]), np.median(lum[:32, 48:]), np.median(lum[32:, :48])]
    assert 0 < min(q) and np.ptp(q) < 0.15 * np.mean(q)
    info = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert info["written"] == 2 and info["masters"]["bias"]["origin"] == "built"
    assert info["cache"]["bytes"] > 0 and not info["cache"]["removed"]
    # CFA output keeps the mosaic and its pattern; the masters now come from the kept cache,
    # which goes at the end of this run (no --keep-cache)
    assert main(args + ["-o", str(tmp_path / "cal")]) == 0
    info = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert {m["origin"] for m in info["masters"].values()} == {"cache"}
    assert info["cache"]["removed"] and not (tmp_path / "cal" / ".skystack-cache").exists()
    h = fits.getheader(files[0])
    assert fits.getdata(files[0]).shape == SHAPE and h["BAYERPAT"] == "GRBG"


def test_calibrate_refuses_a_folder_that_holds_its_inputs(data, tmp_path, capsys):
    # `calibrate lights -o lights` wrote *_cal.fits among the lights: a second run calibrated
    # four frames, two of them twice, and a stack of the folder would mix both
    root, s = data
    for what in ("lights", "darks"):
        folder = tmp_path / what
        folder.mkdir()
        for p in (root / what).iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for out in (tmp_path / "lights", tmp_path / "darks", tmp_path / "lights" / "." ):
        rc = main(["calibrate", str(tmp_path / "lights"), "-o", str(out), "--darks", str(tmp_path / "darks"), "-q"])
        assert rc == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds input frames" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    # given file by file, the frames' folder is still theirs
    lights = [str(p) for p in sorted((tmp_path / "lights").glob("*.fits"))]
    assert main(["calibrate", *lights, "-o", str(tmp_path / "lights"), "--darks", str(tmp_path / "darks"), "-q"]) == 2
    assert main(["calibrate", *lights, "-o", str(tmp_path / "cal"), "--darks", str(tmp_path / "darks"), "-q"]) == 0
    assert len(list((tmp_path / "cal").glob("*_cal.fits"))) == len(lights)


def test_colour_command(data, tmp_path, capsys):
    root, s = data
    rgb = (s.ideal_rgb(background=True) * [0.7, 1.0, 0.9]).astype(np.float32)
    src = tmp_path / "stack.fits"
    fits.PrimaryHDU(np.moveaxis(rgb, 2, 0)).writeto(src)
    out = tmp_path / "bal.fits"
    assert main(["colour", str(src), "-o", str(out), "--neutralize", "--white-balance", "1.4,1,1.1"]) == 0
    assert "background neutralised" in capsys.readouterr().out
    bal = fits.getdata(out)
    h = fits.getheader(out)
    assert bal.shape == (3,) + SHAPE and h["WB_R"] == pytest.approx(1.4) and h["COLORBAL"] == "neutralized"
    assert (tmp_path / "bal.preview.png").exists()
    assert main(["colour", str(src), "-o", str(out), "--white-balance", "sunny"]) == 2
