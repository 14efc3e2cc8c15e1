"""The two-phase pipeline.

Phase 1 (one Dask task per frame): read the frame, register it against the reference,
measure its quality and robust statistics; the result is a small :class:`FrameResult`.
Phase 2: either a streaming mean (frame by frame into an H×W accumulator) or the band
engine (one task per band of output rows: warp every kept frame's source rows, normalise,
reject, reduce, write the rows). Tasks carry paths, indices and matrices, never images.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..errors import InputChangedError, NoFramesError, RegistrationError, UsageError
from ..options import (CalibrationOptions, ColourOptions, OutputOptions, ReadOptions, RegisterOptions,
                       RunOptions, SelectOptions, StackOptions)
from ..types import Fate, FrameResult, Transform
from .executor import run_tasks
from .progress import Progress, setup_logging
from .resume import Journal, npy_data_offset, write_rows

log = logging.getLogger("skystack")

# How often (in frames) the streaming mean checkpoints its accumulator for --resume.
_MEAN_CHECKPOINT_EVERY = 25


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


@dataclass
class StackResult:
    output: Path | None
    report_path: Path | None
    results: list[FrameResult]
    reference: int
    n_used: int
    shape: tuple[int, ...]
    timings: dict[str, float]
    peak_rss_mb: float
    backend: str
    report: dict[str, Any]
    extra_outputs: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------
# per-thread frame sets (tasks carry the spec and reopen it; sources are not shared
# between threads because decoders and file handles are not thread-safe)
_local = threading.local()


def _frames_for(spec):
    from ..io import FrameSet

    key = spec.token  # a digest computed once per spec, not a pickle per task
    cache = getattr(_local, "frames", None)
    if cache is None or cache[0] != key:
        if cache is not None:
            cache[1].close()
        _local.frames = (key, FrameSet.from_spec(spec))
    return _local.frames[1]


def luminance(image: np.ndarray) -> np.ndarray:
    """The plane registration works on: mono as is; colour as the mean of R, G and B
    (an equal mix keeps the best signal-to-noise on debayered camera RGB, where the
    channels are not yet white-balanced)."""
    if image.ndim == 2:
        return image
    return image.mean(axis=2, dtype=np.float32)


# ---------------------------------------------------------------------------------
# phase 1

def phase1_task(spec, index: int, reference, ref_shape: tuple[int, ...], options: RegisterOptions,
                is_reference: bool) -> FrameResult:
    """Read, check, register and measure one frame. Never raises for a bad frame."""
    from ..errors import BadFrameError
    from ..register import register_frame
    from ..stack.normalize import robust_stats

    frames = _frames_for(spec)
    name, path = frames.name(index), frames.path(index)
    base = dict(index=index, path=path, name=name)
    try:
        info = frames.info(index)
        image = frames.read(index)
    except BadFrameError as e:
        return FrameResult(**base, fate=Fate.UNREADABLE, reason=e.reason)
    except (OSError, ValueError, MemoryError) as e:  # a decoder's own complaint, in words
        return FrameResult(**base, fate=Fate.UNREADABLE, reason=f"cannot decode: {e}")
    if tuple(image.shape) != tuple(ref_shape):
        return FrameResult(**base, fate=Fate.REJECTED,
                           reason=f"size {_geom(image.shape)} differs from the reference's {_geom(ref_shape)}")
    finite = np.isfinite(image)
    n_bad = int(image.size - np.count_nonzero(finite))
    if n_bad == image.size:
        return FrameResult(**base, fate=Fate.UNREADABLE, reason="no finite pixel (all NaN/inf)")
    if n_bad:
        log.info("%s: %d NaN/inf pixel(s) treated as missing data", name, n_bad)
    lum = luminance(image)
    reg = register_frame(lum, reference, options)
    locs, scales = robust_stats(image)
    metrics = dict(reg.metrics)
    metrics["nonfinite_px"] = float(n_bad)
    for c, (lo, sc) in enumerate(zip(locs, scales)):
        metrics[f"location_{c}"] = lo
        metrics[f"scale_{c}"] = sc
    if info.exposure_s is not None:
        metrics["exposure_s"] = float(info.exposure_s)
    transform = reg.transform
    if is_reference:
        # the reference defines the output grid: exactly the identity, whatever the fit says
        transform = Transform.identity(options.model)
    fate = Fate.USED if transform is not None else Fate.FAILED_REGISTRATION
    return FrameResult(**base, fate=fate, reason="" if transform is not None else reg.reason,
                       method="reference" if is_reference else reg.method, transform=transform,
                       n_stars=reg.n_stars, n_matches=reg.n_matches,
                       residual_px=0.0 if is_reference else reg.residual_px, metrics=metrics)


def _geom(shape: Sequence[int]) -> str:
    s = f"{shape[1]}×{shape[0]}"
    return s + (f"×{shape[2]}" if len(shape) == 3 else "")


def choose_reference(frames, options: RegisterOptions) -> tuple[int, str, np.ndarray]:
    """The reference frame: ``options.reference`` if given, else the best-scored readable
    frame of the set's geometry among the first ``reference_candidates``.

    Returns (index, why, processed image of the reference).
    """
    from ..errors import BadFrameError
    from ..quality.select import quality_score
    from ..register import measure_frame

    n = len(frames)
    if options.reference is not None:
        if not 0 <= options.reference < n:
            raise UsageError(f"--reference {options.reference}: there are {n} frames (0 to {n - 1})")
        try:
            image = frames.read(options.reference)
        except BadFrameError as e:
            raise UsageError(f"--reference {options.reference}: {e}") from e
        return options.reference, "chosen with --reference", image
    best: tuple[float, int, np.ndarray] | None = None
    tried = 0
    for i in range(n):
        if tried >= options.reference_candidates:
            break
        try:
            image = frames.read(i)
        except (BadFrameError, OSError, ValueError):
            continue
        if tuple(image.shape) != tuple(frames.shape) or not np.isfinite(image).any():
            continue
        tried += 1
        score = quality_score(measure_frame(luminance(image), options))
        if best is None or score > best[0]:
            best = (score, i, image)
    if best is None:
        raise NoFramesError("no readable frame of the set's size to use as the reference")
    why = (f"best quality score of the first {tried} readable frames" if tried > 1
           else "first readable frame")
    return best[1], why, best[2]


# Phase 1 holds, per frame in flight, the decoded frame and about 4.3 frame-sized float32
# temporaries of star detection and ORB (measured: +99 MB for a 3000×2000 frame).
_PHASE1_FRAME_FACTOR = 5.5


def phase1_workers(shape: tuple[int, ...], workers: int, memory_limit: int | None) -> int:
    """How many frames phase 1 may work on at once within ``memory_limit`` (at least 1)."""
    if not memory_limit:
        return workers
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    per_frame = (h * w * 4) * (_PHASE1_FRAME_FACTOR + (c - 1 if c > 1 else 0))
    return max(1, min(workers, int(1.1 * memory_limit // per_frame)))


def run_phase1(frames, options: RegisterOptions, run: RunOptions, journal: Journal | None,
               resumed: bool, memory_limit: int | None = None) -> Phase1:
    from ..register import Reference

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
    spec = frames.spec
    args = [(spec, i, reference, ref_shape, options, i == ref_index) for i in todo]
    bar = Progress(len(frames), "phase 1: register", run.quiet, initial=len(done))

    def on_result(k: int, r: FrameResult) -> None:
        results[r.index] = r
        if journal is not None:
            journal.record_frame(r)
        if r.fate is not Fate.USED:
            log.warning("%s: %s; %s", r.name, r.reason, "skipped" if r.fate is not Fate.REJECTED else "not stacked")
        bar.update()

    workers = phase1_workers(ref_shape, _workers(run), memory_limit)
    if workers < _workers(run) and not run.scheduler:
        log.info("phase 1: %d worker(s) to stay within the memory limit", workers)
    try:
        run_tasks(phase1_task, args, workers=workers, scheduler=run.scheduler, on_result=on_result)
    finally:
        bar.close()
    ordered = [results[i] for i in range(len(frames))]
    fps = {i: frames.fingerprint(i) for i in range(len(frames)) if ordered[i].fate is Fate.USED}
    return Phase1(results=ordered, reference=ref_index, reference_reason=ref_reason, shape=ref_shape,
                  fingerprints=fps, reused=len(done), rss_warm=rss_warm, timings={"reference_s": t_ref, "phase1_s": time.perf_counter() - t0})


def _workers(run: RunOptions) -> int:
    return run.workers or os.cpu_count() or 1


# ---------------------------------------------------------------------------------
# selection, weights, normalisation

def apply_selection(p1: Phase1, select: SelectOptions) -> list[int]:
    from ..quality.select import select as select_frames

    used = [r for r in p1.results if r.fate is Fate.USED]
    ref_pos = next((k for k, r in enumerate(used) if r.index == p1.reference), None)
    reasons = select_frames([r.metrics | {"n_stars": float(r.n_stars or 0)} for r in used], select,
                            always_keep=ref_pos)
    for r, why in zip(used, reasons):
        if why:
            r.fate, r.reason = Fate.REJECTED, why
    return [r.index for r in used if r.fate is Fate.USED]


def normalisation(p1: Phase1, kept: list[int], stack: StackOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mul, add, weights) for the kept frames, in kept order."""
    from ..stack.normalize import coefficients, frame_weights

    channels = p1.shape[2] if len(p1.shape) == 3 else 1
    res = {r.index: r for r in p1.results}
    loc = np.array([[res[i].metrics.get(f"location_{c}", np.nan) for c in range(channels)] for i in kept])
    sc = np.array([[res[i].metrics.get(f"scale_{c}", np.nan) for c in range(channels)] for i in kept])
    ref_row = kept.index(p1.reference) if p1.reference in kept else 0
    mul, add = coefficients(stack.norm, loc.reshape(len(kept), channels),
                            sc.reshape(len(kept), channels), ref_row)
    w = frame_weights(stack.weights, [res[i].metrics | {"n_stars": float(res[i].n_stars or 0)} for i in kept], mul)
    for k, i in enumerate(kept):
        res[i].weight = float(w[k])
    return mul.astype(np.float32), add.astype(np.float32), w


