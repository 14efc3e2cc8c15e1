"""Calibration frames that do not fit the lights: one clear line naming the file and the
reason, exit code 2, nothing written under the output name, inputs untouched."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits

import skystack
from skystack.cli import main
from skystack.errors import CalibrationError
from skystack.testing.synthetic import make_deepsky

SHAPE = (64, 96)


@pytest.fixture(scope="module")
def lights(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    s = make_deepsky(n_frames=3, shape=SHAPE, seed=2, bayer="RGGB", max_shift=4.0, dark_current=0.5,
                     vignetting=0.2, bias_structure=2.0)
    s.write_fits(root / "lights")
    s.write_calibration(root, bias=3, darks=3)
    return root, s


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.fits"))}


def _refused(root, tmp_path, capsys, match, **kw):
    """The API raises CalibrationError; the CLI prints one line and exits 2; nothing is written."""
    before = _digest(root)
    out = tmp_path / "out.fits"
    with pytest.raises(CalibrationError, match=match):
        skystack.stack(root / "lights", out, **kw)
    argv = ["stack", str(root / "lights"), "-o", str(out), "-q"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([str(v)] if not isinstance(v, list) else [str(x) for x in v])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skystack: "), err
    assert not out.exists() and not list(tmp_path.glob("*.part*")) and not list(tmp_path.glob("*.png"))
    assert _digest(root) == before
    return err[0]


def test_flat_of_another_size(lights, tmp_path, capsys):
    root, s = lights
    other = make_deepsky(n_frames=1, shape=(48, 96), seed=2, bayer="RGGB")
    other.write_calibration(tmp_path / "small", flats=2)
    msg = _refused(root, tmp_path, capsys, r"flats_0000.fits and 1 more \(flat frames\) is 96x48, the lights",
                   bias=str(root / "bias"), flats=str(tmp_path / "small" / "flats"))
    assert "flats_0000.fits" in msg and "another size" in msg
    # refused before any master flat was built
    assert not list((tmp_path / ".skystack-cache" / "masters").glob("master-flat-*"))


def test_dark_of_another_exposure_without_exptime(lights, tmp_path, capsys):
    root, s = lights
    darks = s.write_calibration(tmp_path / "noexp", darks=3, dark_exptime=30.0, write_exptime=False)["darks"]
    msg = _refused(root, tmp_path, capsys, "has no EXPTIME/EXPOSURE",
                   bias=str(root / "bias"), darks=str(tmp_path / "noexp" / "darks"))
    assert str(darks[0]) in msg and "60 s" in msg and "--dark-scaling off" in msg
    # what the user can do next: subtract it as it is (told so), or fit its factor
    # (these tiny mosaics hold too few stars to register onto each other: the reference is
    # named and no minimum of registered frames asked for, the dark factors are the point)
    r = skystack.stack(root / "lights", tmp_path / "fit.fits", bias=root / "bias", darks=tmp_path / "noexp" / "darks",
                       dark_scaling="optimize", reference=0, min_registered=0)
    ks = r.report["calibration"]["dark"]["factors"]
    assert all(abs(k - 2.0) < 0.15 for k in ks), ks


def test_dark_of_another_exposure_needs_a_bias_to_scale(lights, tmp_path, capsys):
    root, s = lights
    s.write_calibration(tmp_path / "d30", darks=3, dark_exptime=30.0)
    msg = _refused(root, tmp_path, capsys, "needs a bias", darks=str(tmp_path / "d30" / "darks"))
    assert "30 s" in msg and "60 s" in msg


def test_master_bias_with_another_cfa(lights, tmp_path, capsys):
    root, s = lights
    master = tmp_path / "master_bias_grbg.fits"
    hdu = fits.PrimaryHDU(s.bias_level().astype(np.float32))
    hdu.header["BAYERPAT"] = "GRBG"
    hdu.header["IMAGETYP"] = "Master Bias"
    hdu.writeto(master)
    msg = _refused(root, tmp_path, capsys, "CFA pattern GRBG, the lights", bias=str(master))
    assert str(master) in msg and "RGGB" in msg


def test_rgb_lights_cannot_be_calibrated(lights, tmp_path):
    root, s = lights
    rgb = tmp_path / "rgb.fits"
    fits.PrimaryHDU(np.zeros((3,) + SHAPE, np.float32)).writeto(rgb)
    with pytest.raises(CalibrationError, match="RGB images; calibration"):
        skystack.stack(rgb, tmp_path / "o.fits", bias=root / "bias")
