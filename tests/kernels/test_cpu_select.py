"""Order statistics and Student's t used by the stacking kernels (cpu/select.py,
cpu/tdist.py), against NumPy and SciPy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from _skystack_kernels.cpu.select import (
    clipped_moments,
    deviations,
    median_inplace,
    median_near,
    select_near,
    moments_about,
    sample_std,
    select_range,
    sort_pairs,
    split_bounds,
    split_moments,
)
from _skystack_kernels.cpu.tdist import gesd_critical_values, t_ppf, t_sf

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None)


@st.composite
def vectors(draw, min_size=1, max_size=120):
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        return rng.normal(0, 1, n)
    return rng.integers(-3, 4, n).astype(np.float64)  # many ties


def assert_split(a, k):
    assert (a[:k] <= a[k]).all() and (a[k + 1:] >= a[k]).all()


@SETTINGS
@given(a=vectors(), data=st.data())
def test_select_range_is_the_kth_order_statistic(a, data):
    k = data.draw(st.integers(0, len(a) - 1))
    work = a.copy()
    assert select_range(work, 0, len(a) - 1, k) == np.sort(a)[k]
    assert_split(work, k)
    assert sorted(work) == sorted(a)


@SETTINGS
@given(a=vectors(min_size=3), data=st.data())
def test_select_range_reuses_earlier_splits(a, data):
    n = len(a)
    work = a.copy()
    s1 = data.draw(st.integers(0, n - 1))
    select_range(work, 0, n - 1, s1)
    r = data.draw(st.integers(0, n - 1))
    lo, hi = split_bounds(r, n, s1, -1, -1, -1)
    assert select_range(work, lo, hi, r) == np.sort(a)[r]
    assert_split(work, r)
    assert_split(work, s1)  # the earlier split still holds


@SETTINGS
@given(a=vectors(), data=st.data(), guess=st.floats(-5, 5) | st.just(float("nan")),
       width=st.floats(0, 3) | st.just(float("nan")))
def test_select_near_never_depends_on_the_hint(a, data, guess, width):
    k = data.draw(st.integers(0, len(a) - 1))
    work = a.copy()
    hint = np.array([guess, width])
    value, lo = select_near(work, len(a), k, hint, 0)
    assert value == np.sort(a)[k]
    assert_split(work, k)
    assert hint[0] == np.sort(a)[k] and hint[1] >= 0
    # the lower bound it gives for rank k - 1 is a boundary of the partition
    assert 0 <= lo <= max(k - 1, 0) and (lo == 0 or work[:lo].max() <= work[lo:].min())
    if k > 0:
        assert select_range(work, lo, k - 1, k - 1) == np.sort(a)[k - 1]


@SETTINGS
@given(a=vectors())
def test_medians_match_numpy(a):
    assert median_inplace(a.copy(), len(a)) == np.median(a)
    hint = np.array([np.nan, np.nan])
    for b in (a, a + 0.1, a[::-1] * 3):  # a hint carried over from other data
        assert median_near(b.copy(), len(b), hint, 0) == np.median(b)


@SETTINGS
@given(a=vectors())
def test_sort_pairs_is_stable(a):
    n = len(a)
    v = a.copy()
    p = np.arange(n, dtype=np.int32)
    sort_pairs(v, p, n, np.empty(n), np.empty(n, np.int32))
    order = np.argsort(a, kind="stable")
    np.testing.assert_array_equal(p, order)
    np.testing.assert_array_equal(v, a[order])


@SETTINGS
@given(a=vectors(min_size=2))
def test_moments_about_the_median_give_the_sample_std(a):
    n = len(a)
    c = float(np.median(a))
    s1, s2 = moments_about(a, n, c)
    assert s1 == pytest.approx(np.sum(a - c), rel=1e-12, abs=1e-9)
    assert s2 == pytest.approx(np.sum((a - c) ** 2), rel=1e-12, abs=1e-9)
    assert sample_std(s1, s2, n) == pytest.approx(np.std(a, ddof=1), rel=1e-12, abs=1e-12)
    d = np.empty(n)
    assert deviations(a, d, n, c) == (s1, s2)  # the same sums, in the same order
    np.testing.assert_array_equal(d, a - c)


def test_moments_about_the_median_keep_the_digits():
    # values 1e6 apart from zero, spread 1: the sums about the median lose nothing
    a = np.array([1e6 + 1.0, 1e6 + 2.0, 1e6 + 3.0, 1e6 + 4.0, 1e6 + 5.0])
    s1, s2 = moments_about(a, 5, 1e6 + 3.0)
    assert (s1, s2) == (0.0, 10.0) and sample_std(s1, s2, 5) == np.std(a, ddof=1)
    # a huge outlier: still the two-pass value to the last digits
    b = np.array([100.0, 101.0, 99.0, 100.5, 1e9])
    s1, s2 = moments_about(b, 5, 100.5)
    assert sample_std(s1, s2, 5) == pytest.approx(np.std(b, ddof=1), rel=1e-14)
    assert sample_std(0.0, 0.0, 3) == 0.0 and sample_std(1.0, 0.5 - 1e-17, 2) == 0.0  # never NaN


@SETTINGS
@given(a=vectors(), b=st.floats(0.0, 3.0), t=st.floats(0.0, 3.0))
def test_clipped_and_split_moments(a, b, t):
    n = len(a)
    e = np.clip(a, -b, b)
    s1, s2 = clipped_moments(a, n, b)
    assert s1 == pytest.approx(e.sum(), rel=1e-12, abs=1e-9) and s2 == pytest.approx((e * e).sum(), rel=1e-12, abs=1e-9)
    rim = np.full(n, np.nan)
    c1, c2, nr = split_moments(a, n, t, rim)
    core = np.abs(a) <= t
    assert nr == (~core).sum()
    np.testing.assert_array_equal(rim[:nr], a[~core])  # in order
    assert c1 == pytest.approx(a[core].sum(), abs=1e-9) and c2 == pytest.approx((a[core] ** 2).sum(), abs=1e-9)
    # core + clipped rim = clipped whole, whenever the core is not clipped (t <= b)
    if t <= b:
        r1, r2 = clipped_moments(rim, nr, b)
        assert c1 + r1 == pytest.approx(s1, abs=1e-9) and c2 + r2 == pytest.approx(s2, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30, 100, 1000, 5000])
def test_t_quantile_matches_scipy(df):
    for p in (0.51, 0.6, 0.9, 0.975, 0.999, 1 - 0.05 / 6000, 1 - 1e-9, 0.3, 0.01):
        assert t_ppf(p, float(df)) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    for t in (0.0, 0.5, 2.0, 7.0, 40.0):
        assert t_sf(t, float(df)) == pytest.approx(stats.t.sf(t, df), rel=1e-9)


def test_gesd_critical_values_match_scipy():
    crit = np.empty(200)
    gesd_critical_values(0.05, crit)
    assert np.isinf(crit[:3]).all()
    for s in (3, 4, 10, 54, 199):
        t = stats.t.ppf(1 - 0.05 / (2 * s), s - 2)
        assert crit[s] == pytest.approx((s - 1) * t / np.sqrt((s - 2 + t * t) * s), rel=1e-10)
