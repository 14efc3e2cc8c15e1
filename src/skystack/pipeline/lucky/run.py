"""Lucky imaging of long videos (Moon, Sun, planets): rank, align, stack the best, sharpen.

:func:`run_lucky` streams the video several times; it never holds more than a few frames
(``2 × workers`` in flight), so memory is flat in the number of frames:

1. **rank** (every frame): quality (see :mod:`skystack.quality.metrics`) on a 2×-downsampled
   view, a coarse position (the planet's centroid, or for a surface a phase correlation
   against a key frame that is renewed when the field has drifted), blank and
   out-of-field checks. Only small per-frame numbers survive.
2. **reference**: the best frames, shifted by their coarse positions and averaged, then
   re-measured against that mean and averaged again.
3. **align** (the kept frames; with multi-point, a pool of the best ``ap_pool × keep``):
   subpixel global shift against the reference; with multi-point, every alignment point's
   local shift and sharpness (:mod:`skystack.register.multipoint`).
4. **stack**: global shift-and-add of the kept frames, or, with multi-point, each frame
   de-warped by its smooth displacement field and blended with smooth per-AP selection
   weights; optionally drizzled (:mod:`skystack.stack.drizzle`). Colour frames are
   aligned on luminance and stacked per channel; the residual R/B offsets against G
   (atmospheric dispersion) are measured and, with ``rgb_align``, removed.
5. **write**: the stack (FITS/TIFF/PNG by extension), a stretched preview, the best frame
   beside the stack, the quality plot, report.json, and with wavelet options a sharpened
   copy and a before/after preview.

Accumulation happens in frame order on the calling thread, so the result does not depend
on the worker count.

The steps live in :mod:`.rank`, :mod:`.align`, :mod:`.stack` and :mod:`.report`;
:mod:`.frames` holds what they share (the per-frame table, the reader, the run context).

Parallelism is a thread pool, not Dask as in the deep-sky pipeline: a frame here costs about
a millisecond of work (OpenCV, SciPy's FFT and NumPy release the GIL), less than scheduling
a Dask task, and the video decoder must be read sequentially from one thread anyway.
"""
from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...enhance.wavelets import enhance as sharpen
from ...errors import NoFramesError, RegistrationError
from ...options import LuckyJob
from ...output.write import check_not_input, write_json
from ...runtime.memory import peak_rss_mb
from ...types import Fate, LuckyResult
from .align import build_reference, measure_points
from .frames import (FrameTable, LuckyRun, Reader, first_frame, frame_path, has_raw_fast_path, open_input,
                     sample_indices)
from .rank import Ranker, check_signal, rank_all, report_unreadable, select
from .report import Outcome, build_report, frame_results, write_outputs
from .stack import decide_colour, rgb_dispersion, stack_global, stack_multipoint

log = logging.getLogger("skystack")


