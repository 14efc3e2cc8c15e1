"""CPU stacking kernels (_skystack_kernels.cpu.combine) against the NumPy reference and
against hand-worked cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _skystack_kernels.codes import REDUCE, REJECT
from _skystack_kernels.cpu.combine import accumulate_mean, combine_band, finish_mean
from kernel_reference import combine_ref, gesd_lambda

HYPOTHESIS = settings(derandomize=True, max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


def run(band, method, reduce="mean", p_low=3.0, p_high=3.0, max_iter=5, weights=None, rejected=None):
    n, h, w = band.shape
    weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    out = np.full((h, w), -7.0, np.float32)  # sentinel: every pixel must be written
    count = np.full((h, w), -7, np.int32)
    rejected = np.zeros((n, 2), np.int64) if rejected is None else rejected
    combine_band(band, weights, REJECT[method], REDUCE[reduce], float(p_low), float(p_high), int(max_iter),
                 out, count, rejected)
    return out, count, rejected


def column(values):
    """An (N, 1, 1) float32 band holding one pixel's values."""
    return np.asarray(values, np.float32).reshape(-1, 1, 1)


# ---------------------------------------------------------------------------------
# property tests: every reject x reduce against the reference

# Thresholds are kept off small rationals (the +0.00123): with integer-valued data a
# kappa of exactly 1 or 1.5 can put a value *exactly* on a threshold, where the outcome
# of the strict comparison depends on float rounding in both implementations.
KAPPA = st.integers(50, 400).map(lambda i: i / 100 + 0.00123)
FRACTION = st.integers(0, 50).map(lambda i: i / 100 + 0.00123)
PARAMS = {
    "none": (st.just(0.0), st.just(0.0)),
    "sigma": (KAPPA, KAPPA),
    "winsorized": (KAPPA, KAPPA),
    "mad": (KAPPA, KAPPA),
    "linear-fit": (KAPPA, KAPPA),
    "percentile": (FRACTION, FRACTION),
    "gesd": (st.floats(0.01, 0.3), st.floats(0.0, 0.5)),
    "minmax": (st.floats(0.0, 12.0), st.floats(0.0, 12.0)),
}


@st.composite
def bands(draw):
    """Small random bands: noise around a level, a few outliers, NaN holes, and sometimes
    integer-valued data (ties, as with 8-bit video) or a column of all NaN."""
    n = draw(st.integers(1, 40))
    h = draw(st.integers(1, 3))
    w = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    level = draw(st.sampled_from([0.0, 5.0, 1000.0, -50.0]))
    if draw(st.booleans()):
        band = rng.normal(level, 10.0, (n, h, w))
    else:
        band = np.round(rng.normal(level, 2.0, (n, h, w)))  # ties
    out_frac = draw(st.sampled_from([0.0, 0.05, 0.2]))
    mask = rng.random(band.shape) < out_frac
    band[mask] += rng.choice([-1.0, 1.0], mask.sum()) * rng.uniform(50, 5000, mask.sum())
    band[rng.random(band.shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))] = np.nan
    if draw(st.booleans()):
        band[:, 0, 0] = np.nan
    return band.astype(np.float32)


