"""Neighbour searches among small 2-D point sets: star positions and triangle invariants.

Plain arrays in, plain arrays out; only numpy and numba are imported here.

Why not ``scipy.spatial.cKDTree``: importing ``scipy.spatial`` (it pulls ``scipy.sparse``
and ``scipy.linalg``) costs every deep-sky run 20 MB of resident memory and 0.15 s of
start-up (measured on the project's 2-core machine, after numpy, cv2, numba and astropy),
for queries over ~100 stars and ~1500 triangles per frame. A sweep over points sorted by x
(bisection for the x window, the exact distance test inside it) answers them in
microseconds, as :func:`.stars.score_similarities` already does for the transform scores.

* ``pairs_within``: every pair (i, j) with ``|a_i - b_j| <= r``, ordered by i then j (what
  ``cKDTree.sparse_distance_matrix`` gives, sorted).
* ``knn``: the ``k`` nearest points of a set for each query, nearest first, ties to the lower
  index (``cKDTree.query(q, k)``); brute force, O(queries × points × k), which is what a
  tree costs too at these sizes.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _window_count(ax, ay, bx, by, r):
    """Pairs within ``r`` per point of ``a`` (``bx``/``by`` sorted by x)."""
    n = ax.shape[0]
    m = bx.shape[0]
    r2 = r * r
    counts = np.zeros(n, np.int64)
    for i in range(n):
        j = np.searchsorted(bx, ax[i] - r)
        c = 0
        while j < m and bx[j] <= ax[i] + r:
            dx = bx[j] - ax[i]
            dy = by[j] - ay[i]
            if dx * dx + dy * dy <= r2:
                c += 1
            j += 1
        counts[i] = c
    return counts


@numba.njit(nogil=True, cache=True)
def _window_fill(ax, ay, bx, by, r, order, start, out_i, out_j, out_d):
    n = ax.shape[0]
    m = bx.shape[0]
    r2 = r * r
    for i in range(n):
        j = np.searchsorted(bx, ax[i] - r)
        p = start[i]
        while j < m and bx[j] <= ax[i] + r:
            dx = bx[j] - ax[i]
            dy = by[j] - ay[i]
            d2 = dx * dx + dy * dy
            if d2 <= r2:
                out_i[p] = i
                out_j[p] = order[j]
                out_d[p] = np.sqrt(d2)
                p += 1
            j += 1
        # order this point's partners by index (they were found in x order)
        q = start[i]
        if p - q > 1:
            perm = np.argsort(out_j[q:p], kind="mergesort")
            out_j[q:p] = out_j[q:p][perm]
            out_d[q:p] = out_d[q:p][perm]


def pairs_within(a: np.ndarray, b: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (i into ``a``, j into ``b``) and distances of every pair closer than or at
    ``r``, ordered by i then j. ``a`` (n, 2) and ``b`` (m, 2) float."""
    a = np.ascontiguousarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.ascontiguousarray(b, dtype=np.float64).reshape(-1, 2)
    order = np.argsort(b[:, 0], kind="stable").astype(np.int64)
    bx = np.ascontiguousarray(b[order, 0])
    by = np.ascontiguousarray(b[order, 1])
    ax = np.ascontiguousarray(a[:, 0])
    ay = np.ascontiguousarray(a[:, 1])
    counts = _window_count(ax, ay, bx, by, float(r))
    start = np.zeros(a.shape[0], np.int64)
    if a.shape[0] > 1:
        np.cumsum(counts[:-1], out=start[1:])
    total = int(counts.sum())
    out_i = np.empty(total, np.int64)
    out_j = np.empty(total, np.int64)
    out_d = np.empty(total, np.float64)
    _window_fill(ax, ay, bx, by, float(r), order, start, out_i, out_j, out_d)
    return out_i, out_j, out_d


@numba.njit(nogil=True, cache=True)
def _knn(pts, q, k, out_d, out_i):
    n = pts.shape[0]
    for t in range(q.shape[0]):
        for s in range(k):
            out_d[t, s] = np.inf
            out_i[t, s] = n
        qx = q[t, 0]
        qy = q[t, 1]
        for j in range(n):
            dx = pts[j, 0] - qx
            dy = pts[j, 1] - qy
            d2 = dx * dx + dy * dy
            if d2 < out_d[t, k - 1]:
                # insert, keeping the list sorted; an equal distance stays behind (lower
                # index first)
                s = k - 1
                while s > 0 and out_d[t, s - 1] > d2:
                    out_d[t, s] = out_d[t, s - 1]
                    out_i[t, s] = out_i[t, s - 1]
                    s -= 1
                out_d[t, s] = d2
                out_i[t, s] = j
        for s in range(k):
            out_d[t, s] = np.sqrt(out_d[t, s])


def knn(points: np.ndarray, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices (``(nq, k)`` each) of the ``k`` nearest ``points`` to each
    query, nearest first. Where fewer than ``k`` points exist the rest are ``inf`` and
    ``len(points)``, as ``cKDTree.query`` gives."""
    if k < 1:
        raise ValueError(f"knn needs k >= 1, got {k}")
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 2)
    q = np.ascontiguousarray(queries, dtype=np.float64).reshape(-1, 2)
    out_d = np.empty((q.shape[0], k), np.float64)
    out_i = np.empty((q.shape[0], k), np.int64)
    _knn(pts, q, int(k), out_d, out_i)
    return out_d, out_i
