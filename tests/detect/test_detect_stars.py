"""Star detection against the synthetic generator's truth."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree

from _skystack_kernels.cpu import stars as kern
from skystack.detect import stars as stars_mod
from skystack.detect.stars import detect_stars
from skystack.testing.synthetic import StarField, make_deepsky, make_seestar_like


def _truth_match(stars, s, i, radius=1.5):
    """For each detection, the brightest true star within ``radius`` (-1 if none)."""
    txy, tflux = s.stars_in_frame(i, margin=-10)
    tree = cKDTree(txy)
    idx = np.array([max(tree.query_ball_point(p, radius), key=lambda k: tflux[k], default=-1)
                    for p in stars.xy], dtype=int)
    return idx, txy, tflux


def _isolated(txy, tflux, idx, min_sep=12.0, ratio=0.02):
    """Detections whose true star has no neighbour brighter than ``ratio`` of it within
    ``min_sep`` px."""
    tree = cKDTree(txy)
    out = np.zeros(idx.size, dtype=bool)
    for n, k in enumerate(idx):
        if k < 0:
            continue
        nb = [j for j in tree.query_ball_point(txy[k], min_sep) if j != k]
        out[n] = all(tflux[j] < ratio * tflux[k] for j in nb)
    return out


@pytest.fixture(scope="module")
def field():
    # bright stars so that centroid precision, not only photon noise, is tested
    return make_deepsky(n_frames=3, shape=(400, 600), seed=21, hot_pixel_fraction=5e-4,
                        cosmic_rate=5e-5, extended=False, flux_range=(3000.0, 2e6))


def test_noise_free_centroids_are_exact():
    s = make_deepsky(n_frames=2, shape=(300, 400), seed=4, noise=False, extended=False,
                     fwhm_range=(2.0, 3.5))
    for i in range(2):
        st = detect_stars(s.frame(i, defects=False).astype(np.float32), max_stars=60)
        idx, txy, tflux = _truth_match(st, s, i)
        # isolated and bright enough that uint16 rounding (±0.5 ADU) does not matter
        iso = _isolated(txy, tflux, idx, ratio=0.002) & (tflux[idx] > 2000) & (idx >= 0)
        assert iso.sum() >= 8
        err = np.linalg.norm(st.xy[iso] - txy[idx[iso]], axis=1)
        assert np.max(err) < 0.01, f"frame {i}: worst isolated-star error {np.max(err):.4f} px"


def test_noisy_centroids_are_subpixel_and_errors_honest(field):
    st = detect_stars(field.frame(1).astype(np.float32), max_stars=100)
    idx, txy, tflux = _truth_match(st, field, 1)
    assert np.mean(idx >= 0) > 0.95  # almost every detection is a real star
    iso = _isolated(txy, tflux, idx)
    err = st.xy[iso] - txy[idx[iso]]
    bright = iso[: 20].sum()
    assert bright >= 10
    # the brightest isolated stars: ~0.01 px
    e_bright = np.linalg.norm(err[:bright], axis=1)
    assert np.median(e_bright) < 0.03
    # the reported 1-σ error explains the scatter: normalised errors are O(1) (it leaves
    # out the stars' own shot noise, so it is a lower bound for the brightest)
    z = np.abs(err / st.err[iso][:, None]).ravel()
    assert 0.4 < np.median(z) < 2.5


def test_hot_pixels_and_cosmic_rays_are_rejected(field):
    f = field.frame(0).astype(np.float32)
    st = detect_stars(f, max_stars=1000)
    assert st.n_sharp >= 0.5 * len(field.hot_pixels)
    txy, _ = field.stars_in_frame(0, margin=-10)
    d_star = cKDTree(txy).query(st.xy)[0]
    d_hot = cKDTree(field.hot_pixels).query(st.xy)[0]
    on_hot = (d_hot < 1.5) & (d_star > 1.5)
    assert on_hot.sum() == 0, f"{on_hot.sum()} detections on hot pixels"
    hits = field.cosmic_rays(0)
    cr = np.array([[x, y] for ys, xs, _ in hits for x, y in zip(xs, ys)], dtype=float)
    on_cr = (cKDTree(cr).query(st.xy)[0] < 1.5) & (d_star > 1.5)
    assert on_cr.sum() == 0, f"{on_cr.sum()} detections on cosmic rays"


def test_saturated_stars_are_not_centroided():
    s = make_deepsky(n_frames=1, shape=(300, 400), seed=5, n_saturated=3, extended=False)
    st = detect_stars(s.frame(0).astype(np.float32), max_stars=500)
    sat = s.stars.xy[-3:]
    assert cKDTree(st.xy).query(sat)[0].min() > 2.0


def test_the_satellite_trail_gives_no_stars():
    s = make_deepsky(n_frames=2, shape=(400, 600), seed=6, trail_frame=1, extended=False)
    st = detect_stars(s.frame(1).astype(np.float32), max_stars=1000)
    x0, y0, ang = s._trail
    d = np.abs((st.x - x0) * -math.sin(ang) + (st.y - y0) * math.cos(ang))
    txy, _ = s.stars_in_frame(1, margin=-10)
    real = cKDTree(txy).query(st.xy)[0] < 1.5
    assert np.sum((d < 3) & ~real) <= 1


def test_fwhm_and_roundness_follow_the_seeing():
    s = make_deepsky(n_frames=6, shape=(300, 400), seed=8, fwhm_range=(2.0, 5.0), extended=False)
    fw = np.array([detect_stars(s.frame(i).astype(np.float32)).metrics()["fwhm_px"] for i in range(6)])
    # Gaussian-equivalent FWHM of a β = 3 Moffat reads up to ~20 % high; it follows the seeing
    assert np.all(np.abs(fw / s.fwhm - 1.0) < 0.25)
    assert np.corrcoef(fw, s.fwhm)[0, 1] > 0.98
    e = make_deepsky(n_frames=4, shape=(300, 400), seed=9, max_ellipticity=0.35, extended=False,
                     fwhm_range=(3.0, 3.5))
    rnd = np.array([detect_stars(e.frame(i).astype(np.float32)).metrics()["roundness"] for i in range(4)])
    assert np.all(np.abs(rnd - e.ellipticity) < 0.08)


def test_gradient_and_noise_make_no_stars():
    s = make_deepsky(n_frames=1, shape=(300, 400), seed=10, star_density=0.0, extended=False,
                     sky_gradient=0.5, hot_pixel_fraction=1e-3)
    st = detect_stars(s.frame(0).astype(np.float32))
    assert st.n_detected <= 1
    assert st.background == pytest.approx(s.params.pedestal + s.sky_level[0] / s.params.gain, rel=0.02)
    assert st.noise == pytest.approx(math.sqrt(s.sky_level[0] + s.params.read_noise ** 2) / s.params.gain, rel=0.1)


def test_galaxy_is_not_a_star():
    s = make_deepsky(n_frames=1, shape=(400, 600), seed=11)
    st = detect_stars(s.frame(0).astype(np.float32), max_stars=1000)
    g = s._blobs[0]
    assert st.n_detected >= 10
    assert np.min(np.hypot(st.x - g.x, st.y - g.y)) > 5.0


def test_nan_regions_are_background():
    s = make_deepsky(n_frames=1, shape=(300, 400), seed=12, extended=False)
    f = s.frame(0).astype(np.float32)
    # the same centroid window for both, so that only the NaN handling differs
    clean = detect_stars(f, max_stars=40, fwhm_guess=3.0)
    f[:, :100] = np.nan  # as after a warp: no data on the left
    st = detect_stars(f, max_stars=40, fwhm_guess=3.0)
    assert len(st) > 10 and np.all(st.x > 100)
    # the stars away from the gap are the same, at the same positions (the background
    # mesh near the gap changes a little)
    right = clean.x > 200
    d, j = cKDTree(st.xy).query(clean.xy[right])
    assert np.max(d) < 0.01


def test_blank_frames_give_empty_results():
    for img in (np.zeros((64, 64), np.float32), np.full((64, 64), np.nan, np.float32)):
        st = detect_stars(img)
        assert len(st) == 0 and st.n_detected == 0
        m = st.metrics()
        assert m["n_stars"] == 0 and math.isnan(m["fwhm_px"])


def test_broad_stars_widen_the_window():
    """Defocused or oversampled data (8 px FWHM) is measured, not rejected."""
    s = make_deepsky(n_frames=1, shape=(300, 400), seed=13, fwhm_range=(8.0, 8.0), extended=False,
                     flux_range=(2000.0, 4e5))
    st = detect_stars(s.frame(0).astype(np.float32))
    assert st.n_detected >= 10
    assert st.metrics()["fwhm_px"] == pytest.approx(8.0, rel=0.25)


def _broad_grid(seed: int, peak_sigma: float, fwhm: float = 12.0, shape=(400, 560), noise: float = 20.0):
    """White noise with Gaussian stars of ``fwhm`` every 70 px whose peak is ``peak_sigma``
    × the noise: at 1.2 σ per pixel, a matched filter still sees them at ~11 σ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = 1000.0 + rng.normal(0.0, noise, shape)
    s = fwhm / 2.3548
    xs, ys = np.meshgrid(np.arange(60, shape[1] - 40, 70), np.arange(60, shape[0] - 40, 70))
    xy = np.column_stack([xs.ravel(), ys.ravel()]) + rng.uniform(-0.5, 0.5, (xs.size, 2))
    for x, y in xy:
        img += peak_sigma * noise * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return img.astype(np.float32), xy


