"""Phase 1: choose the reference, then read, register and measure every frame.

One Dask task per frame (:func:`register_task`); a task reads its frame itself and
returns a small :class:`~skystack.types.FrameResult`. Nothing image-sized survives
phase 1 but the reference's star list.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ...errors import BadFrameError, NoFramesError, RegistrationError, UsageError
from ...io import luminance
from ...options import RegisterOptions, RunOptions
from ...output.header import frame_start_mjd
from ...quality.select import quality_score
from ...register.deepsky import Reference, measure_frame, register_frame
from ...runtime.executor import run_tasks
from ...runtime.memory import current_rss, release_free_memory
from ...runtime.progress import Progress
from ...stack.normalize import robust_stats
from ...types import Fate, FrameResult, Transform, shape_text
from .resume import Journal
from .workspace import Workspace

log = logging.getLogger("skystack")

# Below this many pixels on a side there is no room for the stars or keypoints a transform
# is estimated from (ORB's patch alone is 31 px; detection's background box 16).
MIN_REGISTER_SIDE = 16

# Phase 1 holds, per frame in flight, the decoded frame and about 4.3 frame-sized float32
# temporaries of star detection and ORB (measured: +99 MB for a 3000×2000 frame).
_PHASE1_FRAME_FACTOR = 5.5


@dataclass
class Phase1:
    """Everything phase 1 learned; small (no pixels)."""

    results: list[FrameResult]
    reference: int
    reference_reason: str
    shape: tuple[int, ...]  # processed frame shape of the reference: (H, W) or (H, W, 3)
    fingerprints: dict[int, tuple[int, int]]
    timings: dict[str, float] = field(default_factory=dict)
    reused: int = 0  # frames taken from the journal of an interrupted run (--resume)
    rss_warm: int = 0  # RSS once the reference was registered (code and kernels loaded)

    @property
    def channels(self) -> int:
        return self.shape[2] if len(self.shape) == 3 else 1

    def by_index(self) -> dict[int, FrameResult]:
        return {r.index: r for r in self.results}


@dataclass(frozen=True)
class RegisterTask:
    """What every phase-1 task shares (pickled once per task: small)."""

    workspace: Workspace
    reference: Reference
    ref_shape: tuple[int, ...]
    ref_index: int
    options: RegisterOptions


def register_task(task: RegisterTask, index: int) -> FrameResult:
    """Read, check, register and measure one frame. Never raises for a bad frame."""
    frames = task.workspace.frames()
    name, path = frames.name(index), frames.path(index)
    base = dict(index=index, path=path, name=name)
    try:
        info = frames.info(index)
        image = frames.read(index)
    except BadFrameError as e:
        return FrameResult(**base, fate=Fate.UNREADABLE, reason=e.reason)
    except (OSError, ValueError, MemoryError) as e:  # a decoder's own complaint, in words
        return FrameResult(**base, fate=Fate.UNREADABLE, reason=f"cannot decode: {e}")
    if tuple(image.shape) != tuple(task.ref_shape):
        return FrameResult(**base, fate=Fate.REJECTED,
                           reason=f"size {shape_text(image.shape)} differs from the reference's "
                                  f"{shape_text(task.ref_shape)}")
    n_bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if n_bad == image.size:
        return FrameResult(**base, fate=Fate.UNREADABLE, reason="no finite pixel (all NaN/inf)")
    if n_bad:
        log.info("%s: %d NaN/inf pixel(s) treated as missing data", name, n_bad)
    reg = register_frame(luminance(image), task.reference, task.options)
    locs, scales = robust_stats(image)
    metrics = dict(reg.metrics)
    metrics["nonfinite_px"] = float(n_bad)
    for c, (lo, sc) in enumerate(zip(locs, scales)):
        metrics[f"location_{c}"] = lo
        metrics[f"scale_{c}"] = sc
    if info.exposure_s is not None:
        metrics["exposure_s"] = float(info.exposure_s)
    start = frame_start_mjd(info.meta)
    if start is not None:  # the stack's DATE-OBS/EXPSTART/EXPEND (output.header.time_cards)
        metrics["start_mjd"] = start
    is_reference = index == task.ref_index
    transform = reg.transform
    if is_reference:
        # the reference defines the output grid: exactly the identity, whatever the fit says
        transform = Transform.identity(task.options.model)
    fate = Fate.USED if transform is not None else Fate.FAILED_REGISTRATION
    return FrameResult(**base, fate=fate, reason="" if transform is not None else reg.reason,
                       method="reference" if is_reference else reg.method, transform=transform,
                       n_stars=reg.n_stars, n_matches=reg.n_matches,
                       residual_px=0.0 if is_reference else reg.residual_px, metrics=metrics)


def choose_reference(frames, options: RegisterOptions) -> tuple[int, str, np.ndarray]:
    """The reference frame: ``options.reference`` if given, else the best-scored readable
    frame of the set's geometry among the first ``reference_candidates`` that passes the
    acceptance any frame must pass: another candidate registers onto it.

    A quality score alone is not enough: a star-less frame (clouds, a closed shutter, pure
    noise) can score well on a single noise peak, and every real frame then fails to
    register onto it. So candidates are tried best first, and one is taken only when
    :func:`~skystack.register.deepsky.register_frame` accepts another candidate against it
    (a lone candidate is taken as it is).

    Returns (index, why, processed image of the reference).

    Raises
    ------
    UsageError
        ``--reference`` outside the set.
    NoFramesError
        No readable frame of the set's size.
    RegistrationError
        Frames too small to register, or no candidate that another registers onto.
    """
    n = len(frames)
    if options.reference is not None:
        if not 0 <= options.reference < n:
            raise UsageError(f"--reference {options.reference}: there are {n} frames (0 to {n - 1})")
        try:
            image = frames.read(options.reference)
        except BadFrameError as e:
            raise UsageError(f"--reference {options.reference}: {e}") from e
        _check_size(image.shape, frames.name(options.reference))
        return options.reference, "chosen with --reference", image
    scored: list[tuple[float, int]] = []
    for i in range(n):
        if len(scored) >= options.reference_candidates:
            break
        image = _candidate(frames, i)
        if image is None:
            continue
        if not scored:
            _check_size(image.shape, frames.name(i))
        scored.append((quality_score(measure_frame(luminance(image), options)), i))
    if not scored:
        raise NoFramesError("no readable frame of the set's size to use as the reference")
    order = [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))]
    what = f"the first {len(order)} readable frames" if len(order) > 1 else "the first readable frame"
    if len(order) == 1:
        return order[0], "first readable frame", frames.read(order[0])
    passed_over: list[int] = []
    for i in order:
        image = frames.read(i)
        reference = Reference.build(luminance(image), options)
        for j in order:
            if j != i and register_frame(luminance(frames.read(j)), reference, options).ok:
                why = f"best quality score of {what}"
                if passed_over:
                    why += (f" that another registers onto (passed over: frame(s) "
                            f"{', '.join(map(str, passed_over))}, onto which none registers)")
                return i, why, image
        log.warning("%s: not used as the reference: none of the other candidates registers onto it "
                    "(%d stars detected)", frames.name(i), reference.metrics.get("n_stars", 0))
        passed_over.append(i)
        del image, reference
    raise RegistrationError(
        f"no reference: none of {what} registers onto another (no stars or features in common); "
        "choose one with --reference N")


def _candidate(frames, i: int) -> np.ndarray | None:
    """Frame ``i`` if it can compete to be the reference: readable, of the set's size, with
    finite pixels."""
    try:
        image = frames.read(i)
    except (BadFrameError, OSError, ValueError):
        return None
    if tuple(image.shape) != tuple(frames.shape) or not np.isfinite(image).any():
        return None
    return image


def _check_size(shape: tuple[int, ...], name: str) -> None:
    if min(shape[:2]) < MIN_REGISTER_SIDE:
        raise RegistrationError(
            f"{name}: frames of {shape_text(shape)} cannot be registered (at least {MIN_REGISTER_SIDE}×"
            f"{MIN_REGISTER_SIDE} pixels are needed)")


def phase1_workers(shape: tuple[int, ...], workers: int, memory_limit: int | None) -> int:
    """How many frames phase 1 may work on at once within ``memory_limit`` (at least 1)."""
    if not memory_limit:
        return workers
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    per_frame = (h * w * 4) * (_PHASE1_FRAME_FACTOR + (c - 1 if c > 1 else 0))
    return max(1, min(workers, int(1.1 * memory_limit // per_frame)))


def workers_of(run: RunOptions) -> int:
    """Local worker threads: ``--workers`` or every core."""
    return run.workers or os.cpu_count() or 1


def register_all(frames, options: RegisterOptions, run: RunOptions, journal: Journal | None,
                 resumed: bool, memory_limit: int | None) -> Phase1:
    """Choose the reference, then register and measure every frame (frames finished by an
    interrupted run are taken from its journal)."""
    t0 = time.perf_counter()
    ref_index, ref_reason, ref_image = choose_reference(frames, options)
    reference = Reference.build(luminance(ref_image), options)
    ref_shape = tuple(ref_image.shape)
    del ref_image
    release_free_memory()
    rss_warm = current_rss()
    log.info("reference: frame %d (%s), %s", ref_index, frames.name(ref_index), ref_reason)
    t_ref = time.perf_counter() - t0

    done = journal.phase1_done() if (journal is not None and resumed) else {}
    todo = [i for i in range(len(frames)) if i not in done]
    results: dict[int, FrameResult] = dict(done)
    task = RegisterTask(Workspace(frames.spec), reference, ref_shape, ref_index, options)
    bar = Progress(len(frames), "phase 1: register", run.quiet, initial=len(done))

    def on_result(k: int, r: FrameResult) -> None:
        results[r.index] = r
        if journal is not None:
            journal.record_frame(r)
        if r.fate is not Fate.USED:
            log.warning("%s: %s; %s", r.name, r.reason, "skipped" if r.fate is not Fate.REJECTED else "not stacked")
        bar.update()

    workers = phase1_workers(ref_shape, workers_of(run), memory_limit)
    if workers < workers_of(run) and not run.scheduler:
        log.info("phase 1: %d worker(s) to stay within the memory limit", workers)
    try:
        run_tasks(register_task, [(task, i) for i in todo], workers=workers, scheduler=run.scheduler,
                  on_result=on_result)
    finally:
        bar.close()
    ordered = [results[i] for i in range(len(frames))]
    fps = {i: frames.fingerprint(i) for i in range(len(frames)) if ordered[i].fate is Fate.USED}
    return Phase1(results=ordered, reference=ref_index, reference_reason=ref_reason, shape=ref_shape,
                  fingerprints=fps, reused=len(done), rss_warm=rss_warm,
                  timings={"reference_s": t_ref, "phase1_s": time.perf_counter() - t0})
