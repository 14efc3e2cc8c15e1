"""Reduction of one pixel's kept values: weighted mean or median.

Consumes the keep-mask written by ``reject.py``; rejection is unweighted (as in Siril),
weights only enter the mean.
"""
from __future__ import annotations

import math

from numba import njit, uintp

from ..codes import REDUCE_MEDIAN
from .reject import KEEP
from .select import median_near


@njit(nogil=True, cache=True, _nrt=False)
def reduce_pixel(method, vals, frames, n, flags, weights, unit_weights, work, hint):
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
    unit_weights : bool
        Every weight is 1 (speed only: the same result without reading them).
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

    Notes
    -----
    The mean's sums run over two accumulators (even and odd positions) added at the end:
    a fixed order, independent of the machine (see ``select.py``), and about twice as fast
    as one chain of dependent additions.
    """
    kept = 0
    if method == REDUCE_MEDIAN:
        for j in range(n):
            work[uintp(kept)] = vals[uintp(j)]
            kept += flags[uintp(j)] == KEEP
        if kept == 0:
            return math.nan, 0
        return median_near(work, kept, hint, 0), kept
    ta = 0.0
    tb = 0.0
    wa = 0.0
    wb = 0.0
    m = n - n % 2
    if unit_weights:  # the same sums as below with every weight 1, without reading them
        for j in range(0, m, 2):
            k0 = flags[uintp(j)] == KEEP
            k1 = flags[uintp(j + 1)] == KEEP
            ta += vals[uintp(j)] if k0 else 0.0
            tb += vals[uintp(j + 1)] if k1 else 0.0
            kept += k0
            kept += k1
        if m < n:
            k0 = flags[uintp(m)] == KEEP
            ta += vals[uintp(m)] if k0 else 0.0
            kept += k0
        wa = float(kept)
    else:
        for j in range(0, m, 2):
            k0 = flags[uintp(j)] == KEEP
            k1 = flags[uintp(j + 1)] == KEEP
            w0 = float(weights[uintp(frames[uintp(j)])]) if k0 else 0.0
            w1 = float(weights[uintp(frames[uintp(j + 1)])]) if k1 else 0.0
            ta += w0 * vals[uintp(j)]
            tb += w1 * vals[uintp(j + 1)]
            wa += w0
            wb += w1
            kept += k0
            kept += k1
        if m < n:
            k0 = flags[uintp(m)] == KEEP
            w0 = float(weights[uintp(frames[uintp(m)])]) if k0 else 0.0
            ta += w0 * vals[uintp(m)]
            wa += w0
            kept += k0
    total = ta + tb
    wsum = wa + wb
    if kept == 0 or not wsum > 0.0:
        return math.nan, kept
    return total / wsum, kept
