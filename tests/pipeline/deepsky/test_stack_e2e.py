"""End to end: synthetic frames with known truth → register → stack → compare with truth."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits

import skystack
from skystack.pipeline.demo import ideal_on_reference_grid, registration_errors, robust_sigma
from skystack.testing.synthetic import make_deepsky
from skystack.types import Fate

N, SHAPE = 12, (240, 320)


@pytest.fixture(scope="module")
def synth():
    return make_deepsky(n_frames=N, shape=SHAPE, seed=11, max_shift=12.0, max_rot_deg=1.5,
                        trail_frame=4, hot_pixel_fraction=3e-4, star_density=2e-3)


@pytest.fixture(scope="module")
def lights(synth, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lights")
    synth.write_fits(folder)
    return folder


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_mean_stack_registers_to_truth_and_approaches_the_ideal(synth, lights, tmp_path):
    before = _digest(lights)
    out = tmp_path / "mean.fits"
    r = skystack.stack(lights, out, method="mean", coverage=True, norm="none")
    assert _digest(lights) == before  # inputs untouched
    assert r.n_used == N and all(x.fate is Fate.USED for x in r.results)
    errs = registration_errors(synth, r.results, r.reference)
    assert max(errs.values()) < 0.1, errs  # small frames, few stars: the 0.03 px target is for 2000×1500
    img = fits.getdata(out)
    with fits.open(out) as h:
        assert h[0].header["NCOMBINE"] == N and h[0].header["REFFRAME"] == r.reference
    ideal = ideal_on_reference_grid(synth, r.reference)
    light = ideal_on_reference_grid(synth, r.reference, background=False)
    sky = np.isfinite(img) & np.isfinite(ideal) & (light < 0.5)
    # a mean stack without normalisation converges to the ideal including the sky; the hot
    # pixels and the trail survive a plain mean, so compare robustly
    resid = (img - ideal)[sky]
    assert abs(np.median(resid)) < 2.0
    single = synth.frame(r.reference).astype(np.float32) - synth.params.pedestal - synth.signal(r.reference)
    ratio = robust_sigma(resid) / robust_sigma(single)
    assert ratio < 1.3 / np.sqrt(N), ratio  # noise falls like 1/sqrt(N) (Lanczos adds a little)
    # the reference frame covers its whole grid (edges included), the others less of it
    assert np.isfinite(img).all()
    cov = fits.getdata(tmp_path / "mean.coverage.fits")
    assert cov.max() == N and cov.min() < N and cov.min() >= 1 and (cov == N).mean() > 0.7
    rep = json.loads(r.report_path.read_text())
    assert rep["summary"]["used"] == N and rep["reference"]["index"] == r.reference
    f0 = rep["frames"][0]
    assert set(f0) >= {"index", "path", "fate", "reason", "method", "transform", "n_stars", "n_matches", "residual_px"}
    assert np.asarray(f0["transform"]).shape == (2, 3)
    assert (tmp_path / "mean.preview.png").exists()


def test_rejection_removes_trail_and_hot_pixels(synth, lights, tmp_path):
    plain = fits.getdata(skystack.stack(lights, tmp_path / "m.fits", method="mean", norm="none").output)
    r = skystack.stack(lights, tmp_path / "w.fits", method="winsorized", norm="addscale", tile_rows=64)
    clipped = fits.getdata(r.output)
    assert r.report["stack"]["engine"] == "tiles"
    ideal = ideal_on_reference_grid(synth, r.reference)
    light = ideal_on_reference_grid(synth, r.reference, background=False)
    sky = np.isfinite(plain) & np.isfinite(clipped) & np.isfinite(ideal) & (light < 0.5)

    def worst(img):
        d = (img - ideal)[sky]
        d -= np.median(d)
        return np.abs(d).max(), robust_sigma(d)

    (w_plain, s_plain), (w_clip, s_clip) = worst(plain), worst(clipped)
    # the trail (thousands of ADU in one frame) and hot pixels dominate the plain mean's worst
    # residual; after rejection the worst residual is a few noise sigmas
    assert w_plain > 30 * s_plain
    assert w_clip < 8 * s_clip
    trail = next(x for x in r.results if x.index == synth.trail_frame)
    assert trail.fate is Fate.USED and trail.metrics["rejected_high_pct"] > 0.05


def test_output_bit_identical_for_any_worker_count_and_tile_size(lights, tmp_path):
    # 5 strips of 64 columns: tiles are 2-D; their height follows tile_rows, the strips stay
    a = skystack.stack(lights, tmp_path / "a.fits", method="sigma", workers=1, tile_rows=16, strip_cols=64)
    b = skystack.stack(lights, tmp_path / "b.fits", method="sigma", workers=2, tile_rows=64, strip_cols=64)
    c = skystack.stack(lights, tmp_path / "c.fits", method="sigma", workers=2, tile_rows=8, strip_cols=64)
    d = skystack.stack(lights, tmp_path / "d.fits", method="sigma", workers=2, strip_cols=64, memory_limit="3M")
    assert a.report["stack"]["tiles"] == 5 * 240 // 16 and c.report["stack"]["tiles"] == 5 * 240 // 8
    ia, ib, ic, id_ = (fits.getdata(x.output) for x in (a, b, c, d))
    for other in (ib, ic, id_):
        assert np.array_equal(ia, other, equal_nan=True)
    # other strips warp every cell through another local matrix: the same stack to float rounding
    e = fits.getdata(skystack.stack(lights, tmp_path / "e.fits", method="sigma", workers=2).output)
    ok = np.isfinite(ia) & np.isfinite(e)
    assert np.array_equal(np.isfinite(ia), np.isfinite(e))
    assert np.median(np.abs(ia - e)[ok]) == 0 and np.quantile(np.abs(ia - e)[ok], 0.999) < 1e-2
    m1 = skystack.stack(lights, tmp_path / "m1.fits", method="mean", workers=1)
    m2 = skystack.stack(lights, tmp_path / "m2.fits", method="mean", workers=2)
    assert np.array_equal(fits.getdata(m1.output), fits.getdata(m2.output), equal_nan=True)


def test_default_method_is_auto_and_cleans_the_stack(synth, lights, tmp_path):
    """No --method: winsorized clipping for 12 frames (the trail and hot pixels gone), the
    median for 3 to 5 frames, the mean for 2; the report and header say which."""
    from skystack.options import AUTO_MEDIAN_FROM, AUTO_WINSORIZED_FROM, auto_method

    assert [auto_method(n) for n in (1, 2, 3, 5, 6, 100)] == ["mean", "mean", "median", "median", "winsorized",
                                                              "winsorized"]
    assert AUTO_MEDIAN_FROM < AUTO_WINSORIZED_FROM
    r = skystack.stack(lights, tmp_path / "auto.fits")
    assert r.report["stack"]["method"] == "winsorized" and r.report["options"]["stack"]["method"] == "winsorized"
    with fits.open(r.output) as h:
        assert h[0].header["STACKMTH"] == "winsorized"
    ideal = ideal_on_reference_grid(synth, r.reference)
    light = ideal_on_reference_grid(synth, r.reference, background=False)
    img = fits.getdata(r.output)
    sky = np.isfinite(img) & np.isfinite(ideal) & (light < 0.5)
    d = (img - ideal)[sky]
    d -= np.median(d)
    assert np.abs(d).max() < 8 * robust_sigma(d)  # no trail, hot pixel or cosmic ray left
    files = sorted(lights.glob("*.fits"))
    for n, method in ((2, "mean"), (4, "median")):
        lst = tmp_path / f"l{n}.txt"
        lst.write_text("\n".join(str(f) for f in files[:n]))
        assert skystack.stack(lst, tmp_path / f"a{n}.fits").report["stack"]["method"] == method


def test_register_only_writes_transforms(synth, lights, tmp_path):
    rep = tmp_path / "reg.json"
    r = skystack.register(lights, report=rep)
    d = json.loads(rep.read_text())
    assert d["mode"] == "register" and d["output"] is None and not list(tmp_path.glob("*.fits"))
    errs = registration_errors(synth, r.results, r.reference)
    assert len(errs) == N and max(errs.values()) < 0.1