def run_lucky(inputs: Any, job: LuckyJob) -> LuckyResult:
    """Lucky-imaging stack of a video (or frame sequence).

    Parameters
    ----------
    inputs
        Paths (videos, SER files, frame folders; anything :func:`skystack.io.open_frames`
        accepts) or an already open frame set.
    job
        :class:`~skystack.options.LuckyJob`: the lucky options; ``enhance`` (wavelet
        sharpening / stretch of the stack: writes ``OUT_sharpened.EXT`` and a before/after
        preview); ``output.output`` the stack (``.fits``, ``.tif``/``.tiff`` or ``.png``;
        ``None`` writes nothing, the image is in the result) and ``output.report``
        (default ``OUT.report.json``).

    Returns
    -------
    LuckyResult

    Raises
    ------
    NoFramesError
        No readable frame, or every frame blank/black.
    RegistrationError
        No frame could be aligned to the reference.
    UsageError
        Bad options.
    OutputError
        An output could not be written (nothing half-written is left behind).
    """
    t_start = time.perf_counter()
    opts = job.lucky
    frames = open_input(inputs, job.read)
    n = len(frames)
    if n == 0:
        raise NoFramesError("no input frame")
    source = frame_path(frames, 0)
    messages: list[str] = []
    problems = list(getattr(frames, "problems", []) or [])
    for idx, path, reason in problems:
        if idx < 0:  # file-level warnings (a truncated SER ...); bad frames are reported below
            messages.append(f"{path}: {reason}")
            log.warning("%s", messages[-1])
    input_paths = sorted({frame_path(frames, i) for i in sample_indices(n)})
    if job.output.output is not None:
        check_not_input(job.output.output, input_paths)
    workers = max(1, opts.workers or os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lucky") if workers > 1 else None
    cv_threads = cv2.getNumThreads()
    if pool is not None:
        # frames are processed in parallel already; OpenCV's own threads on top of that
        # only fight over the same cores (restored when the run ends)
        cv2.setNumThreads(1)
    try:
        first, shape, first_img = first_frame(frames)
        run = LuckyRun(frames=frames, reader=Reader(frames, shape), table=FrameTable(n), opts=opts,
                       source=source, pool=pool, inflight=2 * workers, quiet=job.quiet, messages=messages)
        return _conduct(run, job, first, first_img, input_paths, problems, t_start)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
            cv2.setNumThreads(cv_threads)


def _conduct(run: LuckyRun, job: LuckyJob, first: int, first_img: np.ndarray, input_paths: list[str],
             problems: list, t_start: float) -> LuckyResult:
    """The steps, in order."""
    opts, timings, table = run.opts, run.timings, run.table
    # pass 1: rank every frame
    raw_path = has_raw_fast_path(run.frames) and opts.quality_downsample % 2 == 0
    ranker = Ranker(opts, raw_path)
    mode = ranker.start(run, first_img)
    t0 = time.perf_counter()
    rank_all(run, ranker, raw_path)
    timings["rank_s"] = time.perf_counter() - t0
    report_unreadable(run)
    check_signal(run)
    ranking = select(run, mode)

    # the reference
    t0 = time.perf_counter()
    colour = decide_colour(run, first)
    ref = build_reference(run, ranking, mode)
    timings["reference_s"] = time.perf_counter() - t0

    # passes 2 and 3: align and stack
    t0 = time.perf_counter()
    if opts.multipoint:
        n_keep, order = ranking.n_keep, ranking.order
        n_pool = min(order.size, max(n_keep, int(math.ceil(opts.ap_pool * n_keep))))
        points = measure_points(run, np.sort(order[:n_pool]), ranking, ref)
        stacked = stack_multipoint(run, points, ranking, colour)
    else:
        stacked = stack_global(run, ranking, ref, colour)
        timings["align_stack_s"] = time.perf_counter() - t0
    n_used = int(table.used.sum())
    if n_used == 0:
        raise RegistrationError(f"{run.source}: none of the {ranking.n_keep} selected frames aligned to the "
                                f"reference ({table.first_reason()})")
    for i in ranking.order:  # frames ranked but not kept
        if not table.used[i] and i not in table.reasons:
            table.reasons[i] = (Fate.REJECTED, f"quality rank {ranking.rank[i]} of {ranking.order.size}, "
                                               f"outside --keep {opts.keep}")
    rgb_shifts = None
    if stacked.image.ndim == 3:
        stacked.image, rgb_shifts = rgb_dispersion(stacked.image, opts.rgb_align)
    sharpened = sharpen(stacked.image, job.enhance) if job.enhance is not None else None
    outcome = Outcome(mode, colour, stacked, ref.disk, rgb_shifts, sharpened, n_used)

    # outputs
    t0 = time.perf_counter()
    results = frame_results(run, ranking, mode)
    rep = build_report(run, input_paths, job.enhance, ranking, outcome, results)
    rep["input_problems"] = [{"index": int(i), "path": str(p), "reason": str(r)} for i, p, r in problems]
    outputs: list[Path] = []
    report_path = None
    if job.output.output is not None:
        outputs, report_path = write_outputs(run, Path(job.output.output), outcome, job.output, rep)
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    peak = peak_rss_mb()
    rep["peak_rss_mb"] = round(peak, 1)
    rep["timings"] = {k: round(v, 4) for k, v in timings.items()}
    rep["frames_per_s"] = round(table.n / timings["total_s"], 2) if timings["total_s"] > 0 else None
    if report_path is not None:
        write_json(report_path, rep)
    return LuckyResult(image=stacked.image, weight=stacked.weight, sharpened=sharpened, mode=mode, frames=results,
                       n_frames=table.n, n_used=n_used, timings=timings, peak_rss_mb=peak, outputs=outputs,
                       report_path=report_path, report=rep, messages=run.messages, rgb_shifts=rgb_shifts,
                       alignment_points=stacked.grid.n_active if stacked.grid is not None else 0)
