"""Diagnostic plots (matplotlib, Agg): per-frame quality and shift, kept vs not."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..types import Fate, FrameResult
from .write import atomic_path

_COLOURS = {Fate.USED: "tab:green", Fate.REJECTED: "tab:orange",
            Fate.FAILED_REGISTRATION: "tab:red", Fate.UNREADABLE: "black"}


def plot_frames(path: str | os.PathLike, results: list[FrameResult], reference: int) -> Path:
    """Three panels over frame index: shift (dx, dy), FWHM / star count, fate."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    idx = np.array([r.index for r in results])
    dx = np.array([r.transform.shift[0] if r.transform is not None else np.nan for r in results])
    dy = np.array([r.transform.shift[1] if r.transform is not None else np.nan for r in results])
    fwhm = np.array([r.metrics.get("fwhm_px", np.nan) for r in results], dtype=float)
    stars = np.array([r.n_stars if r.n_stars is not None else np.nan for r in results], dtype=float)
    fig, ax = plt.subplots(3, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    ax[0].plot(idx, dx, ".-", label="dx")
    ax[0].plot(idx, dy, ".-", label="dy")
    ax[0].set_ylabel("shift to reference (px)")
    ax[0].legend(loc="best")
    ax[1].plot(idx, fwhm, ".-", color="tab:purple", label="FWHM (px)")
    ax[1].set_ylabel("FWHM (px)")
    twin = ax[1].twinx()
    twin.plot(idx, stars, ".", color="tab:gray", label="stars")
    twin.set_ylabel("stars")
    for fate, colour in _COLOURS.items():
        sel = np.array([r.fate is fate for r in results])
        if sel.any():
            ax[2].scatter(idx[sel], np.full(sel.sum(), list(_COLOURS).index(fate)), c=colour, s=12,
                          label=fate.value)
    ax[2].set_yticks(range(len(_COLOURS)), [f.value for f in _COLOURS])
    ax[2].axvline(reference, color="tab:blue", lw=0.8, ls="--")
    ax[2].set_xlabel("frame index (dashed: reference)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)
