"""Transform estimation from point correspondences: least squares, RANSAC, refinement.

Models (frame (x, y) → reference (x', y')):

* ``shift``:      x' = x + tx,            y' = y + ty                  (2 parameters)
* ``similarity``: x' = a x − b y + tx,    y' = b x + a y + ty          (4: rotation, scale, shift)
* ``affine``:     x' = a x + b y + tx,    y' = c x + d y + ty          (6)

RANSAC scores hypotheses MSAC-style (sum of truncated squared residuals), draws its minimal
samples from a fixed seed (same input → same output), and stops once the best consensus
makes a better one unlikely at the requested confidence. :func:`refine` then re-fits by
least squares on every inlier, re-selects inliers, and trims the last outliers with a
robust (median-based) cut, until the inlier set stops changing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..types import Model, Transform

__all__ = ["Fit", "fit", "residuals", "rms", "ransac", "refine", "apply_many", "apply_each", "MIN_SAMPLES"]

MIN_SAMPLES = {"shift": 1, "similarity": 2, "affine": 3}


@dataclass
class Fit:
    """The outcome of matching one frame: a transform or a reason why not.

    ``src_idx``/``dst_idx`` index the inlier correspondences in the caller's point lists.
    """

    transform: Transform | None
    n_matches: int = 0
    residual_px: float | None = None
    reason: str = ""
    expected_px: float | None = None  # the residual RMS the matched stars' centroid errors predict
    src_idx: np.ndarray | None = None
    dst_idx: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.transform is not None


def _check_model(model: str) -> None:
    if model not in MIN_SAMPLES:
        raise ValueError(f"unknown transform model {model!r} (shift, similarity or affine)")


def fit(src: np.ndarray, dst: np.ndarray, model: Model, weights: np.ndarray | None = None) -> Transform:
    """Least-squares transform mapping ``src`` (n, 2) onto ``dst`` (n, 2).

    Raises ``ValueError`` when there are fewer points than the model needs or they are
    degenerate (coincident, or collinear for ``affine``).
    """
    _check_model(model)
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    n = src.shape[0]
    if n < MIN_SAMPLES[model]:
        raise ValueError(f"{model} needs at least {MIN_SAMPLES[model]} points, got {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = w.sum()
    ms = (w[:, None] * src).sum(0) / sw
    md = (w[:, None] * dst).sum(0) / sw
    if model == "shift":
        return Transform(np.array([[1.0, 0.0, md[0] - ms[0]], [0.0, 1.0, md[1] - ms[1]]]), "shift")
    # centring first keeps the normal equations well conditioned for 4000-px coordinates
    s = src - ms
    d = dst - md
    if model == "similarity":
        den = float(np.sum(w * (s[:, 0] ** 2 + s[:, 1] ** 2)))
        if not den > 1e-12:
            raise ValueError("similarity needs two distinct points")
        a = float(np.sum(w * (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]))) / den
        b = float(np.sum(w * (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]))) / den
        lin = np.array([[a, -b], [b, a]])
    else:
        sq = np.sqrt(w)[:, None]
        lin_t, _, rank, _ = np.linalg.lstsq(s * sq, d * sq, rcond=None)
        if rank < 2:
            raise ValueError("affine needs three non-collinear points")
        lin = lin_t.T
    t = md - lin @ ms
    return Transform(np.column_stack([lin, t]), model)


def apply_each(lin: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(m, 2): each (2, 2) matrix ``lin[k]`` applied to its own point ``pts[k]``."""
    return np.stack([lin[:, 0, 0] * pts[:, 0] + lin[:, 0, 1] * pts[:, 1],
                     lin[:, 1, 0] * pts[:, 0] + lin[:, 1, 1] * pts[:, 1]], axis=1)


