"""The end of a lucky run: one :class:`~skystack.types.FrameResult` per frame, report.json,
and the files written beside the stack."""
from __future__ import annotations

import datetime as _dt
import importlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ... import __version__
from ...enhance.stretch import display_object, object_levels
from ...enhance.wavelets import before_after
from ...io import luminance
from ...options import EnhanceOptions, OutputOptions
from ...output.header import lucky_header
from ...output.plots import plot_lucky
from ...output.products import (before_after_path, compare_path, preview_path, quality_plot_path, report_path,
                               sharpened_path, write_stack)
from ...output.sidecar import FitsSidecar, write_fits_via
from ...output.write import FITS_SUFFIXES, write_image, write_png
from ...register.planetary import Disk
from ...types import Fate, FrameResult, Transform
from .frames import BLANK, OK, OUT_OF_FIELD, UNREADABLE, LuckyRun, frame_path
from .pool import Workers
from .rank import Ranking
from .stack import Stacked


@dataclass
class Outcome:
    """What a run found, for the report and the outputs: the mode, whether the stack is
    colour, the stack, the reference's planet disk, the R/B dispersion, the sharpened
    copy, how many frames were stacked and when each of them was taken (``times``, Unix
    seconds UTC, from SER timestamps)."""

    mode: str
    colour: bool
    stacked: Stacked
    disk: Disk | None
    rgb_shifts: dict[str, list[float]] | None
    sharpened: np.ndarray | None
    n_used: int
    times: list[float] | None = None


def capture_times(frames, used: np.ndarray) -> list[float] | None:
    """The capture time (Unix seconds, UTC) of each of the frames ``used``, from the SER
    timestamps; ``None`` when the frames carry none."""
    ts = []
    for i in used:
        try:
            t = frames.meta(int(i)).get("timestamp_s")
        except Exception:
            return None
        if t is None:
            return None
        ts.append(float(t))
    return ts or None


def frame_results(run: LuckyRun, ranking: Ranking, mode: str) -> list[FrameResult]:
    table, rank, frames = run.table, ranking.rank, run.frames
    weight = ranking.weight(table.quality)  # by the global quality (per AP: by the local one)
    out = []
    for i in range(table.n):
        if table.used[i]:
            fate, reason = Fate.USED, ""
        else:
            fate, reason = table.reasons.get(i, (Fate.REJECTED, "not selected"))
        s = table.shift[i]
        c = table.coarse[i]
        tr = None
        if np.all(np.isfinite(s)):
            tr = Transform.from_params(dx=-float(s[0]), dy=-float(s[1]), model="shift")
        metrics = {"quality": float(table.quality[i]), "rank": float(rank[i]) if rank[i] else float("nan"),
                   "response": float(table.response[i]), "coarse_x": float(c[0]), "coarse_y": float(c[1])}
        if table.ap_used[i]:
            metrics["ap_used"] = float(table.ap_used[i])
        if table.nonfinite[i]:
            metrics["nonfinite_px"] = float(table.nonfinite[i])  # replaced by the frame's median
        try:
            name = frames.name(i)
        except Exception:
            name = f"#{i}"
        out.append(FrameResult(index=i, path=frame_path(frames, i), name=name, fate=fate, reason=reason,
                               method=mode if table.status[i] != UNREADABLE else None, transform=tr,
                               metrics=metrics, weight=float(weight[i]) if table.used[i] else None))
    return out


def build_report(run: LuckyRun, inputs: list[str], enhance: EnhanceOptions | None, ranking: Ranking,
                 outcome: Outcome, results: list[FrameResult]) -> dict[str, Any]:
    """The report.json content (timings and peak memory are filled in at the end)."""
    table, opts = run.table, run.opts
    fates: dict[str, int] = {}
    for r in results:
        fates[r.fate.value] = fates.get(r.fate.value, 0) + 1
    used = table.used
    shifts = table.shift[used]
    summary = {
        "frames": table.n, "ranked": int(ranking.order.size), "kept": int(ranking.n_keep),
        "used": int(outcome.n_used),
        "rejected": fates.get("rejected", 0), "failed_registration": fates.get("failed_registration", 0),
        "unreadable": fates.get("unreadable", 0),
        "drifted_out_of_field": int((table.status == OUT_OF_FIELD).sum()),
        "blank": int((table.status == BLANK).sum()),
    }
    if shifts.size:
        summary["shift_px"] = {"min": np.nanmin(shifts, axis=0).round(3).tolist(),
                               "max": np.nanmax(shifts, axis=0).round(3).tolist(),
                               "rms": float(np.sqrt(np.nanmean(np.sum(shifts ** 2, axis=1))))}
    q = table.quality[np.isfinite(table.quality)]
    if q.size:
        summary["quality"] = {"min": float(q.min()), "median": float(np.median(q)), "max": float(q.max())}
    grid, disk = outcome.stacked.grid, outcome.disk
    return {
        "format": 1, "skystack": __version__, "kind": "lucky", "inputs": [str(p) for p in inputs],
        "mode": outcome.mode, "colour": bool(outcome.colour), "shape": list(run.shape),
        "planet_disk": ({"cx": disk.cx, "cy": disk.cy, "radius_px": disk.radius} if disk is not None else None),
        "alignment_points": ({"count": grid.n_active, "size": grid.size, "spacing": grid.spacing,
                              "nodes": [int(grid.ys.size), int(grid.xs.size)]} if grid is not None else None),
        "rgb_shift_px": outcome.rgb_shifts,
        "capture": ({"start_utc": _iso(min(outcome.times)), "end_utc": _iso(max(outcome.times)),
                     "mid_utc": _iso((min(outcome.times) + max(outcome.times)) / 2.0)}
                    if outcome.times else None),
        "quality_metric": "weighted mean over 32-px cells (the same places on the object in every frame) "
                          "of the log Laplacian-of-Gaussian energy (sigma 1.4 px, 2x-downsampled view) "
                          "relative to the cell's median over frames, brightness-corrected; cells weighted "
                          "by how they follow the seeing (skystack.quality.metrics)",
        "selection": {"quality_weight": ranking.gamma, **outcome.stacked.extra},
        "edges": {"policy": "fill", "filled_px": int(outcome.stacked.filled_px),
                  "note": "pixels no frame covered take their nearest covered pixel's value"},
        "options": asdict(opts), "enhance": asdict(enhance) if enhance is not None else None,
        "summary": summary, "peak_rss_mb": None, "messages": list(run.messages),
        "timings": {},
        "frames": [r.to_json() for r in results],
    }


