"""A GPU backend's stack against the CPU backend's: same pixels covered, same number of
values kept per pixel (within a rare flip at a rejection threshold), values within float
rounding."""
from __future__ import annotations

import math

import numpy as np

from .results import PARITY_FLOOR, PARITY_MAX_FLIPPED, PARITY_RTOL, BackendRun, Parity  # noqa: F401

def check_parity(runs: list[BackendRun]) -> list[Parity]:
    """Every GPU backend that ran (or failed) against the CPU backend."""
    cpu = next((r for r in runs if r.name == "cpu" and r.usable), None)
    if cpu is None:
        return []
    return [compare(cpu, r) for r in runs if r.name != "cpu" and r.usable]


def compare(cpu: BackendRun, other: BackendRun) -> Parity:
    """``other``'s stack against the CPU backend's (see the module docstring)."""
    if other.failed or other.image is None or cpu.image is None:
        why = f"failed: {other.failed}" if other.failed else "no stack to compare (the CPU backend failed)"
        return Parity(other.name, 0, 0, 0, math.nan, math.nan, ok=False, reason=why)
    a, b = cpu.image, other.image
    if a.shape != b.shape:
        return Parity(other.name, a.size, a.size, 0, math.nan, math.nan, ok=False,
                      reason=f"stack shape {b.shape} differs from the CPU's {a.shape}")
    cov_a, cov_b = np.isfinite(a), np.isfinite(b)
    coverage = int(np.count_nonzero(cov_a != cov_b))
    both = cov_a & cov_b
    counts = int(np.count_nonzero(both & (cpu.count != other.count)))
    diff = np.abs(b[both].astype(np.float64) - a[both])
    max_abs = float(diff.max()) if diff.size else 0.0
    same = (cpu.count == other.count)[both]
    ref = np.abs(a[both].astype(np.float64))
    floor = PARITY_FLOOR * float(ref.max()) if ref.size else 0.0
    rel = diff[same] / np.maximum(ref[same], max(floor, np.finfo(np.float32).tiny))
    max_rel = float(rel.max()) if rel.size else 0.0
    reasons = []
    if coverage:
        reasons.append(f"{coverage} pixel(s) covered by one backend only")
    if counts > PARITY_MAX_FLIPPED * a.size:
        reasons.append(f"another number of values kept at {counts} of {a.size} pixels "
                       f"(at most {PARITY_MAX_FLIPPED:g} of them may differ)")
    if max_rel > PARITY_RTOL:
        reasons.append(f"values differ by up to {max_rel:.2g} relative ({max_abs:.4g} absolute; "
                       f"tolerance {PARITY_RTOL:g})")
    return Parity(other.name, int(a.size), coverage, counts, max_abs, max_rel, ok=not reasons,
                  reason="; ".join(reasons))