def apply_many(hyp: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(m, n, 2): every one of the (m, 2, 3) transforms ``hyp`` applied to all (n, 2)
    points (written out: ``np.einsum`` takes ~15× longer for these small shapes)."""
    out = np.empty((hyp.shape[0], pts.shape[0], 2))
    x, y = pts[:, 0], pts[:, 1]
    for i in range(2):
        out[..., i] = hyp[:, i, 0, None] * x + hyp[:, i, 1, None] * y + hyp[:, i, 2, None]
    return out


def residuals(t: Transform, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distances |t(src) − dst| in reference pixels."""
    return np.linalg.norm(t.apply(src) - np.asarray(dst, dtype=np.float64).reshape(-1, 2), axis=1)


def _hypotheses(src: np.ndarray, dst: np.ndarray, samples: np.ndarray, model: str) -> np.ndarray:
    """(m, 2, 3) transforms from minimal samples (m, k) of point indices; degenerate
    samples give NaN matrices."""
    s = src[samples]  # (m, k, 2)
    d = dst[samples]
    m = samples.shape[0]
    out = np.full((m, 2, 3), np.nan)
    if model == "shift":
        out[:, 0, 0] = out[:, 1, 1] = 1.0
        out[:, 0, 1] = out[:, 1, 0] = 0.0
        out[:, :, 2] = d[:, 0] - s[:, 0]
        return out
    if model == "similarity":
        ds = s[:, 1] - s[:, 0]
        dd = d[:, 1] - d[:, 0]
        den = ds[:, 0] ** 2 + ds[:, 1] ** 2
        ok = den > 1.0  # two stars at least a pixel apart
        with np.errstate(invalid="ignore", divide="ignore"):
            a = (ds[:, 0] * dd[:, 0] + ds[:, 1] * dd[:, 1]) / den
            b = (ds[:, 0] * dd[:, 1] - ds[:, 1] * dd[:, 0]) / den
        lin = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], 1)  # (m, 2, 2)
    else:
        # solve [s1-s0, s2-s0] -> [d1-d0, d2-d0]
        sm = np.stack([s[:, 1] - s[:, 0], s[:, 2] - s[:, 0]], -1)  # (m, 2, 2) columns
        dm = np.stack([d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]], -1)
        det = sm[:, 0, 0] * sm[:, 1, 1] - sm[:, 0, 1] * sm[:, 1, 0]
        ok = np.abs(det) > 1.0
        inv = np.empty_like(sm)
        with np.errstate(invalid="ignore", divide="ignore"):
            inv[:, 0, 0] = sm[:, 1, 1] / det
            inv[:, 1, 1] = sm[:, 0, 0] / det
            inv[:, 0, 1] = -sm[:, 0, 1] / det
            inv[:, 1, 0] = -sm[:, 1, 0] / det
        lin = dm @ inv
    t = d[:, 0] - apply_each(lin, s[:, 0])
    out[ok, :, :2] = lin[ok]
    out[ok, :, 2] = t[ok]
    return out


