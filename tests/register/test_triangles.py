"""Triangle matching on point sets with known transforms."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.register.triangles import build_triangles, match_stars
from skystack.types import Transform

SHAPE = (1000, 1500)
CENTRE = ((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)


def _field(rng, n=120):
    return rng.uniform([0, 0], [SHAPE[1], SHAPE[0]], (n, 2))


def _frame_stars(ref_xy, truth, rng, *, jitter=0.03, drop=0.15, extra=10):
    """What a frame would detect: the reference stars seen through ``truth`` (frame ->
    reference), with centroid jitter, some missing, some spurious, shuffled a little."""
    xy = truth.inverse().apply(ref_xy) + rng.normal(0, jitter, ref_xy.shape)
    keep = rng.uniform(size=len(xy)) > drop
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < SHAPE[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < SHAPE[0])
    xy = xy[keep & inside]
    xy = np.vstack([xy, _field(rng, extra)])  # hot pixels that slipped through, say
    order = np.argsort(rng.uniform(size=len(xy)) + np.arange(len(xy)) / len(xy))  # mostly brightest first
    return xy[order]


@pytest.mark.parametrize("angle", [0.0, 2.0, -35.0, 180.0])
def test_recovers_similarity_with_missing_and_spurious_stars(rng, angle):
    ref = _field(rng)
    truth = Transform.from_params(dx=37.3, dy=-21.9, angle_deg=angle, center=CENTRE)
    fr = _frame_stars(ref, truth, rng)
    fit = match_stars(fr, build_triangles(ref), tol=2.0)
    assert fit.ok, fit.reason
    assert fit.transform.rms_error(truth, SHAPE) < 0.02
    assert fit.n_matches >= 60
    # the matched pairs are true pairs
    pred = truth.apply(fr[fit.src_idx])
    assert np.max(np.linalg.norm(pred - ref[fit.dst_idx], axis=1)) < 0.5


def test_affine_model(rng):
    ref = _field(rng)
    truth = Transform(np.array([[1.003, 0.004, 12.0], [-0.002, 0.998, -8.0]]), "affine")
    fr = _frame_stars(ref, truth, rng, jitter=0.02)
    sim = match_stars(fr, build_triangles(ref), model="similarity", tol=2.0)
    aff = match_stars(fr, build_triangles(ref), model="affine", tol=2.0)
    assert aff.ok and aff.transform.model == "affine"
    assert aff.transform.rms_error(truth, SHAPE) < 0.02
    assert sim.ok and sim.transform.rms_error(truth, SHAPE) > 5 * aff.transform.rms_error(truth, SHAPE)


def test_mirror_image_does_not_match(rng):
    ref = _field(rng, 60)
    mirrored = ref * np.array([-1.0, 1.0]) + np.array([SHAPE[1], 0.0])
    fit = match_stars(mirrored, build_triangles(ref), tol=2.0)
    assert not fit.ok and "no consistent triangle match" in fit.reason


def test_unrelated_fields_do_not_match(rng):
    fit = match_stars(_field(rng, 80), build_triangles(_field(rng, 80)), tol=2.0)
    assert not fit.ok and "no consistent triangle match" in fit.reason


def test_too_few_stars_is_a_reason_not_an_error(rng):
    ref = build_triangles(_field(rng, 50))
    fit = match_stars(_field(rng, 3), ref, min_matches=6)
    assert not fit.ok and fit.reason == "only 3 stars detected (need 6)"
    fit = match_stars(_field(rng, 50), build_triangles(_field(rng, 2)), min_matches=6)
    assert not fit.ok and "reference has only 2 stars" in fit.reason


def test_weights_favour_precise_stars(rng):
    ref = _field(rng, 100)
    truth = Transform.from_params(dx=5.0, dy=3.0, angle_deg=0.5, center=CENTRE)
    err = np.where(np.arange(100) < 20, 0.005, 0.3)
    fr = truth.inverse().apply(ref) + rng.normal(0, 1, (100, 2)) * err[:, None]
    tri = build_triangles(ref, np.full(100, 0.005))
    weighted = match_stars(fr, tri, frame_err=err)
    flat = match_stars(fr, tri)
    assert weighted.ok and flat.ok
    assert weighted.transform.rms_error(truth, SHAPE) < 0.5 * flat.transform.rms_error(truth, SHAPE)


def test_hypothesis_scores_match_brute_force(rng):
    """The bisection kernel's inlier counts and MSAC costs are those of a brute-force
    nearest-neighbour search."""
    from _skystack_kernels.cpu.stars import score_similarities

    ref = _field(rng, 150)
    pts = _field(rng, 90)
    ang = rng.uniform(-0.05, 0.05, 40)
    hyp = np.zeros((40, 2, 3))
    hyp[:, 0, 0] = hyp[:, 1, 1] = np.cos(ang)
    hyp[:, 0, 1], hyp[:, 1, 0] = -np.sin(ang), np.sin(ang)
    hyp[:, :, 2] = rng.uniform(-30, 30, (40, 2))
    tol = 2.5
    order = np.argsort(ref[:, 0])
    count, cost = np.empty(40, np.int64), np.empty(40)
    score_similarities(hyp, pts, ref[order, 0].copy(), ref[order, 1].copy(), tol, count, cost)
    for k in range(40):
        pred = pts @ hyp[k, :, :2].T + hyp[k, :, 2]
        d2 = ((pred[:, None, :] - ref[None]) ** 2).sum(axis=2).min(axis=1)
        assert count[k] == np.sum(d2 < tol * tol)
        assert cost[k] == pytest.approx(np.minimum(d2, tol * tol).sum(), rel=1e-12)
    # pins the comparison: with these fields some hypotheses score inliers
    truth = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    c1, s1 = np.empty(1, np.int64), np.empty(1)
    score_similarities(truth[None], ref[:60], ref[order, 0].copy(), ref[order, 1].copy(), tol, c1, s1)
    assert c1[0] == 60 and s1[0] == 0.0


def test_poisson_tail_matches_scipy():
    """The chance-match significance test's Poisson tail, without scipy.stats."""
    from scipy.stats import poisson

    from skystack.register.triangles import poisson_tail

    for k in (0, 1, 2, 6, 10, 40, 150):
        for lam in (1e-3, 0.05, 0.7, 3.0, 9.5, 40.0, 200.0):
            want = poisson.sf(k - 1, lam)
            got = poisson_tail(k, lam)
            assert abs(got - want) <= 1e-12 + 1e-9 * want, (k, lam, got, want)
