"""``skystack stack`` and ``skystack register``: the conductor.

Read :func:`stack_frames` top to bottom for what a run does; each step is a function of
this package:

1. :func:`open_inputs` — check the options against the machine and every output path
   against the inputs (:func:`planned_outputs`), find and open the frames, decode what
   cannot be sliced into the cache, insert the calibration;
2. :func:`start_journal` — the journal that makes ``--resume`` possible;
3. :func:`~.phase1.register_all` — choose the reference, register and measure every frame;
4. :func:`~.weights.apply_selection` and :func:`~.weights.normalisation` — which frames
   are stacked, with which factors and weights;
5. :func:`combine` — phase 2: the streaming mean, the tile engine or drizzle;
6. :func:`finish` — colour balance, report, outputs; the cache (unless ``--keep-cache``)
   and the journal are removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ... import __version__
from ...backends.registry import resolve
from ...errors import RegistrationError, UsageError
from ...io import FrameSet, ensure_sliceable, input_files, open_frames, remove_cache
from ...jobs import RegisterJob, StackJob
from ...options import RegisterOptions
from ...output.guard import guard_outputs
from ...output.header import deepsky_header
from ...output.report import build_report
from ...output.products import report_path as report_path_of
from ...output.products import stack_outputs, write_stack
from ...output.write import write_json
from ...runtime.executor import ClusterShape, check_scheduler, cluster_shape
from ...runtime.memory import current_rss, memory_budget, peak_rss_mb, release_free_memory, tune_allocator
from ...runtime.progress import setup_logging
from ...types import Fate, StackResult
from .drizzle import run_drizzle
from .mean import run_streaming_mean
from .phase1 import Phase1, Preload, register_all
from .phase2 import coverage_of, plan_phase2, run_tiles
from .resume import Journal
from .weights import Kept, apply_selection, normalisation

log = logging.getLogger("skystack")


# _calibrate_modules: skystack.calibrate (masters, cosmetic correction: scipy.ndimage) and
# its colour module (astropy.stats, astropy.units) are imported where a run calibrates or
# balances colour, not at the top: a plain stack never uses them, and they cost 0.10-0.13 s
# of its start-up (measured on the 2-core project machine, after the stack's own imports).


@dataclass
class Inputs:
    """The opened inputs of a run and where its side files go."""

    inputs: list[str]
    frames: FrameSet
    out_path: Path | None
    cache_dir: Path
    calibration_info: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    scratch: Path | None = None  # the temporary journal folder of a stack that writes nothing
    cluster: ClusterShape | None = None  # with --scheduler: the workers' threads and memory


@dataclass
class Combined:
    """What phase 2 produced: the image, the per-pixel count of combined values, the
    drizzle weight map (``None`` without drizzle) and the engine's figures."""

    image: np.ndarray
    count: np.ndarray
    weight: np.ndarray | None
    info: dict[str, Any]


def stack_frames(inputs: Sequence[str | os.PathLike], job: StackJob) -> StackResult:
    """Register and stack ``inputs``; write the outputs ``job.output`` names.

    Returns a :class:`~skystack.types.StackResult`; per-frame problems are in its results,
    not raised.

    Raises
    ------
    NoFramesError, UsageError, RegistrationError, OutputError, InputChangedError, ClusterError
    """
    t_start = time.perf_counter()
    setup_logging(job.run.quiet)
    if job.output.output is None and job.run.resume:
        raise UsageError("--resume continues a run that writes an output; give the output path")
    backend = resolve(job.run.backend)
    src, journal, resumed, preload = _open(inputs, job, transforms_only=False)
    with _held(journal):
        p1 = register_all(src.frames, job.register, job.run, journal, resumed, job.stack.memory_limit, preload)
        _require_registered(p1, job.register)
        release_free_memory()
        t0 = time.perf_counter()
        kept = apply_selection(p1, job.select)
        src.timings["select_s"] = time.perf_counter() - t0
        if not kept:
            raise RegistrationError("no frame left to stack after selection")
        job = dataclasses.replace(job, stack=job.stack.for_frames(len(kept)))  # --method auto, by the frames kept
        kept_frames = normalisation(p1, kept, job.stack)
        image, count, weight, stack_info = combine(src.frames, p1, kept_frames, job, journal, resumed, backend,
                                                   src.timings, src.cluster)
        release_free_memory()  # the tiles' buffers, freed in the workers' heaps, before the outputs' own
        return finish(src, p1, kept, Combined(image, count, weight, stack_info), job, journal, resumed,
                      backend.name, t_start)