def test_faint_broad_stars_are_found():
    """Stars 12 px across whose peak pixel is ~1 σ above the sky (the real M13 frames): a
    noise spike near the smoothed peak outshines the star's own core pixel, so that pixel
    must neither be judged as a single-pixel peak (its neighbours sit at ~0.3 σ) nor be
    where the centroid starts (2-3 px off, it was given up as diverged); 5 % of these
    stars were lost that way. Their centroids scatter by ~0.8 px at this signal."""
    found = total = 0
    for seed in range(3):
        img, xy = _broad_grid(seed, 1.2)
        st = detect_stars(img, max_stars=1000)
        d = cKDTree(st.xy).query(xy)[0]
        found += int(np.sum(d < 3.0))
        total += len(xy)
        assert np.sum(cKDTree(xy).query(st.xy)[0] > 3.0) <= 1  # nothing but the stars
        assert np.median(d) < 1.2
    assert found >= 0.97 * total, f"{found} of {total}"


def _demosaiced_luminance(s) -> np.ndarray:
    from skystack.io import luminance
    from skystack.io.bayer import debayer

    return luminance(debayer(s.frame(0), "GRBG"))


def test_correlated_noise_of_a_demosaiced_frame_makes_no_stars():
    """Demosaicing correlates neighbouring pixels' noise: a 1 px Gaussian leaves ~1.9 × the
    noise the white-noise formula predicts, and a threshold that assumed white noise
    (5 σ, really ~2.6 σ) found ~270 "stars" in this star-free 800 × 600 frame. The
    threshold follows the smoothed frame's measured noise."""
    clean = dict(hot_pixel_fraction=0.0, cold_pixel_fraction=0.0, cosmic_rate=0.0)
    for seed in (3, 4):
        empty = make_seestar_like(n_frames=1, shape=(600, 800), seed=seed, star_density=0.0, **clean)
        assert detect_stars(_demosaiced_luminance(empty)).n_detected <= 1
        s = make_seestar_like(n_frames=1, shape=(600, 800), seed=seed, **clean)
        st = detect_stars(_demosaiced_luminance(s), max_stars=10 ** 6)
        txy, _ = s.stars_in_frame(0, margin=-5)
        real = cKDTree(txy).query(st.xy)[0] < 1.5
        assert len(st) > 100 and real.mean() > 0.9, f"{real.mean():.2f} of {len(st)} detections are stars"