# ---------------------------------------------------------------------------------
# phase 2: band engine

def band_task(spec, y0: int, y1: int, width: int, channels: int, items: list[tuple], weights: np.ndarray,
              options: StackOptions, backend_name: str, image_path: str, count_path: str,
              image_offset: int, count_offset: int, fingerprints: dict[int, tuple[int, int]]) -> np.ndarray:
    """Warp, normalise, reject and reduce output rows ``y0:y1``; write them into the
    accumulator files; return the (N, 2) low/high rejection counts."""
    from ..backends.base import BandJob
    from ..stack.plan import WARP_TILE_ROWS, band_matrix, source_rows

    frames = _frames_for(spec)
    # the source block must cover every whole warp tile of the band (the last band may end
    # inside a tile at the image's bottom edge)
    y1_tiles = -(-y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    backend = _backend_for(backend_name)
    jobs, positions = [], []
    for pos, (index, matrix, src_h, mul, add) in enumerate(items):
        fp = frames.fingerprint(index)
        if fp != fingerprints[index]:
            raise InputChangedError(
                f"{frames.name(index)}: changed on disk since it was registered "
                f"(size/mtime {fingerprints[index]} → {fp}); rerun to register it again")
        rows = source_rows(matrix, y0, y1_tiles, width, src_h, options.interpolation)
        if rows is None:
            continue
        sy0, sy1 = rows
        jobs.append(BandJob(rows=functools.partial(frames.read_rows, index, sy0, sy1),
                            matrix=band_matrix(matrix, sy0, y0),
                            scale=mul, offset=add, frame_matrix=matrix, src_y0=sy0, band_y0=y0,
                            src_height=src_h))
        positions.append(pos)
    shape = (y1 - y0, width) + ((channels,) if channels > 1 else ())
    rejected = np.zeros((len(items), 2), dtype=np.int64)
    if jobs:
        res = backend.combine_band(jobs, shape, np.asarray(weights)[positions], options)
        image, count = res.image, res.count
        rejected[positions] += res.rejected
    else:
        image = np.full(shape, np.nan, dtype=np.float32)
        count = np.zeros(shape, dtype=np.int32)
    row_img = width * channels * 4
    write_rows(Path(image_path), image_offset, row_img, y0, image.astype(np.float32, copy=False))
    write_rows(Path(count_path), count_offset, row_img, y0, count.astype(np.int32, copy=False))
    return rejected


_backends: dict[str, Any] = {}
_backends_lock = threading.Lock()


def _backend_for(name: str):
    from ..backends.registry import resolve

    with _backends_lock:
        if name not in _backends:
            _backends[name] = resolve(name)
        return _backends[name]


def run_bands(frames, p1: Phase1, kept: list[int], mul, add, weights, stack: StackOptions, run: RunOptions,
              journal: Journal, resumed: bool, backend_name: str) -> tuple[Path, Path, np.ndarray, dict]:
    from ..stack.plan import default_memory_limit, plan_bands, rotation_extra_rows

    H, W = p1.shape[:2]
    C = p1.shape[2] if len(p1.shape) == 3 else 1
    res = {r.index: r for r in p1.results}
    matrices = [res[i].transform.matrix for i in kept]
    workers = _workers(run)
    limit = stack.memory_limit or default_memory_limit()
    extra = rotation_extra_rows(W, matrices, stack.interpolation)
    plan = plan_bands(height=H, width=W, channels=C, n_frames=len(kept), memory_limit=limit,
                      concurrent=workers, src_rows_extra=extra, band_rows=stack.band_rows)
    shape = (H, W, C) if C > 1 else (H, W)
    img_path = journal.accumulator("image", shape, "float32", fresh=not resumed)
    cnt_path = journal.accumulator("count", shape, "int32", fresh=not resumed)
    done = journal.bands_done() if resumed else {}
    bands = plan.bands
    rejected = np.zeros((len(kept), 2), dtype=np.int64)
    for b, r in done.items():
        if r.shape == rejected.shape:
            rejected += r
        else:
            done.pop(b)
    items = [(i, res[i].transform.matrix, H, mul[k], add[k]) for k, i in enumerate(kept)]
    fps = {i: p1.fingerprints[i] for i in kept}
    io, co = npy_data_offset(img_path), npy_data_offset(cnt_path)
    todo = [b for b in range(len(bands)) if b not in done]
    args = [(frames.spec, bands[b][0], bands[b][1], W, C, items, weights, stack, backend_name,
             str(img_path), str(cnt_path), io, co, fps) for b in todo]
    log.info("phase 2: %d band(s) of %d row(s), %d frames, memory limit %.0f MiB",
             len(bands), plan.band_rows, len(kept), limit / 2**20)
    bar = Progress(len(bands), "phase 2: stack", run.quiet, initial=len(done))

    def on_result(k: int, rej: np.ndarray) -> None:
        nonlocal rejected
        rejected += rej
        journal.record_band(todo[k], rej)
        bar.update()

    try:
        run_tasks(band_task, args, workers=workers, scheduler=run.scheduler, on_result=on_result)
    finally:
        bar.close()
    info = {"band_rows": plan.band_rows, "bands": len(bands), "phase2_budget": limit,
            "bands_reused": len(done)}
    return img_path, cnt_path, rejected, info


# ---------------------------------------------------------------------------------
# phase 2: streaming mean

# Streaming mean memory per output pixel and channel: float64 sum + float64 weight sum +
# int32 count; each frame in flight holds its decoded float32 copy and its warped copy.
_MEAN_ACC_BYTES = 20
_MEAN_FLIGHT_BYTES = 8


def streaming_mean_fits(shape: tuple[int, ...], memory_limit: int) -> int:
    """How many frames the streaming mean may keep in flight within ``memory_limit``;
    0 when even one does not fit (then the band engine computes the mean)."""
    px = int(np.prod(shape))
    room = memory_limit - _MEAN_ACC_BYTES * px
    return max(0, room // (_MEAN_FLIGHT_BYTES * px))


def run_streaming_mean(frames, p1: Phase1, kept: list[int], mul, add, weights, stack: StackOptions,
                       run: RunOptions, journal: Journal, resumed: bool, backend,
                       in_flight: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean, frame by frame: memory is the H×W accumulators plus ``in_flight``
    frames, whatever the number of frames. Frames are read and warped by a small thread
    pool but accumulated strictly in frame order, so the float sums (and the output) are
    bit-identical for any worker count."""
    from _skystack_kernels.cpu.combine import accumulate_mean, finish_mean

    H, W = p1.shape[:2]
    C = p1.shape[2] if len(p1.shape) == 3 else 1
    res = {r.index: r for r in p1.results}
    acc = np.zeros((H, W, C), dtype=np.float64)
    wsum = np.zeros((H, W, C), dtype=np.float64)
    count = np.zeros((H, W, C), dtype=np.int32)
    start = 0
    if resumed:
        state = journal.load_mean()
        if state is not None and state[1]["acc"].shape == acc.shape:
            start, arrays = state
            acc, wsum, count = arrays["acc"], arrays["wsum"], arrays["count"]
    fps = p1.fingerprints
    spec = frames.spec

    def load(k: int) -> np.ndarray:
        i = kept[k]
        f = _frames_for(spec)
        if f.fingerprint(i) != fps[i]:
            raise InputChangedError(f"{f.name(i)}: changed on disk since it was registered; rerun")
        img = f.read(i)
        out = backend.warp(img, res[i].transform.matrix, (H, W), stack.interpolation)
        out = out.reshape(H, W, C)
        out *= mul[k]
        out += add[k]
        return out

    workers = max(1, min(_workers(run), in_flight))
    bar = Progress(len(kept), "phase 2: mean", run.quiet, initial=start)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: dict[int, Any] = {}
            nxt = start
            for k in range(start, len(kept)):
                while nxt < len(kept) and len(pending) < max(1, in_flight):
                    pending[nxt] = pool.submit(load, nxt)
                    nxt += 1
                warped = pending.pop(k).result()
                accumulate_mean(warped, np.float64(weights[k]), acc, wsum, count)
                del warped
                bar.update()
                if (k + 1) % _MEAN_CHECKPOINT_EVERY == 0 and k + 1 < len(kept):
                    journal.save_mean(k + 1, {"acc": acc, "wsum": wsum, "count": count})
    finally:
        bar.close()
    image = np.empty((H, W, C), dtype=np.float32)
    finish_mean(acc, wsum, image)
    del acc, wsum
    if C == 1:
        return image[..., 0], count[..., 0]
    return image, count


# ---------------------------------------------------------------------------------
# the whole run

def manifest(frames, opts: dict[str, Any]) -> dict[str, Any]:
    return {"skystack": __version__,
            "inputs": [[frames.name(i), list(_safe_fp(frames, i))] for i in range(len(frames))],
            **opts}


def _safe_fp(frames, i):
    try:
        return frames.fingerprint(i)
    except OSError:
        return (-1, -1)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter numbers (malloc.h)
_allocator_tuned = False


def tune_allocator() -> None:
    """Make glibc serve every allocation of 1 MiB or more with its own mmap.

    By default glibc raises its mmap threshold after the first large free, so frame-sized
    temporaries then come from per-thread heap arenas and stay resident after they are
    freed: with two phase-1 workers on 3000×2000 frames that held ~50 MB more than the
    frames in flight (564 vs 514 MB peak). A fixed threshold returns each frame-sized
    buffer to the OS when it is freed. Process-wide and idempotent; no-op off glibc.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``) between phases.

    Phase 1's per-frame temporaries are freed, but glibc keeps freed chunks in per-thread
    arenas, where they would still count in RSS on top of phase 2's bands. No-op elsewhere.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def current_rss() -> int:
    """Resident set size now, in bytes (0 where psutil cannot tell)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # no psutil or no /proc: the budget then ignores what is already held
        return 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _validate_early(select: SelectOptions, stack: StackOptions) -> None:
    """Refuse bad option values before any frame is read (not after phase 1)."""
    from ..quality.select import parse_keep
    from ..stack.normalize import coefficients

    if select.keep is not None:
        parse_keep(select.keep, 100)
    coefficients(stack.norm, np.ones((1, 1)), np.ones((1, 1)), 0)
    if stack.method not in ("mean", "median", "sigma", "winsorized", "mad", "linear-fit", "percentile", "gesd",
                            "minmax"):
        raise UsageError(f"--method {stack.method!r}: see `skystack stack --help` for the methods")


def stack_frames(inputs: Sequence[str | os.PathLike], *, output: OutputOptions | None,
                 read: ReadOptions = ReadOptions(), register: RegisterOptions = RegisterOptions(),
                 select: SelectOptions = SelectOptions(), stack: StackOptions = StackOptions(),
                 run: RunOptions = RunOptions(), transforms_only: bool = False,
                 calibration: CalibrationOptions | None = None,
                 colour: ColourOptions | None = None) -> StackResult:
    """Register and (unless ``transforms_only``) stack ``inputs``; write the outputs.

    Returns a :class:`StackResult`; per-frame problems are in its results, not raised.

    Raises
    ------
    NoFramesError, UsageError, RegistrationError, OutputError, InputChangedError, ClusterError
    """
    from ..backends.registry import resolve
    from ..io import open_frames
    from ..io.cache import ensure_sliceable
    from ..output.report import build_report
    from ..output.write import check_not_input
    from ..stack.plan import default_memory_limit

    setup_logging(run.quiet)
    _validate_early(select, stack)
    tune_allocator()
    t_start = time.perf_counter()
    if run.scheduler:
        from .executor import check_scheduler

        check_scheduler(run.scheduler)
    timings: dict[str, float] = {}
    frames = open_frames(list(inputs), options=read)
    for idx, path, reason in frames.problems:
        if idx < 0:  # a file-level warning; per-frame problems are reported once, in phase 1
            log.warning("%s: %s", path, reason)
    if output is None and not transforms_only:
        raise UsageError("an output path is needed to stack (-o OUT.fits)")
    if colour is not None and colour.white_balance == "camera":
        from ..calibrate.colour import camera_white_balance

        camera_white_balance(frames.meta(0), source=frames.name(0))  # fails now, not after stacking
    out_path = Path(output.output) if output is not None else None
    if out_path is not None:
        check_not_input(out_path, [frames.path(i) for i in range(len(frames))])
    backend_name = "cpu" if transforms_only else run.backend
    backend = None if transforms_only else resolve(backend_name)
    t0 = time.perf_counter()
    cache_dir = Path(run.cache_dir) if run.cache_dir else (
        (out_path.parent if out_path else Path.cwd()) / ".skystack-cache")
    frames = ensure_sliceable(frames, cache_dir)
    timings["decode_cache_s"] = time.perf_counter() - t0
    calibration_info: dict[str, Any] | None = None
    if calibration is not None and calibration.active:
        from ..calibrate import prepare_calibration

        t0 = time.perf_counter()
        # builds (or reuses from the cache) the masters and returns the same frames with the
        # calibration inserted between the raw plane and debayering
        frames, calibration_info = prepare_calibration(frames, calibration, cache_dir=cache_dir, run=run)
        timings["calibration_s"] = time.perf_counter() - t0

    # the journal starts once the inputs are known to be usable (a refused calibration
    # leaves nothing behind)
    anchor = out_path if out_path is not None else Path(output.report) if output and output.report else None
    journal = Journal(anchor) if anchor is not None else None
    resumed = False
    if journal is not None:
        opts = {"read": asdict(read), "register": asdict(register), "select": asdict(select),
                "calibration": asdict(calibration) if calibration is not None else None,
                "stack": {k: v for k, v in asdict(stack).items() if k not in ("memory_limit",)}
                if not transforms_only else None, "transforms_only": transforms_only}
        resumed = journal.start(manifest(frames, opts), run.resume)
        if resumed:
            log.info("resuming from %s", journal.dir)

    p1 = run_phase1(frames, register, run, journal, resumed, memory_limit=stack.memory_limit)
    timings.update(p1.timings)
    registered = [r for r in p1.results if r.fate is Fate.USED]
    if not registered:
        raise RegistrationError("no frame could be registered; see the reasons above")
    release_free_memory()
    t0 = time.perf_counter()
    kept = apply_selection(p1, select) if not transforms_only else [r.index for r in registered]
    timings["select_s"] = time.perf_counter() - t0

    extra: list[Path] = []
    report_path = None
    image = count = None
    stack_info: dict[str, Any] = {}
    if not transforms_only:
        if len(kept) < 1:
            raise RegistrationError("no frame left to stack after selection")
        mul, add, weights = normalisation(p1, kept, stack)
        t0 = time.perf_counter()
        # what the run still holds from phase 1 (the frame index, results, allocator
        # slack) comes out of the budget phase 2 may use
        held = max(0, current_rss() - p1.rss_warm) if p1.rss_warm else 0
        limit = max((stack.memory_limit or default_memory_limit()) - held, 1)
        phase2 = dataclasses.replace(stack, memory_limit=limit)
        in_flight = min(streaming_mean_fits(p1.shape, limit), _workers(run) + 1)
        stack_info = {"memory_limit": stack.memory_limit or default_memory_limit(), "held_after_phase1": held}
        # the streaming mean needs its H×W accumulators in one process, so a cluster run,
        # or a memory limit too small for them, computes the mean with the band engine
        streaming = stack.method == "mean" and not run.scheduler and in_flight >= 1
        if streaming:
            image, count = run_streaming_mean(frames, p1, kept, mul, add, weights, phase2, run, journal,
                                              resumed, backend, in_flight)
            stack_info["engine"] = "streaming-mean"
        else:
            img_path, cnt_path, rejected, band_info = run_bands(
                frames, p1, kept, mul, add, weights, phase2, run, journal, resumed, backend.name)
            stack_info.update(band_info, engine="bands")
            res = {r.index: r for r in p1.results}
            n_px = float(np.prod(p1.shape))
            for k, i in enumerate(kept):
                res[i].metrics["rejected_low_pct"] = 100.0 * rejected[k, 0] / n_px
                res[i].metrics["rejected_high_pct"] = 100.0 * rejected[k, 1] / n_px
            image = np.load(img_path, mmap_mode="r")
            count = np.load(cnt_path, mmap_mode="r")
        timings["phase2_s"] = time.perf_counter() - t0

    colour_info: dict[str, Any] | None = None
    if colour is not None and colour.active and image is not None and np.ndim(image) == 3:
        from ..calibrate.colour import colour_balance

        t0 = time.perf_counter()
        image, colour_info = colour_balance(np.asarray(image), neutralize=colour.neutralize,
                                            white_balance=colour.white_balance, meta=frames.meta(p1.reference))
        timings["colour_s"] = time.perf_counter() - t0
    elif colour is not None and colour.active and image is not None:
        log.warning("--neutralize/--white-balance apply to colour stacks; this one is mono, left as it is")

    t0 = time.perf_counter()
    report = build_report(frames=frames, p1=p1, kept=kept, inputs=inputs, output=output,
                          options={"read": asdict(read), "register": asdict(register),
                                   "select": asdict(select), "stack": asdict(stack),
                                   "run": asdict(run)},
                          backend=backend.name if backend else None, stack_info=stack_info,
                          transforms_only=transforms_only)
    if image is not None and output is not None:
        extra = write_outputs(image, count, output, report, p1, kept, frames, stack, register)
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    if calibration_info is not None:
        report["calibration"] = calibration_info
    if colour_info is not None:
        report["colour"] = colour_info
    if resumed:
        report["resumed"] = {"phase1_frames_reused": p1.reused, "bands_reused": stack_info.get("bands_reused", 0)}
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if output is not None or (output and output.report):
        from ..output.write import write_json

        report_path = Path(output.report) if output.report else Path(str(out_path) + ".report.json") \
            if out_path else None
        if report_path is not None:
            write_json(report_path, report)
    del image, count
    if journal is not None:
        journal.remove()
    return StackResult(output=out_path if not transforms_only else None, report_path=report_path,
                       results=p1.results, reference=p1.reference, n_used=len(kept) if not transforms_only else 0,
                       shape=p1.shape, timings=timings, peak_rss_mb=peak_rss_mb(),
                       backend=backend.name if backend else "none", report=report, extra_outputs=extra)


def write_outputs(image, count, output: OutputOptions, report: dict, p1: Phase1, kept: list[int], frames,
                  stack: StackOptions, register: RegisterOptions) -> list[Path]:
    from ..output.write import write_fits, write_image, write_preview

    out = Path(output.output)
    header = {
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
        "REFFRAME": (p1.reference, "reference frame index (0-based)"),
        "REFNAME": (os.path.basename(frames.name(p1.reference))[:60], "reference frame"),
        "NFRAMES": (len(p1.results), "input frames"),
    }
    kept_set = set(kept)
    exp = [r.metrics.get("exposure_s") for r in p1.results if r.index in kept_set]
    exp = [e for e in exp if e is not None and math.isfinite(e)]
    if exp:
        header["EXPTIME"] = (float(np.mean(exp)), "mean exposure of stacked frames (s)")
        header["LIVETIME"] = (float(np.sum(exp)), "total exposure stacked (s)")
    history = [f"skystack stack of {len(kept)} of {len(p1.results)} frames"]
    history += [f"input {i}: {frames.name(i)}" for i in kept]
    written = [write_image(out, np.asarray(image), header=header, history=history, tiff_dtype=output.tiff_dtype)]
    if output.coverage:
        cov = out.with_name(out.stem + ".coverage.fits")
        c = np.asarray(count)
        write_fits(cov, (c.max(axis=2) if c.ndim == 3 else c).astype(np.float32),
                   header={"BUNIT": ("frames", "values combined per pixel")})
        written.append(cov)
    if output.preview and out.suffix.lower() != ".png":
        written.append(write_preview(out.with_suffix(".preview.png") if out.suffix else Path(str(out) + ".png"),
                                     np.asarray(image)))
    report["outputs"] = [str(p) for p in written]
    return written
