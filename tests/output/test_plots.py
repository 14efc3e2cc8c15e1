"""``OUT.quality.png`` of a deep-sky stack: drawn for every kind of frame fate, with each
frame's fate, the frames not stacked and the reference where they belong."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skystack.output import plots
from skystack.output.guard import is_product
from skystack.output.plots import nice_ticks, plot_frames
from skystack.types import Fate, FrameResult, Transform

FATES = (Fate.USED, Fate.REJECTED, Fate.FAILED_REGISTRATION, Fate.UNREADABLE)  # the fate panel's rows, bottom up


def _results(n=12):
    results = []
    for i in range(n):
        fate = Fate.USED if i % 4 else (Fate.REJECTED, Fate.FAILED_REGISTRATION, Fate.UNREADABLE)[i // 4 % 3]
        t = Transform.from_params(dx=0.3 * i, dy=-0.2 * i, angle_deg=0.05 * i) if fate in (Fate.USED,
                                                                                           Fate.REJECTED) else None
        metrics = {} if fate is Fate.UNREADABLE else {"fwhm_px": 2.0 + 0.1 * i, "background": 900.0 + i,
                                                      "noise": 11.0 + 0.2 * i}
        results.append(FrameResult(index=i, path=f"f{i}.fits", name=f"f{i}.fits", fate=fate, transform=t,
                                   n_stars=None if fate is Fate.UNREADABLE else 100 + i, metrics=metrics))
    return results


def _column(i, n):
    """The canvas column of frame ``i`` of ``n`` (the x-axis spans -0.5 .. n - 0.5)."""
    x0, x1 = plots._LEFT, plots._DW - plots._RIGHT
    return int(round(x0 + (i + 0.5) / n * (x1 - x0)))


def _panel_rows(k):
    """Top and bottom canvas rows of panel ``k`` (0: shifts, ..., 3: fates)."""
    h = (plots._DH - plots._TOP - plots._BOTTOM - 3 * plots._GAP) // 4
    top = plots._TOP + k * (h + plots._GAP)
    return top, top + h


def test_quality_plot_of_used_rejected_failed_and_unreadable_frames(tmp_path):
    results = _results()
    n = len(results)
    path = plot_frames(tmp_path / "q.png", results, reference=1)
    img = cv2.imread(str(path))  # BGR, as the plot's colours are given
    assert img is not None and img.shape == (plots._DH, plots._DW, 3)
    assert is_product(path)  # marked as skystack's output: never read back as a frame

    # the fate panel: each frame's dot in its fate's row and colour, nothing in the other rows
    top, bottom = _panel_rows(3)
    for r in results:
        x = _column(r.index, n)
        for k, fate in enumerate(FATES):
            y = int(round(bottom - (k + 0.5) / len(FATES) * (bottom - top)))
            px = img[y, x].astype(int)
            if fate is r.fate:
                assert np.abs(px - plots._COLOURS[fate]).max() <= 2, (r.index, fate, px)
            elif r.index != 1:  # the reference's column carries the dashed line
                assert px.min() >= 250, (r.index, fate, px)

    # frames not stacked are shaded on the upper panels (a light orange band), the others not
    shade = np.round(255 * (1 - plots._SHADE_ALPHA) + np.array(plots._TAB["orange"]) * plots._SHADE_ALPHA)
    _, fwhm_bottom = _panel_rows(1)
    for r in results:
        px = img[fwhm_bottom - 2, _column(r.index, n) + 3].astype(int)  # beside the reference's line
        if r.fate is Fate.USED:
            assert px.min() >= 250, (r.index, px)
        else:
            assert np.abs(px - shade).max() <= 2, (r.index, px)

    # the reference's dashed line crosses every panel
    x = _column(1, n)
    for k in range(4):
        t, b = _panel_rows(k)
        column = img[t + 1:b, x].astype(int)
        dashes = np.all(np.abs(column - plots._TAB["blue"]) <= 30, axis=1)
        assert 0.3 < dashes.mean() < 0.7, (k, dashes.mean())


def test_shift_panel_follows_the_transforms(tmp_path):
    """dy grows along the set: its line (orange) goes up the panel from frame to frame."""
    results = [FrameResult(index=i, path=f"f{i}", name=f"f{i}", fate=Fate.USED,
                           transform=Transform.from_params(dx=0.0, dy=float(i), angle_deg=0.0), n_stars=50,
                           metrics={"fwhm_px": 2.5}) for i in range(6)]
    img = cv2.imread(str(plot_frames(tmp_path / "q.png", results, reference=0)))
    top, bottom = _panel_rows(0)
    heights = []
    for i in range(6):
        col = img[top + 1:bottom, _column(i, 6)].astype(int)
        orange = np.flatnonzero(np.all(np.abs(col - plots._TAB["orange"]) <= 3, axis=1))
        assert orange.size, i
        heights.append(orange.mean())
    assert all(a > b for a, b in zip(heights, heights[1:]))  # rows count down the canvas


@pytest.mark.parametrize("case", ["one frame", "no metrics", "all failed"])
def test_quality_plot_of_degenerate_sets(tmp_path, case):
    if case == "one frame":
        results = _results(1)
    elif case == "no metrics":
        results = [FrameResult(index=i, path=f"f{i}", name=f"f{i}", fate=Fate.USED,
                               transform=Transform.identity(), n_stars=None, metrics={}) for i in range(3)]
    else:
        results = [FrameResult(index=i, path=f"f{i}", name=f"f{i}", fate=Fate.FAILED_REGISTRATION,
                               reason="no stars") for i in range(4)]
    img = cv2.imread(str(plot_frames(tmp_path / "q.png", results, reference=0)))
    assert img is not None and img.shape == (plots._DH, plots._DW, 3)
    assert (img < 128).any(axis=2).mean() > 0.005  # axes, labels and dots drawn, not a blank canvas


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-23.4, 29.8), (648.1, 881.9), (2.6, 3.65), (-0.31, 0.004),
                                   (1e-6, 3e-6), (0.0, 17.0), (79.0, 151.0)])
def test_nice_ticks_are_round_and_inside(lo, hi):
    t = nice_ticks(lo, hi)
    assert 3 <= t.size <= 11
    assert t.min() >= lo - 1e-12 and t.max() <= hi + 1e-12
    step = np.diff(t)
    assert np.allclose(step, step[0])
    mantissa = step[0] / 10 ** np.floor(np.log10(step[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
    assert np.allclose(t / step[0], np.round(t / step[0]))  # multiples of the step


def test_nice_ticks_of_an_empty_range():
    assert nice_ticks(1.0, 1.0).size == 0 and nice_ticks(np.nan, 1.0).size == 0


def test_drawing_the_plot_imports_no_matplotlib(tmp_path):
    """The plot is on every stack's path: matplotlib (0.5 s to import) must stay out of it."""
    code = ("import sys\n"
            "from skystack.output.plots import plot_frames\n"
            "from skystack.types import Fate, FrameResult, Transform\n"
            "r = [FrameResult(index=0, path='a', name='a', fate=Fate.USED, transform=Transform.identity())]\n"
            f"plot_frames({str(tmp_path / 'q.png')!r}, r, 0)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "q.png").stat().st_size > 1000