def _check_against_reference(method, reduce, band, p_low, p_high, max_iter, weights):
    out, count, rejected = run(band, method, reduce, p_low, p_high, max_iter, weights)
    r_out, r_count, r_rejected = combine_ref(band, weights, method, reduce, p_low, p_high, max_iter)
    np.testing.assert_array_equal(count, r_count)
    np.testing.assert_array_equal(rejected, r_rejected)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(r_out))
    np.testing.assert_allclose(out, r_out, rtol=2e-6, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("reduce", ["mean", "median"])
@pytest.mark.parametrize("method", list(REJECT))
def test_matches_reference(method, reduce):
    p_low_st, p_high_st = PARAMS[method]

    @HYPOTHESIS
    @given(band=bands(), p_low=p_low_st, p_high=p_high_st, max_iter=st.sampled_from([0, 1, 3, 10]),
           weighted=st.booleans(), seed=st.integers(0, 1000))
    def check(band, p_low, p_high, max_iter, weighted, seed):
        n = band.shape[0]
        weights = (np.random.default_rng(seed).uniform(0.1, 3.0, n) if weighted else np.ones(n)).astype(np.float32)
        _check_against_reference(method, reduce, band, p_low, p_high, max_iter, weights)

    check()


@pytest.mark.parametrize("method", ["sigma", "winsorized", "mad", "linear-fit", "gesd", "minmax"])
def test_large_stack_matches_reference(method):
    # n > 32 exercises the merge sort (linear-fit, gesd, minmax with many drops) and
    # deeper selections
    rng = np.random.default_rng(7)
    band = rng.normal(100, 5, (150, 2, 3)).astype(np.float32)
    band[rng.random(band.shape) < 0.03] += 400
    band[rng.random(band.shape) < 0.1] = np.nan
    p = {"gesd": (0.05, 0.3), "minmax": (10, 7)}.get(method, (2.5, 2.5))
    _check_against_reference(method, "mean", band, *p, 0, np.ones(150, np.float32))


# ---------------------------------------------------------------------------------
# hand-worked cases


def test_one_huge_outlier_is_rejected_high_and_counted():
    rng = np.random.default_rng(3)
    values = rng.normal(100.0, 1.0, 20)
    values[7] = 1e4
    out, count, rejected = run(column(values), "sigma", p_low=3, p_high=3)
    expected = np.delete(values.astype(np.float32).astype(np.float64), 7).mean()
    assert count[0, 0] == 19
    assert out[0, 0] == pytest.approx(expected, rel=1e-6)
    assert rejected[7].tolist() == [0, 1]
    assert rejected.sum() == 1


def test_low_outlier_is_counted_low():
    values = [10.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9, 10.3, 9.7, 10.0, 10.1, -500.0]
    _, count, rejected = run(column(values), "sigma", p_low=3, p_high=3)
    assert rejected[11].tolist() == [1, 0] and rejected.sum() == 1 and count[0, 0] == 11


def test_sigma_needs_ten_values_to_flag_a_lone_outlier():
    # with n-1 equal values and one outlier d, the sample sigma is d/sqrt(n): a kappa of 3
    # can only reject it once sqrt(n) > 3, i.e. n >= 10
    for n, expect in ((9, 0), (10, 1)):
        values = [5.0] * (n - 1) + [50.0]
        _, _, rejected = run(column(values), "sigma", p_low=3, p_high=3)
        assert rejected.sum() == expect, n


def test_all_nan_column_gives_nan_and_zero_count():
    band = np.full((6, 2, 2), np.nan, np.float32)
    band[:, 1, 1] = [1, 2, 3, 4, 5, 6]
    for method in REJECT:
        for reduce in REDUCE:
            out, count, rejected = run(band, method, reduce, 1.0, 1.0)
            assert np.isnan(out[0, 0]) and count[0, 0] == 0
            assert not np.isnan(out[1, 1]) and count[1, 1] >= 1


def test_nan_and_inf_are_no_data():
    out, count, _ = run(column([1.0, np.nan, 3.0, np.inf, -np.inf]), "none")
    assert count[0, 0] == 2 and out[0, 0] == 2.0


def test_weighted_mean():
    out, count, _ = run(column([1.0, 2.0, 4.0]), "none", weights=[1.0, 1.0, 2.0])
    assert out[0, 0] == pytest.approx(11.0 / 4.0) and count[0, 0] == 3


def test_weights_do_not_enter_the_median_or_the_rejection():
    values = [1.0, 2.0, 4.0, 8.0, 100.0]
    out, _, _ = run(column(values), "none", "median", weights=[5, 1, 1, 1, 1])
    assert out[0, 0] == 4.0
    _, _, r1 = run(column(values), "minmax", p_low=1, p_high=1, weights=[5, 1, 1, 1, 1])
    _, _, r2 = run(column(values), "minmax", p_low=1, p_high=1)
    np.testing.assert_array_equal(r1, r2)


def test_zero_weights_sum_gives_nan_but_counts():
    out, count, _ = run(column([1.0, 2.0]), "none", weights=[0.0, 0.0])
    assert np.isnan(out[0, 0]) and count[0, 0] == 2


def test_median_of_even_and_odd_counts():
    assert run(column([4.0, 1.0, 3.0, 2.0]), "none", "median")[0][0, 0] == 2.5
    assert run(column([4.0, 1.0, 3.0]), "none", "median")[0][0, 0] == 3.0


def test_minmax_drops_exactly_k():
    out, count, rejected = run(column([5.0, 1.0, 3.0, 9.0, 7.0]), "minmax", p_low=1, p_high=1)
    assert count[0, 0] == 3 and out[0, 0] == 5.0
    assert rejected.tolist() == [[0, 0], [1, 0], [0, 0], [0, 1], [0, 0]]
    # two lowest, none highest
    out, count, rejected = run(column([5.0, 1.0, 3.0, 9.0, 7.0]), "minmax", p_low=2, p_high=0)
    assert count[0, 0] == 3 and out[0, 0] == 7.0 and rejected[:, 0].tolist() == [0, 1, 1, 0, 0]


def test_minmax_ties_drop_earliest_low_latest_high():
    _, _, rejected = run(column([2.0, 1.0, 1.0, 3.0, 3.0]), "minmax", p_low=1, p_high=1)
    assert rejected.tolist() == [[0, 0], [1, 0], [0, 0], [0, 0], [0, 1]]


def test_minmax_drops_fewer_when_not_enough_values():
    # k_low = min(5, n-1) = 3, k_high = min(5, n-1-3) = 0: the largest value survives
    out, count, rejected = run(column([4.0, 1.0, 3.0, 2.0]), "minmax", p_low=5, p_high=5)
    assert count[0, 0] == 1 and out[0, 0] == 4.0 and rejected.sum(0).tolist() == [3, 0]


@pytest.mark.parametrize("method", list(REJECT))
def test_two_values_are_never_rejected(method):
    out, count, rejected = run(column([1.0, 1000.0]), method, p_low=0.01, p_high=0.01)
    assert count[0, 0] == 2 and rejected.sum() == 0 and out[0, 0] == 500.5


def test_no_statistical_pass_leaves_fewer_than_two_values():
    # kappa 0.01 would reject all but the median: the pass is dropped instead
    _, count, rejected = run(column([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), "sigma", p_low=0.01, p_high=0.01)
    assert count[0, 0] == 6 and rejected.sum() == 0


def test_zero_scale_rejects_nothing():
    # MAD = 0 (more than half the values equal): nothing is judged an outlier
    _, count, rejected = run(column([3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 100.0]), "mad")
    assert count[0, 0] == 7 and rejected.sum() == 0
    # percentile around a zero median
    _, count, _ = run(column([0.0, 0.0, 0.0, 1.0, -1.0]), "percentile", p_low=0.1, p_high=0.1)
    assert count[0, 0] == 5


def test_percentile_clipping_is_relative_to_the_median():
    # median 100: reject below 100 - 0.2*100 = 80 and above 100 + 0.1*100 = 110
    values = [100, 101, 99, 79, 81, 111, 109, 100]
    _, _, rejected = run(column(values), "percentile", p_low=0.2, p_high=0.1)
    assert rejected[:, 0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert rejected[:, 1].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]


# NIST/SEMATECH e-Handbook 1.3.5.17.3 (Rosner's example): 54 values, up to 10 outliers at
# alpha = 0.05: the test finds exactly 3 (the three largest).
ROSNER = [-0.25, 0.68, 0.94, 1.15, 1.20, 1.26, 1.26, 1.34, 1.38, 1.43, 1.49, 1.49, 1.55, 1.56, 1.58,
          1.65, 1.69, 1.70, 1.76, 1.77, 1.81, 1.91, 1.94, 1.96, 1.99, 2.06, 2.09, 2.10, 2.14, 2.15,
          2.23, 2.24, 2.26, 2.35, 2.37, 2.40, 2.47, 2.54, 2.62, 2.64, 2.90, 2.92, 2.92, 2.93, 3.21,
          3.26, 3.30, 3.59, 3.68, 4.30, 4.64, 5.34, 5.42, 6.01]
ROSNER_LAMBDA = [3.158, 3.151, 3.143, 3.136, 3.128, 3.120, 3.111, 3.103, 3.094, 3.085]


def test_gesd_rosner_example():
    from _skystack_kernels.cpu.tdist import gesd_critical_values

    crit = np.empty(55)
    gesd_critical_values(0.05, crit)
    # the handbook prints 3 decimals
    np.testing.assert_allclose([crit[54 - i] for i in range(10)], ROSNER_LAMBDA, atol=1e-3)
    np.testing.assert_allclose([crit[54 - i] for i in range(10)], [gesd_lambda(54 - i, 0.05) for i in range(10)],
                               rtol=1e-10)
    values = np.random.default_rng(0).permutation(ROSNER)  # frame order must not matter
    out, count, rejected = run(column(values), "gesd", p_low=0.05, p_high=10.5 / 54)
    big = np.argsort(values)[-3:]
    assert count[0, 0] == 51
    assert sorted(np.flatnonzero(rejected[:, 1])) == sorted(big) and rejected[:, 0].sum() == 0


def test_winsorized_resists_a_cluster_of_outliers():
    # four equal high outliers among 20: they inflate the plain sigma so much that sigma
    # clipping keeps them; the winsorized sigma sees through them
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.normal(10.0, 0.5, 16), [30.0] * 4])
    _, _, rejected_sigma = run(column(values), "sigma", p_low=3, p_high=3)
    _, count, rejected = run(column(values), "winsorized", p_low=3, p_high=3)
    assert rejected_sigma.sum() == 0
    assert rejected[16:, 1].tolist() == [1, 1, 1, 1] and count[0, 0] == 16


