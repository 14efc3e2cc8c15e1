"""A GPU backend's stack against the CPU backend's: same pixels covered, same number of
values kept per pixel (within a rare flip at a rejection threshold), values within float
rounding."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import BackendRun

# Parity of a GPU stack with the CPU stack. The backend tests hold the kernels to 1e-5
# relative on small bands (OpenCV's float32 bicubic sums 16 products in another order
# than the GPU twin); a large stack sums more values per pixel and a GPU contracts
# multiply-adds (FMA), so the bench allows ten times that. Relative to the CPU value, but
# never to less than 1e-3 of the image's largest magnitude: near-zero pixels of a
# calibrated frame would otherwise turn rounding into large ratios.
PARITY_RTOL = 1e-4
PARITY_FLOOR = 1e-3
# A value that sits on a rejection threshold within float rounding can be kept by one
# backend and rejected by the other: legitimate, and rare. More than this fraction of the
# pixels with another kept count is a real difference.
PARITY_MAX_FLIPPED = 1e-5


@dataclass(frozen=True)
class Parity:
    """A GPU backend's stack against the CPU backend's."""

    backend: str
    pixels: int  # pixel values compared (H × W × C)
    coverage_mismatch_px: int  # covered by one backend only
    count_mismatch_px: int  # covered by both, another number of values kept
    max_abs_diff: float  # over pixels covered by both
    max_rel_diff: float  # over pixels with the same kept count, relative as PARITY_RTOL says
    ok: bool
    reason: str = ""  # why not, in words

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "reference": "cpu", "pixels": self.pixels,
                "coverage_mismatch_px": self.coverage_mismatch_px, "count_mismatch_px": self.count_mismatch_px,
                "max_abs_diff": float(self.max_abs_diff), "max_rel_diff": float(self.max_rel_diff),
                "rtol": PARITY_RTOL, "max_flipped_fraction": PARITY_MAX_FLIPPED, "ok": self.ok,
                "reason": self.reason}


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
