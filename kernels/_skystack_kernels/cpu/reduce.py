"""Reduction of one pixel's kept values: weighted mean or median.

Consumes the keep-mask written by ``reject.py``; rejection is unweighted (as in Siril),
weights only enter the mean.
"""
from __future__ import annotations

import math

from numba import njit

from ..codes import REDUCE_MEDIAN
from .reject import KEEP
from .select import median_near


@njit(nogil=True, cache=True)
def reduce_pixel(method, vals, frames, n, flags, weights, work, hint):
    """Reduce the kept values of one pixel.

    Parameters
    ----------
    method : int
        ``codes.REDUCE_MEAN`` (``sum(w x) / sum(w)`` over kept values, float64 sums) or
        ``codes.REDUCE_MEDIAN`` (median of the kept values; weights are ignored).
    vals, frames : arrays
        ``vals[:n]`` the pixel's finite values, ``frames[:n]`` their frame indices.
    n : int
        Number of values.
    flags : int8 array
        Keep-mask from :func:`reject.reject_pixel`.
    weights : float32 array
        Per-frame weights, indexed by frame.
    work : float64 array
        Scratch of at least ``n``.
    hint : float64 array of 2
        Speed only: the median guess from the previous pixel (``select.select_near``).

    Returns
    -------
    value : float
        NaN when nothing is kept (or, for the mean, the kept weights sum to <= 0).
    kept : int
        Number of values kept.
    """
    kept = 0
    if method == REDUCE_MEDIAN:
        for j in range(n):
            if flags[j] == KEEP:
                work[kept] = vals[j]
                kept += 1
        if kept == 0:
            return math.nan, 0
        return median_near(work, kept, hint, 0), kept
    total = 0.0
    wsum = 0.0
    for j in range(n):
        if flags[j] == KEEP:
            w = float(weights[frames[j]])
            total += w * vals[j]
            wsum += w
            kept += 1
    if kept == 0 or not wsum > 0.0:
        return math.nan, kept
    return total / wsum, kept
