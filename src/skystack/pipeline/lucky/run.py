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

Parallelism is a thread pool, not Dask as in the deep-sky pipeline: a frame here costs about
a millisecond of work (OpenCV, SciPy's FFT and NumPy release the GIL), less than scheduling
a Dask task, and the video decoder must be read sequentially from one thread anyway.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import cv2
import numpy as np

from ... import __version__
from ...enhance.stretch import autostretch_params, levels, to_uint8
from ...enhance.wavelets import before_after, enhance as _enhance
from ...errors import BadFrameError, NoFramesError, RegistrationError
from ...io import open_frames
from ...io import luminance
from ...output.header import lucky_header
from ...output.products import quality_plot_path, write_stack
from ...output.write import check_not_input, write_image, write_json, write_png
from ...quality.metrics import BLANK_SPAN, gaussian_ksize, quality_of_view
from ...register.multipoint import (LocalAligner, NodeInterpolator, dewarp, node_values,
                                   place_alignment_points, select_per_ap)
from ...register.planetary import (GlobalAligner, PhaseCorrelator, disk_centroid, pick_mode,
                                  shift_image, valid_rect)
from ...options import LuckyJob, LuckyOptions, OutputOptions, ReadOptions, parse_keep
from ...runtime.memory import peak_rss_mb
from ...runtime.progress import Progress
from ...stack.drizzle import Drizzle
from ...types import Fate, FrameResult, LuckyResult, Transform

log = logging.getLogger("skystack")

# a coarse (4x-downsampled) correlation weaker than this is no match at all
_COARSE_MIN_RESPONSE = 0.02
_CHUNK = 16  # frames per key-frame decision in the ranking pass
_UNMAP_EVERY = 256  # reads between closing memory-mapped inputs (see _Reader)


# -- per-frame bookkeeping ------------------------------------------------------------------

_OK, _UNREADABLE, _BLANK, _NO_DISK, _OUT_OF_FIELD, _NO_MATCH = range(6)


@dataclass
class _Table:
    """Small per-frame arrays (the only O(N) state of a run)."""

    n: int
    quality: np.ndarray = field(init=False)
    signal: np.ndarray = field(init=False)
    peak: np.ndarray = field(init=False)
    coarse: np.ndarray = field(init=False)  # full-res px; planet: centroid, surface: vs frame 0
    status: np.ndarray = field(init=False)
    shift: np.ndarray = field(init=False)  # refined displacement vs the reference
    response: np.ndarray = field(init=False)
    ap_used: np.ndarray = field(init=False)
    used: np.ndarray = field(init=False)
    reasons: dict[int, tuple[Fate, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.n
        self.quality = np.full(n, np.nan)
        self.signal = np.full(n, np.nan)
        self.peak = np.full(n, np.nan)
        self.coarse = np.full((n, 2), np.nan)
        self.status = np.full(n, _OK, dtype=np.int8)
        self.shift = np.full((n, 2), np.nan)
        self.response = np.full(n, np.nan)
        self.ap_used = np.zeros(n, dtype=np.int32)
        self.used = np.zeros(n, dtype=bool)

    def fail(self, i: int, status: int, fate: Fate, reason: str) -> None:
        self.status[i] = status
        self.reasons[i] = (fate, reason)


# -- frame access -----------------------------------------------------------------------------

def _open(inputs: Any, read: ReadOptions) -> Any:
    if hasattr(inputs, "luminance") and hasattr(inputs, "__len__"):
        return inputs
    return open_frames(inputs, options=read)


def _frame_path(frames: Any, i: int) -> str:
    p = getattr(frames, "path", None)
    if callable(p):
        try:
            return str(p(i))
        except Exception:
            return str(frames.name(i))
    return str(p) if p is not None else str(frames.name(i))


def _has_raw_fast_path(frames: Any) -> bool:
    """True when ``read_raw`` gives the plane :meth:`read` would process unchanged except
    for demosaicing (no calibration steps): then ranking can bin the raw plane 2×2."""
    if not hasattr(frames, "read_raw"):
        return False
    spec = getattr(frames, "spec", None)
    return not (spec is not None and getattr(spec, "raw_steps", ()))


def _record_alignment(table, i: int, result, s, min_response: float) -> bool:
    """Record frame ``i``'s alignment outcome in ``table``; False when the frame could not
    be read (``result`` is the BadFrameError) or did not match the reference (``None``)."""
    if isinstance(result, BadFrameError):
        table.fail(i, _UNREADABLE, Fate.UNREADABLE, result.reason)
        return False
    table.response[i] = s.response
    table.shift[i] = (s.sx, s.sy)
    if result is None:
        table.fail(i, _NO_MATCH, Fate.FAILED_REGISTRATION,
                   f"no match with the reference (correlation response {s.response:.3f} < {min_response})")
        return False
    return True


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], pool: ThreadPoolExecutor | None,
                 inflight: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, at most ``inflight`` items alive at once; ``items`` is
    consumed on the calling thread (reads stay sequential, which video decoders need)."""
    if pool is None:
        for it in items:
            yield fn(it)
        return
    q: deque = deque()
    for it in items:
        q.append(pool.submit(fn, it))
        if len(q) >= inflight:
            yield q.popleft().result()
    while q:
        yield q.popleft().result()


class _Reader:
    """Reads frames with the clip's geometry check; a bad frame becomes a value.

    Every :data:`_UNMAP_EVERY` reads it closes the frame set's memory-mapped files (SER,
    FITS; they reopen on the next read, and readers return copies): the pages of frames
    already processed would otherwise stay mapped and make the resident size grow with the
    length of the video, although nothing needs them any more.
    """

    def __init__(self, frames: Any, shape: tuple[int, int]):
        self.frames = frames
        self.shape = shape
        self._reads = 0
        self._can_unmap = callable(getattr(frames, "close", None)) and hasattr(frames, "frame_sliceable")

    def _check(self, i: int, img: np.ndarray) -> None:
        if tuple(img.shape[:2]) != self.shape:
            h, w = img.shape[:2]
            raise BadFrameError(_frame_path(self.frames, i),
                                f"frame {i} is {w}x{h}, the clip's frames are {self.shape[1]}x{self.shape[0]}")

    def _tick(self, i: int) -> None:
        self._reads += 1
        if self._can_unmap and self._reads % _UNMAP_EVERY == 0:
            try:
                mapped = self.frames.frame_sliceable(i) and not self.frames.frame_sequential(i)
            except Exception:
                mapped = False
            if mapped:
                self.frames.close()

    def raw(self, i: int) -> np.ndarray | BadFrameError:
        self._tick(i)
        try:
            img = self.frames.read_raw(i)
            self._check(i, img)
            return img
        except BadFrameError as e:
            return e

    def read(self, i: int, colour: bool) -> np.ndarray | BadFrameError:
        self._tick(i)
        try:
            img = self.frames.read(i) if colour else self.frames.luminance(i)
            self._check(i, img)
            return np.asarray(img, dtype=np.float32)
        except BadFrameError as e:
            return e


# -- pass 1: rank ------------------------------------------------------------------------------

@dataclass
class _Rank:
    i: int
    error: BadFrameError | None = None
    quality: float = float("nan")
    signal: float = float("nan")
    peak: float = float("nan")
    blank: bool = False
    coarse: tuple[float, float] | None = None
    response: float = float("nan")
    touches_edge: bool = False
    coarse_view: np.ndarray | None = None


class _Ranker:
    def __init__(self, opts: LuckyOptions, raw_path: bool):
        self.f = opts.quality_downsample
        self.sigma = opts.quality_sigma
        self.raw_path = raw_path
        self.mode: str = "surface"
        self.key: PhaseCorrelator | None = None
        self.key_offset = (0.0, 0.0)

    def view(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 3:
            img = luminance(img)
        f = self.f
        if f > 1:
            h, w = img.shape[:2]
            # INTER_AREA on the raw plane: for a CFA mosaic and f = 2 this is the 2x2
            # super-pixel luminance (R + G + G + B) / 4, no demosaicing needed to rank
            img = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
        img = img.astype(np.float32, copy=False)
        if self.sigma > 0:
            k = gaussian_ksize(self.sigma)
            img = cv2.GaussianBlur(img, (k, k), self.sigma, borderType=cv2.BORDER_REFLECT)
        return img

    def coarse_view(self, view: np.ndarray) -> np.ndarray:
        # halve the view once more for the coarse correlation, unless that would leave
        # too few pixels to correlate reliably (small frames, big drifts)
        if not self.coarse_halves(view.shape):
            return view
        h, w = view.shape
        return cv2.resize(view, (w // 2, h // 2), interpolation=cv2.INTER_AREA)

    @staticmethod
    def coarse_halves(view_shape: tuple[int, ...]) -> bool:
        return min(view_shape[:2]) >= 128

    def coarse_factor(self, view_shape: tuple[int, ...]) -> float:
        return self.f * (2.0 if self.coarse_halves(view_shape) else 1.0)

    def __call__(self, item: tuple[int, np.ndarray | BadFrameError]) -> _Rank:
        i, img = item
        if isinstance(img, BadFrameError):
            return _Rank(i, error=img)
        view = self.view(img)
        q = quality_of_view(view)
        r = _Rank(i, quality=q.quality, signal=q.signal, peak=float(view.max()), blank=q.blank)
        if q.blank or not math.isfinite(q.quality):
            r.blank = True
            return r
        if self.mode == "planet":
            d = disk_centroid(view)
            if d is not None:
                f = self.f
                r.coarse = (f * d.cx + (f - 1) / 2.0, f * d.cy + (f - 1) / 2.0)
                r.touches_edge = d.touches_edge
                r.response = 1.0
        else:
            cv = self.coarse_view(view)
            r.coarse_view = cv
            if self.key is not None:
                s = self.key.measure(cv)
                r.response = s.response
                if s.response >= _COARSE_MIN_RESPONSE:
                    k = self.coarse_factor(view.shape)
                    r.coarse = (self.key_offset[0] + k * s.sx, self.key_offset[1] + k * s.sy)
        return r


# -- the run ------------------------------------------------------------------------------------

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
    opts, enhance, quiet = job.lucky, job.enhance, job.quiet
    output, report = job.output.output, job.output.report
    timings: dict[str, float] = {}
    messages: list[str] = []

    def say(msg: str, level: int = logging.WARNING) -> None:
        messages.append(msg)
        log.log(level, "%s", msg)

    frames = _open(inputs, job.read)
    n = len(frames)
    if n == 0:
        raise NoFramesError("no input frame")
    source = _frame_path(frames, 0)
    problems = list(getattr(frames, "problems", []) or [])
    for idx, path, reason in problems:
        if idx < 0:  # file-level warnings (a truncated SER ...); bad frames are reported below
            say(f"{path}: {reason}")
    input_paths = sorted({_frame_path(frames, i) for i in _sample_indices(n)})
    if output is not None:
        check_not_input(output, input_paths)
    workers = max(1, opts.workers or os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lucky") if workers > 1 else None
    cv_threads = cv2.getNumThreads()
    if pool is not None:
        # frames are processed in parallel already; OpenCV's own threads on top of that
        # only fight over the same cores (restored when the run ends)
        cv2.setNumThreads(1)
    inflight = 2 * workers
    table = _Table(n)
    try:
        # ---- find the geometry, pick the mode --------------------------------------------
        first, shape, first_img = _first_frame(frames)
        reader = _Reader(frames, shape)
        raw_path = _has_raw_fast_path(frames) and opts.quality_downsample % 2 == 0
        ranker = _Ranker(opts, raw_path)
        v0 = ranker.view(first_img)
        if opts.mode == "auto":
            mode, why = pick_mode(v0)
            say(f"{source}: {mode} mode ({why})", logging.INFO)
        else:
            mode = opts.mode
        ranker.mode = mode
        if mode == "surface":
            ranker.key = PhaseCorrelator(ranker.coarse_view(v0), peak_sigma=1.0, window="tukey")

        # ---- pass 1: rank every frame ------------------------------------------------------
        t0 = time.perf_counter()
        _rank_all(frames, reader, ranker, table, raw_path, pool, inflight, quiet)
        timings["rank_s"] = time.perf_counter() - t0
        _report_unreadable(frames, table, say)
        _check_signal(frames, table, source, say)

        # ---- drift, selection -----------------------------------------------------------------
        cand = np.nonzero(table.status == _OK)[0]
        if cand.size == 0:
            raise RegistrationError(f"{source}: no frame could be located "
                                    f"({_first_reason(table)})")
        order = cand[np.lexsort((cand, -table.quality[cand]))]
        keep = parse_keep(opts.keep)
        n_ref = opts.reference_frames or min(50, max(5, keep.count(int(order.size)) // 2))
        n_ref = max(1, min(n_ref, order.size))
        best = order[:n_ref]
        origin = np.median(table.coarse[best], axis=0)
        rel = table.coarse - origin  # displacement vs the reference, coarse
        _mark_out_of_field(table, rel, shape, mode, opts.min_overlap, source, say)
        cand = np.nonzero(table.status == _OK)[0]
        if cand.size == 0:
            raise RegistrationError(f"{source}: every frame drifted out of the field")
        order = cand[np.lexsort((cand, -table.quality[cand]))]
        n_keep, requested = keep.count(int(order.size)), keep.requested
        if requested is not None and requested > order.size:
            say(f"{source}: only {order.size} usable frames, fewer than --keep {opts.keep}; "
                f"stacking all {order.size}")
        rank = np.zeros(n, dtype=np.int64)
        rank[order] = np.arange(1, order.size + 1)
        best = order[:min(n_ref, order.size)]

        # ---- reference -------------------------------------------------------------------------
        t0 = time.perf_counter()
        colour = _decide_colour(frames, first, opts, source, say)
        reference, aligner, ref_disk = _build_reference(reader, best, rel, shape, mode, pool, inflight)
        timings["reference_s"] = time.perf_counter() - t0

        # ---- pass 2 / 3: align and stack -----------------------------------------------------
        t0 = time.perf_counter()
        grid = None
        if opts.multipoint:
            n_pool = min(order.size, max(n_keep, int(math.ceil(opts.ap_pool * n_keep))))
            pool_idx = np.sort(order[:n_pool])
            image, weight_map, grid, best_aligned = _stack_multipoint(
                reader, pool_idx, n_keep, rel, table, reference, aligner, shape, colour, opts, pool,
                inflight, quiet, timings, rank)
        else:
            kept = np.sort(order[:n_keep])
            image, weight_map, best_aligned = _stack_global(
                reader, kept, rel, table, aligner, shape, colour, opts, pool, inflight, quiet, rank)
            timings["align_stack_s"] = time.perf_counter() - t0
        n_used = int(table.used.sum())
        if n_used == 0:
            raise RegistrationError(f"{source}: none of the {n_keep} selected frames aligned to the "
                                    f"reference ({_first_reason(table)})")
        # frames ranked but not kept
        for i in order:
            if not table.used[i] and i not in table.reasons:
                table.reasons[i] = (Fate.REJECTED, f"quality rank {rank[i]} of {order.size}, "
                                                   f"outside --keep {opts.keep}")

        rgb_shifts = None
        if image.ndim == 3:
            image, rgb_shifts = _rgb_dispersion(image, opts.rgb_align)
        sharpened = _enhance(image, enhance) if enhance is not None else None

        # ---- outputs ------------------------------------------------------------------------
        t0 = time.perf_counter()
        results = _frame_results(frames, table, rank, mode)
        timings["total_s"] = time.perf_counter() - t_start
        peak = peak_rss_mb()
        rep = _report(source, input_paths, opts, enhance, mode, shape, colour, table, results,
                      n_keep, n_used, order.size, grid, rgb_shifts, timings, peak, messages, ref_disk)
        rep["input_problems"] = [{"index": int(i), "path": str(p), "reason": str(r)} for i, p, r in problems]
        outputs: list[Path] = []
        report_path = None
        if output is not None:
            outputs, report_path = _write_outputs(Path(output), image, sharpened, best_aligned,
                                                  rep, table, rank, opts, job.output, mode, n_used)
        timings["write_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        peak = peak_rss_mb()
        rep["peak_rss_mb"] = round(peak, 1)
        rep["timings"] = {k: round(v, 4) for k, v in timings.items()}
        rep["frames_per_s"] = round(n / timings["total_s"], 2) if timings["total_s"] > 0 else None
        if report_path is not None:
            write_json(report_path, rep)
        return LuckyResult(image=image, weight=weight_map, sharpened=sharpened, mode=mode, frames=results, n_frames=n,
                           n_used=n_used, timings=timings, peak_rss_mb=peak, outputs=outputs,
                           report_path=report_path, report=rep, messages=messages,
                           rgb_shifts=rgb_shifts, alignment_points=grid.n_active if grid is not None else 0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
            cv2.setNumThreads(cv_threads)


def _sample_indices(n: int) -> list[int]:
    # a frame set spanning many files: name every file without touching every frame
    return sorted(set(np.linspace(0, n - 1, min(n, 64)).astype(int).tolist()))


def _first_reason(table: _Table) -> str:
    for i in sorted(table.reasons):
        return f"frame {i}: {table.reasons[i][1]}"
    return "no reason recorded"


def _first_frame(frames: Any) -> tuple[int, tuple[int, int], np.ndarray]:
    """The first readable, non-blank frame: the clip's geometry, the mode decision and the
    first key frame come from it. (Blank and unreadable frames before it are found again
    and reported by the ranking pass.)"""
    first_err = None
    fallback = None
    for i in range(len(frames)):
        try:
            img = np.asarray(frames.luminance(i), dtype=np.float32)
        except BadFrameError as e:
            first_err = first_err or e
            continue
        if fallback is None:
            fallback = (i, (int(img.shape[0]), int(img.shape[1])), img)
        if float(img.max()) - float(img.min()) >= BLANK_SPAN:
            return i, (int(img.shape[0]), int(img.shape[1])), img
        if i - fallback[0] >= 200:  # a long blank start: let the ranking pass judge the clip
            break
    if fallback is not None:
        return fallback
    raise NoFramesError(f"{_frame_path(frames, 0)}: no readable frame"
                        + (f" ({first_err.reason})" if first_err else ""))


def _rank_all(frames: Any, reader: _Reader, ranker: _Ranker, table: _Table, raw_path: bool,
              pool: ThreadPoolExecutor | None, inflight: int, quiet: bool) -> None:
    n = table.n
    key_limit = None
    with Progress(n, "lucky: rank", quiet) as bar:
        for c0 in range(0, n, _CHUNK):
            idx = range(c0, min(n, c0 + _CHUNK))
            items = ((i, reader.raw(i) if raw_path else reader.read(i, False)) for i in idx)
            last_ok = None
            for r in _ordered_map(ranker, items, pool, inflight):
                i = r.i
                bar.update()
                if r.error is not None:
                    table.fail(i, _UNREADABLE, Fate.UNREADABLE, r.error.reason)
                    continue
                table.quality[i] = r.quality
                table.signal[i] = r.signal
                table.peak[i] = r.peak
                table.response[i] = r.response
                if r.blank:
                    table.fail(i, _BLANK, Fate.REJECTED, "blank frame (no signal: every pixel has the same value)")
                    continue
                if r.coarse is None:
                    if ranker.mode == "planet":
                        table.fail(i, _NO_DISK, Fate.FAILED_REGISTRATION, "no planet disk found above the sky")
                    else:
                        table.fail(i, _NO_MATCH, Fate.FAILED_REGISTRATION,
                                   f"no match with the neighbouring frames (coarse correlation "
                                   f"{r.response:.3f})")
                    continue
                table.coarse[i] = r.coarse
                if r.touches_edge:
                    table.fail(i, _OUT_OF_FIELD, Fate.REJECTED,
                               "drifted out of the field: the planet's disk touches the frame edge")
                    continue
                if r.coarse_view is not None:
                    last_ok = r
            if ranker.mode == "surface" and last_ok is not None:
                # renew the key frame once the field has moved by an eighth of the frame, so
                # a long drift never leaves too little overlap to correlate
                if key_limit is None:
                    key_limit = min(reader.shape) / 8.0
                dx = last_ok.coarse[0] - ranker.key_offset[0]
                dy = last_ok.coarse[1] - ranker.key_offset[1]
                if math.hypot(dx, dy) > key_limit:
                    ranker.key = PhaseCorrelator(last_ok.coarse_view, peak_sigma=1.0, window="tukey")
                    ranker.key_offset = last_ok.coarse


def _report_unreadable(frames: Any, table: _Table, say: Callable[[str], None]) -> None:
    """One line per file and kind of problem, not one per frame."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, (fate, reason) in table.reasons.items():
        if fate is Fate.UNREADABLE:
            kind = re.sub(r"\bframe \d+\b", "frame #", reason)
            groups.setdefault((_frame_path(frames, i), kind), []).append((i, reason))
    for (path, _), items in sorted(groups.items(), key=lambda kv: min(kv[1])):
        items.sort()
        first, last = items[0][0], items[-1][0]
        if len(items) == 1:
            say(f"{path}: frame {first} unreadable: {items[0][1]}; skipped")
        else:
            say(f"{path}: {len(items)} frames ({first}..{last}) unreadable: {items[0][1]}"
                + (" (and alike)" if items[0][1] != items[-1][1] else "") + "; skipped")


def _check_signal(frames: Any, table: _Table, source: str, say: Callable[[str], None]) -> None:
    readable = np.nonzero(table.status != _UNREADABLE)[0]
    if readable.size == 0:
        raise NoFramesError(f"{source}: no readable frame ({_first_reason(table)})")
    blank = table.status[readable] == _BLANK
    if blank.all():
        raise NoFramesError(f"{source}: all {readable.size} readable frames are blank "
                            "(every pixel has the same value); nothing to stack")
    # an all-black clip with a little read noise is not "blank" but has no object either:
    # judge the brightest frame against the integer data's full scale
    full = _full_scale(frames, int(readable[0]))
    peak = float(np.nanmax(table.peak[readable]))
    if full is not None and peak < 0.01 * full:
        raise NoFramesError(f"{source}: all frames are black (brightest pixel {peak:.1f} of {full:.0f} "
                            "after smoothing); nothing to stack")
    nb = int(blank.sum())
    if nb:
        idx = readable[blank]
        say(f"{source}: {nb} blank frame{'s' if nb > 1 else ''} (first: {int(idx[0])}); skipped")


def _full_scale(frames: Any, i: int) -> float | None:
    try:
        dt = np.dtype(frames.info(i).dtype)
    except Exception:
        return None
    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else None


def _mark_out_of_field(table: _Table, rel: np.ndarray, shape: tuple[int, int], mode: str, min_overlap: float,
                       source: str, say: Callable[[str], None]) -> None:
    if mode == "planet":
        n_out = int((table.status == _OUT_OF_FIELD).sum())
    else:
        h, w = shape
        ok = np.nonzero(table.status == _OK)[0]
        n_out = 0
        for i in ok:
            dx, dy = rel[i]
            cover = max(0.0, 1 - abs(dx) / w) * max(0.0, 1 - abs(dy) / h)
            if cover < min_overlap:
                table.fail(int(i), _OUT_OF_FIELD, Fate.REJECTED,
                           f"drifted out of the field: displaced ({dx:+.0f}, {dy:+.0f}) px, covering "
                           f"{100 * cover:.0f}% of the reference field (< {100 * min_overlap:.0f}%)")
                n_out += 1
    if n_out:
        say(f"{source}: {n_out} frame{'s' if n_out > 1 else ''} drifted out of the field; not used "
            "(listed in the report)")


def _decide_colour(frames: Any, first: int, opts: LuckyOptions, source: str,
                   say: Callable[..., None]) -> bool:
    if opts.color == "mono":
        return False
    try:
        img = frames.read(first)
    except BadFrameError:
        return False
    if img.ndim != 3:
        if opts.color == "rgb":
            say(f"{source}: frames are monochrome; --color rgb ignored")
        return False
    if opts.color == "rgb":
        return True
    sub = np.asarray(img[::4, ::4], dtype=np.float32)
    spread = float(np.percentile(sub.max(axis=2) - sub.min(axis=2), 99))
    top = float(np.percentile(sub, 99.9)) or 1.0
    if spread <= max(2.0, 0.01 * top):
        say(f"{source}: the colour channels are identical (within {spread:.1f}): a monochrome video in a "
            "colour container; stacking luminance (use --color rgb to keep the channels)", logging.INFO)
        return False
    return True


def _build_reference(reader: _Reader, best: np.ndarray, rel: np.ndarray, shape: tuple[int, int], mode: str,
                     pool: ThreadPoolExecutor | None, inflight: int):
    """Mean of the best frames at their coarse positions, then once more at positions
    measured against that mean (two streamed passes over at most 50 frames)."""
    idx = np.sort(best)

    def mean_of(shifts: dict[int, tuple[float, float]]) -> np.ndarray:
        acc = np.zeros(shape, np.float64)
        k = 0

        def work(item):
            i, img = item
            if isinstance(img, BadFrameError):
                return None
            sx, sy = shifts[i]
            return shift_image(img, sx, sy)

        items = ((int(i), reader.read(int(i), False)) for i in idx if int(i) in shifts)
        for warped in _ordered_map(work, items, pool, inflight):
            if warped is not None:
                acc += warped
                k += 1
        if k == 0:
            raise RegistrationError("no reference frame could be read")
        return (acc / k).astype(np.float32)

    ref0 = mean_of({int(i): (float(rel[i, 0]), float(rel[i, 1])) for i in idx})
    roi, disk = _roi(ref0, rel[idx], mode)
    aligner = _aligner(ref0, roi)

    def measure(item):
        i, img = item
        if isinstance(img, BadFrameError):
            return i, None
        s, _ = aligner.measure(img, (float(rel[i, 0]), float(rel[i, 1])))
        return i, s

    refined: dict[int, tuple[float, float]] = {}
    items = ((int(i), reader.read(int(i), False)) for i in idx)
    for i, s in _ordered_map(measure, items, pool, inflight):
        if s is not None and s.response > 0:
            refined[i] = (s.sx, s.sy)
    if refined:
        # keep the coarse frame of reference: remove the refined shifts' mean offset
        mx = float(np.mean([v[0] for v in refined.values()]))
        my = float(np.mean([v[1] for v in refined.values()]))
        ref = mean_of({i: (v[0] - mx, v[1] - my) for i, v in refined.items()})
    else:
        ref = ref0
    roi, disk = _roi(ref, rel[idx], mode)
    return ref, _aligner(ref, roi), disk


def _aligner(ref: np.ndarray, roi: tuple[int, int, int, int]) -> GlobalAligner:
    # big fields correlate at half resolution: a quarter of the FFT work, same accuracy
    # (tests/lucky: 0.04 px RMS either way on the synthetic Moon)
    big = min(roi[1] - roi[0], roi[3] - roi[2]) >= 256
    return GlobalAligner(ref, roi, peak_sigma=1.5, downsample=2 if big else 1)


def _roi(ref: np.ndarray, rel_best: np.ndarray, mode: str):
    h, w = ref.shape
    disk = None
    if mode == "planet":
        disk = disk_centroid(ref)
        if disk is not None:
            x0, y0, x1, y1 = disk.bbox
            pad = int(max(16, 0.3 * disk.radius))
            return (y0 - pad, y1 + pad, x0 - pad, x1 + pad), disk
    spread = np.nanmax(np.abs(rel_best)) if rel_best.size else 0.0
    m = int(min(max(8, math.ceil(spread) + 4), 0.2 * min(h, w)))
    return (m, h - m, m, w - m), disk


def _global_measure(aligner: GlobalAligner, lum: np.ndarray, coarse: np.ndarray, min_response: float):
    c = (0.0, 0.0) if not np.all(np.isfinite(coarse)) else (float(coarse[0]), float(coarse[1]))
    s, _ = aligner.measure(lum, c)
    return s, s.response >= min_response


def _drizzle(shape: tuple[int, int], channels: int, opts: LuckyOptions):
    if not opts.drizzle:
        return None
    return Drizzle(shape, channels=channels, scale=opts.drizzle, pixfrac=opts.pixfrac)


def _stack_global(reader: _Reader, kept: np.ndarray, rel: np.ndarray, table: _Table, aligner: GlobalAligner,
                  shape: tuple[int, int], colour: bool, opts: LuckyOptions, pool, inflight: int, quiet: bool,
                  rank: np.ndarray):
    h, w = shape
    nc = 3 if colour else 1
    drz = _drizzle(shape, nc, opts)
    acc = np.zeros((h, w, nc), np.float64) if drz is None else None
    cnt = np.zeros((h, w), np.float64) if drz is None else None
    best_i = int(kept[np.argmin(rank[kept])]) if kept.size else -1
    best_aligned = None

    def work(item):
        i, img = item
        if isinstance(img, BadFrameError):
            return i, img, None, None
        lum = luminance(img)
        s, ok = _global_measure(aligner, lum, rel[i], opts.min_response)
        if not ok:
            return i, None, s, None
        if drz is not None:
            return i, img, s, None
        return i, shift_image(img, s.sx, s.sy), s, valid_rect(shape, s.sx, s.sy)

    items = ((int(i), reader.read(int(i), colour)) for i in kept)
    with Progress(int(kept.size), "lucky: align + stack", quiet) as bar:
        for i, img, s, rect in _ordered_map(work, items, pool, inflight):
            bar.update()
            if not _record_alignment(table, i, img, s, opts.min_response):
                continue
            table.used[i] = True
            if drz is not None:
                drz.add(img, (s.sx, s.sy))
                if i == best_i:
                    best_aligned = shift_image(img, s.sx, s.sy)
                continue
            y0, y1, x0, x1 = rect
            v = img if img.ndim == 3 else img[:, :, None]
            acc[y0:y1, x0:x1] += v[y0:y1, x0:x1]
            cnt[y0:y1, x0:x1] += 1.0
            if i == best_i:
                best_aligned = img
    if drz is not None:
        image, wmap = drz.result()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            image = (acc / cnt[:, :, None]).astype(np.float32)
        image[cnt == 0] = np.nan
        image = image[:, :, 0] if nc == 1 else image
        wmap = cnt.astype(np.float32)
    return image, wmap, best_aligned


def _stack_multipoint(reader: _Reader, pool_idx: np.ndarray, n_keep: int, rel: np.ndarray, table: _Table,
                      reference: np.ndarray, aligner: GlobalAligner, shape: tuple[int, int], colour: bool,
                      opts: LuckyOptions, pool, inflight: int, quiet: bool, timings: dict[str, float],
                      rank: np.ndarray):
    t0 = time.perf_counter()
    h, w = shape
    # most frames keep every AP box inside; the few displaced further lose their edge APs
    margin = int(math.ceil(np.percentile(np.abs(rel[pool_idx]), 90) + 2)) if pool_idx.size else 0
    margin = min(margin, min(h, w) // 4)
    grid = place_alignment_points(reference, ap_size=opts.ap_size, spacing=opts.ap_spacing,
                                  min_structure=opts.ap_min_structure, margin=margin)
    local = LocalAligner(reference, grid)
    n_ap = grid.n_active
    m = pool_idx.size
    disp = np.full((m, n_ap, 2), np.nan, np.float32)
    lq = np.full((m, n_ap), -np.inf, np.float64)
    valid = np.zeros((m, n_ap), bool)
    ok = np.zeros(m, bool)
    gshift = np.zeros((m, 2))

    def measure(item):
        k, i, img = item
        if isinstance(img, BadFrameError):
            return k, i, img, None, None
        s, good = _global_measure(aligner, img, rel[i], opts.min_response)
        if not good:
            return k, i, None, s, None
        sig = table.signal[i] if math.isfinite(table.signal[i]) and table.signal[i] > 0 else 1.0
        return k, i, True, s, local.measure(local.prepare(img), (s.sx, s.sy), float(sig))

    items = ((k, int(i), reader.read(int(i), False)) for k, i in enumerate(pool_idx))
    with Progress(m, "lucky: align (multi-point)", quiet) as bar:
        for k, i, res, s, lm in _ordered_map(measure, items, pool, inflight):
            bar.update()
            if not _record_alignment(table, i, res, s, opts.min_response):
                continue
            ok[k] = True
            gshift[k] = (s.sx, s.sy)
            if n_ap:
                disp[k] = lm.disp
                lq[k] = lm.quality
                valid[k] = lm.valid
    timings["align_s"] = time.perf_counter() - t0

    # global selection among the frames that registered (for nodes without an AP), then
    # per-AP selection by local quality among the same pool
    reg = np.nonzero(ok)[0]
    reg_sorted = reg[np.lexsort((pool_idx[reg], rank[pool_idx[reg]]))]
    gkeep = np.zeros(m, bool)
    gkeep[reg_sorted[:n_keep]] = True
    sel = select_per_ap(lq, valid & ok[:, None], n_keep) if n_ap else np.zeros((m, 0), bool)
    contributes = gkeep | sel.any(axis=1)

    t0 = time.perf_counter()
    nc = 3 if colour else 1
    interp = NodeInterpolator(grid, shape)
    drz = _drizzle(shape, nc, opts)
    acc = np.zeros((h, w, nc), np.float64) if drz is None else None
    wsum = np.zeros((h, w), np.float64) if drz is None else None
    best_k = int(reg_sorted[0]) if reg_sorted.size else -1
    best_aligned = None

    def fields(k: int):
        gx, gy = gshift[k]
        d = disp[k]
        good = valid[k]
        vx = np.where(good, d[:, 0], np.nan)
        vy = np.where(good, d[:, 1], np.nan)
        sx = interp(node_values(grid, vx, gx))
        sy = interp(node_values(grid, vy, gy))
        wgt = interp(node_values(grid, sel[k].astype(np.float32), float(gkeep[k])))
        return sx, sy, wgt

    def stack_one(item):
        k, i, img = item
        if isinstance(img, BadFrameError):
            return k, i, img, None, None
        sx, sy, wgt = fields(k)
        if drz is not None:
            return k, i, img, (sx, sy), wgt
        out, inside = dewarp(img, sx, sy)
        wgt = wgt * inside
        v = out if out.ndim == 3 else out[:, :, None]
        return k, i, v * wgt[:, :, None], None, wgt

    todo = [k for k in range(m) if contributes[k]]
    items = ((k, int(pool_idx[k]), reader.read(int(pool_idx[k]), colour)) for k in todo)
    with Progress(len(todo), "lucky: stack (multi-point)", quiet) as bar:
        for k, i, v, fld, wgt in _ordered_map(stack_one, items, pool, inflight):
            bar.update()
            if isinstance(v, BadFrameError):  # changed since pass 2: report, go on
                table.fail(i, _UNREADABLE, Fate.UNREADABLE, v.reason)
                continue
            table.used[i] = True
            table.ap_used[i] = int(sel[k].sum())
            if drz is not None:
                drz.add(v, (0.0, 0.0), field=fld, weight=wgt)
                if k == best_k:
                    best_aligned = shift_image(v, *gshift[k])
                continue
            acc += v
            wsum += wgt
            if k == best_k:
                img = reader.read(i, colour)
                if not isinstance(img, BadFrameError):
                    best_aligned = shift_image(img, *gshift[k])
    timings["stack_s"] = time.perf_counter() - t0
    for k in range(m):
        i = int(pool_idx[k])
        if ok[k] and not contributes[k] and i not in table.reasons:
            table.reasons[i] = (Fate.REJECTED, f"quality rank {rank[i]}: not among the best {n_keep} "
                                               "globally nor at any alignment point")
    if drz is not None:
        image, wmap = drz.result()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            image = (acc / wsum[:, :, None]).astype(np.float32)
        image[wsum <= 1e-6] = np.nan
        image = image[:, :, 0] if nc == 1 else image
        wmap = wsum.astype(np.float32)
    return image, wmap, grid, best_aligned


def _rgb_dispersion(image: np.ndarray, apply: bool) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Measure R and B against G on the stack; with ``apply``, shift them onto G."""
    fill = np.nan_to_num(image, nan=float(np.nanmedian(image)))
    g = fill[..., 1]
    corr = PhaseCorrelator(g, peak_sigma=1.0, window="tukey")
    shifts = {}
    out = image.copy()
    for c, name in ((0, "R"), (2, "B")):
        s = corr.measure(fill[..., c])
        shifts[name] = [round(s.sx, 3), round(s.sy, 3)]
        if apply:
            out[..., c] = shift_image(image[..., c], s.sx, s.sy)
    return out, shifts


def _frame_results(frames: Any, table: _Table, rank: np.ndarray, mode: str) -> list[FrameResult]:
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
        try:
            name = frames.name(i)
        except Exception:
            name = f"#{i}"
        out.append(FrameResult(index=i, path=_frame_path(frames, i), name=name, fate=fate, reason=reason,
                               method=mode if table.status[i] != _UNREADABLE else None, transform=tr,
                               metrics=metrics, weight=1.0 if table.used[i] else None))
    return out


def _report(source, inputs, opts, enhance, mode, shape, colour, table, results, n_keep, n_used, n_ranked,
            grid, rgb_shifts, timings, peak, messages, disk) -> dict[str, Any]:
    fates: dict[str, int] = {}
    for r in results:
        fates[r.fate.value] = fates.get(r.fate.value, 0) + 1
    used = table.used
    shifts = table.shift[used]
    summary = {
        "frames": table.n, "ranked": int(n_ranked), "kept": int(n_keep), "used": int(n_used),
        "rejected": fates.get("rejected", 0), "failed_registration": fates.get("failed_registration", 0),
        "unreadable": fates.get("unreadable", 0),
        "drifted_out_of_field": int((table.status == _OUT_OF_FIELD).sum()),
        "blank": int((table.status == _BLANK).sum()),
    }
    if shifts.size:
        summary["shift_px"] = {"min": np.nanmin(shifts, axis=0).round(3).tolist(),
                               "max": np.nanmax(shifts, axis=0).round(3).tolist(),
                               "rms": float(np.sqrt(np.nanmean(np.sum(shifts ** 2, axis=1))))}
    q = table.quality[np.isfinite(table.quality)]
    if q.size:
        summary["quality"] = {"min": float(q.min()), "median": float(np.median(q)), "max": float(q.max())}
    return {
        "format": 1, "skystack": __version__, "kind": "lucky", "inputs": [str(p) for p in inputs],
        "mode": mode, "colour": bool(colour), "shape": list(shape),
        "planet_disk": ({"cx": disk.cx, "cy": disk.cy, "radius_px": disk.radius} if disk is not None else None),
        "alignment_points": ({"count": grid.n_active, "size": grid.size, "spacing": grid.spacing,
                              "nodes": [int(grid.ys.size), int(grid.xs.size)]} if grid is not None else None),
        "rgb_shift_px": rgb_shifts,
        "quality_metric": "normalised gradient energy of a 2x-downsampled, Gaussian-blurred view "
                          "(skystack.quality.metrics)",
        "options": asdict(opts), "enhance": asdict(enhance) if enhance is not None else None,
        "summary": summary, "peak_rss_mb": round(peak, 1), "messages": list(messages),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "frames": [r.to_json() for r in results],
    }


def _write_outputs(out: Path, image, sharpened, best_aligned, rep, table, rank, opts, output: OutputOptions,
                   mode, n_used):
    header, history = lucky_header(opts, mode, n_used, table.n)
    written = write_stack(out, image, header=header, history=history, output=output)
    if output.preview and best_aligned is not None:
        # the best single frame beside the stack, both through the stack's stretch
        b, w, m = autostretch_params(image)
        best = best_aligned
        if best.shape[:2] != image.shape[:2]:
            best = cv2.resize(best, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
        if best.ndim != image.ndim:
            best = np.repeat(best[..., None], 3, axis=2) if image.ndim == 3 else luminance(best)
        left, right = to_uint8(levels(best, b, w, m)), to_uint8(levels(image, b, w, m))
        gap = np.zeros((left.shape[0], 4) + left.shape[2:], np.uint8)
        written.append(write_png(out.with_suffix(".compare.png"), np.concatenate([left, gap, right], axis=1)))
    if output.preview:
        from ...output.plots import plot_lucky  # matplotlib: only when a plot is drawn (see output.plots)

        written.append(plot_lucky(quality_plot_path(out), table.quality, table.used, table.status != _OK,
                                  table.status == _UNREADABLE, table.coarse, table.shift, mode))
    if sharpened is not None:
        sp = out.with_name(out.stem + "_sharpened" + out.suffix)
        written.append(write_image(sp, sharpened, header=header, history=history + ["wavelet sharpened"],
                                   tiff_dtype=output.tiff_dtype))
        written.append(write_png(sp.with_suffix(".before-after.png"), before_after(image, sharpened)))
    report_path = Path(output.report) if output.report else Path(str(out) + ".report.json")
    rep["outputs"] = [str(p) for p in written]
    return written, report_path