def test_single_star_field():
    s = make_deepsky(n_frames=1, shape=(64, 64), seed=0, extended=False, star_density=0.0,
                     hot_pixel_fraction=0.0, cosmic_rate=0.0)
    s.stars = StarField(np.array([30.37]), np.array([33.81]), np.array([2e5]))
    st = detect_stars(s.frame(0).astype(np.float32))
    assert len(st) == 1
    assert abs(st.x[0] - 30.37) < 0.02 and abs(st.y[0] - 33.81) < 0.02


# -- reading the frame in place, in strips, from any thread --------------------------------


@pytest.fixture(scope="module")
def medium():
    return make_deepsky(n_frames=2, shape=(500, 700), seed=31, hot_pixel_fraction=3e-4, cosmic_rate=3e-5)


def _same(a, b):
    return (a.n_detected == b.n_detected and a.n_sharp == b.n_sharp and np.array_equal(a.xy, b.xy)
            and np.array_equal(a.err, b.err) and np.array_equal(a.moments, b.moments)
            and a.background == b.background and a.noise == b.noise)


def test_uint16_is_read_in_place_with_the_float32_result(medium):
    raw = medium.frame(0)
    assert raw.dtype == np.uint16
    a = detect_stars(raw, max_stars=200)
    b = detect_stars(raw.astype(np.float32), max_stars=200)
    assert len(a) > 50 and _same(a, b)
    # big-endian FITS data is not read natively: converted, same stars
    assert _same(detect_stars(raw.astype(">u2"), max_stars=200), a)


def test_result_does_not_depend_on_the_strip_height(medium, monkeypatch):
    f = medium.frame(1)
    a = detect_stars(f, max_stars=200)
    monkeypatch.setattr(stars_mod, "_STRIP_BINS", 7)
    assert _same(detect_stars(f, max_stars=200), a)


def test_threads_give_the_sequential_results(medium):
    frames = [medium.frame(i) for i in range(2)] * 2
    seq = [detect_stars(f, max_stars=150) for f in frames]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(lambda f: detect_stars(f, max_stars=150), frames))
    assert all(_same(a, b) for a, b in zip(seq, par))


