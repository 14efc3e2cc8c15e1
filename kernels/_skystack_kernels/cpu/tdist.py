"""Student's t quantiles inside Numba, for the GESD critical values.

Hand-written because no njit-callable t quantile exists (scipy's cannot be called from
nopython code) and GESD needs one per stack size. Accuracy target: ~1e-12 relative,
checked against ``scipy.stats.t.ppf`` in the tests. Only the host calls these (once per
band, to fill a table of critical values), so speed does not matter; robustness does.
"""
from __future__ import annotations

import math

from numba import njit

_CF_EPS = 1e-16
_CF_TINY = 1e-300
_CF_MAX_ITER = 20000


@njit(nogil=True, cache=True)
def _betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta (modified Lentz), converging
    for ``x < (a + 1) / (a + b + 2)``."""
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _CF_TINY:
        d = _CF_TINY
    d = 1.0 / d
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < _CF_TINY:
            d = _CF_TINY
        c = 1.0 + aa / c
        if abs(c) < _CF_TINY:
            c = _CF_TINY
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < _CF_TINY:
            d = _CF_TINY
        c = 1.0 + aa / c
        if abs(c) < _CF_TINY:
            c = _CF_TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            break
    return h


@njit(nogil=True, cache=True)
def t_sf(t, df):
    """Upper tail ``P(T > t)`` of Student's t with ``df`` degrees of freedom, ``t >= 0``.

    ``P(T > t) = I_x(df/2, 1/2) / 2`` with ``x = df / (df + t^2)``; ``x`` and ``1 - x`` are
    both formed from ``t`` directly so the far tail keeps its digits.
    """
    if t <= 0.0:
        return 0.5
    t2 = t * t
    x = df / (df + t2)
    y = t2 / (df + t2)
    a = 0.5 * df
    b = 0.5
    log_front = a * math.log(x) + b * math.log(y) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return 0.5 * math.exp(log_front) * _betacf(a, b, x) / a
    return 0.5 * (1.0 - math.exp(log_front) * _betacf(b, a, y) / b)


@njit(nogil=True, cache=True)
def t_pdf(t, df):
    """Density of Student's t."""
    return math.exp(math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
                    - 0.5 * (df + 1.0) * math.log1p(t * t / df))


@njit(nogil=True, cache=True)
def t_ppf(p, df):
    """Quantile of Student's t: the ``t`` with ``P(T <= t) = p``, for ``0 < p < 1``.

    Safeguarded Newton on ``log P(T > t)`` against ``log t`` (nearly linear in the tails,
    where the plain CDF is flat), inside a bisection bracket that is kept at every step.
    Exact formulas for 1 and 2 degrees of freedom.
    """
    if not (0.0 < p < 1.0) or not df > 0.0:
        return math.nan
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    q = 1.0 - p  # upper tail probability, in (0, 0.5)
    if df == 1.0:
        return 1.0 / math.tan(math.pi * q)
    if df == 2.0:
        return (1.0 - 2.0 * q) / math.sqrt(2.0 * q * (1.0 - q))
    lo = 0.0
    hi = 1.0
    while t_sf(hi, df) > q:
        lo = hi
        hi *= 2.0
    t = 0.5 * (lo + hi)
    log_q = math.log(q)
    for _ in range(200):
        sf = t_sf(t, df)
        if sf > q:
            lo = t
        else:
            hi = t
        g = math.log(sf) - log_q
        slope = -t * t_pdf(t, df) / sf  # d log(sf) / d log(t)
        new = t * math.exp(-g / slope) if slope < 0.0 else -1.0
        if not (lo < new < hi):
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 1e-14 * t:
            return new
        t = new
        if hi - lo <= 1e-15 * hi:
            break
    return t


@njit(nogil=True, cache=True)
def gesd_critical_values(alpha, out):
    """Rosner's (1983) GESD critical values: ``out[s]`` for a sample of size ``s``.

    ``lambda_s = (s - 1) t / sqrt((s - 2 + t^2) s)`` with ``t`` the ``1 - alpha / (2 s)``
    quantile of Student's t on ``s - 2`` degrees of freedom (two-sided test at level
    ``alpha``). Entries below ``s = 3`` (no test possible) are set to +inf.
    """
    for s in range(out.shape[0]):
        if s < 3:
            out[s] = math.inf
            continue
        t = t_ppf(1.0 - alpha / (2.0 * s), s - 2.0)
        out[s] = (s - 1.0) * t / math.sqrt((s - 2.0 + t * t) * s)
