import numpy as np
import pytest

from skystack.errors import UsageError
from skystack.stack.normalize import coefficients, frame_weights, median_mad, robust_stats, sample_stats


def test_robust_stats_per_channel(rng):
    img = np.stack([rng.normal(100, 5, (300, 300)), rng.normal(200, 10, (300, 300)),
                    rng.normal(50, 2, (300, 300))], axis=2).astype(np.float32)
    img[0, 0, 0] = np.nan
    img[5:8, 5:8, 1] = 60000  # a few hot pixels do not move robust statistics
    loc, sc = robust_stats(img)
    assert np.allclose(loc, [100, 200, 50], rtol=0.01)
    assert np.allclose(sc, [5, 10, 2], rtol=0.05)


@pytest.mark.parametrize("mode", ["add", "mul", "addscale", "mulscale"])
def test_normalisation_brings_frames_to_reference(mode, rng):
    base = rng.normal(1000, 20, 50_000)
    frames = [base, base * 1.3 + 0.0, base + 250.0, (base - 1000) * 0.5 + 900]
    loc = np.array([[np.median(f)] for f in frames])
    sc = np.array([[1.4826 * np.median(np.abs(f - np.median(f)))] for f in frames])
    mul, add = coefficients(mode, loc, sc, ref=0)
    out = [f * mul[i, 0] + add[i, 0] for i, f in enumerate(frames)]
    if mode == "add":
        assert all(abs(np.median(o) - np.median(base)) < 1e-6 for o in out)
    if mode == "mul":
        assert abs(np.median(out[1]) - np.median(base)) < 1e-6
    if mode == "addscale":
        for o in out:  # level and spread both match the reference
            assert abs(np.median(o) - np.median(base)) < 1e-6
            assert abs(np.std(o) - np.std(base)) / np.std(base) < 0.02
    if mode == "mulscale":  # Siril: v · (L_r/L_i) · (S_r/S_i)
        assert np.allclose(mul[:, 0], (loc[0, 0] / loc[:, 0]) * (sc[0, 0] / sc[:, 0]))
        assert np.all(add == 0)


def test_unknown_mode():
    with pytest.raises(UsageError):
        coefficients("bogus", np.ones((2, 1)), np.ones((2, 1)), 0)


def test_weights():
    m = [{"noise": 1.0, "n_stars": 100, "fwhm_px": 2.0}, {"noise": 2.0, "n_stars": 50, "fwhm_px": 4.0},
         {"n_stars": 80}]
    mul = np.ones((3, 1))
    w = frame_weights("noise", m, mul)
    assert w[0] / w[1] == pytest.approx(4.0)  # 1/σ²
    assert w[2] == pytest.approx(np.median([w[0], w[1]]) * 1.0, rel=0.3)  # missing stat: median weight
    assert w.mean() == pytest.approx(1.0)
    w = frame_weights("fwhm", m, mul)
    assert w[0] / w[1] == pytest.approx(4.0)
    w = frame_weights("stars", m, mul)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert np.all(frame_weights("none", m, mul) == 1)


KINDS = ["sky", "full range", "few values", "one value", "fractional", "negative"]


def _numpy_median_mad(v):
    med = float(np.median(v))
    return med, float(np.median(np.abs(v - med)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_median_mad_is_numpys_to_the_bit(dtype, kind):
    """Whole-ADU samples take the histogram path, the others a partition: both give
    exactly np.median's values, for odd and even counts."""
    rng = np.random.default_rng(KINDS.index(kind))
    for n in (4096, 4097, 10_000, 230_401):
        if kind == "sky":
            v = np.round(rng.normal(880, 35, n))
        elif kind == "full range":
            v = rng.integers(0, 65536, n).astype(float)
        elif kind == "few values":
            v = rng.integers(7, 10, n).astype(float)
        elif kind == "one value":
            v = np.full(n, 1234.0)
        elif kind == "fractional":
            v = rng.normal(100, 5, n)
        else:
            v = np.round(rng.normal(-3, 40, n))
        v = v.astype(dtype)
        assert median_mad(v) == _numpy_median_mad(v), (n, kind)


def test_sample_stats_drop_non_finite_values():
    rng = np.random.default_rng(8)
    v = np.round(rng.normal(500, 20, 50_000)).astype(np.float32)
    v[::7] = np.nan
    v[3::11] = np.inf
    locs, scales = sample_stats([v])
    med, mad = _numpy_median_mad(v[np.isfinite(v)])
    assert locs == [med] and scales == [1.4826 * mad]
