"""Between the phases: which registered frames are kept, and each kept frame's
normalisation (scale and offset per channel) and weight."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...options import SelectOptions, StackOptions
from ...quality.select import select
from ...stack.normalize import coefficients, frame_weights
from ...types import Fate
from .phase1 import Phase1


@dataclass(frozen=True)
class Kept:
    """The frames phase 2 stacks, in frame order, with their per-frame factors:
    ``value × mul + add`` per channel (``(N, C)`` float32) and the weights ``(N,)``."""

    indices: list[int]
    mul: np.ndarray
    add: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


def apply_selection(p1: Phase1, options: SelectOptions) -> list[int]:
    """Mark frames that ``--keep`` and the quality thresholds drop as rejected (with the
    reason) and return the indices of the frames left. The reference is always kept."""
    used = [r for r in p1.results if r.fate is Fate.USED]
    ref_pos = next((k for k, r in enumerate(used) if r.index == p1.reference), None)
    reasons = select([r.metrics | {"n_stars": float(r.n_stars or 0)} for r in used], options,
                     always_keep=ref_pos)
    for r, why in zip(used, reasons):
        if why:
            r.fate, r.reason = Fate.REJECTED, why
    return [r.index for r in used if r.fate is Fate.USED]


def normalisation(p1: Phase1, kept: list[int], stack: StackOptions) -> Kept:
    """The normalisation coefficients and weights of the kept frames (weights are also
    recorded in their results for the report)."""
    channels = p1.channels
    res = p1.by_index()
    loc = np.array([[res[i].metrics.get(f"location_{c}", np.nan) for c in range(channels)] for i in kept])
    sc = np.array([[res[i].metrics.get(f"scale_{c}", np.nan) for c in range(channels)] for i in kept])
    ref_row = kept.index(p1.reference) if p1.reference in kept else 0
    mul, add = coefficients(stack.norm, loc.reshape(len(kept), channels),
                            sc.reshape(len(kept), channels), ref_row)
    w = frame_weights(stack.weights, [res[i].metrics | {"n_stars": float(res[i].n_stars or 0)} for i in kept], mul)
    for k, i in enumerate(kept):
        res[i].weight = float(w[k])
    return Kept(indices=list(kept), mul=mul.astype(np.float32), add=add.astype(np.float32), weights=w)