def test_linear_fit_rejects_a_hot_value():
    values = [float(v) for v in range(20)] + [200.0]
    _, count, rejected = run(column(values), "linear-fit", p_low=3, p_high=3)
    assert rejected[20].tolist() == [0, 1] and count[0, 0] == 20


def test_max_iter_caps_the_passes():
    # a ladder of outliers: each pass peels one rung; one pass peels only the worst
    values = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02, 9.98, 10.0, 10.01, 9.99, 13.0, 20.0, 100.0]
    _, _, one = run(column(values), "sigma", p_low=3, p_high=3, max_iter=1)
    _, _, many = run(column(values), "sigma", p_low=3, p_high=3, max_iter=0)
    assert one[:, 1].sum() == 1 and one[12, 1] == 1
    assert many[:, 1].sum() == 3 and many[10:, 1].tolist() == [1, 1, 1]


def test_rejected_counts_accumulate():
    values = [10.0] * 12 + [1e4]
    band = column(values)
    _, _, rejected = run(band, "sigma")
    run(band, "sigma", rejected=rejected)
    assert rejected[12, 1] == 2


def test_strided_colour_view_equals_contiguous():
    rng = np.random.default_rng(5)
    band4d = rng.normal(50, 3, (12, 3, 5, 3)).astype(np.float32)
    band4d[rng.random(band4d.shape) < 0.05] = 500
    band4d[rng.random(band4d.shape) < 0.1] = np.nan
    image = np.empty((3, 5, 3), np.float32)
    count = np.empty((3, 5, 3), np.int32)
    rejected = np.zeros((12, 2), np.int64)
    for c in range(3):
        combine_band(band4d[..., c], np.ones(12, np.float32), REJECT["sigma"], REDUCE["mean"], 2.5, 2.5, 5,
                     image[..., c], count[..., c], rejected)
    total = np.zeros((12, 2), np.int64)
    for c in range(3):
        out, cnt, rej = run(np.ascontiguousarray(band4d[..., c]), "sigma", p_low=2.5, p_high=2.5)
        np.testing.assert_array_equal(image[..., c], out)
        np.testing.assert_array_equal(count[..., c], cnt)
        total += rej
    np.testing.assert_array_equal(rejected, total)
    assert total.sum() > 0


