"""``OUT.quality.png`` of a deep-sky stack: drawn for every kind of frame fate."""
from __future__ import annotations

import cv2

from skystack.output.plots import plot_frames
from skystack.types import Fate, FrameResult, Transform


def test_quality_plot_of_used_rejected_failed_and_unreadable_frames(tmp_path):
    results = []
    for i in range(12):
        fate = Fate.USED if i % 4 else (Fate.REJECTED, Fate.FAILED_REGISTRATION, Fate.UNREADABLE)[i // 4]
        t = Transform.from_params(dx=0.3 * i, dy=-0.2 * i, angle_deg=0.05 * i) if fate in (Fate.USED,
                                                                                           Fate.REJECTED) else None
        metrics = {} if fate is Fate.UNREADABLE else {"fwhm_px": 2.0 + 0.1 * i, "background": 900.0 + i,
                                                      "noise": 11.0 + 0.2 * i}
        results.append(FrameResult(index=i, path=f"f{i}.fits", name=f"f{i}.fits", fate=fate, transform=t,
                                   n_stars=None if fate is Fate.UNREADABLE else 100 + i, metrics=metrics))
    path = plot_frames(tmp_path / "q.png", results, reference=1)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 600 and img.shape[1] > 600
    assert img.std() > 10  # drawn, not blank