def test_candidate_cap_keeps_the_strongest(medium, monkeypatch):
    f = medium.frame(0).astype(np.float32)
    # the same window for both (the FWHM estimate would see fewer stars)
    full = detect_stars(f, max_stars=20, fwhm_guess=3.0)
    monkeypatch.setattr(stars_mod, "_MIN_CANDIDATES", 60)
    monkeypatch.setattr(stars_mod, "_PX_PER_CANDIDATE", 10 ** 9)
    capped = detect_stars(f, max_stars=20, fwhm_guess=3.0)
    assert capped.n_detected <= 60 < full.n_detected
    # the brightest stars come from the strongest candidates: still there, same positions
    d, _ = cKDTree(capped.xy).query(full.xy[:10])
    assert np.max(d) < 1e-9


def test_binned_search_finds_the_full_resolution_stars():
    """The binned candidates, confirmed at full resolution, find nearly every star a
    full-resolution search (σ = 1 px Gaussian, 5 σ) finds: here, the isolated true stars
    whose smoothed peak clears that threshold by 20 % (63 of these 65; the full-frame search
    this replaced found the same 63 — the last two fail the shape tests)."""
    s = make_deepsky(n_frames=1, shape=(500, 700), seed=32, extended=False)
    i = 0
    f = s.frame(i, defects=False).astype(np.float32)
    st = detect_stars(f, max_stars=10 ** 6)
    bg = stars_mod.background_mesh(f)
    smooth = cv2.GaussianBlur(f, (9, 9), 1.0, borderType=cv2.BORDER_REFLECT) - bg.level_map()
    k1 = cv2.getGaussianKernel(9, 1.0, cv2.CV_64F)
    thr = 5.0 * float(np.sum(k1 ** 2)) * bg.noise_map()
    txy, tflux = s.stars_in_frame(i, margin=10)
    ix = np.clip(np.rint(txy).astype(int), 0, [f.shape[1] - 1, f.shape[0] - 1])
    clear = smooth[ix[:, 1], ix[:, 0]] > 1.2 * thr[ix[:, 1], ix[:, 0]]
    # isolated ones (a blend is one detection)
    nn = cKDTree(txy).query(txy, 2)[0][:, 1]
    want = clear & (nn > 8.0)
    assert want.sum() > 50
    found = cKDTree(st.xy).query(txy[want])[0] < 1.0
    assert found.mean() > 0.95, f"{found.mean():.3f} of {want.sum()} clear isolated stars found"


def test_histogram_statistics_match_the_sorted_ones():
    rng = np.random.default_rng(3)
    hist = np.empty(2 * kern._HIST_HALF)
    cum = np.empty(2 * kern._HIST_HALF + 1)
    hint = np.empty(kern._HINT_SAMPLES)
    for trial in range(20):
        sky = rng.normal(1000.0, 20.0, 450)
        sky[rng.uniform(size=sky.size) < 0.1] += rng.exponential(300.0, 1)[0]  # star pixels
        exact = kern._sorted_clipped_stats(sky.copy(), sky.size, 3.0, 5)
        # first guesses from the subsample, from a neighbour (off by 2 σ, 1.5× wide)
        for loc0, scale0 in ((0.0, 0.0), (1040.0, 30.0)):
            med, sig = kern._clipped_stats(sky.copy(), sky.size, 3.0, 5, loc0, scale0, hist, cum, hint)
            assert abs(med - exact[0]) < 0.1 * exact[1] and abs(sig / exact[1] - 1.0) < 0.1
    # quantised data (a few levels): exact
    q = np.round(rng.normal(10.0, 0.3, 500))
    assert kern._clipped_stats(q.copy(), q.size, 3.0, 5, 0.0, 0.0, hist, cum, hint) == \
        kern._sorted_clipped_stats(q.copy(), q.size, 3.0, 5)


@pytest.mark.parametrize("shape", [(3, 3), (4, 7), (17, 30), (3, 50)])
def test_mesh_median_is_scipys(shape):
    """The background mesh's 3×3 cell median (written with numpy so that a deep-sky run does
    not import scipy.ndimage) gives scipy's median_filter(size=3, mode='nearest') exactly."""
    from scipy.ndimage import median_filter

    from skystack.detect.background import _median3x3

    a = np.random.default_rng(sum(shape)).normal(100, 5, shape)
    a[0, 0] = a[-1, -1] = 0.0  # a cell without data is 0 here, the plane's value
    assert np.array_equal(_median3x3(a), median_filter(a, size=3, mode="nearest"))