def ransac(src: np.ndarray, dst: np.ndarray, model: Model, *, tol: float, confidence: float = 0.999,
           max_iter: int = 2000, seed: int = 0, scale_range: tuple[float, float] | None = None,
           ) -> tuple[Transform | None, np.ndarray]:
    """Robust fit of ``model`` to putative correspondences ``src[k] ↔ dst[k]``.

    Parameters
    ----------
    tol : float
        Inlier tolerance in reference pixels.
    confidence, max_iter : float, int
        Stop when, given the best inlier ratio so far, another ``confidence`` of finding a
        better minimal sample is reached, or after ``max_iter`` samples.
    seed : int
        Seed of the sample draws (fixed: deterministic results).
    scale_range : (lo, hi), optional
        Hypotheses whose scale falls outside are discarded (frames of one optical train do
        not change scale by 2x).

    Returns
    -------
    transform, inliers
        The best least-squares fit on the consensus set (``None`` if no hypothesis had at
        least ``MIN_SAMPLES + 1`` inliers) and its boolean inlier mask.
    """
    _check_model(model)
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    n = src.shape[0]
    k = MIN_SAMPLES[model]
    none = np.zeros(n, dtype=bool)
    if n < k:
        return None, none
    rng = np.random.default_rng(seed)
    tol2 = tol * tol
    best_cost = math.inf
    best_mask = none
    drawn = 0
    needed = max_iter
    batch = 256
    while drawn < min(needed, max_iter):
        m = min(batch, max_iter - drawn)
        if n <= 3 and k == n:
            samples = np.arange(n)[None, :]
        else:
            # k distinct indices per row: argsort of random keys (vectorised, no rejection)
            samples = np.argsort(rng.random((m, n)), axis=1)[:, :k]
        drawn += samples.shape[0]
        hyp = _hypotheses(src, dst, samples, model)
        valid = np.isfinite(hyp).all(axis=(1, 2))
        if scale_range is not None and model != "shift":
            sc = np.sqrt(np.abs(hyp[:, 0, 0] * hyp[:, 1, 1] - hyp[:, 0, 1] * hyp[:, 1, 0]))
            with np.errstate(invalid="ignore"):
                valid &= (sc >= scale_range[0]) & (sc <= scale_range[1])
        if not valid.any():
            continue
        hyp = hyp[valid]
        pred = apply_many(hyp, src)
        r2 = np.sum((pred - dst[None]) ** 2, axis=2)  # (m, n)
        cost = np.minimum(r2, tol2).sum(axis=1)
        j = int(np.argmin(cost))
        if cost[j] < best_cost:
            best_cost = float(cost[j])
            best_mask = r2[j] <= tol2
            w = best_mask.sum() / n
            if w >= 1.0:
                break
            p_good = w ** k
            if p_good > 0:
                needed = min(max_iter, int(math.ceil(math.log(1 - confidence) / math.log1p(-p_good))))
            else:
                needed = drawn
        if n <= 3 and k == n:
            break
    if best_mask.sum() < k + 1 and not (best_mask.sum() == n and n >= k):
        return None, none
    try:
        t = fit(src[best_mask], dst[best_mask], model)
    except ValueError:
        return None, none
    return t, best_mask


def refine(src: np.ndarray, dst: np.ndarray, t: Transform, model: Model, *, tol: float,
           sigma: np.ndarray | None = None, max_iter: int = 10, floor_px: float = 0.05,
           ) -> tuple[Transform, np.ndarray]:
    """Least-squares refinement on every inlier of ``t``.

    Iterates: fit on the inliers (weighted by ``1/sigma²`` when the per-pair positional
    uncertainty ``sigma`` is given), then keep the pairs with residual ≤ ``tol`` whose
    normalised residual r/σ is at most 4 × its median (≈ 3.4 σ for Rayleigh-distributed
    residuals) — residuals under ``floor_px`` are always kept. The median cut removes the
    few mismatches a generous ``tol`` lets in (a star paired with its neighbour) without
    touching good matches. Stops when the inlier set no longer changes.

    Returns the refined transform and its inlier mask.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    sig = np.ones(src.shape[0]) if sigma is None else np.asarray(sigma, dtype=np.float64)
    w = 1.0 / (sig * sig)
    k = MIN_SAMPLES[model]
    mask = residuals(t, src, dst) <= tol
    for _ in range(max_iter):
        if mask.sum() < k:
            break
        try:
            t_new = fit(src[mask], dst[mask], model, weights=w[mask])
        except ValueError:
            break
        r = residuals(t_new, src, dst)
        z = r / sig
        cut = 4.0 * float(np.median(z[mask]))
        new_mask = (r <= tol) & ((z <= cut) | (r <= floor_px))
        t = t_new
        if np.array_equal(new_mask, mask) or new_mask.sum() < k:
            break
        mask = new_mask
    return t, mask


def rms(t: Transform, src: np.ndarray, dst: np.ndarray) -> float:
    """Root-mean-square residual in reference pixels."""
    r = residuals(t, src, dst)
    return float(np.sqrt(np.mean(r * r))) if r.size else math.nan