def test_wide_band_crosses_tile_boundaries():
    # W not a multiple of the 32-column gather tile; every pixel distinct
    rng = np.random.default_rng(9)
    band = rng.normal(0, 1, (9, 2, 70)).astype(np.float32)
    out, count, _ = run(band, "none", "median")
    np.testing.assert_array_equal(out, np.median(band, axis=0).astype(np.float32))
    assert (count == 9).all()


@pytest.mark.parametrize("method", list(REJECT))
def test_normalisation_in_the_gather_equals_normalising_first(method):
    """``v * scale + offset`` inside the kernel is bit-identical to the backends'
    ``x *= scale; x += offset`` on the warped frames (float32, two roundings)."""
    rng = np.random.default_rng(21)
    n = 23
    raw = rng.normal(500, 30, (n, 3, 40)).astype(np.float32)
    raw[rng.random(raw.shape) < 0.03] += 4000
    raw[rng.random(raw.shape) < 0.05] = np.nan
    scale = rng.uniform(0.8, 1.25, n).astype(np.float32)
    offset = rng.uniform(-40, 40, n).astype(np.float32)
    norm = raw.copy()
    for k in range(n):
        norm[k] *= scale[k]
        norm[k] += offset[k]
    p = PARAMS_FIXED[method]
    want = run(norm, method, "mean", *p)
    h, w = raw.shape[1:]
    out = np.empty((h, w), np.float32)
    count = np.empty((h, w), np.int32)
    rejected = np.zeros((n, 2), np.int64)
    combine_band(raw, np.ones(n, np.float32), REJECT[method], REDUCE["mean"], float(p[0]), float(p[1]), 5, out,
                 count, rejected, scale, offset)
    np.testing.assert_array_equal(out, want[0])
    np.testing.assert_array_equal(count, want[1])
    np.testing.assert_array_equal(rejected, want[2])
    if method != "none":
        assert rejected.sum() > 0


