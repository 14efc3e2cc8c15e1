"""FITS header cards of a stack: what was done (method, parameters, frames) and what was
observed. Both pipelines build their headers here; :mod:`.write` puts them into FITS
cards or a TIFF description."""
from __future__ import annotations

import datetime as _dt
import math
import os
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..options import LuckyOptions, RegisterOptions, StackOptions
from ..types import FrameResult

Cards = dict[str, Any]  # keyword -> value or (value, comment)


def deepsky_header(results: Sequence[FrameResult], reference: int, kept: Sequence[int], frames,
                   stack: StackOptions, register: RegisterOptions) -> tuple[Cards, list[str]]:
    """Cards and HISTORY lines of a deep-sky stack of the frames ``kept``."""
    header: Cards = {
        "SWCREATE": (f"skystack {__version__}", "software"),
        "NCOMBINE": (len(kept), "number of frames stacked"),
        "STACKMTH": (stack.method, "rejection/stack method"),
        "KAPPALO": (stack.kappa_low, "low rejection parameter"),
        "KAPPAHI": (stack.kappa_high, "high rejection parameter"),
        "NORMALIZ": (stack.norm, "normalisation"),
        "WEIGHTS": (stack.weights, "frame weighting"),
        "INTERP": (stack.interpolation, "warp interpolation"),
        "REGMETH": (register.method, "registration method"),
        "REGMODEL": (register.model, "transform model"),
        "REFFRAME": (reference, "reference frame index (0-based)"),
        "REFNAME": (os.path.basename(frames.name(reference))[:60], "reference frame"),
        "NFRAMES": (len(results), "input frames"),
    }
    kept_set = set(kept)
    exp = [r.metrics.get("exposure_s") for r in results if r.index in kept_set]
    exp = [e for e in exp if e is not None and math.isfinite(e)]
    if exp:
        header["EXPTIME"] = (float(np.mean(exp)), "mean exposure of stacked frames (s)")
        header["LIVETIME"] = (float(np.sum(exp)), "total exposure stacked (s)")
    history = [f"skystack stack of {len(kept)} of {len(results)} frames"]
    history += [f"input {i}: {frames.name(i)}" for i in kept]
    return header, history


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _mjd(t: float) -> float:
    return t / 86400.0 + 40587.0  # MJD of the Unix epoch, 1970-01-01T00:00:00 UTC


def lucky_header(opts: LuckyOptions, mode: str, n_used: int, n_frames: int,
                 times: tuple[float, float] | None = None) -> tuple[Cards, list[str]]:
    """Cards and HISTORY lines of a lucky-imaging stack.

    ``times`` (Unix seconds, UTC) are the earliest and latest capture times of the
    stacked frames (SER timestamps): DATE-OBS is their mid-time, which planetary
    derotation (WinJUPOS) takes as the image's time; EXPSTART/EXPEND (MJD) the span.
    """
    header: Cards = {"NCOMBINE": (n_used, "frames stacked"), "STACKCNT": (n_used, "frames stacked"),
                     "LUCKMODE": (mode, "lucky-imaging alignment"),
                     "KEEP": (str(opts.keep), "--keep rule"),
                     "MULTIPT": (bool(opts.multipoint), "multi-point alignment"),
                     "DRIZZLE": (float(opts.drizzle or 1.0), "drizzle scale")}
    if times is not None:
        t0, t1 = times
        header["DATE-OBS"] = (_iso((t0 + t1) / 2.0), "UTC mid-time of the stacked frames")
        header["EXPSTART"] = (round(_mjd(t0), 8), "MJD (UTC) of the first stacked frame")
        header["EXPEND"] = (round(_mjd(t1), 8), "MJD (UTC) of the last stacked frame")
        header["TIMESYS"] = ("UTC", "time scale of DATE-OBS, EXPSTART, EXPEND")
    history = [f"skystack lucky: {n_used} of {n_frames} frames, mode {mode}, keep {opts.keep}"]
    return header, history
