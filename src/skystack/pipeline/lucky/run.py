"""Lucky imaging of long videos (Moon, Sun, planets): rank, align, stack the best, sharpen.

:func:`run_lucky` streams the video twice; it never holds more than a few tasks' frames
and partial sums (about ``workers + 1`` tasks in flight) and small per-frame numbers:

1. **open** the video; with ``--darks/--flats/--bias`` the masters are built (or reused)
   and applied to each raw frame before demosaicing (:mod:`skystack.calibrate`).
2. **rank** (every frame): sharpness cells on a 2×-downsampled view (see
   :mod:`skystack.quality.metrics`) at fixed places on the object, a coarse position (the
   planet's centroid, or for a surface a phase correlation against a key frame renewed
   when the field has drifted), blank and out-of-field checks; then every frame's global
   quality from its cells.
3. **reference**: the best frames, shifted by their coarse positions and averaged, then
   re-measured against that mean and averaged again.
4. **select per point** (multi-point): alignment points on the reference, and for each
   the ``keep`` frames of best local quality among *all* usable frames
   (:func:`.points.choose_points`).
5. **align + stack** (one pass over the frames chosen anywhere): global mode shifts and
   adds the kept frames; multi-point measures each frame at its selected APs (all of them
   for the globally kept frames, which also fill the nodes without an AP), de-warps it only
   where it carries weight and blends it with smooth per-AP weights; optionally drizzled
   (:mod:`skystack.stack.drizzle`). Pixels no frame covered take their nearest covered
   pixel's value (the report says how many). Colour frames are aligned on luminance and
   stacked per channel; the residual R/B offsets against G (atmospheric dispersion) are
   measured and, with ``rgb_align``, removed.
6. **write**: the stack (FITS/TIFF/PNG by extension; DATE-OBS = the mid-time of the
   stacked frames from SER timestamps, with EXPSTART/EXPEND), a preview stretched for the
   object, the best frame beside the stack, the quality plot, report.json, and with
   wavelet options a sharpened copy and a before/after preview.

Work goes in tasks of a few frames whose boundaries depend on the video alone (4 frames per
ranking task, up to 32 per stacking task, each summed into its own partial stack), and the
calling thread consumes the results and adds the partial sums in task order, so the result
does not depend on the worker count (a surface's key frame for a ranking task is the one
chosen four tasks before it).

The steps live in :mod:`.rank`, :mod:`.align`, :mod:`.stack` and :mod:`.report`;
:mod:`.frames` holds what they share (opening, the per-frame table, the reader, the run
context, chunk tasks); :mod:`.pool` runs the tasks; :mod:`.batch` runs many videos into
one folder.

Parallelism is not Dask as in the deep-sky pipeline: a frame here costs about a
millisecond, less than scheduling a Dask task. ``--workers 1`` runs everything on the
calling thread with OpenCV single-threaded (one core, honestly). With more workers and a
memory-mapped input (SER, FITS), the passes over the video run in forked worker processes
that read their own frames: much of a frame's millisecond is Python holding the GIL, and
threads gave ~1.0-1.2x on two cores. A video decoder must be read in order on one thread:
then that thread reads and the tasks run on a thread pool (:mod:`.pool`). With a lucky GPU
(``--backend``, :mod:`.gpu`) the ranking tasks and the stacking tasks' global shifts are
measured on the device, and the workers are threads (a CUDA context is unusable in a
forked child).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.registry import resolve_lucky
from ...enhance.wavelets import enhance as sharpen
from ...errors import RegistrationError
from ...jobs import LuckyJob
from ...output.sidecar import FitsSidecar
from ...output.write import write_json
from ...runtime.memory import peak_rss_mb, tune_allocator
from ...types import Fate, LuckyResult
from .align import build_reference, place_points
from .frames import FrameTable, LuckyRun, Reader, Source, frame_path, has_raw_fast_path, open_video, tasks_can_read
from .gpu import GpuRanker
from .pool import Workers
from .points import choose_points, score_frames
from .rank import Ranker, check_signal, rank_all, report_unreadable, select
from .report import Outcome, build_report, capture_times, frame_results, prepare_writer, write_outputs
from .stack import decide_colour, rgb_dispersion, stack_global, stack_points

log = logging.getLogger("skystack")

MIN_POINTS_SIDE = 16  # px: a frame's shorter side below this gets no alignment points


def run_lucky(inputs: Any, job: LuckyJob, *, fits_writer: FitsSidecar | None = None) -> LuckyResult:
    """Lucky-imaging stack of a video (or frame sequence).

    Parameters
    ----------
    inputs
        Paths (videos, SER files, frame folders; anything :func:`skystack.io.open_frames`
        accepts) or an already open frame set.
    job
        :class:`~skystack.jobs.LuckyJob`: the lucky options; ``calibration`` (darks,
        flats, bias applied to the raw frames before demosaicing); ``enhance`` (wavelet
        sharpening / stretch of the stack: writes ``OUT_sharpened.EXT`` and a before/after
        preview); ``output.output`` the stack (``.fits``, ``.tif``/``.tiff`` or ``.png``;
        ``None`` writes nothing, the image is in the result) and ``output.report``
        (default ``OUT.report.json``).
    fits_writer
        A running :class:`~skystack.output.sidecar.FitsSidecar` (``skystack lucky``
        starts one at start-up) to write a FITS stack in; ``None``: written here.

    Returns
    -------
    LuckyResult

    Raises
    ------
    NoFramesError
        No readable frame, or every frame blank/black.
    RegistrationError
        No frame could be aligned to the reference.
    UsageError, CalibrationError
        Bad options, or calibration frames that do not fit the video.
    OutputError
        An output could not be written (nothing half-written is left behind).
    """
    t_start = time.perf_counter()
    c_start = time.process_time()
    # The deep-sky pipeline's allocator settings, first (the arena limit holds for threads
    # that allocate afterwards). Untuned, glibc mapped and unmapped the frame-sized
    # temporaries of the tasks that run in this process afresh: one worker's stacking pass
    # of a 1000-frame 640x480 uniform-seeing Moon faulted 147 000 pages in (0.2-0.3 s of
    # system time, 3 000 tuned; the run 2.94 -> 2.62 s), and a video read here (AVI) on two
    # threads peaked 40-100 MB higher (one heap arena per thread); 1920x1080 RGGB frames on
    # two workers peaked at 368 MB instead of 453. Forked workers tune their own.
    tune_allocator()
    device = resolve_lucky(job.lucky.backend)  # the backend switch, resolved once: None = CPU
    # a CUDA context cannot be used in a forked child: with a device the workers are threads
    workers = Workers(max(1, job.lucky.workers or os.cpu_count() or 1), processes=device is None)
    try:
        prepare_writer(job.output.output, workers, fits_writer)
        out = Path(job.output.output) if job.output.output is not None else None
        cache = (out.parent if out is not None else Path.cwd()) / ".skystack-cache"
        src = open_video(inputs, job, cache)
        reads_in_task = tasks_can_read(src.frames, workers)
        if not reads_in_task:
            workers.without_processes()  # the frames would travel to the workers: threads
        run = LuckyRun(frames=src.frames, reader=Reader(src.frames, src.shape), table=FrameTable(len(src.frames)),
                       opts=job.lucky, source=frame_path(src.frames, 0), workers=workers, quiet=job.quiet,
                       messages=src.messages, reads_in_task=reads_in_task, fits_writer=fits_writer)
        result = _conduct(run, job, src, device)
    finally:
        workers.close()
    result.report["cpu_timings"]["total_s"] = round(workers.cpu_s() - c_start, 4)
    result.timings["total_s"] = time.perf_counter() - t_start
    return _finish(result, src, t_start)


def _conduct(run: LuckyRun, job: LuckyJob, src: Source, device=None) -> LuckyResult:
    """The steps, in order (``device``: the lucky GPU, :mod:`.gpu`, or ``None``)."""
    opts, timings, table = run.opts, run.timings, run.table
    # pass 1: rank every frame
    t0, c0 = time.perf_counter(), run.workers.cpu_s()
    raw_path = has_raw_fast_path(run.frames) and opts.quality_downsample % 2 == 0
    ranker = Ranker(opts, run.shape)
    mode = ranker.start(run, src.first_image, src.first)
    rank_all(run, ranker, raw_path, GpuRanker(ranker, device) if device is not None else None)
    report_unreadable(run)
    check_signal(run)
    sharp = score_frames(run, ranker)
    ranking = select(run, mode)
    timings["rank_s"] = time.perf_counter() - t0
    t0, c0 = run.lap("rank_s", c0)

    # the reference
    colour = decide_colour(run, src.first)
    ref = build_reference(run, ranking, mode)
    timings["reference_s"] = time.perf_counter() - t0
    t0, c0 = run.lap("reference_s", c0)

    # pass 2: align and stack (multi-point: select per point first)
    multipoint = opts.multipoint
    if multipoint and min(run.shape) < MIN_POINTS_SIDE:
        # the smallest box (8 px) and its margins do not fit: place_alignment_points raised
        multipoint = False
        run.say(f"frames of {run.shape[1]}x{run.shape[0]} are too small for alignment points (a side of "
                f"{MIN_POINTS_SIDE} px or more); aligned globally only")
    if multipoint:
        grid = place_points(run, ranking, ref)
        choice = choose_points(run, ranking, sharp, grid)
        timings["select_s"] = time.perf_counter() - t0
        t0, c0 = run.lap("select_s", c0)
        stacked = stack_points(run, ranking, ref, grid, choice, colour, mode, device)
        outside = f"outside --keep {opts.keep} and not among the best {ranking.n_keep} at any alignment point"
    else:
        stacked = stack_global(run, ranking, ref, colour, device)
        timings["align_stack_s"] = time.perf_counter() - t0
        outside = f"outside --keep {opts.keep}"
    n_used = int(table.used.sum())
    if n_used == 0:
        raise RegistrationError(f"{run.source}: none of the {ranking.n_keep} selected frames aligned to the "
                                f"reference ({table.first_reason()})")
    for i in ranking.order:  # frames ranked but not kept
        if not table.used[i] and i not in table.reasons:
            table.reasons[i] = (Fate.REJECTED, f"quality rank {ranking.rank[i]} of {ranking.order.size}: {outside}")
    rgb_shifts = None
    if stacked.image.ndim == 3:
        stacked.image, rgb_shifts = rgb_dispersion(stacked.image, opts.rgb_align)
    sharpened = sharpen(stacked.image, job.enhance) if job.enhance is not None else None
    outcome = Outcome(mode, colour, stacked, ref.disk, rgb_shifts, sharpened, n_used,
                      capture_times(run.frames, np.nonzero(table.used)[0]))

    t0, c0 = run.lap("align_stack_s", c0)  # with the R/B dispersion and sharpening

    # outputs
    results = frame_results(run, ranking, mode)
    rep = build_report(run, src.input_paths, job.enhance, ranking, outcome, results)
    rep["input_problems"] = [{"index": int(i), "path": str(p), "reason": str(r)} for i, p, r in src.problems]
    if src.calibration is not None:
        rep["calibration"] = src.calibration
    outputs: list[Path] = []
    report_path = None
    if job.output.output is not None:
        outputs, report_path = write_outputs(run, Path(job.output.output), outcome, job.output, rep)
    timings["write_s"] = time.perf_counter() - t0
    run.lap("write_s", c0)
    rep["cpu_timings"] = run.cpu_timings
    return LuckyResult(image=stacked.image, weight=stacked.weight, sharpened=sharpened, mode=mode, frames=results,
                       n_frames=table.n, n_used=n_used, timings=timings, peak_rss_mb=0.0, outputs=outputs,
                       report_path=report_path, report=rep, messages=run.messages, rgb_shifts=rgb_shifts,
                       alignment_points=stacked.grid.n_active if stacked.grid is not None else 0)


def _finish(result: LuckyResult, src: Source, t_start: float) -> LuckyResult:
    """Timings and peak memory into the result and report; the report written last."""
    t = result.timings
    t["total_s"] = time.perf_counter() - t_start
    result.peak_rss_mb = peak_rss_mb()
    rep = result.report
    rep["peak_rss_mb"] = round(result.peak_rss_mb, 1)
    rep["timings"] = {k: round(v, 4) for k, v in t.items()}
    rep["frames_per_s"] = round(result.n_frames / t["total_s"], 2) if t["total_s"] > 0 else None
    if result.report_path is not None:
        write_json(result.report_path, rep)
    return result
