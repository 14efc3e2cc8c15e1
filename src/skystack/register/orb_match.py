"""ORB registration: descriptor matching, Lowe's ratio test, RANSAC, refinement.

For scenes without point stars (the Moon, the Sun, landscapes) and as the fallback of
``auto``. Keypoints come from :func:`skystack.detect.orb.orb_features`.

* Matching: k = 2 nearest descriptors (Hamming) per frame keypoint feed Lowe's ratio test
  (best < ``ratio`` × second best), which drops ambiguous matches — the many near-identical
  "round blob" descriptors of a star field among them. The default matcher is OpenCV's
  exact brute-force Hamming kNN; FLANN with an LSH index (the seed's choice) is available
  as ``matcher="flann"``. Measured on the 2000×1500 acceptance frames (3000 keypoints
  each): brute force 90 ms, FLANN-LSH 370–1650 ms depending on its parameters, for the
  same ~900 ratio-test matches — and FLANN's LSH tables are drawn from an unseeded
  generator, so two index builds in one process give different matches, which breaks the
  project's "same input, same output" rule. LSH only pays off for far larger descriptor
  sets than a frame has.
* ``cv2.estimateAffinePartial2D`` (similarity) or ``cv2.estimateAffine2D`` (affine) with
  RANSAC finds the consensus (OpenCV seeds its RANSAC with a fixed state: deterministic).
  A shift model uses :func:`.estimate.ransac`.
* Refinement: a least-squares fit on every match consistent with the RANSAC model (not only
  its minimal-sample inliers), with a robust median cut (:func:`.estimate.refine`).
"""
from __future__ import annotations

import cv2
import numpy as np

from _skystack_kernels.cpu.neighbours import pairs_within

from ..detect.orb import OrbFeatures
from ..types import Model, Transform
from . import estimate
from .estimate import Fit

__all__ = ["match_orb"]

_RATIO = 0.8
# LSH parameters for 32-byte ORB descriptors: 6 tables of 20-bit keys was the fastest of
# the settings tried (incl. OpenCV's tutorial 6/12/1) at equal recall on the acceptance set
_FLANN_INDEX_LSH = 6
_LSH_PARAMS = dict(algorithm=_FLANN_INDEX_LSH, table_number=6, key_size=20, multi_probe_level=1)
_SEARCH_PARAMS = dict(checks=64)
_SCALE_RANGE = (0.5, 2.0)  # frames of one optical train do not change scale by 2x


