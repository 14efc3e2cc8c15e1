"""Phase 1: choose the reference, then read, register and measure every frame.

One Dask task per frame (:func:`register_task`); a task reads its frame itself and
returns a small :class:`~skystack.types.FrameResult`. Nothing image-sized survives
phase 1 but the reference's star list. The candidates for the reference are read and
measured once (:func:`measure_task`): their stars are matched against the reference
without reading them again.

Memory: a task holds the frame's luminance (a colour frame is read in strips and never
held whole) and star detection's working buffers; :func:`phase1_workers` runs as many at
once as ``--memory-limit`` holds.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ...detect import working_bytes
from ...detect.stars import Stars
from ...errors import BadFrameError, NoFramesError, RegistrationError, UsageError
from ...io import luminance
from ...options import RegisterOptions, RunOptions
from ...output.header import frame_start_mjd
from ...quality.select import quality_score
from ...register.deepsky import Reference, Registration, detect_frame, load_kernels, register_frame
from ...runtime.executor import run_tasks
from ...runtime.memory import current_rss, release_free_memory, size_text
from ...runtime.progress import Progress
from ...stack.normalize import robust_stats, sample_stats, stat_step
from ...types import Fate, FrameResult, Transform, shape_text
from .resume import Journal
from .workspace import Workspace

log = logging.getLogger("skystack")

# Below this many pixels on a side there is no room for the stars or keypoints a transform
# is estimated from (ORB's patch alone is 31 px; detection's background box 16).
MIN_REGISTER_SIDE = 16

# Rows a colour frame is read by when only its luminance is kept: the strip, its raw rows
# and the demosaic's temporaries are small next to the luminance plane.
_LUM_STRIP_ROWS = 128
# A strip's bytes in float32 values of its pixels and channels: the demosaiced strip, the
# raw rows with the demosaic margin, and the demosaic's temporaries (measured: read() of a
# CFA frame peaks at 1.58× its float32 RGB size).
_STRIP_COPIES = 3


class Preload:
    """Registration's kernels loaded on a side thread (:func:`~skystack.register.deepsky.load_kernels`)
    while the run opens its inputs, checks its outputs and starts its journal: the first
    frame need not then be measured alone (see :func:`choose_reference`).

    Started only where nothing else calls a Numba kernel meanwhile (no calibration: masters
    are combined by kernels), and never for a cluster run (its workers load their own).
    """

    def __init__(self, options: RegisterOptions) -> None:
        self._ok = False
        self._thread = threading.Thread(target=self._run, args=(options,), name="skystack-preload", daemon=True)
        self._thread.start()

    def _run(self, options: RegisterOptions) -> None:
        try:
            load_kernels(options)
            self._ok = True
        except Exception as e:  # speed only: the first frame then loads them, alone
            log.debug("loading registration's kernels ahead failed: %s", e)

    def wait(self) -> bool:
        """Wait for the loading; True when every kernel was loaded."""
        self._thread.join()
        return self._ok


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


@dataclass
class Measured:
    """A frame read and measured, without its pixels: the stars phase 1 detected and the
    metrics it recorded (statistics per channel, non-finite pixels, exposure)."""

    index: int
    path: str
    name: str
    stars: Stars
    metrics: dict[str, float]
    # the luminance, kept only while this frame is the best reference candidate so far
    # (choose_reference builds the reference from it instead of reading the frame again)
    lum: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MeasureTask:
    """What every measuring task shares: the frames and options, and the processed shape
    a frame must have to be used (``None``: any)."""

    workspace: Workspace
    options: RegisterOptions
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class RegisterTask:
    """What every phase-1 task shares (pickled once per task: small)."""

    workspace: Workspace
    reference: Reference
    ref_shape: tuple[int, ...]
    ref_index: int
    options: RegisterOptions


def read_luminance(frames, index: int) -> tuple[np.ndarray, list[float], list[float], int]:
    """Frame ``index``'s luminance, the robust statistics of each of its channels and its
    count of non-finite values: exactly ``luminance(read(i))``, ``robust_stats(read(i))``.

    A colour frame is read in strips of :data:`_LUM_STRIP_ROWS` rows, so the whole RGB
    frame (3 planes, plus the demosaic's temporaries) is never in memory: only the
    luminance plane and one strip.
    """
    shape = frames.processed_shape(index)
    if len(shape) == 2:
        image = frames.read(index)
        locs, scales = robust_stats(image)
        return image, locs, scales, int(image.size - np.count_nonzero(np.isfinite(image)))
    h, w, c = shape
    step = stat_step(h, w)
    lum = np.empty((h, w), dtype=np.float32)
    samples: list[list[np.ndarray]] = [[] for _ in range(c)]
    n_bad = 0
    for y0 in range(0, h, _LUM_STRIP_ROWS):
        y1 = min(h, y0 + _LUM_STRIP_ROWS)
        strip = frames.read_rows(index, y0, y1)
        lum[y0:y1] = luminance(strip)
        n_bad += int(strip.size - np.count_nonzero(np.isfinite(strip)))
        sub = strip[(-y0) % step::step, ::step]  # the rows of robust_stats' subsample in this strip
        for ch in range(c):
            samples[ch].append(sub[..., ch].ravel())
        del strip, sub
    locs, scales = sample_stats([np.concatenate(s) for s in samples])
    return lum, locs, scales, n_bad


def _read_and_measure(frames, index: int, options: RegisterOptions, shape: tuple[int, ...] | None
                      ) -> tuple[np.ndarray, Measured] | FrameResult:
    """Read frame ``index``, check it, detect its stars and measure it; a FrameResult says
    why a frame cannot be used."""
    name, path = frames.name(index), frames.path(index)
    base = dict(index=index, path=path, name=name)
    try:
        info = frames.info(index)
        got = tuple(frames.processed_shape(index))
        if shape is not None and got != tuple(shape):
            return FrameResult(**base, fate=Fate.REJECTED,
                               reason=f"size {shape_text(got)} differs from the reference's {shape_text(shape)}")
        lum, locs, scales, n_bad = read_luminance(frames, index)
    except BadFrameError as e:
        return FrameResult(**base, fate=Fate.UNREADABLE, reason=e.reason)
    except (OSError, ValueError, MemoryError) as e:  # a decoder's own complaint, in words
        return FrameResult(**base, fate=Fate.UNREADABLE, reason=f"cannot decode: {e}")
    if n_bad == int(np.prod(got)):
        return FrameResult(**base, fate=Fate.UNREADABLE, reason="no finite pixel (all NaN/inf)")
    if n_bad:
        log.info("%s: %d NaN/inf pixel(s) treated as missing data", name, n_bad)
    metrics: dict[str, float] = {"nonfinite_px": float(n_bad)}
    for c, (lo, sc) in enumerate(zip(locs, scales)):
        metrics[f"location_{c}"] = lo
        metrics[f"scale_{c}"] = sc
    if info.exposure_s is not None:
        metrics["exposure_s"] = float(info.exposure_s)
    start = frame_start_mjd(info.meta)
    if start is not None:  # the stack's DATE-OBS/EXPSTART/EXPEND (output.header.time_cards)
        metrics["start_mjd"] = start
    return lum, Measured(index=index, path=path, name=name, stars=detect_frame(lum, options), metrics=metrics)


def measure_task(task: MeasureTask, index: int, keep_lum: bool = False) -> Measured | FrameResult:
    """Read and measure one frame (a reference candidate), with its luminance when
    ``keep_lum``. Never raises for a bad frame."""
    got = _read_and_measure(task.workspace.frames(), index, task.options, task.shape)
    if isinstance(got, FrameResult):
        return got
    lum, m = got
    if keep_lum:
        m.lum = lum
    return m


def register_task(task: RegisterTask, index: int) -> FrameResult:
    """Read, check, register and measure one frame. Never raises for a bad frame."""
    got = _read_and_measure(task.workspace.frames(), index, task.options, task.ref_shape)
    if isinstance(got, FrameResult):
        return got
    lum, m = got
    reg = register_frame(lum, task.reference, task.options, stars=m.stars)
    return frame_result(m, reg, index == task.ref_index, task.options)


def frame_result(m: Measured, reg: Registration, is_reference: bool, options: RegisterOptions) -> FrameResult:
    """The :class:`FrameResult` of a measured and registered frame."""
    metrics = dict(reg.metrics)
    metrics.update(m.metrics)
    transform = reg.transform
    if is_reference:
        # the reference defines the output grid: exactly the identity, whatever the fit says
        transform = Transform.identity(options.model)
    fate = Fate.USED if transform is not None else Fate.FAILED_REGISTRATION
    return FrameResult(index=m.index, path=m.path, name=m.name, fate=fate,
                       reason="" if transform is not None else reg.reason,
                       method="reference" if is_reference else reg.method, transform=transform,
                       n_stars=reg.n_stars, n_matches=reg.n_matches,
                       residual_px=0.0 if is_reference else reg.residual_px, metrics=metrics)


def choose_reference(frames, options: RegisterOptions, run: RunOptions, workers: int, loaded: bool = False
                     ) -> tuple[int, str, dict[int, Measured | FrameResult], Reference]:
    """The reference frame: ``options.reference`` if given, else the best-scored readable
    frame of the set's geometry among the first ``reference_candidates`` that passes the
    acceptance any frame must pass: another candidate registers onto it.

    A quality score alone is not enough: a star-less frame (clouds, a closed shutter, pure
    noise) can score well on a single noise peak, and every real frame then fails to
    register onto it. So candidates are tried best first, and one is taken only when
    :func:`~skystack.register.deepsky.register_frame` accepts another candidate against it
    (a lone candidate is taken as it is). The candidates are read and measured once, in
    parallel (``workers``; the first alone unless the kernels are ``loaded``); the check
    matches their stars, and reads pixels again only where the stars do not match and the
    method may fall back to ORB.

    Returns (index, why, every frame looked at: measured, or why it cannot be used, and the
    :class:`~skystack.register.deepsky.Reference` built from the chosen frame).

    Raises
    ------
    UsageError
        ``--reference`` outside the set, or unreadable.
    NoFramesError
        No readable frame of the set's size.
    RegistrationError
        Frames too small to register, or no candidate that another registers onto.
    """
    n = len(frames)
    seen: dict[int, Measured | FrameResult] = {}
    if options.reference is not None:
        if not 0 <= options.reference < n:
            raise UsageError(f"--reference {options.reference}: there are {n} frames (0 to {n - 1})")
        got = measure_task(MeasureTask(Workspace(frames.spec), options, None), options.reference, True)
        if isinstance(got, FrameResult):
            raise UsageError(f"--reference {options.reference}: {got.name}: {got.reason}")
        _check_size(frames.processed_shape(options.reference), got.name)
        seen[options.reference] = got
        return options.reference, "chosen with --reference", seen, _reference(frames, got, options)
    task = MeasureTask(Workspace(frames.spec), options, tuple(frames.shape))
    want = options.reference_candidates
    nxt = 0
    keep = not run.scheduler  # luminances come back from local threads only, never over a network
    best: list[tuple[float, int]] = []  # the (-score, index) whose luminance is kept

    def take(i: int, got: Measured | FrameResult) -> None:
        seen[i] = got
        if not isinstance(got, Measured) or got.lum is None:
            return
        key = (-quality_score(got.stars.metrics()), i)
        if best and best[0] <= key:
            got.lum = None
            return
        if best:
            seen[best[0][1]].lum = None  # type: ignore[union-attr]
        best[:] = [key]

    # The first frame is measured here, alone: Numba loads each kernel from its cache on its
    # first call, and two threads making that first call at once crashed the process
    # (SIGSEGV in detection's measure_stars, 1 run in 5 with 2 workers); once loaded, the
    # kernels run in any number of threads.
    while nxt < n and not any(isinstance(v, Measured) for v in seen.values()) and not run.scheduler and not loaded:
        take(nxt, measure_task(task, nxt, keep))
        nxt += 1
    while nxt < n and sum(isinstance(v, Measured) for v in seen.values()) < want:
        batch = list(range(nxt, min(n, nxt + want - sum(isinstance(v, Measured) for v in seen.values()))))
        nxt = batch[-1] + 1
        run_tasks(measure_task, [(task, i, keep) for i in batch], workers=workers, scheduler=run.scheduler,
                  on_result=lambda k, r, b=batch: take(b[k], r))
    scored = [(quality_score(m.stars.metrics()), i) for i, m in seen.items() if isinstance(m, Measured)]
    if not scored:
        raise NoFramesError("no readable frame of the set's size to use as the reference")
    _check_size(tuple(frames.shape), frames.name(min(i for _, i in scored)))
    order = [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))]  # best first; the first of equals
    cands = {i: seen[i] for i in order}
    if len(order) == 1:
        return order[0], "first readable frame", seen, _reference(frames, cands[order[0]], options)
    what = f"the first {len(order)} readable frames"
    passed_over: list[int] = []
    by_stars = replace(options, method="stars")
    for i in order:
        reference = _reference(frames, cands[i], options)
        others = [j for j in order if j != i]
        if any(register_frame(None, reference, by_stars, stars=cands[j].stars).ok for j in others) or (
                options.method != "stars"
                and any(register_frame(read_luminance(frames, j)[0], reference, options).ok for j in others)):
            why = f"best quality score of {what}"
            if passed_over:
                why += (f" that another registers onto (passed over: frame(s) "
                        f"{', '.join(map(str, passed_over))}, onto which none registers)")
            return i, why, seen, reference
        log.warning("%s: not used as the reference: none of the other candidates registers onto it "
                    "(%d stars detected)", frames.name(i), reference.metrics.get("n_stars", 0))
        passed_over.append(i)
    raise RegistrationError(
        f"no reference: none of {what} registers onto another (no stars or features in common); "
        "choose one with --reference N")


def _reference(frames, m: Measured, options: RegisterOptions) -> Reference:
    """The :class:`Reference` of a measured frame: its stars as detected, its pixels (kept
    from measuring it, or read once more) for the ORB features (``orb``/``auto``)."""
    lum = m.lum if m.lum is not None else read_luminance(frames, m.index)[0]
    m.lum = None  # the reference keeps its stars and features, not the pixels
    return Reference.build(lum, options, stars=m.stars)


def _check_size(shape: tuple[int, ...], name: str) -> None:
    if min(shape[:2]) < MIN_REGISTER_SIDE:
        raise RegistrationError(
            f"{name}: frames of {shape_text(shape)} cannot be registered (at least {MIN_REGISTER_SIDE}×"
            f"{MIN_REGISTER_SIDE} pixels are needed)")


def phase1_frame_bytes(shape: tuple[int, ...], method: str = "auto") -> int:
    """Memory one phase-1 task needs for a frame of this processed shape: the luminance,
    registration's working memory (:func:`skystack.detect.working_bytes`: star detection,
    and ORB where the method may run it), and one strip of a colour frame with its raw
    rows (a mono frame's raw copy)."""
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    lum = h * w * 4
    strip = _STRIP_COPIES * min(h, _LUM_STRIP_ROWS) * w * c * 4 if c > 1 else lum // 2
    return int(lum + working_bytes((h, w), np.float32, method) + strip)


def phase1_workers(shape: tuple[int, ...], workers: int, memory_limit: int | None, method: str = "auto") -> int:
    """How many frames phase 1 may work on at once within ``memory_limit`` (at least 1)."""
    if not memory_limit:
        return workers
    per_frame = phase1_frame_bytes(shape, method)
    if per_frame > memory_limit:
        log.warning("--memory-limit %s is below what registering one %s frame needs (about %s); "
                    "phase 1 will use that", size_text(memory_limit), shape_text(shape), size_text(per_frame))
    return max(1, min(workers, int(memory_limit // per_frame)))


def workers_of(run: RunOptions) -> int:
    """Local worker threads: ``--workers`` or every core."""
    return run.workers or os.cpu_count() or 1


def register_all(frames, options: RegisterOptions, run: RunOptions, journal: Journal | None,
                 resumed: bool, memory_limit: int | None, preload: Preload | None = None) -> Phase1:
    """Choose the reference, then register and measure every frame (frames finished by an
    interrupted run are taken from its journal; the reference candidates are not read
    twice). ``preload``: the kernels loading ahead, waited for here."""
    t0 = time.perf_counter()
    loaded = preload.wait() if preload is not None else False
    workers = phase1_workers(tuple(frames.shape), workers_of(run), memory_limit, options.method)
    if workers < workers_of(run) and not run.scheduler:
        log.info("phase 1: %d worker(s) to stay within the memory limit", workers)
    ref_index, ref_reason, seen, reference = choose_reference(frames, options, run, workers, loaded)
    ref_shape = tuple(frames.processed_shape(ref_index))
    release_free_memory()
    rss_warm = current_rss()
    log.info("reference: frame %d (%s), %s", ref_index, frames.name(ref_index), ref_reason)
    t_ref = time.perf_counter() - t0

    done = journal.phase1_done() if (journal is not None and resumed) else {}
    results: dict[int, FrameResult] = dict(done)
    bar = Progress(len(frames), "phase 1: register", run.quiet, initial=len(done))

    def on_result(k: int, r: FrameResult) -> None:
        results[r.index] = r
        if journal is not None:
            journal.record_frame(r)
        if r.fate is not Fate.USED:
            log.warning("%s: %s; %s", r.name, r.reason, "skipped" if r.fate is not Fate.REJECTED else "not stacked")
        bar.update()

    again = []
    matched_here = False  # a star match succeeded in this thread: the matcher's kernels are loaded
    for i, m in seen.items():  # the candidates: their stars matched without reading them again
        if i in done:
            continue
        if isinstance(m, FrameResult):
            on_result(i, m)
        elif options.method == "orb":
            again.append(i)
        else:
            reg = register_frame(None, reference, replace(options, method="stars"), stars=m.stars)
            matched_here |= reg.ok
            if reg.transform is None and options.method == "auto" and i != ref_index:
                again.append(i)  # the ORB fallback needs the pixels
            else:
                on_result(i, frame_result(m, reg, i == ref_index, options))
    todo = [i for i in range(len(frames)) if i not in results and (i not in seen or i in again)]
    task = RegisterTask(Workspace(frames.spec), reference, ref_shape, ref_index, options)
    try:
        if todo and workers > 1 and not run.scheduler and not matched_here and not loaded:
            # one frame alone first, as in choose_reference: every kernel registration uses
            # (the triangle matcher's too) is then loaded before two threads call it at once.
            # Not needed once a candidate's stars matched here (detection's kernels were
            # loaded measuring the first candidate, the reference's ORB features loaded
            # theirs): that frame alone cost a frame's time on one core (~0.05 s of 18
            # Seestar subs).
            on_result(0, register_task(task, todo[0]))
            todo = todo[1:]
        run_tasks(register_task, [(task, i) for i in todo], workers=workers, scheduler=run.scheduler,
                  on_result=on_result)
    finally:
        bar.close()
    ordered = [results[i] for i in range(len(frames))]
    fps = {i: frames.fingerprint(i) for i in range(len(frames)) if ordered[i].fate is Fate.USED}
    return Phase1(results=ordered, reference=ref_index, reference_reason=ref_reason, shape=ref_shape,
                  fingerprints=fps, reused=len(done), rss_warm=rss_warm,
                  timings={"reference_s": t_ref, "phase1_s": time.perf_counter() - t0})
