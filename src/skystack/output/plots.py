"""Diagnostic plots (matplotlib, Agg) for both pipelines: per-frame quality, shifts and
fates, written as ``OUT.quality.png``.

matplotlib (0.48 s to import with pyplot, measured on the project's 2-core machine) is
imported by :mod:`.products` only when a plot is drawn, so runs without previews and
``import skystack`` never pay for it.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..types import Fate, FrameResult  # noqa: E402
from .guard import SOFTWARE  # noqa: E402
from .write import atomic_path  # noqa: E402

_COLOURS = {Fate.USED: "tab:green", Fate.REJECTED: "tab:orange",
            Fate.FAILED_REGISTRATION: "tab:red", Fate.UNREADABLE: "black"}


def plot_frames(path: str | os.PathLike, results: list[FrameResult], reference: int) -> Path:
    """Deep-sky ``OUT.quality.png``: per frame (x: frame index), shift and rotation to the
    reference, FWHM and star count, background and noise, and each frame's fate (used,
    rejected, failed registration, unreadable) with the reference marked."""
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


def plot_lucky(path: str | os.PathLike, quality: np.ndarray, used: np.ndarray, failed: np.ndarray,
               unreadable: np.ndarray, coarse: np.ndarray, shift: np.ndarray, mode: str) -> Path:
    """Lucky imaging: quality over time (used frames marked) and displacement."""
    idx = np.arange(quality.size)
    q = quality
    fig, ax = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    ax[0].plot(idx, q, "-", color="0.7", lw=0.8, zorder=1)
    other = np.isfinite(q) & ~used
    ax[0].scatter(idx[other], q[other], s=6, color="tab:gray", label="not used", zorder=2)
    ax[0].scatter(idx[used], q[used], s=10, color="tab:green", label="used", zorder=3)
    bad_fin = failed & np.isfinite(q)
    if bad_fin.any():
        ax[0].scatter(idx[bad_fin], q[bad_fin], s=18, marker="x", color="tab:red",
                      label="blank / lost / out of field", zorder=4)
    if unreadable.any():
        y = np.nanmin(q) if np.isfinite(q).any() else 0.0
        ax[0].scatter(idx[unreadable], np.full(int(unreadable.sum()), y), s=18, marker="|", color="black",
                      label="unreadable", zorder=4)
    ax[0].set_ylabel("quality")
    ax[0].legend(loc="best", fontsize=8)
    ax[0].set_title(f"lucky imaging ({mode}): {int(used.sum())} of {quality.size} frames used")
    c = coarse - np.nanmedian(coarse, axis=0) if np.isfinite(coarse).any() else coarse
    ax[1].plot(idx, c[:, 0], ".", ms=2, label="x (coarse)", color="tab:blue")
    ax[1].plot(idx, c[:, 1], ".", ms=2, label="y (coarse)", color="tab:orange")
    ax[1].plot(idx[used], shift[used, 0], "o", ms=3, mfc="none", color="tab:blue", label="x (used)")
    ax[1].plot(idx[used], shift[used, 1], "o", ms=3, mfc="none", color="tab:orange", label="y (used)")
    ax[1].set_ylabel("displacement (px)")
    ax[1].set_xlabel("frame index")
    ax[1].legend(loc="best", fontsize=8, ncol=4)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        with atomic_path(path) as tmp:
            # the Software text chunk marks it as a product (never read back as a frame)
            fig.savefig(tmp, dpi=90, format="png", metadata={"Software": SOFTWARE})
    finally:
        plt.close(fig)
    return Path(path)
