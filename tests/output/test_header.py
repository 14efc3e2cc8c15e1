"""The stack header's pieces: observation cards, the celestial WCS (drizzle-scaled, SIP
included), time cards, colour cubes and the TIFF description."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skystack.output.header import (celestial_wcs, fits_header, frame_start_mjd, iso_from_mjd, observation_cards,
                                    time_cards, tiff_description)
from skystack.output.write import write_fits, write_image

SEESTAR = {"OBJECT": "M 94", "INSTRUME": "Seestar S50", "FILTER": "IRCUT", "TELESCOP": "S50_1d3fe189",
           "GAIN": 80, "XPIXSZ": 2.9, "YPIXSZ": 2.9, "FOCALLEN": 250, "RA": 193.04166, "DEC": 40.970556,
           "SITELAT": 32.8965, "SITELONG": -79.7625, "CCD-TEMP": 25.125, "BAYERPAT": "GRBG",
           "EXPTIME": 10.0, "EXPOSURE": 10.0, "DATE-OBS": "2025-03-27T01:20:32.955368", "PEDESTAL": 0,
           "TOTALEXP": 10.0}
TAN = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 193.1, "CRVAL2": 41.12, "CRPIX1": 540.5,
       "CRPIX2": 960.5, "CDELT1": -2.4 / 3600, "CDELT2": 2.4 / 3600, "PC1_1": 0.978, "PC1_2": -0.208,
       "PC2_1": 0.208, "PC2_2": 0.978, "CUNIT1": "deg", "CUNIT2": "deg", "DATE-OBS": "2025-03-27T01:20:32",
       "MJD-OBS": 60761.0}


def _wcs(h) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(h)


def _sep_arcsec(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    d[:, 0] *= np.cos(np.radians(b[:, 1]))
    return np.hypot(d[:, 0], d[:, 1]) * 3600.0


def test_observation_cards_copy_what_was_observed_and_drop_the_mosaic_once_debayered():
    rgb = observation_cards(SEESTAR, debayered=True)
    assert {k: v[0] for k, v in rgb.items() if k in ("OBJECT", "INSTRUME", "FILTER", "GAIN", "FOCALLEN")} == \
        {"OBJECT": "M 94", "INSTRUME": "Seestar S50", "FILTER": "IRCUT", "GAIN": 80, "FOCALLEN": 250}
    assert "BAYERPAT" not in rgb
    # what describes one sub, not the stack, is not copied
    assert not {"EXPTIME", "EXPOSURE", "DATE-OBS", "PEDESTAL", "TOTALEXP"} & set(rgb)
    assert observation_cards(SEESTAR, debayered=False)["BAYERPAT"][0] == "GRBG"
    drizzled = observation_cards(SEESTAR, debayered=True, scale=2.0)
    assert drizzled["XPIXSZ"][0] == pytest.approx(1.45) and drizzled["FOCALLEN"][0] == 250
    assert observation_cards(None, debayered=False) == {}


@pytest.mark.parametrize("scale", [1.0, 2.0, 1.5])
def test_celestial_wcs_keeps_sky_positions_on_the_drizzled_grid(scale):
    w = celestial_wcs(TAN, scale=scale)
    assert w is not None and not {"DATE-OBS", "MJD-OBS", "MJDREF"} & set(w)
    ref, out = _wcs(fits.Header(TAN)), _wcs(w)
    p = np.array([[0.0, 0.0], [1079.0, 1919.0], [17.3, 802.6], [540.0, 960.0]])  # frame pixels (0-based)
    q = scale * (p + 0.5) - 0.5  # the same points on the drizzled grid
    assert _sep_arcsec(out.wcs_pix2world(q, 0), ref.wcs_pix2world(p, 0)).max() < 1e-6
    ratio = ref.proj_plane_pixel_scales()[0] / out.proj_plane_pixel_scales()[0]
    assert abs(ratio.value - scale) < 1e-9


def test_celestial_wcs_rescales_sip_distortion():
    sip = dict(TAN, CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2, B_ORDER=2, A_2_0=2e-6, A_1_1=-1e-6,
               A_0_2=3e-6, B_2_0=-2e-6, B_1_1=1.5e-6, B_0_2=1e-6)
    ref = _wcs(fits.Header(sip))
    out = _wcs(celestial_wcs(sip, scale=2.0))
    assert out.sip is not None
    p = np.array([[0.0, 0.0], [1079.0, 1919.0], [100.0, 1500.0]])
    sky_ref = ref.all_pix2world(p, 0)
    assert _sep_arcsec(out.all_pix2world(2 * (p + 0.5) - 0.5, 0), sky_ref).max() < 1e-6
    # the distortion is real: without SIP the corners move by more than an arcsecond
    assert _sep_arcsec(ref.wcs_pix2world(p, 0), sky_ref).max() > 1.0


def test_no_wcs_without_celestial_axes():
    assert celestial_wcs({"OBJECT": "M 94"}) is None
    assert celestial_wcs({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR"}) is None


def test_time_cards_start_end_and_livetime():
    starts = [frame_start_mjd({"date": d}) for d in
              ("2025-03-27T01:20:44.455", "2025-03-27T01:20:32.955368", "2025-03-27T01:20:56")]
    cards = time_cards(starts, [10.0, 10.0, 10.0])
    assert cards["DATE-OBS"][0] == "2025-03-27T01:20:32.955"
    assert cards["DATE-END"][0] == "2025-03-27T01:21:06.000"
    assert cards["LIVETIME"][0] == 30.0 and cards["EXPTIME"][0] == 10.0
    assert cards["EXPEND"][0] - cards["EXPSTART"][0] == pytest.approx((33.045 - 0.0) / 86400, abs=2e-8)
    assert iso_from_mjd(cards["EXPSTART"][0]) == cards["DATE-OBS"][0]
    mid = time_cards(starts, [10.0, 10.0, 10.0], date_obs="mid")
    assert mid["DATE-OBS"][0] == "2025-03-27T01:20:49.477"
    # a date with a separate TIME-OBS (old FITS writers); nothing known: no time cards
    assert frame_start_mjd({"date": "2013-05-05", "header": {"TIME-OBS": "04:09:39"}}) == pytest.approx(
        frame_start_mjd({"date": "2013-05-05T04:09:39"}))
    assert time_cards([None], [None]) == {}


def test_colour_cube_keeps_a_valid_celestial_wcs(tmp_path):
    w = celestial_wcs(TAN)
    header = fits_header({"OBJECT": ("M 94", "observed object")}, ["made by a test"], wcs=w, colour=True)
    out = write_fits(tmp_path / "rgb.fits", np.zeros((20, 30, 3), np.float32), header=header)
    with fits.open(out) as hdul:
        h = hdul[0].header
        assert h["NAXIS"] == 3 and h["NAXIS3"] == 3 and h["WCSAXES"] == 3 and h["CTYPE3"] == "RGB"
        assert "made by a test" in str(h["HISTORY"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no complaint from wcslib about the header
            full = WCS(h)
        assert full.naxis == 3 and full.has_celestial
        p = np.array([[3.0, 4.0], [29.0, 19.0]])
        assert _sep_arcsec(full.celestial.wcs_pix2world(p, 0), _wcs(fits.Header(TAN)).wcs_pix2world(p, 0)).max() < 1e-6


def test_tiff_description_carries_the_essentials(tmp_path):
    import tifffile

    header = fits_header({"OBJECT": ("M 94", ""), "STACKCNT": (12, ""), "LIVETIME": (120.0, ""),
                          "DATE-OBS": ("2025-03-27T01:20:32.955", "")}, ["h"], wcs=celestial_wcs(TAN))
    path = write_image(tmp_path / "s.tif", np.ones((8, 9), np.float32), header=header)
    desc = tifffile.TiffFile(path).pages[0].description
    lines = dict(line.split("=", 1) for line in desc.splitlines())
    assert lines["OBJECT"] == "M 94" and lines["STACKCNT"] == "12" and lines["LIVETIME"] == "120"
    assert lines["DATE-OBS"] == "2025-03-27T01:20:32.955"
    assert "CRPIX1" not in lines  # the WCS is not an essential a TIFF reader uses
    assert tiff_description({}) is None
