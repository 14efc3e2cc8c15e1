"""Frame selection: ``--keep`` and quality thresholds, each rejection with its reason."""
from __future__ import annotations

import math

import numpy as np

from ..options import SelectOptions, parse_keep

def quality_score(metrics: dict[str, float]) -> float:
    """Higher is better. Deep-sky: sharp (small FWHM) frames with many stars and low noise
    rank first; the score is ``n_stars / (fwhm² · noise)`` in log form so that no single
    term dominates. Frames without star metrics score by sharpness when present."""
    fwhm = metrics.get("fwhm_px", float("nan"))
    stars = metrics.get("n_stars", float("nan"))
    noise = metrics.get("noise", float("nan"))
    if np.isfinite(fwhm) and fwhm > 0 and np.isfinite(stars) and stars > 0:
        s = math.log(stars) - 2.0 * math.log(fwhm)
        if np.isfinite(noise) and noise > 0:
            s -= 0.5 * math.log(noise)
        return s
    sharp = metrics.get("sharpness", float("nan"))
    return float(sharp) if np.isfinite(sharp) else float("-inf")


def select(metrics: list[dict[str, float]], options: SelectOptions, *, always_keep: int | None = None,
           ) -> list[str]:
    """Decide, for each registered frame, an empty string (kept) or the reason it is not.

    ``always_keep`` (the reference frame's position in ``metrics``) is never dropped by
    ``--keep`` ranking, since everything is registered onto it.
    """
    n = len(metrics)
    reasons = [""] * n
    for i, m in enumerate(metrics):
        f = m.get("fwhm_px", float("nan"))
        if options.max_fwhm_px is not None and np.isfinite(f) and f > options.max_fwhm_px:
            reasons[i] = f"FWHM {f:.2f} px above --max-fwhm {options.max_fwhm_px:g}"
        r = m.get("roundness", float("nan"))
        if not reasons[i] and options.max_roundness is not None and np.isfinite(r) and r > options.max_roundness:
            reasons[i] = f"roundness {r:.2f} above --max-roundness {options.max_roundness:g}"
        s = m.get("n_stars", float("nan"))
        if not reasons[i] and options.min_stars is not None and np.isfinite(s) and s < options.min_stars:
            reasons[i] = f"{int(s)} stars, fewer than --min-stars {options.min_stars}"
    if options.keep is not None:
        candidates = [i for i in range(n) if not reasons[i]]
        k = parse_keep(options.keep).count(len(candidates))
        scores = {i: quality_score(metrics[i]) for i in candidates}
        # stable ranking: score, then frame order, so equal scores keep earlier frames
        order = sorted(candidates, key=lambda i: (-scores[i], i))
        kept = set(order[:k])
        if always_keep is not None and always_keep in scores and always_keep not in kept:
            kept.discard(order[k - 1])
            kept.add(always_keep)
        rank = {i: r + 1 for r, i in enumerate(order)}
        for i in candidates:
            if i not in kept:
                reasons[i] = f"quality rank {rank[i]} of {len(candidates)}, outside --keep {options.keep}"
    return reasons