def _ratio_matches(frame: OrbFeatures, ref: OrbFeatures, ratio: float, matcher: str = "bf",
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (frame, reference) of descriptor matches that pass the ratio test, one per
    reference keypoint (the closest)."""
    if len(frame) < 2 or len(ref) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if matcher == "flann":
        m = cv2.FlannBasedMatcher(_LSH_PARAMS, _SEARCH_PARAMS)
    elif matcher == "bf":
        m = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=False)
    else:
        raise ValueError(f"matcher must be 'bf' or 'flann', not {matcher!r}")
    knn = m.knnMatch(frame.descriptors, ref.descriptors, k=2)
    fi, ri, dist = [], [], []
    for m in knn:
        # LSH may return fewer than 2 neighbours; a lone neighbour cannot pass the test
        if len(m) == 2 and m[0].distance < ratio * m[1].distance:
            fi.append(m[0].queryIdx)
            ri.append(m[0].trainIdx)
            dist.append(m[0].distance)
    if not fi:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    fi_a, ri_a, d_a = np.array(fi), np.array(ri), np.array(dist)
    # several frame keypoints may pick one reference keypoint: keep the closest
    order = np.lexsort((d_a, ri_a))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ri_a[order][1:] != ri_a[order][:-1]
    keep = np.sort(order[first])
    return fi_a[keep], ri_a[keep]


def _plausible(m: np.ndarray) -> bool:
    sc = float(np.sqrt(abs(np.linalg.det(np.asarray(m)[:, :2]))))
    return _SCALE_RANGE[0] <= sc <= _SCALE_RANGE[1]


def _distinct(xy: np.ndarray, radius: float = 1.0) -> int:
    """How many distinct places ``xy`` holds: the keypoints ORB finds on one star at
    several pyramid levels converge to one position after refinement, and count once."""
    if xy.shape[0] < 2:
        return int(xy.shape[0])
    i, j, _ = pairs_within(xy, xy, radius)
    # connected components of the "within radius" graph: union-find with path halving
    # (a few thousand keypoints; what scipy.sparse.csgraph would do, without importing it)
    parent = list(range(xy.shape[0]))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(i[j > i].tolist(), j[j > i].tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return sum(1 for a in range(xy.shape[0]) if root(a) == a)


def match_orb(frame: OrbFeatures, ref: OrbFeatures, *, model: Model = "similarity", tol: float = 2.0,
              min_matches: int = 6, ratio: float = _RATIO, matcher: str = "bf") -> Fit:
    """Register a frame's ORB features onto the reference's.

    Parameters
    ----------
    frame, ref : OrbFeatures
    model : shift | similarity | affine
    tol : float
        RANSAC inlier tolerance in reference pixels.
    min_matches : int
        Fewer inliers than this is a failure.
    ratio : float
        Lowe's ratio-test threshold.
    matcher : "bf" | "flann"
        Exact brute-force Hamming kNN (default, deterministic) or FLANN-LSH (approximate,
        not reproducible between index builds).

    Returns
    -------
    Fit
        ``src_idx``/``dst_idx`` index the frame/reference keypoints of the inliers;
        ``n_matches`` counts distinct reference positions among them.
    """
    need = max(min_matches, estimate.MIN_SAMPLES[model] + 1)
    if len(frame) < need:
        return Fit(None, reason=f"only {len(frame)} ORB keypoints (need {need})")
    if len(ref) < need:
        return Fit(None, reason=f"the reference has only {len(ref)} ORB keypoints (need {need})")
    fi, ri = _ratio_matches(frame, ref, ratio, matcher)
    if fi.size < need:
        return Fit(None, n_matches=int(fi.size), reason=f"only {fi.size} ORB matches pass the ratio test (need {need})")
    src = frame.xy[fi].astype(np.float64)
    dst = ref.xy[ri].astype(np.float64)
    if model == "shift":
        t, mask = estimate.ransac(src, dst, "shift", tol=tol)
    else:
        est = cv2.estimateAffinePartial2D if model == "similarity" else cv2.estimateAffine2D
        m, inl = est(src.reshape(-1, 1, 2), dst.reshape(-1, 1, 2), method=cv2.RANSAC,
                     ransacReprojThreshold=float(tol), maxIters=5000, confidence=0.999, refineIters=10)
        if m is None or inl is None or not np.all(np.isfinite(m)) or not _plausible(m):
            # OpenCV's RANSAC has no notion of a plausible scale: given duplicate keypoints
            # it can return a collapsed map (scale ~0) whose "inliers" are one point
            t, mask = estimate.ransac(src, dst, model, tol=tol, scale_range=_SCALE_RANGE)
        else:
            t, mask = Transform(m, model), inl.ravel().astype(bool)
    if t is None or _distinct(dst[mask]) < need:
        k = 0 if t is None else _distinct(dst[mask])
        return Fit(None, n_matches=k, reason=f"no consistent ORB match (best {k} inliers of {fi.size}, need {need})")
    t, mask = estimate.refine(src, dst, t, model, tol=tol, floor_px=0.5)
    n_in = _distinct(dst[mask])
    if n_in < need:
        return Fit(None, n_matches=n_in,
                   reason=f"no consistent ORB match (best {n_in} inliers of {fi.size}, need {need})")
    return Fit(t, n_matches=n_in, residual_px=estimate.rms(t, src[mask], dst[mask]),
               src_idx=fi[mask], dst_idx=ri[mask])
