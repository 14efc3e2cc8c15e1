"""Master bias/dark/flat: values against the generator's truth, band-by-band equality,
provenance in the header, per-colour flat normalisation, skipped frames, the cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits

from skystack.calibrate.masters import build_master, get_master, master_key
from skystack.errors import CalibrationError, UsageError
from skystack.io import open_frames
from skystack.options import ReadOptions
from skystack.testing.synthetic import make_deepsky

SHAPE = (64, 96)


@pytest.fixture(scope="module")
def sensor():
    return make_deepsky(n_frames=1, shape=SHAPE, seed=7, bayer="RGGB", vignetting=0.3, dust_donuts=1, prnu=0.01,
                        bias_structure=3.0, dark_current=0.5, amp_glow=10.0, hot_pixel_fraction=2e-3,
                        cosmic_rate=2e-4, ccd_temp=-5.0)


@pytest.fixture(scope="module")
def cal(sensor, tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    return root, sensor.write_calibration(root, bias=12, darks=9, flats=6, dark_flats=5)


def _frames(paths):
    return open_frames([os.fspath(p) for p in paths], options=ReadOptions(debayer="none"))


def test_master_bias_is_the_bias_with_provenance(sensor, cal, tmp_path):
    root, files = cal
    m = build_master("bias", _frames(files["bias"]), tmp_path / "b.fits", method="winsorized", key="k1")
    data = fits.getdata(m.path)
    resid = data - sensor.bias_level()
    # the mean of 12 frames: read noise 5 ADU / sqrt(12), and no bias left
    assert abs(resid.mean()) < 0.2 and resid.std() < 1.5 * 5.0 / np.sqrt(12)
    h = fits.getheader(m.path)
    assert h["IMAGETYP"] == "Master Bias" and h["NCOMBINE"] == 12 and h["CALMETH"] == "winsorized"
    assert h["BAYERPAT"] == "RGGB" and h["EXPTIME"] == 0.0 and h["CCD-TEMP"] == -5.0 and h["SKYKEY"] == "k1"
    assert any("bias_0000.fits" in str(v) for v in h["HISTORY"])
    assert m.n_frames == 12 and m.origin == "built" and m.shape == SHAPE


def test_bands_workers_and_memory_do_not_change_the_master(cal, tmp_path):
    root, files = cal
    frames = _frames(files["darks"])
    a = build_master("dark", frames, tmp_path / "a.fits", method="sigma", memory_limit=1 << 30, workers=1)
    # 9 frames x 96 px x 4 B = 3.5 kB a row: 200 kB gives 16-row bands with 2 workers
    b = build_master("dark", frames, tmp_path / "b.fits", method="sigma", memory_limit=200_000, workers=2)
    assert np.array_equal(fits.getdata(a.path), fits.getdata(b.path))
    with pytest.raises(UsageError, match="memory-limit"):
        build_master("dark", frames, tmp_path / "c.fits", memory_limit=10_000)
    assert not (tmp_path / "c.fits").exists()


def test_median_master_is_the_pixel_median(cal, tmp_path):
    root, files = cal
    m = build_master("bias", _frames(files["bias"][:5]), tmp_path / "m.fits", method="median")
    stack = np.stack([fits.getdata(p).astype(np.float32) for p in files["bias"][:5]])
    assert np.array_equal(fits.getdata(m.path), np.median(stack, axis=0).astype(np.float32))


def test_master_dark_rejects_cosmic_rays_and_keeps_hot_pixels(sensor, cal, tmp_path):
    root, files = cal
    m = build_master("dark", _frames(files["darks"]), tmp_path / "d.fits", method="winsorized")
    d = fits.getdata(m.path).astype(np.float64)
    t = sensor.params.exptime
    truth = np.clip(sensor.bias_level() + sensor.dark_rate() * t / sensor.params.gain, 0, 65535)
    hx, hy = sensor.hot_pixels[:, 0], sensor.hot_pixels[:, 1]
    assert np.allclose(d[hy, hx], truth[hy, hx], rtol=0.05, atol=10)
    # each dark has ~1 cosmic-ray hit of thousands of ADU; none survives the rejection
    # (noise: dark shot noise + read noise over 9 frames)
    sigma = np.sqrt(5.0 ** 2 + sensor.dark_rate() * t) / np.sqrt(9)
    z = (d - truth) / sigma
    z[hy, hx] = 0
    assert np.abs(z).max() < 6
    assert m.exposure_s == t and m.includes_offset and fits.getheader(m.path)["CALOFFS"] is True


def test_master_flat_is_normalised_per_colour_and_is_the_response(sensor, cal, tmp_path):
    root, files = cal
    bias = build_master("bias", _frames(files["bias"]), tmp_path / "b.fits")
    dflat = build_master("dark-flat", _frames(files["dark_flats"]), tmp_path / "df.fits")
    f = build_master("flat", _frames(files["flats"]), tmp_path / "f.fits", offset=dflat)
    data = fits.getdata(f.path).astype(np.float64)
    # the panel is (0.75, 1, 0.55) in R, G, B: after per-colour normalisation every
    # colour's mean is 1, so flat division cannot tint the lights
    assert abs(data[0::2, 0::2].mean() - 1.0) < 1e-5  # R
    assert abs(data[1::2, 1::2].mean() - 1.0) < 1e-5  # B
    assert abs(0.5 * (data[0::2, 1::2].mean() + data[1::2, 0::2].mean()) - 1.0) < 1e-5  # both G
    resp = sensor.flat_response()
    cold = np.zeros(SHAPE, bool)
    cold[sensor.cold_pixels[:, 1], sensor.cold_pixels[:, 0]] = True
    for r in range(2):
        for c in range(2):
            want = resp[r::2, c::2] / resp[r::2, c::2].mean()
            got = data[r::2, c::2]
            ok = ~cold[r::2, c::2]
            assert np.abs(got - want)[ok].max() < 0.02
    assert fits.getheader(f.path)["FLATNORM"] and f.cell_means == (1.0, 1.0, 1.0, 1.0)
    # the bias works as the flats' offset too: a 2 s flat's dark current is negligible
    # except in hot pixels (which the dark-flat takes out, and cosmetic correction repairs)
    f2 = build_master("flat", _frames(files["flats"]), tmp_path / "f2.fits", offset=bias)
    hot = np.zeros(SHAPE, bool)
    hot[sensor.hot_pixels[:, 1], sensor.hot_pixels[:, 0]] = True
    assert np.abs(fits.getdata(f2.path) - data)[~cold & ~hot].max() < 0.01
    # without any offset the pedestal stays in, and vignetting is under-corrected
    f3 = build_master("flat", _frames(files["flats"]), tmp_path / "f3.fits")
    def spread(img):
        lo, hi = np.percentile(img[~cold & ~hot], [1, 99])
        return hi - lo

    assert spread(fits.getdata(f3.path)) < 0.97 * spread(data)


def test_frames_that_do_not_fit_are_left_out(sensor, cal, tmp_path):
    root, files = cal
    other = make_deepsky(n_frames=1, shape=(48, 96), seed=7, bayer="RGGB")
    odd = other.write_calibration(tmp_path / "odd", bias=1)["bias"][0]
    m = build_master("bias", _frames(list(files["bias"][:4]) + [odd]), tmp_path / "b.fits")
    assert m.n_frames == 4 and len(m.skipped) == 1
    assert m.skipped[0][0] == str(odd) and "size 96×48 differs from the others' 96×64" in m.skipped[0][1]
    # darks of two exposures: the majority wins
    d30 = sensor.write_calibration(tmp_path / "d30", darks=2, dark_exptime=30.0)["darks"]
    m = build_master("dark", _frames(list(files["darks"][:3]) + list(d30)), tmp_path / "d.fits")
    assert m.n_frames == 3 and all("exposure 30 s differs from the others' 60 s" in r for _, r in m.skipped)
    with pytest.raises(CalibrationError, match="bias: no readable frame.*missing.fits: file does not exist"):
        get_master("bias", [str(tmp_path / "missing.fits")], cache_dir=tmp_path / "c")


def test_masters_are_cached_by_file_identity(cal, tmp_path):
    root, files = cal
    cache = tmp_path / "cache"
    a = get_master("bias", [str(root / "bias")], cache_dir=cache)
    assert a.origin == "built"
    mtime = os.stat(a.path).st_mtime_ns
    b = get_master("bias", [str(root / "bias")], cache_dir=cache)
    assert b.origin == "cache" and b.path == a.path and os.stat(a.path).st_mtime_ns == mtime
    assert b.n_frames == 12 and b.key == a.key
    # another method, or a changed input file, is another master
    c = get_master("bias", [str(root / "bias")], cache_dir=cache, method="median")
    assert c.origin == "built" and c.path != a.path
    frames = _frames(files["bias"])
    k1 = master_key("bias", frames, method="winsorized", kappa=(3, 3), offset=None, pattern=None)
    os.utime(files["bias"][0], ns=(1, 1))
    k2 = master_key("bias", _frames(files["bias"]), method="winsorized", kappa=(3, 3), offset=None, pattern=None)
    assert k1 != k2
    # a float FITS given alone is a finished master, used as it is
    given = get_master("bias", [a.path], cache_dir=cache)
    assert given.origin == "given" and given.path == a.path and given.n_frames == 12