def register_frames(inputs: Sequence[str | os.PathLike], job: RegisterJob) -> StackResult:
    """Register ``inputs`` only: every frame's transform and fate; with
    ``job.output.report``, written as report.json."""
    t_start = time.perf_counter()
    setup_logging(job.run.quiet)
    as_stack = StackJob(read=job.read, register=job.register, output=job.output, run=job.run)
    src, journal, resumed, preload = _open(inputs, as_stack, transforms_only=True)
    with _held(journal):
        p1 = register_all(src.frames, job.register, job.run, journal, resumed, None, preload)
        _require_registered(p1, job.register)
        kept = [r.index for r in p1.results if r.fate is Fate.USED]
        return finish(src, p1, kept, None, as_stack, journal, resumed, None, t_start)


@contextlib.contextmanager
def _held(journal: Journal | None) -> Iterator[None]:
    """The run's journal stays locked for the run and is let go when it ends, failed
    included (what it holds stays for ``--resume``): the same process may run again."""
    try:
        yield
    finally:
        if journal is not None:
            journal.release()


def _open(inputs: Sequence[str | os.PathLike], job: StackJob, *,
          transforms_only: bool) -> tuple[Inputs, Journal | None, bool, Preload | None]:
    """Open the inputs and start the journal while registration's kernels load on a side
    thread (returned, for :func:`register_all` to wait for). When opening fails (bad inputs,
    a refused ``--resume``, an output aimed at an input) the loading is waited for before
    the error goes on: a daemon thread still inside LLVM when the interpreter exits aborts
    the process (SIGABRT, "terminate called without an active exception") instead of
    ending it with the error's exit code."""
    tune_allocator()  # first: its arena limit holds for threads that allocate afterwards
    preload = _preload(job)
    try:
        t0 = time.perf_counter()
        src = open_inputs(inputs, job)
        src.timings["open_s"] = time.perf_counter() - t0
        journal, resumed = start_journal(src, job, transforms_only=transforms_only)
    except BaseException:
        if preload is not None:
            preload.wait()
        raise
    return src, journal, resumed, preload


def _preload(job: StackJob) -> Preload | None:
    """Registration's kernels loading on a side thread while the inputs are opened (not for
    a cluster run, nor beside a calibration, whose masters call kernels of their own)."""
    if job.run.scheduler or job.calibration.active:
        return None
    return Preload(job.register)


def open_inputs(inputs: Sequence[str | os.PathLike], job: StackJob) -> Inputs:
    """Check what can be checked before reading a frame, then open the frames, decode the
    ones that cannot be sliced into the cache, and insert the calibration."""
    cluster = None
    if job.run.scheduler:
        check_scheduler(job.run.scheduler)
        # every worker runs this version; its memory is measured with the tile task's modules loaded
        cluster = cluster_shape(job.run.scheduler, __version__, modules=(run_tiles.__module__,))
    out_path = Path(job.output.output) if job.output.output is not None else None
    anchor = out_path or (Path(job.output.report) if job.output.report else Path.cwd() / "skystack")
    cache_dir = Path(job.run.cache_dir) if job.run.cache_dir else anchor.parent / ".skystack-cache"
    files, folders = planned_outputs(job, cache_dir)
    cal = job.calibration
    guard_outputs(files, input_files(list(inputs)) + input_files([*cal.bias, *cal.darks, *cal.flats, *cal.dark_flats]),
                  folders=folders)
    frames = open_frames(list(inputs), options=job.read)
    for idx, path, reason in frames.problems:
        if idx < 0:  # a file-level warning; per-frame problems are reported once, in phase 1
            log.warning("%s: %s", path, reason)
    if job.colour.white_balance == "camera":
        from ...calibrate.colour import camera_white_balance  # see _calibrate_modules

        camera_white_balance(frames.meta(0), source=frames.name(0))  # fails now, not after stacking
    src = Inputs(inputs=[os.fspath(p) for p in inputs], frames=frames, out_path=out_path, cache_dir=cache_dir,
                 cluster=cluster)
    t0 = time.perf_counter()
    src.frames = ensure_sliceable(frames, cache_dir)
    src.timings["decode_cache_s"] = time.perf_counter() - t0
    if job.calibration.active:
        from ...calibrate import prepare_calibration  # see _calibrate_modules

        t0 = time.perf_counter()
        calibration = job.calibration
        if calibration.memory_limit is None:  # masters are built inside the run's budget
            calibration = dataclasses.replace(calibration, memory_limit=job.stack.memory_limit)
        # builds (or reuses from the cache) the masters and returns the same frames with the
        # calibration inserted between the raw plane and debayering
        src.frames, src.calibration_info = prepare_calibration(src.frames, calibration, cache_dir=cache_dir,
                                                               run=job.run)
        src.timings["calibration_s"] = time.perf_counter() - t0
    return src


