"""report.json: every frame's fate, transform and metrics, the run's options and figures.

Per-frame entries follow :meth:`skystack.types.FrameResult.to_json`. ``transform`` maps
*frame* pixel (x, y) to *reference* pixel (x, y), 0-based at pixel centres, x = column.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
from collections import Counter
from typing import Any, Sequence

from .. import __version__
from ..types import Fate

REPORT_FORMAT = 1


def build_report(*, frames, p1, kept: list[int], inputs: Sequence[Any], output, options: dict[str, Any],
                 backend: str | None, stack_info: dict[str, Any], transforms_only: bool) -> dict[str, Any]:
    fates = Counter(r.fate.value for r in p1.results)
    n = len(p1.results)
    registered = sum(1 for r in p1.results if r.transform is not None)
    methods = Counter(r.method for r in p1.results if r.method)
    residuals = [r.residual_px for r in p1.results if r.residual_px is not None and r.method != "reference"]
    ref = p1.results[p1.reference]
    return {
        "format": REPORT_FORMAT,
        "skystack": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "inputs": [str(p) for p in inputs],
        "output": str(output.output) if output is not None and not transforms_only else None,
        "mode": "register" if transforms_only else "stack",
        "reference": {"index": p1.reference, "name": ref.name, "why": p1.reference_reason,
                      "shape": list(p1.shape)},
        "backend": backend,
        "stack": stack_info,
        "summary": {
            "frames": n,
            "used": fates.get(Fate.USED.value, 0),
            "rejected": fates.get(Fate.REJECTED.value, 0),
            "failed_registration": fates.get(Fate.FAILED_REGISTRATION.value, 0),
            "unreadable": fates.get(Fate.UNREADABLE.value, 0),
            "registered": registered,
            "registered_fraction": round(registered / n, 4) if n else 0.0,
            "stacked": 0 if transforms_only else len(kept),
            "methods": dict(methods),
            "median_residual_px": _median(residuals),
        },
        "options": options,
        "frames": [r.to_json() for r in p1.results],
    }


def _median(v: list[float]) -> float | None:
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    m = len(v) // 2
    return float(v[m]) if len(v) % 2 else float((v[m - 1] + v[m]) / 2)