def prepare_writer(output: str | None, workers: Workers, sidecar: FitsSidecar | None = None) -> None:
    """Import the FITS writer (astropy.io.fits: 0.15-0.3 s, measured on the project's 2-core
    machine, a tenth of a 1000-frame run) on a background thread, so that it overlaps the
    passes over the video instead of delaying the end of the run (with forked workers the
    stacking pass, see :meth:`.Workers.release_background`); the import at write time then
    finds it done. Nothing to do when a running ``sidecar`` writes the FITS."""
    if sidecar is not None and sidecar.alive:
        return
    if output is not None and Path(output).suffix.lower() in FITS_SUFFIXES:
        workers.background(lambda: importlib.import_module("astropy.io.fits"), "lucky-fits-import")


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat()


def _compare(shown: np.ndarray, best_aligned: np.ndarray, mode: str, levels: tuple[np.ndarray, float]) -> np.ndarray:
    """The best single frame beside the stack (``shown``: the stack as uint8 through
    ``levels``), the frame through the stack's ``levels``."""
    best = best_aligned
    if best.shape[:2] != shown.shape[:2]:
        best = cv2.resize(best, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_CUBIC)
    if best.ndim != shown.ndim:
        best = np.repeat(best[..., None], 3, axis=2) if shown.ndim == 3 else luminance(best)
    left = display_object(best, mode, levels=levels)
    gap = np.zeros((left.shape[0], 4) + left.shape[2:], np.uint8)
    return np.concatenate([left, gap, shown], axis=1)


def _previews(out: Path, image: np.ndarray, best_aligned: np.ndarray | None, mode: str) -> list[Path]:
    """The preview and the comparison (one job: the stack's display levels and uint8 view
    serve both, 12 ms and 7 ms for a 640x480 RGB planet, measured)."""
    levels = object_levels(image, mode)
    shown = display_object(image, mode, levels=levels)
    written = [] if out.suffix.lower() == ".png" else [write_png(preview_path(out), shown)]
    if best_aligned is not None:
        written.append(write_png(compare_path(out), _compare(shown, best_aligned, mode, levels)))
    return written


def write_outputs(run: LuckyRun, out: Path, outcome: Outcome, output: OutputOptions,
                  report: dict[str, Any]) -> tuple[list[Path], Path]:
    """Write the stack and its side files; returns the paths written and the report's path
    (the report itself is written last, by the conductor). Previews are stretched for the
    object (:func:`skystack.enhance.stretch.object_levels`), not like a deep-sky field."""
    table, opts = run.table, run.opts
    image = outcome.stacked.image
    # DATE-OBS at the middle of the stacked frames (what WinJUPOS derotation takes),
    # EXPSTART/EXPEND their span: MJD = Unix seconds / 86400 + 40587 (MJD of 1970-01-01)
    starts = [t / 86400.0 + 40587.0 for t in outcome.times] if outcome.times else ()
    header, history = lucky_header(opts, outcome.mode, outcome.n_used, table.n, starts_mjd=starts,
                                   debayered=outcome.colour)
    # a FITS goes to the run's FITS writer process when it has one (see
    # skystack.output.sidecar); the writers only read the image
    fits = run.fits_writer
    cpu_before = fits.cpu_s if fits is not None else 0.0
    if out.suffix.lower() in FITS_SUFFIXES:
        jobs = [lambda: [write_fits_via(fits, out, image, header=header, history=history)]]
    else:
        jobs = [lambda: write_stack(out, image, header=header, history=history,
                                    output=replace(output, preview=False))]
    if output.preview:
        jobs.append(lambda: _previews(out, image, outcome.stacked.best_aligned, outcome.mode))
        jobs.append(lambda: [plot_lucky(quality_plot_path(out), table.quality, table.used, table.status != OK,
                                        table.status == UNREADABLE, table.coarse, table.shift, outcome.mode)])
    if outcome.sharpened is not None:
        sp = sharpened_path(out)
        jobs.append(lambda: [write_fits_via(fits, sp, outcome.sharpened, header=header,
                                            history=history + ["wavelet sharpened"])
                             if sp.suffix.lower() in FITS_SUFFIXES else
                             write_image(sp, outcome.sharpened, header=header,
                                         history=history + ["wavelet sharpened"], tiff_dtype=output.tiff_dtype),
                             write_png(before_after_path(sp), before_after(image, outcome.sharpened))])
    # the files are independent (stretches, PNG compression and FITS writing release the
    # GIL for most of their time): on the workers' threads, listed in this order
    written = [p for paths in run.map(lambda job: job(), jobs, fork=False) for p in paths]
    if fits is not None:
        run.workers.worker_cpu_s += fits.cpu_s - cpu_before  # its writes' CPU, as the workers'
    rep_path = report_path(output)
    report["outputs"] = [str(p) for p in written]
    return written, rep_path
