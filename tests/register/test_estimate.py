"""Least squares, RANSAC and refinement on synthetic correspondences."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.register import estimate
from skystack.types import Transform

TRUTHS = {
    "shift": Transform.from_params(dx=12.5, dy=-7.25, model="shift"),
    "similarity": Transform.from_params(dx=-30.0, dy=18.0, angle_deg=1.7, scale=1.002,
                                        center=(400.0, 300.0)),
    "affine": Transform(np.array([[1.01, 0.02, -5.0], [-0.015, 0.995, 9.0]]), "affine"),
}


def _points(rng, n=80):
    return rng.uniform([0, 0], [800, 600], (n, 2))


@pytest.mark.parametrize("model", ["shift", "similarity", "affine"])
def test_fit_is_exact_on_exact_points(model, rng):
    src = _points(rng)
    t = estimate.fit(src, TRUTHS[model].apply(src), model)
    assert t.model == model
    assert t.rms_error(TRUTHS[model], (600, 800)) < 1e-9


@pytest.mark.parametrize("model", ["shift", "similarity", "affine"])
def test_ransac_and_refine_reject_outliers(model, rng):
    src = _points(rng, 120)
    dst = TRUTHS[model].apply(src) + rng.normal(0, 0.05, (120, 2))
    bad = rng.choice(120, 50, replace=False)  # 42 % outliers, far off
    dst[bad] += rng.uniform(-200, 200, (50, 2))
    t, mask = estimate.ransac(src, dst, model, tol=1.0)
    assert t is not None
    t, mask = estimate.refine(src, dst, t, model, tol=1.0)
    assert not mask[bad].any() and mask.sum() >= 65
    assert t.rms_error(TRUTHS[model], (600, 800)) < 0.03


def test_refine_weights_by_uncertainty(rng):
    """Pairs with a large stated σ (faint stars) must not drag the fit."""
    model = "similarity"
    src = _points(rng, 60)
    sig = np.where(np.arange(60) < 15, 0.01, 0.5)  # 15 bright, 45 faint
    dst = TRUTHS[model].apply(src) + rng.normal(0, 1, (60, 2)) * sig[:, None]
    t0 = estimate.fit(src, dst, model)
    t, _ = estimate.refine(src, dst, t0, model, tol=3.0, sigma=sig)
    truth = TRUTHS[model]
    assert t.rms_error(truth, (600, 800)) < 0.5 * t0.rms_error(truth, (600, 800))


def test_ransac_is_deterministic(rng):
    src = _points(rng, 50)
    dst = TRUTHS["similarity"].apply(src) + rng.normal(0, 0.3, (50, 2))
    dst[:20] += 50.0
    a = estimate.ransac(src, dst, "similarity", tol=1.0)
    b = estimate.ransac(src, dst, "similarity", tol=1.0)
    assert np.array_equal(a[0].matrix, b[0].matrix) and np.array_equal(a[1], b[1])


def test_ransac_scale_range_discards_implausible_hypotheses(rng):
    src = _points(rng, 30)
    dst = src * 3.0  # a 3x zoom: outside (0.5, 2)
    t, mask = estimate.ransac(src, dst, "similarity", tol=1.0, scale_range=(0.5, 2.0))
    assert t is None and not mask.any()


def test_degenerate_inputs():
    p = np.array([[10.0, 10.0], [10.0, 10.0]])
    with pytest.raises(ValueError):
        estimate.fit(p, p, "similarity")
    line = np.column_stack([np.arange(5.0), 2 * np.arange(5.0)])
    with pytest.raises(ValueError):
        estimate.fit(line, line, "affine")
    with pytest.raises(ValueError):
        estimate.fit(p[:1], p[:1], "affine")
    with pytest.raises(ValueError):
        estimate.fit(p, p, "projective")  # type: ignore[arg-type]
    assert estimate.ransac(p[:1], p[:1], "affine", tol=1.0)[0] is None
