"""Diagnostic plots for both pipelines: per-frame quality, shifts and fates, written as
``OUT.quality.png``.

The deep-sky plot is drawn with matplotlib (Agg). matplotlib costs 0.48 s to import with
pyplot and about 0.4 s to draw (measured on the project's 2-core machine), so it is
imported inside :func:`plot_frames` only. The lucky-imaging plot is on the critical path of
every ``skystack lucky`` run (a 1000-frame video stacks in about 2.5 s), so it is drawn
with OpenCV primitives instead: about 10 ms.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..types import Fate, FrameResult
from .guard import SOFTWARE
from .write import atomic_path, write_png

_COLOURS = {Fate.USED: "tab:green", Fate.REJECTED: "tab:orange",
            Fate.FAILED_REGISTRATION: "tab:red", Fate.UNREADABLE: "black"}


def plot_frames(path: str | os.PathLike, results: list[FrameResult], reference: int) -> Path:
    """Deep-sky ``OUT.quality.png``: per frame (x: frame index), shift and rotation to the
    reference, FWHM and star count, background and noise, and each frame's fate (used,
    rejected, failed registration, unreadable) with the reference marked."""
    import matplotlib  # see the module docstring: only when a deep-sky plot is drawn

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    idx = np.array([r.index for r in results])
    nan = np.nan
    dx = np.array([r.transform.shift[0] if r.transform is not None else nan for r in results])
    dy = np.array([r.transform.shift[1] if r.transform is not None else nan for r in results])
    rot = np.array([r.transform.rotation_deg if r.transform is not None else nan for r in results])
    fwhm = np.array([r.metrics.get("fwhm_px", nan) for r in results], dtype=float)
    stars = np.array([r.n_stars if r.n_stars is not None else nan for r in results], dtype=float)
    bg = np.array([r.metrics.get("background", r.metrics.get("location_0", nan)) for r in results], dtype=float)
    noise = np.array([r.metrics.get("noise", r.metrics.get("scale_0", nan)) for r in results], dtype=float)
    used = np.array([r.fate is Fate.USED for r in results])
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True, constrained_layout=True)
    ax[0].plot(idx, dx, ".-", label="dx")
    ax[0].plot(idx, dy, ".-", label="dy")
    ax[0].set_ylabel("shift to reference (px)")
    tw = ax[0].twinx()
    tw.plot(idx, rot, "x", color="tab:red", ms=4, label="rotation")
    tw.set_ylabel("rotation (°)", color="tab:red")
    h0, l0 = ax[0].get_legend_handles_labels()
    h1, l1 = tw.get_legend_handles_labels()
    ax[0].legend(h0 + h1, l0 + l1, loc="best", fontsize=8)
    ax[1].plot(idx, fwhm, ".-", color="tab:purple", label="FWHM")
    ax[1].set_ylabel("FWHM (px)", color="tab:purple")
    tw = ax[1].twinx()
    tw.plot(idx, stars, ".", color="tab:gray", label="stars")
    tw.set_ylabel("stars detected", color="tab:gray")
    ax[2].plot(idx, bg, ".-", color="tab:brown", label="background")
    ax[2].set_ylabel("background (ADU)", color="tab:brown")
    tw = ax[2].twinx()
    tw.plot(idx, noise, ".", color="tab:cyan", label="noise")
    tw.set_ylabel("noise σ (ADU)", color="tab:cyan")
    for a in ax[:3]:  # frames not stacked, shaded on every panel
        for i in idx[~used]:
            a.axvspan(i - 0.5, i + 0.5, color="tab:orange", alpha=0.12, lw=0)
    for fate, colour in _COLOURS.items():
        sel = np.array([r.fate is fate for r in results])
        if sel.any():
            ax[3].scatter(idx[sel], np.full(sel.sum(), list(_COLOURS).index(fate)), c=colour, s=12,
                          label=f"{fate.value} ({int(sel.sum())})")
    ax[3].set_yticks(range(len(_COLOURS)), [f.value for f in _COLOURS])
    ax[3].set_ylim(-0.5, len(_COLOURS) - 0.5)
    for a in ax:
        a.axvline(reference, color="tab:blue", lw=0.8, ls="--")
    ax[3].set_xlabel("frame index (dashed: reference; shaded: not stacked)")
    ax[0].set_title(f"{int(used.sum())} of {len(results)} frames stacked; reference frame {reference}")
    return _save(fig, path)


_W, _H, _PAD = 960, 560, 56
_GREY, _GREEN, _RED, _BLACK = (170, 170, 170), (40, 160, 40), (40, 40, 220), (0, 0, 0)
_BLUE, _ORANGE = (200, 110, 30), (20, 130, 240)  # BGR


class _Panel:
    """A plot area on an OpenCV canvas mapping data to pixels."""

    def __init__(self, canvas: np.ndarray, top: int, height: int, xlim: tuple[float, float],
                 ylim: tuple[float, float], label: str):
        self.c, self.top, self.h = canvas, top, height
        self.x0, self.x1 = _PAD, _W - 16
        self.xlim, self.ylim = xlim, ylim
        cv2.rectangle(canvas, (self.x0, top), (self.x1, top + height), _BLACK, 1)
        cv2.putText(canvas, label, (self.x0 + 6, top + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _BLACK, 1, cv2.LINE_AA)
        for v, y in ((ylim[1], top + 10), (ylim[0], top + height - 2)):
            cv2.putText(canvas, f"{v:.3g}", (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, _BLACK, 1, cv2.LINE_AA)

    def xy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (a, b), (lo, hi) = self.xlim, self.ylim
        px = self.x0 + (x - a) / max(b - a, 1e-9) * (self.x1 - self.x0)
        py = self.top + self.h - (y - lo) / max(hi - lo, 1e-9) * self.h
        return np.column_stack([px, py]).round().astype(np.int32)

    def dots(self, x: np.ndarray, y: np.ndarray, colour: tuple[int, int, int], r: int = 1) -> None:
        ok = np.isfinite(x) & np.isfinite(y)
        for px, py in self.xy(x[ok], y[ok]):
            cv2.circle(self.c, (int(px), int(py)), r, colour, -1, cv2.LINE_AA)


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    v = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo) or 1.0
    return lo - pad, hi + pad


def plot_lucky(path: str | os.PathLike, quality: np.ndarray, used: np.ndarray, failed: np.ndarray,
               unreadable: np.ndarray, coarse: np.ndarray, shift: np.ndarray, mode: str) -> Path:
    """Lucky imaging: quality over time (used frames green, lost or blank red, unreadable
    black ticks) and displacement (coarse x blue, y orange; used frames ringed)."""
    n = quality.size
    canvas = np.full((_H, _W, 3), 255, np.uint8)
    idx = np.arange(n, dtype=np.float64)
    q = np.asarray(quality, np.float64)
    top = _Panel(canvas, 28, 230, (0.0, max(n - 1, 1)), _limits(q),
                 f"quality ({mode}): {int(used.sum())} of {n} frames used (green)")
    other = np.isfinite(q) & ~used
    top.dots(idx[other], q[other], _GREY)
    top.dots(idx[used], q[used], _GREEN, 2)
    bad = failed & np.isfinite(q)
    top.dots(idx[bad], q[bad], _RED, 2)
    if unreadable.any():
        for px, py in top.xy(idx[unreadable], np.full(int(unreadable.sum()), top.ylim[0])):
            cv2.line(canvas, (int(px), int(py) - 8), (int(px), int(py)), _BLACK, 1)
    c = coarse - np.nanmedian(coarse, axis=0) if np.isfinite(coarse).any() else coarse
    low = _Panel(canvas, 300, 220, top.xlim, _limits(c[:, 0], c[:, 1], shift[used, 0], shift[used, 1]),
                 "displacement (px): x blue, y orange; used frames ringed")
    low.dots(idx, c[:, 0], _BLUE)
    low.dots(idx, c[:, 1], _ORANGE)
    for comp, colour in ((0, _BLUE), (1, _ORANGE)):
        s = shift[used, comp]
        ok = np.isfinite(s)
        for px, py in low.xy(idx[used][ok], s[ok]):
            cv2.circle(canvas, (int(px), int(py)), 3, colour, 1, cv2.LINE_AA)
    cv2.putText(canvas, f"frame index 0 .. {n - 1}", (_W // 2 - 70, _H - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                _BLACK, 1, cv2.LINE_AA)
    return write_png(path, canvas[..., ::-1].copy())


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt  # imported already by plot_frames

    try:
        with atomic_path(path) as tmp:
            # the Software text chunk marks it as a product (never read back as a frame)
            fig.savefig(tmp, dpi=90, format="png", metadata={"Software": SOFTWARE})
    finally:
        plt.close(fig)
    return Path(path)
