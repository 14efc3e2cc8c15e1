"""The neighbour searches that replaced scipy's cKDTree in registration, checked against it
(scipy stays a test oracle) on random, clustered and degenerate point sets."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from _skystack_kernels.cpu.neighbours import knn, pairs_within


def _sets(seed: int):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 200, (300, 2))
    b = rng.uniform(0, 200, (250, 2))
    # clusters and exact duplicates, as detections on one star at several scales give
    a[:20] = a[20:40] + rng.normal(0, 0.3, (20, 2))
    b[:10] = b[10:20]
    return a, b


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("r", [0.5, 3.0, 17.0])
def test_pairs_within_matches_sparse_distance_matrix(seed, r):
    a, b = _sets(seed)
    i, j, d = pairs_within(a, b, r)
    ref = cKDTree(a).sparse_distance_matrix(cKDTree(b), r, output_type="ndarray")
    order = np.lexsort((ref["j"], ref["i"]))
    # scipy leaves out exact duplicates (distance 0) from its sparse output; keep them here
    # and compare the rest
    nz = d > 0
    assert np.array_equal(i[nz], ref["i"][order])
    assert np.array_equal(j[nz], ref["j"][order])
    assert np.allclose(d[nz], ref["v"][order], rtol=0, atol=1e-12)
    # ordered by i, then j
    assert np.all(np.diff(i) >= 0)
    same = np.diff(i) == 0
    assert np.all(np.diff(j)[same] > 0)
    # the zero-distance pairs are the real duplicates
    assert np.all(np.hypot(*(a[i[~nz]] - b[j[~nz]]).T) == 0)


def test_pairs_within_self_pairs_match_query_pairs():
    a, _ = _sets(4)
    i, j, _ = pairs_within(a, a, 2.0)
    later = j > i
    got = set(zip(i[later].tolist(), j[later].tolist()))
    want = {tuple(p) for p in cKDTree(a).query_pairs(2.0, output_type="ndarray").tolist()}
    assert got == want
    # every point is within r of itself
    assert np.count_nonzero(i == j) == a.shape[0]


def test_pairs_within_empty_and_boundary():
    i, j, d = pairs_within(np.empty((0, 2)), np.ones((3, 2)), 1.0)
    assert i.size == j.size == d.size == 0
    i, j, d = pairs_within(np.ones((3, 2)), np.empty((0, 2)), 1.0)
    assert i.size == 0
    # a pair exactly r apart is in (d <= r), as in cKDTree
    i, j, d = pairs_within(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [3.0, 4.5]]), 5.0)
    assert i.tolist() == [0] and j.tolist() == [0] and d.tolist() == [5.0]


@pytest.mark.parametrize("k", [1, 2, 7])
def test_knn_matches_ckdtree(k):
    a, b = _sets(5)
    d, idx = knn(b, a, k)
    rd, ri = cKDTree(b).query(a, k)
    rd, ri = rd.reshape(len(a), k), ri.reshape(len(a), k)
    assert np.allclose(d, rd, rtol=0, atol=1e-12)
    # each index is a point at that distance, and the same as scipy's wherever no other
    # point is equally far
    dx = b[None, :, 0] - a[:, None, 0]
    dy = b[None, :, 1] - a[:, None, 1]
    full = np.sqrt(dx * dx + dy * dy)  # as the kernel computes it, to the last bit
    assert np.array_equal(np.take_along_axis(full, idx, 1), d)
    tied = (full[:, :, None] == d[:, None, :]).sum(axis=1) > 1
    assert tied.any()  # the duplicates make some
    assert np.array_equal(idx[~tied], ri[~tied])
    # ties go to the lower index: b[:10] duplicates b[10:20]
    q = b[10:20]
    _, first = knn(b, q, 2)
    assert np.array_equal(first[:, 0], np.arange(10))
    assert np.array_equal(first[:, 1], np.arange(10, 20))


def test_knn_more_neighbours_than_points():
    pts = np.array([[0.0, 0.0], [1.0, 0.0]])
    d, idx = knn(pts, np.array([[0.1, 0.0]]), 4)
    rd, ri = cKDTree(pts).query([[0.1, 0.0]], 4)
    assert np.allclose(d[:, :2], rd[:, :2]) and np.isinf(d[:, 2:]).all()
    assert np.array_equal(idx, ri)
    with pytest.raises(ValueError, match="k >= 1"):
        knn(pts, pts, 0)
