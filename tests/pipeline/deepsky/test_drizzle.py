"""``skystack stack --drizzle``: on an undersampled synthetic set (FWHM 1.2–1.6 px) the
drizzled stack's stars are smaller in sky units than the plain stack's and sit where the
truth has them; the WCS follows the finer grid; blocks do not change the result; Bayer
drizzle keeps colours; memory stays within the limit."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

import skystack
from skystack.testing.synthetic import make_deepsky, make_seestar_like

sep = pytest.importorskip("sep")


@pytest.fixture(scope="module")
def undersampled():
    return make_deepsky(n_frames=16, shape=(180, 240), seed=7, max_shift=6.0, max_rot_deg=2.0, fwhm_range=(1.2, 1.6),
                        extended=False, star_density=2e-3, trail_frame=None, wcs_centre=(150.0, 2.2),
                        pixel_scale_arcsec=4.0)


@pytest.fixture(scope="module")
def lights(undersampled, tmp_path_factory):
    folder = tmp_path_factory.mktemp("undersampled")
    undersampled.write_fits(folder)
    return folder


@pytest.fixture(scope="module")
def plain(lights):
    return skystack.stack(lights, None, quiet=True)


@pytest.fixture(scope="module")
def drizzled(lights, tmp_path_factory):
    out = tmp_path_factory.mktemp("drz") / "d.fits"
    return skystack.stack(lights, out, quiet=True, drizzle=2, coverage=True), out


def star_table(img, synth, reference, scale, n=25):
    """For the brightest isolated stars: the centroid offset from the truth (input px),
    the half-maximum FWHM (from the area above half the peak, as SExtractor's FWHM_IMAGE)
    and sep's half-light radius, both in input pixels (sky units)."""
    truth = synth.transforms[reference].inverse().apply(synth.stars.xy)
    flux = synth.stars.flux
    data = np.ascontiguousarray(np.nan_to_num(img, nan=float(np.nanmedian(img))), dtype=np.float64)
    sub = data - sep.Background(data).back()
    h, w = img.shape
    rows = []
    for k in np.argsort(-flux):
        x, y = truth[k]
        d = np.hypot(truth[:, 0] - x, truth[:, 1] - y)
        if np.any((d > 0) & (d < 6) & (flux > 0.05 * flux[k])):
            continue
        ox, oy = scale * (x + 0.5) - 0.5, scale * (y + 0.5) - 0.5
        r = int(np.ceil(4 * scale))
        if not (r + 2 < ox < w - r - 3 and r + 2 < oy < h - r - 3):
            continue
        y0, x0 = int(round(oy)) - r, int(round(ox)) - r
        cut = sub[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        yy, xx = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        rr = np.hypot(xx - ox, yy - oy) / scale
        c = np.clip(cut, 0, None) * (rr <= 2.5)
        cx, cy = (c * xx).sum() / c.sum(), (c * yy).sum() / c.sum()
        half_max = 2 * np.sqrt((cut > cut.max() / 2).sum() / np.pi) / scale
        hlr, _ = sep.flux_radius(sub, np.array([ox]), np.array([oy]), np.array([3.0 * scale]), 0.5, subpix=5)
        rows.append(((cx + 0.5) / scale - 0.5 - x, (cy + 0.5) / scale - 0.5 - y, half_max, hlr[0] / scale))
        if len(rows) >= n:
            break
    return np.array(rows)


def test_drizzled_stars_are_smaller_in_sky_units_and_unbiased(undersampled, plain, drizzled):
    r, _ = drizzled
    assert r.image.shape == (360, 480) and r.coverage.shape == (360, 480) and r.weight.shape == (360, 480)
    p = star_table(plain.image, undersampled, plain.reference, 1.0)
    d = star_table(r.image, undersampled, r.reference, 2.0)
    assert len(p) >= 15 and len(d) >= 15
    # half-maximum FWHM: 1.78 px drizzled against 1.95 px plain (measured)
    assert np.median(d[:, 2]) < 0.95 * np.median(p[:, 2]), (np.median(d[:, 2]), np.median(p[:, 2]))
    # half-light radius: 1.02 px against 1.05 px
    assert np.median(d[:, 3]) < np.median(p[:, 3])
    # positions: no bias beyond a few hundredths of a pixel, scatter as small as the plain stack's
    assert np.abs(d[:, :2].mean(axis=0)).max() < 0.04, d[:, :2].mean(axis=0)
    assert np.sqrt((d[:, :2] ** 2).mean()) < 0.08


def test_drizzled_fits_has_the_finer_wcs_and_its_maps(undersampled, drizzled):
    r, out = drizzled
    h = fits.getheader(out)
    assert h["DRIZZLE"] == 2.0 and h["PIXFRAC"] == 0.7 and h["INTERP"] == "drizzle"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(h)
    # star centres of the truth, on the drizzled grid, land on their true sky positions
    truth_ref = undersampled.transforms[r.reference].inverse().apply(undersampled.stars.xy)
    sky = wcs.wcs_pix2world(2.0 * (truth_ref + 0.5) - 0.5, 0)
    true = undersampled.sky_of_layout(undersampled.stars.xy)
    dd = sky - true
    dd[:, 0] *= np.cos(np.radians(true[:, 1]))
    assert np.hypot(dd[:, 0], dd[:, 1]).max() * 3600 < 1e-3
    assert wcs.proj_plane_pixel_scales()[0].value * 3600 == pytest.approx(2.0)  # 4″ frames, ×2
    cov = fits.getdata(out.with_name("d.coverage.fits"))
    wgt = fits.getdata(out.with_name("d.weight.fits"))
    assert cov.max() == 16 and np.median(cov) == 16 and wgt.shape == cov.shape
    assert fits.getheader(out.with_name("d.weight.fits"))["CTYPE1"] == "RA---TAN"
    # a pixel every frame drops onto weighs about a drop's share per frame
    assert np.median(wgt[cov == 16]) == pytest.approx(16 * 0.25, rel=0.15)
    assert (out.with_name("d.quality.png")).exists()


def test_blocks_and_rejection(lights, drizzled):
    r, _ = drizzled
    banded = skystack.stack(lights, None, quiet=True, drizzle=2, tile_rows=24)
    assert banded.report["stack"]["bands"] > 5
    np.testing.assert_array_equal(banded.image, r.image)
    clipped = skystack.stack(lights, None, quiet=True, drizzle=2, method="sigma", tile_rows=64)
    rej = sum(x.metrics.get("rejected_high_pct", 0) for x in clipped.results)
    assert rej > 0  # hot pixels and cosmic rays are rejected
    sky = np.isfinite(r.image) & np.isfinite(clipped.image)
    assert abs(np.median(clipped.image[sky] - r.image[sky])) < 1.0


def test_bayer_drizzle_keeps_colour(tmp_path):
    s = make_seestar_like(n_frames=8, seed=5, noise=False, hot_pixel_fraction=0.0, cold_pixel_fraction=0.0,
                          cosmic_rate=0.0)
    s.write_fits(tmp_path / "l")
    r = skystack.stack(tmp_path / "l", None, quiet=True, drizzle=2, pixfrac=1.0)
    assert r.report["stack"]["bayer_drizzle"] and r.image.shape == (384, 216, 3)
    assert r.header["DRIZZLE"] == 2.0 and r.header["XPIXSZ"] == pytest.approx(1.45) and "BAYERPAT" not in r.header
    inner = r.image[40:-40, 40:-40]
    sky = np.nanmedian(inner.reshape(-1, 3), axis=0) - s.params.pedestal
    # the light-polluted sky's camera colour (1.15, 1, 0.8) comes through the mosaic undemosaiced
    np.testing.assert_allclose(sky / sky[1], s.params.sky_colour, rtol=0.03)


BASELINE = textwrap.dedent("""
    import resource, numpy as np
    import skystack, skystack.pipeline.deepsky.run, skystack.io, skystack.backends.cpu, skystack.output.write
    import skystack.pipeline.deepsky.drizzle, skystack.output.header
    import cv2, astropy.io.fits, astropy.wcs, dask.threaded, tqdm
    from _skystack_kernels.cpu.drizzle import drizzle_affine_add
    from skystack.options import RegisterOptions
    from skystack.register.deepsky import Reference, register_frame, measure_frame
    z = np.zeros((4, 4, 1)); n = np.zeros((1, 1, 1), np.int32)
    drizzle_affine_add(np.ones((2, 2, 1), np.float32), 0, 0, np.full((2, 2), -1), np.eye(2, 3) * 2, 0.7,
                       np.ones(1, np.float32), np.zeros(1, np.float32), 1.0, z, z.copy(), n, n, 0, 0, 0)
    img = np.random.default_rng(0).normal(100, 5, (64, 64)).astype(np.float32)
    o = RegisterOptions()
    measure_frame(img, o); register_frame(img, Reference.build(img, o), o)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
""")

RUN = textwrap.dedent("""
    import resource, sys
    from skystack.cli import main
    rc = main(sys.argv[1:])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sys.exit(rc)
""")


def test_drizzle_memory_stays_within_the_limit(tmp_path):
    limit_mb, shape, n = 16, (300, 400), 50  # 23 MB of float32 frames; a 600×800 output
    s = make_deepsky(n_frames=n, shape=shape, seed=4, max_shift=8.0, max_rot_deg=1.0, extended=False,
                     fwhm_range=(1.2, 1.6))
    s.write_fits(tmp_path / "l")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    base = float(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, env=env,
                                check=True).stdout.split()[-1])
    assert n * shape[0] * shape[1] * 4 / 2**20 > limit_mb  # the frames do not fit the budget
    peaks = {}
    for method in ("mean", "sigma"):
        r = subprocess.run([sys.executable, "-c", RUN, "stack", str(tmp_path / "l"), "-o",
                            str(tmp_path / f"{method}.fits"), "--drizzle", "2", "--method", method,
                            "--memory-limit", f"{limit_mb}M", "-q", "--no-preview", "--workers", "2"],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        peaks[method] = float(r.stdout.split()[-1])
    allowed = base + 1.1 * limit_mb
    assert max(peaks.values()) <= allowed, f"peak {peaks} MB > {allowed:.0f} MB (baseline {base:.0f} MB)"