PARAMS_FIXED = {"none": (0, 0), "sigma": (2.5, 2.5), "winsorized": (2.5, 2.5), "mad": (3, 3), "linear-fit": (2.5, 2.5),
                "percentile": (0.1, 0.1), "gesd": (0.05, 0.3), "minmax": (1, 2)}


@pytest.mark.parametrize("reduce", ["mean", "median"])
@pytest.mark.parametrize("method", list(REJECT))
def test_any_cut_of_the_block_gives_the_same_pixels(method, reduce):
    """Phase 2 may cut the output into row bands or 2-D tiles of any size: each pixel
    depends on its own values only (the median guesses carried from pixel to pixel change
    the time, never the result), so every cut gives the same bits."""
    rng = np.random.default_rng(33)
    n = 41
    sky = rng.normal(800, 200, (1, 9, 70))  # a level that jumps from pixel to pixel (stars)
    band = (sky + rng.normal(0, 25, (n, 9, 70))).astype(np.float32)
    band[rng.random(band.shape) < 0.02] += 3000
    band[rng.random(band.shape) < 0.05] = np.nan
    p = PARAMS_FIXED[method]
    whole = run(band, method, reduce, *p, max_iter=0)
    out = np.empty_like(whole[0])
    count = np.empty_like(whole[1])
    rejected = np.zeros_like(whole[2])
    for y0, y1 in ((0, 1), (1, 5), (5, 9)):
        for x0, x1 in ((0, 13), (13, 14), (14, 50), (50, 70)):
            o, c, r = run(band[:, y0:y1, x0:x1], method, reduce, *p, max_iter=0)
            out[y0:y1, x0:x1] = o
            count[y0:y1, x0:x1] = c
            rejected += r
    np.testing.assert_array_equal(out, whole[0])
    np.testing.assert_array_equal(count, whole[1])
    np.testing.assert_array_equal(rejected, whole[2])


def test_scale_and_offset_must_be_per_frame():
    band = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError):
        combine_band(band, np.ones(4, np.float32), 0, 0, 3.0, 3.0, 5, np.empty((2, 3), np.float32),
                     np.empty((2, 3), np.int32), np.zeros((4, 2), np.int64), np.ones(4, np.float32),
                     np.zeros(3, np.float32))


def test_shape_mismatch_raises():
    band = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError):
        combine_band(band, np.ones(3, np.float32), 0, 0, 3.0, 3.0, 5, np.empty((2, 3), np.float32),
                     np.empty((2, 3), np.int32), np.zeros((4, 2), np.int64))


# ---------------------------------------------------------------------------------
# streaming mean


def test_streaming_mean_matches_weighted_nanmean():
    rng = np.random.default_rng(2)
    frames = rng.normal(10, 2, (5, 4, 6)).astype(np.float32)
    frames[rng.random(frames.shape) < 0.2] = np.nan
    frames[:, 0, 0] = np.nan
    weights = [1.0, 2.0, 0.5, 1.5, 3.0]
    acc = np.zeros((4, 6))
    wsum = np.zeros((4, 6))
    count = np.zeros((4, 6), np.int32)
    for f, w in zip(frames, weights):
        accumulate_mean(f, np.float64(w), acc, wsum, count)
    out = np.empty((4, 6), np.float32)
    finish_mean(acc, wsum, out)
    wk = np.where(np.isfinite(frames), np.asarray(weights)[:, None, None], 0.0)
    with np.errstate(invalid="ignore"):
        expected = np.nansum(frames * wk, axis=0) / wk.sum(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(count, np.isfinite(frames).sum(axis=0))


def test_streaming_mean_colour_without_count():
    rng = np.random.default_rng(4)
    frames = rng.normal(10, 2, (3, 2, 3, 3)).astype(np.float32)
    acc = np.zeros((2, 3, 3))
    wsum = np.zeros((2, 3, 3))
    for f in frames:
        accumulate_mean(f, 1.0, acc, wsum)
    out = np.empty((2, 3, 3), np.float32)
    finish_mean(acc, wsum, out)
    np.testing.assert_allclose(out, frames.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert math.isclose(wsum.max(), 3.0)
