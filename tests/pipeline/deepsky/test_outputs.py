"""What a stack hands on: FITS metadata and WCS that astronomers' tools read right, and the
API's result (image, coverage, header, CCDData), checked on Seestar-like synthetic subs
whose WCS and times are known exactly."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

import skystack
from skystack.detect.stars import detect_stars
from skystack.io import luminance
from skystack.testing.synthetic import make_seestar_like
from skystack.types import Fate

N = 6


@pytest.fixture(scope="module")
def seestar():
    return make_seestar_like(n_frames=N, seed=2)


@pytest.fixture(scope="module")
def lights(seestar, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seestar")
    seestar.write_fits(folder)
    return folder


@pytest.fixture(scope="module")
def stacked(lights, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "m94.fits"
    return skystack.stack(lights, out, quiet=True), out


def _wcs(h) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # astropy notes the MJD-OBS it derives
        return WCS(h)


def sky_errors_arcsec(image, header, synth, reference, scale=1.0, max_stars=15):
    """Detect stars in a stack, map them through the stack's WCS, and return their
    offsets (n, 2) in arcsec (east, north) from the true sky positions of the generator's
    stars."""
    lum = luminance(np.asarray(image))
    stars = detect_stars(np.nan_to_num(lum, nan=float(np.nanmedian(lum))), max_stars=max_stars)
    det = np.column_stack([stars.x, stars.y])
    truth_ref = synth.transforms[reference].inverse().apply(synth.stars.xy)  # reference frame pixels
    truth_out = scale * (truth_ref + 0.5) - 0.5
    d = np.linalg.norm(det[:, None, :] - truth_out[None, :, :], axis=2)
    nearest = d.argmin(axis=1)
    matched = d[np.arange(len(det)), nearest] < 0.5 * scale
    assert matched.sum() >= 8, f"only {matched.sum()} stars matched"
    sky_det = _wcs(header).celestial.wcs_pix2world(det[matched], 0)
    sky_true = synth.sky_of_layout(synth.stars.xy[nearest[matched]])
    dd = sky_det - sky_true
    dd[:, 0] *= np.cos(np.radians(sky_true[:, 1]))
    return dd * 3600.0


def test_the_stack_keeps_the_observation_its_times_and_its_wcs(seestar, stacked):
    r, out = stacked
    assert r.n_used == N and all(x.fate is Fate.USED for x in r.results)
    with fits.open(out) as hdul:
        h = hdul[0].header
        data = hdul[0].data
    assert h["OBJECT"] == "M 94" and h["INSTRUME"] == "Seestar S50" and h["FILTER"] == "IRCUT"
    assert h["TELESCOP"] == "S50_synthetic" and h["FOCALLEN"] == 250
    assert h["STACKCNT"] == N == h["NCOMBINE"]
    assert h["LIVETIME"] == pytest.approx(10.0 * N) and h["EXPTIME"] == pytest.approx(10.0)
    assert h["DATE-OBS"] == seestar.date_obs(0)[:23]  # the earliest stacked frame's start, to the ms
    assert h["EXPSTART"] == pytest.approx(seestar.start_mjd(0), abs=1e-8)
    assert h["EXPEND"] == pytest.approx(seestar.start_mjd(N - 1) + 10.0 / 86400, abs=1e-8)
    assert "BAYERPAT" not in h  # debayered
    assert data.shape == (3,) + seestar.shape and h["WCSAXES"] == 3 and h["CTYPE3"] == "RGB"
    # the reference frame's WCS applies to the stack as is: same sky at every pixel...
    ref_h = fits.getheader(r.results[r.reference].path)
    p = np.array([[0.0, 0.0], [107.0, 191.0], [53.2, 96.7]])
    a, b = _wcs(h).celestial.wcs_pix2world(p, 0), _wcs(ref_h).wcs_pix2world(p, 0)
    assert np.abs(a - b).max() * 3600 < 1e-6
    # ...and the stars of the stack sit where the sky has them
    off = sky_errors_arcsec(r.image, h, seestar, r.reference)
    # 1″ = 0.42 px at 2.4″/px; single stars' centroids in a 6-frame stack scatter by ~0.1 px
    assert np.linalg.norm(off.mean(axis=0)) < 0.25, off
    assert np.median(np.hypot(*off.T)) < 0.6, off


def test_api_returns_the_pixels_of_the_file_and_its_header(lights, stacked, tmp_path, monkeypatch):
    r_file, out = stacked
    monkeypatch.chdir(tmp_path)
    r = skystack.stack(lights, None, quiet=True)
    assert r.output is None and r.report_path is None and list(tmp_path.iterdir()) == []  # nothing written
    assert r.image.dtype == np.float32 and r.image.shape == r_file.shape
    np.testing.assert_array_equal(np.moveaxis(r.image, 2, 0), fits.getdata(out))
    np.testing.assert_array_equal(r.image, r_file.image)
    assert r.coverage.shape == r.image.shape[:2] and r.coverage.max() == N and r.coverage.dtype == np.int32
    file_h = fits.getheader(out)
    for key in ("OBJECT", "DATE-OBS", "STACKCNT", "LIVETIME", "CRPIX1", "CRPIX2", "PC1_1", "PC2_1", "CRVAL1"):
        assert r.header[key] == file_h[key], key
    ccd = r.to_ccddata()
    assert ccd.data.shape == (3,) + r.image.shape[:2] and ccd.unit == "adu"
    assert ccd.meta["OBJECT"] == "M 94" and ccd.wcs.has_celestial


def test_register_holds_no_image(lights, tmp_path):
    r = skystack.register(lights, report=tmp_path / "t.json", quiet=True)
    assert r.image is None and r.header is None
    with pytest.raises(ValueError):
        r.to_ccddata()


def test_tiff_output_carries_the_essentials(lights, tmp_path):
    import tifffile

    out = tmp_path / "m94.tif"
    skystack.stack(lights, out, quiet=True, preview=False)
    desc = dict(line.split("=", 1) for line in tifffile.TiffFile(out).pages[0].description.splitlines())
    assert desc["OBJECT"] == "M 94" and desc["STACKCNT"] == str(N) and desc["DATE-OBS"].startswith("2025-03-27T")
