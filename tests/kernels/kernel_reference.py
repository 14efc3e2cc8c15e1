"""Straightforward NumPy reference of the stacking kernels' contract (one pixel at a time).

Written from the definitions in ``_skystack_kernels/cpu/reject.py``'s docstring, not from
the kernel code: NumPy's median/std/polyfit and SciPy's t quantile, plain loops, no
scratch tricks. Slow, small, obviously right; the kernels are tested against it.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

KEEP, LOW, HIGH = 0, 1, 2


def _winsorized_sigma(v: np.ndarray, centre: float) -> float:
    s = float(np.std(v, ddof=1))
    w = v.copy()
    for _ in range(100):
        w = np.clip(w, centre - 1.5 * s, centre + 1.5 * s)
        s0 = s
        s = 1.134 * float(np.std(w, ddof=1))
        if abs(s - s0) <= s0 * 0.0005:
            break
    return s


def gesd_lambda(size: int, alpha: float) -> float:
    t = stats.t.ppf(1 - alpha / (2 * size), size - 2)
    return (size - 1) * t / math.sqrt((size - 2 + t * t) * size)


def reject_ref(x: np.ndarray, method: str, p_low: float, p_high: float, max_iter: int) -> np.ndarray:
    """Flags (0 keep, 1 low, 2 high) for the finite values ``x`` (frame order)."""
    n = len(x)
    flags = np.zeros(n, dtype=np.int64)
    if n <= 2 or method == "none":
        return flags
    if method in ("sigma", "mad", "winsorized", "linear-fit"):
        kept = np.arange(n)
        passes = 0
        while len(kept) > 3 and (max_iter <= 0 or passes < max_iter):
            passes += 1
            v = x[kept]
            if method == "linear-fit":
                order = np.argsort(v, kind="stable")
                ys = v[order]
                rank = np.arange(len(ys), dtype=np.float64)
                slope, intercept = np.polyfit(rank, ys, 1)
                resid_sorted = ys - (intercept + slope * rank)
                s = float(np.mean(np.abs(resid_sorted)))
                resid = np.empty_like(resid_sorted)
                resid[order] = resid_sorted
                low = -resid > p_low * s
                high = ~low & (resid > p_high * s)
            else:
                c = float(np.median(v))
                if method == "sigma":
                    s = float(np.std(v, ddof=1))
                elif method == "mad":
                    s = 1.4826 * float(np.median(np.abs(v - c)))
                else:
                    s = _winsorized_sigma(v, c)
                low = c - v > p_low * s
                high = ~low & (v - c > p_high * s)
            if not s > 1e-12 * np.max(np.abs(v)):  # zero up to float rounding
                break
            r = int(low.sum() + high.sum())
            if r == 0 or len(kept) - r < 2:
                break
            flags[kept[low]] = LOW
            flags[kept[high]] = HIGH
            kept = kept[~(low | high)]
        return flags
    if method == "percentile":
        c = float(np.median(x))
        s = abs(c)
        if not s > 0:
            return flags
        low = c - x > p_low * s
        high = ~low & (x - c > p_high * s)
        if n - int(low.sum() + high.sum()) < 2:
            return flags
        flags[low] = LOW
        flags[high] = HIGH
        return flags
    if method == "gesd":
        r = min(int(math.floor(p_high * n)), n - 2)
        if r <= 0:
            return flags
        order = np.argsort(x, kind="stable")
        ys = x[order]
        lo, hi = 0, n - 1
        best = (0, n - 1)
        for _ in range(r):
            seg = ys[lo:hi + 1]
            size = len(seg)
            mean = seg.mean()
            sd = seg.std(ddof=1)
            if ys[hi] - mean > mean - ys[lo]:
                stat = ys[hi] - mean
                hi -= 1
            else:
                stat = mean - ys[lo]
                lo += 1
            if sd > 0 and stat / sd > gesd_lambda(size, p_low):
                best = (lo, hi)
        flags[order[:best[0]]] = LOW
        flags[order[best[1] + 1:]] = HIGH
        return flags
    if method == "minmax":
        k_low = min(max(int(math.floor(p_low + 0.5)), 0), n - 1)
        k_high = min(max(int(math.floor(p_high + 0.5)), 0), n - 1 - k_low)
        order = np.argsort(x, kind="stable")
        flags[order[:k_low]] = LOW
        flags[order[n - k_high:]] = HIGH
        return flags
    raise ValueError(method)


def combine_ref(band: np.ndarray, weights: np.ndarray, method: str, reduce: str, p_low: float,
                p_high: float, max_iter: int):
    """Reference of ``combine_band``: (out, count, rejected) for an (N, h, W) band."""
    n_frames, h, w = band.shape
    out = np.full((h, w), np.nan, dtype=np.float32)
    count = np.zeros((h, w), dtype=np.int32)
    rejected = np.zeros((n_frames, 2), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            col = band[:, y, x].astype(np.float64)
            frames = np.flatnonzero(np.isfinite(col))
            vals = col[frames]
            flags = reject_ref(vals, method, p_low, p_high, max_iter)
            np.add.at(rejected[:, 0], frames[flags == LOW], 1)
            np.add.at(rejected[:, 1], frames[flags == HIGH], 1)
            keep = flags == KEEP
            count[y, x] = keep.sum()
            if not keep.any():
                continue
            if reduce == "median":
                out[y, x] = np.median(vals[keep])
            else:
                wk = weights[frames[keep]].astype(np.float64)
                if wk.sum() > 0:
                    out[y, x] = np.sum(wk * vals[keep]) / wk.sum()
    return out, count, rejected