def planned_outputs(job: StackJob, cache_dir: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """Every file (the image, its side files, the report) and folder (journal, cache) a run
    of ``job`` may write, as ``(role, path)``: checked against the inputs before any frame
    is read."""
    files = stack_outputs(job.output, plot=True)
    anchor = job.output.output if job.output.output is not None else job.output.report
    folders = [("journal", Journal(anchor).dir)] if anchor is not None else []
    return files, folders + [("cache", cache_dir)]


def start_journal(src: Inputs, job: StackJob, *, transforms_only: bool) -> tuple[Journal | None, bool]:
    """Open the run's journal (once the inputs are known to be usable: a refused
    calibration leaves nothing behind). Returns it and whether this run resumes one.

    A stack that writes nothing (the API with ``output=None``) keeps its accumulators in a
    journal under a temporary folder (the cache folder for a cluster run, whose workers
    must see it), removed with the journal."""
    anchor = src.out_path if src.out_path is not None else Path(job.output.report) if job.output.report else None
    if anchor is None and not transforms_only:
        parent = src.cache_dir if job.run.scheduler else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        src.scratch = Path(tempfile.mkdtemp(prefix="skystack-", dir=parent))
        anchor = src.scratch / "stack"
    if anchor is None:
        return None, False
    journal = Journal(anchor)
    # --min-registered only decides whether a finished phase 1 may go on: a run stopped by it
    # resumes with another value
    register = {k: v for k, v in asdict(job.register).items() if k != "min_registered"}
    opts = {"read": asdict(job.read), "register": register, "select": asdict(job.select),
            "calibration": asdict(job.calibration) if job.calibration.active else None,
            "stack": {k: v for k, v in asdict(job.stack).items() if k not in _PARTITION_ONLY}
            if not transforms_only else None, "transforms_only": transforms_only}
    resumed = journal.start(_manifest(src.frames, opts), job.run.resume)
    if resumed:
        log.info("resuming from %s", journal.dir)
    return journal, resumed


def combine(frames: FrameSet, p1: Phase1, kept: Kept, job: StackJob, journal: Journal, resumed: bool,
            backend: Any, timings: dict[str, float], cluster: ClusterShape | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Phase 2: the kept frames warped (or drizzled) onto the reference and combined.
    Returns the image, the per-pixel count of combined values (the most of any channel),
    the drizzle weight map (``None`` without drizzle), and the engine's figures for the
    report."""
    t0 = time.perf_counter()
    stack = job.stack
    weight = None
    if stack.drizzle:
        # what the run still holds from phase 1 (the frame index, results, allocator slack)
        # comes out of the budget phase 2 may use
        held = max(0, current_rss() - p1.rss_warm) if p1.rss_warm else 0
        budget = memory_budget(stack.memory_limit)
        phase2 = dataclasses.replace(stack, memory_limit=max(budget - held, 1))
        info: dict[str, Any] = {"method": stack.method, "memory_limit": budget, "held_after_phase1": held}
        img_path, cnt_path, wgt_path, rejected, band_info = run_drizzle(frames, p1, kept, phase2, job.run, journal,
                                                                        resumed, backend.name)
        info.update(band_info, engine="drizzle")
        _record_rejections(p1, kept, rejected, band_info["output_pixels"])
        image, count, weight = np.load(img_path), coverage_of(cnt_path), np.load(wgt_path)
    else:
        plan = plan_phase2(p1, kept, stack, job.run, journal, resumed, cluster)
        info = {"method": stack.method, "memory_limit": plan.limit, "held_after_phase1": plan.held,
                "engine": plan.engine}
        if plan.engine == "streaming-mean":
            image, count = run_streaming_mean(frames, p1, kept, stack, job.run, journal, resumed, backend,
                                              plan.in_flight)
        else:
            img_path, cnt_path, rejected, tile_info = run_tiles(frames, p1, kept, stack, job.run, journal, resumed,
                                                                backend.name, plan)
            info.update(tile_info)
            _record_rejections(p1, kept, rejected, float(np.prod(p1.shape)))
            # read into memory (not mapped): the result holds the image after the journal goes;
            # the count only as the coverage it becomes, read in strips
            image = np.load(img_path)
            count = coverage_of(cnt_path)
    timings["phase2_s"] = time.perf_counter() - t0
    return image, count, weight, info


def _record_rejections(p1: Phase1, kept: Kept, rejected: np.ndarray, n_px: float) -> None:
    res = p1.by_index()
    for k, i in enumerate(kept.indices):
        res[i].metrics["rejected_low_pct"] = 100.0 * rejected[k, 0] / n_px
        res[i].metrics["rejected_high_pct"] = 100.0 * rejected[k, 1] / n_px


def finish(src: Inputs, p1: Phase1, kept: list[int], combined: Combined | None, job: StackJob,
           journal: Journal | None, resumed: bool, backend: str | None, t_start: float) -> StackResult:
    """Colour balance, the header, the report and the outputs; then the journal goes.
    ``combined`` is ``None`` for ``register`` (transforms only)."""
    timings = dict(src.timings)
    timings.update(p1.timings)
    transforms_only = combined is None
    image = count = weight = header = None
    stack_info: dict[str, Any] = {} if combined is None else combined.info
    colour_info = None
    if combined is not None:
        image, weight = np.asarray(combined.image), combined.weight
        count = np.asarray(combined.count)
        if count.ndim == 3:  # the coverage of a colour stack: the most values any channel combined
            count = count.max(axis=2)
        if job.colour.active:
            if image.ndim == 3:
                from ...calibrate.colour import colour_balance  # see _calibrate_modules

                t0 = time.perf_counter()
                image, colour_info = colour_balance(image, neutralize=job.colour.neutralize,
                                                    white_balance=job.colour.white_balance,
                                                    meta=src.frames.meta(p1.reference))
                timings["colour_s"] = time.perf_counter() - t0
            else:
                log.warning("--neutralize/--white-balance apply to colour stacks; this one is mono, left as it is")
        image = np.asarray(image, dtype=np.float32)
        header = deepsky_header(p1.results, p1.reference, kept, src.frames, job.stack, job.register,
                                colour=image.ndim == 3)
    t0 = time.perf_counter()
    report = build_report(frames=src.frames, p1=p1, kept=kept, inputs=src.inputs, output=job.output,
                          options={"read": asdict(job.read), "register": asdict(job.register),
                                   "select": asdict(job.select), "stack": asdict(job.stack),
                                   "run": asdict(job.run)},
                          backend=backend, stack_info=stack_info, transforms_only=transforms_only)
    extra: list[Path] = []
    if image is not None and src.out_path is not None:
        extra = write_stack(src.out_path, image, count=count, weight=weight, header=header,
                            output=job.output, results=p1.results, reference=p1.reference)
        report["outputs"] = [str(p) for p in extra]
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    if src.calibration_info is not None:
        report["calibration"] = src.calibration_info
    if colour_info is not None:
        report["colour"] = colour_info
    if resumed:
        report["resumed"] = {"phase1_frames_reused": p1.reused, "tiles_reused": stack_info.get("tiles_reused", 0)}
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    # the outputs are written: what was decoded for this run is no longer needed
    report["cache"] = remove_cache(src.cache_dir, keep=job.run.keep_cache or job.run.cache_dir is not None)
    report_path = report_path_of(job.output)
    if report_path is not None:
        write_json(report_path, report)
    if journal is not None:
        journal.remove()
    if src.scratch is not None:
        shutil.rmtree(src.scratch, ignore_errors=True)
    return StackResult(output=None if transforms_only else src.out_path, report_path=report_path,
                       results=p1.results, reference=p1.reference, n_used=0 if transforms_only else len(kept),
                       shape=p1.shape, timings=timings, peak_rss_mb=peak_rss_mb(), backend=backend or "none",
                       report=report, extra_outputs=extra, image=image, coverage=count, weight=weight,
                       header=header)


def _require_registered(p1: Phase1, register: RegisterOptions) -> None:
    """Stop (exit 5) when too few frames registered: a stack of a handful out of many is
    garbage, not a result (``--min-registered``, half the frames by default)."""
    n = len(p1.results)
    registered = sum(r.transform is not None for r in p1.results)
    if not any(r.fate is Fate.USED for r in p1.results):
        raise RegistrationError("no frame could be registered; see the reasons above")
    rule = register.min_registered_rule
    need = rule.required(n)
    if registered < need:
        raise RegistrationError(
            f"only {registered} of {n} frames registered (at least {need} needed: --min-registered "
            f"{rule.text}); see the reasons above")


# Stack options that only change how the output is cut into tiles, never a pixel of it:
# a resumed run may use other values (it finishes the recorded plan).
_PARTITION_ONLY = ("memory_limit", "tile_rows")


def _manifest(frames: FrameSet, opts: dict[str, Any]) -> dict[str, Any]:
    """What a run depends on: the inputs (size, mtime) and every option that changes the
    result. ``--resume`` refuses a journal whose manifest differs."""
    return {"skystack": __version__,
            "inputs": [[frames.name(i), list(_safe_fp(frames, i))] for i in range(len(frames))],
            **opts}


def _safe_fp(frames: FrameSet, i: int) -> tuple[int, int]:
    try:
        return frames.fingerprint(i)
    except OSError:
        return (-1, -1)
