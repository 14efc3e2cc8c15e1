"""Ranking: pass 1 over every frame (sharpness cells, coarse position, blank and
out-of-field checks), the frames' global quality from their cells taken at the same places
on the object, the order of the usable frames, the reference frames and the kept count.
The per-point side of the selection is in :mod:`.points`."""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass

import cv2
import numpy as np

from ...errors import BadFrameError, NoFramesError, RegistrationError
from ...io import luminance
from ...options import LuckyOptions, parse_keep
from ...quality.metrics import BLANK_SPAN, CellGrid, ViewSharpness, cell_grid, measure_view
from ...register.planetary import PhaseCorrelator, disk_centroid, pick_mode
from ...runtime.progress import Progress
from ...types import Fate
from .frames import BLANK, NO_DISK, NO_MATCH, OK, OUT_OF_FIELD, UNREADABLE, FrameChunk, LuckyRun, chunked, frame_path

# a coarse (4x-downsampled) correlation weaker than this is no match at all
_COARSE_MIN_RESPONSE = 0.02
_CHUNK = 4  # frames per task (and per key-frame decision) in the ranking pass of a surface
# A planet's frames are measured alone (its disk is found in each), without key frames: bigger
# tasks, fewer round trips to the forked worker (two workers, 1000 frames: the pass 0.343 s
# instead of 0.371 s with 4 frames a task, measured on the project's 2-core machine)
_PLANET_CHUNK = 16
# A chunk is measured against the key frame decided after the chunk _KEY_LAG places
# before it: the chunks in between can then be measured in parallel (at most _KEY_LAG
# in flight), and the key frames, hence the results, do not depend on the worker count.
# A key frame is renewed once the field moved by an eighth of the frame; the lag applies
# it 16-19 frames later (before: every 16 frames, 16-31 frames later).
_KEY_LAG = 4
# --quality-weight by mode: a stacked frame counts exp(G · (quality − best quality)) (per AP,
# its local quality there). A frame's quality is a log band energy, and the detail it brings
# falls with it: weighting the sharper frames up beats stacking the kept ones alike.
# Measured detail on the shared benchmark videos (1000 frames, --keep 10%), against G = 0:
# planet, seeds 1-5, 11, 17: G 15 +0.0008..+0.0015, G 25 +0.0010..+0.0019, G 35 +0.0004..+0.0016;
# patchy Moon, seeds 1, 2, 11, 17: G 5 +0.0001, G 7 +0.0001, G 15 -0.0002..-0.0003;
# uniform-seeing Moon, seeds 1, 11, 17: G 7 +0.0004, G 10 +0.0005. A surface's per-AP
# qualities carry the noise of the local residuals, which larger G amplifies.
QUALITY_WEIGHT = {"planet": 25.0, "surface": 7.0}


@dataclass(frozen=True)
class KeyFrame:
    """A surface's key frame: a number naming it (the chunk after which it was chosen;
    -1 for the clip's first usable frame), the frame's index, its coarse position
    (full-resolution pixels) and its coarse view (only the first key carries it: a worker
    reads any other key frame itself, so that tasks stay small)."""

    no: int
    index: int
    offset: tuple[float, float]
    view: np.ndarray | None = None


@dataclass(frozen=True)
class _RankTask:
    chunk: FrameChunk
    key: KeyFrame | None


@dataclass
class _Rank:
    i: int
    error: BadFrameError | None = None
    cells: ViewSharpness | None = None
    coarse: tuple[float, float] | None = None
    response: float = float("nan")
    touches_edge: bool = False
    keyable: bool = False  # a surface frame located by correlation: may become a key frame
    nonfinite: int = 0  # NaN/infinite pixels the reader replaced (see frames.finite_frame)
    coarse_view: np.ndarray | None = None  # its coarse view, kept by Ranker.keep_views


class Ranker:
    """Measures one frame of pass 1: sharpness cells on a downsampled view, and its coarse
    position (the planet's centroid, or a phase correlation against the current key frame)."""

    def __init__(self, opts: LuckyOptions, shape: tuple[int, int]):
        self.f = opts.quality_downsample
        self.grid: CellGrid = cell_grid((shape[0] // self.f, shape[1] // self.f))
        self.mode: str = "surface"
        self.first_key: KeyFrame | None = None
        self._keys: dict[int, PhaseCorrelator] = {}
        # results keep their coarse view for the next key frame (free within a process);
        # forked workers read a new key frame themselves instead of sending every view
        self.keep_views = True
        # the coarse position at which the cells tile the view exactly (the first frame's)
        self.anchor = (0.0, 0.0)

    def view(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 3:
            img = luminance(img)
        img = img.astype(np.float32, copy=False)
        f = self.f
        if f > 1:
            h, w = img.shape[:2]
            # INTER_AREA on the raw plane: for a CFA mosaic and f = 2 this is the 2x2
            # super-pixel luminance (R + G + G + B) / 4, no demosaicing needed to rank
            img = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
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

    def start(self, run: LuckyRun, first_img: np.ndarray, first: int = 0) -> str:
        """Decide the mode from the first frame (``auto``; frame ``first`` of the clip) and
        make it the first key frame."""
        v0 = self.view(first_img)
        if run.opts.mode == "auto":
            mode, why = pick_mode(cv2.GaussianBlur(v0, (5, 5), 0.7))
            run.say(f"{run.source}: {mode} mode ({why})", logging.INFO)
        else:
            mode = run.opts.mode
        self.mode = mode
        if mode == "surface":
            self.first_key = KeyFrame(-1, first, (0.0, 0.0), self.coarse_view(v0))
        else:
            d = disk_centroid(v0)
            h, w = v0.shape
            cx, cy = (d.cx, d.cy) if d is not None else ((w - 1) / 2.0, (h - 1) / 2.0)
            self.anchor = (self.f * cx + (self.f - 1) / 2.0, self.f * cy + (self.f - 1) / 2.0)
        return mode

    def _correlator(self, key: KeyFrame | None, read) -> PhaseCorrelator | None:
        """The key frame's correlator (its spectrum computed once per key and process;
        threads may race to compute it, with the same result)."""
        if key is None:
            return None
        corr = self._keys.get(key.no)
        if corr is None:
            if key.view is not None:
                view = key.view
            elif key.no == self.first_key.no:
                view = self.first_key.view
            else:  # a forked worker: the frame is memory-mapped, read anywhere
                view = self.coarse_view(self.view(read(key.index)))
            corr = PhaseCorrelator(view, peak_sigma=1.0, window="tukey")
            self._keys = {key.no: corr}  # one key alive: replaced, never mutated
        return corr

    def chunk(self, task: _RankTask, read) -> list[_Rank]:
        """Rank the frames of one chunk (a task)."""
        corr = self._correlator(task.key, read)
        return [self._measure(i, img, task.key, corr) for i, img in LuckyRun.frames_of(task.chunk, read)]

    def __call__(self, item: tuple[int, np.ndarray | BadFrameError]) -> _Rank:
        """Measure one frame ``(index, frame)`` (a surface against the first key frame)."""
        key = self.first_key
        return self._measure(item[0], item[1], key, self._correlator(key, None))

    def _measure(self, i: int, img: np.ndarray | BadFrameError, key: KeyFrame | None,
                 corr: PhaseCorrelator | None) -> _Rank:
        if isinstance(img, BadFrameError):
            return _Rank(i, error=img)
        view = self.view(img)
        r = _Rank(i)
        lo, hi = cv2.minMaxLoc(view)[:2]
        if hi - lo >= BLANK_SPAN:
            self._locate(view, r, key, corr)
        # the cells sit on the object: where the first frame's cells are in this one
        r.cells = measure_view(view, self.grid, self.cell_offset(r))
        return r

    def cell_offset(self, r: _Rank) -> tuple[float, float]:
        """Where the cells sit in frame ``r``'s view: its coarse position (or the anchor)
        from the anchor, in view pixels."""
        c = r.coarse if r.coarse is not None else self.anchor
        return ((c[0] - self.anchor[0]) / self.f, (c[1] - self.anchor[1]) / self.f)

    def found_disk(self, r: _Rank, d) -> None:
        """Record a planet's disk ``d`` (found in the view) in ``r``, at full resolution."""
        f = self.f
        r.coarse = (f * d.cx + (f - 1) / 2.0, f * d.cy + (f - 1) / 2.0)
        r.touches_edge = d.touches_edge
        r.response = 1.0

    def matched(self, r: _Rank, key: KeyFrame, view_shape: tuple[int, ...], sx: float, sy: float,
                response: float) -> None:
        """Record the coarse correlation of ``r``'s view against ``key``: the response, and
        the position when it is a match."""
        r.response = response
        if response >= _COARSE_MIN_RESPONSE:
            k = self.coarse_factor(view_shape)
            r.coarse = (key.offset[0] + k * sx, key.offset[1] + k * sy)

    def _locate(self, view: np.ndarray, r: _Rank, key: KeyFrame | None, corr: PhaseCorrelator | None) -> None:
        if self.mode == "planet":
            d = disk_centroid(view)
            if d is not None:
                self.found_disk(r, d)
            return
        cv = self.coarse_view(view)
        r.keyable = True
        r.coarse_view = cv if self.keep_views else None
        if corr is not None:
            s = corr.measure(cv)
            self.matched(r, key, view.shape, s.sx, s.sy, s.response)


def rank_all(run: LuckyRun, ranker: Ranker, raw_path: bool, gpu=None) -> None:
    """Pass 1 over every frame: fill the table's sharpness cells, peak and coarse
    position, and mark unreadable, blank, lost and out-of-field frames (``gpu``: a
    :class:`.gpu.GpuRanker` measuring each chunk task at once, else ``ranker``)."""
    table, reader = run.table, run.reader
    n = table.n
    table.cells((ranker.grid.ny, ranker.grid.nx))
    read = reader.raw if raw_path else (lambda i: reader.read(i, False))
    # keys[c]: the key frame after chunk c's results (chunks _KEY_LAG later use it)
    keys: list[KeyFrame | None] = []
    key_limit = min(reader.shape) / 8.0
    ranker.keep_views = not (run.workers.processes and run.reads_in_task)

    def tasks():
        for chunk in run.tasks(chunked(np.arange(n), _PLANET_CHUNK if ranker.mode == "planet" else _CHUNK), read):
            c = chunk.no
            yield _RankTask(chunk, keys[c - _KEY_LAG] if c >= _KEY_LAG else first)

    current = ranker.first_key
    # tasks name the first key frame, whose view every worker has (it travels once)
    first = dataclasses.replace(current, view=None) if current is not None else None
    chunk = gpu.chunk if gpu is not None else ranker.chunk

    def measure(t: _RankTask) -> list[_Rank]:  # in whichever process read the frames
        rs = chunk(t, read)
        for r in rs:
            r.nonfinite = reader.repaired.pop(r.i, 0)
        return rs

    reader.record_repairs = True  # forked workers inherit it
    results = run.map(measure, tasks(), inflight=_KEY_LAG)  # before the bar's thread
    with Progress(n, "lucky: rank", run.quiet) as bar:
        for rs in results:
            last_ok = None
            for r in rs:
                i = r.i
                bar.update()
                if r.error is not None:
                    table.fail(i, UNREADABLE, Fate.UNREADABLE, r.error.reason)
                    continue
                table.nonfinite[i] = r.nonfinite
                table.log_energy[i] = r.cells.log_energy
                table.log_level[i] = r.cells.log_level
                table.peak[i] = r.cells.peak
                table.response[i] = r.response
                if r.cells.blank:
                    table.fail(i, BLANK, Fate.REJECTED, "blank frame (no signal: every pixel has the same value)")
                    continue
                if r.coarse is None:
                    if ranker.mode == "planet":
                        table.fail(i, NO_DISK, Fate.FAILED_REGISTRATION, "no planet disk found above the sky")
                    else:
                        table.fail(i, NO_MATCH, Fate.FAILED_REGISTRATION,
                                   f"no match with the neighbouring frames (coarse correlation "
                                   f"{r.response:.3f})")
                    continue
                table.coarse[i] = r.coarse
                if r.touches_edge:
                    table.fail(i, OUT_OF_FIELD, Fate.REJECTED,
                               "drifted out of the field: the planet's disk touches the frame edge")
                    continue
                if r.keyable:
                    last_ok = r
            if ranker.mode == "surface" and last_ok is not None and current is not None:
                # renew the key frame once the field has moved by an eighth of the frame, so
                # a long drift never leaves too little overlap to correlate
                dx = last_ok.coarse[0] - current.offset[0]
                dy = last_ok.coarse[1] - current.offset[1]
                if math.hypot(dx, dy) > key_limit:
                    current = KeyFrame(len(keys), last_ok.i, last_ok.coarse, last_ok.coarse_view)
            keys.append(current if current is None or current.no != -1 else first)
    reader.record_repairs = False
    reader.repaired.clear()


def report_unreadable(run: LuckyRun) -> None:
    """One line per file and kind of problem, not one per frame (frames whose NaN or
    infinite pixels were replaced too: they are stacked)."""
    repaired: dict[str, list[int]] = {}
    for i in np.nonzero(run.table.nonfinite)[0]:
        repaired.setdefault(frame_path(run.frames, int(i)), []).append(int(i))
    for path, idx in repaired.items():
        px = int(run.table.nonfinite[idx].sum())
        run.say(f"{path}: frame {idx[0]} has {px} NaN or infinite pixel{'s' if px > 1 else ''}: replaced by the "
                f"frame's median"
                if len(idx) == 1 else
                f"{path}: {len(idx)} frames ({idx[0]}..{idx[-1]}) have NaN or infinite pixels ({px} in all): "
                f"replaced by each frame's median")
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, (fate, reason) in run.table.reasons.items():
        if fate is Fate.UNREADABLE:
            kind = re.sub(r"\bframe \d+\b", "frame #", reason)
            groups.setdefault((frame_path(run.frames, i), kind), []).append((i, reason))
    for (path, _), items in sorted(groups.items(), key=lambda kv: min(kv[1])):
        items.sort()
        first, last = items[0][0], items[-1][0]
        if len(items) == 1:
            run.say(f"{path}: frame {first} unreadable: {items[0][1]}; skipped")
        else:
            run.say(f"{path}: {len(items)} frames ({first}..{last}) unreadable: {items[0][1]}"
                    + (" (and alike)" if items[0][1] != items[-1][1] else "") + "; skipped")


def check_signal(run: LuckyRun) -> None:
    """Stop on a clip with nothing to stack (all unreadable, blank or black); report blank
    frames."""
    table, source = run.table, run.source
    readable = np.nonzero(table.status != UNREADABLE)[0]
    if readable.size == 0:
        raise NoFramesError(f"{source}: no readable frame ({table.first_reason()})")
    blank = table.status[readable] == BLANK
    if blank.all():
        raise NoFramesError(f"{source}: all {readable.size} readable frames are blank "
                            "(every pixel has the same value); nothing to stack")
    # an all-black clip with a little read noise is not "blank" but has no object either:
    # judge the brightest frame against the integer data's full scale
    full = _full_scale(run.frames, int(readable[0]))
    peak = float(np.nanmax(table.peak[readable]))
    if full is not None and peak < 0.01 * full:
        raise NoFramesError(f"{source}: all frames are black (brightest pixel {peak:.1f} of {full:.0f} "
                            "after smoothing); nothing to stack")
    nb = int(blank.sum())
    if nb:
        idx = readable[blank]
        run.say(f"{source}: {nb} blank frame{'s' if nb > 1 else ''} (first: {int(idx[0])}); skipped")


def _full_scale(frames, i: int) -> float | None:
    try:
        dt = np.dtype(frames.info(i).dtype)
    except Exception:
        return None
    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else None


def _mark_out_of_field(run: LuckyRun, rel: np.ndarray, mode: str) -> None:
    table = run.table
    if mode == "planet":
        n_out = int((table.status == OUT_OF_FIELD).sum())
    else:
        h, w = run.shape
        min_overlap = run.opts.min_overlap
        ok = np.nonzero(table.status == OK)[0]
        n_out = 0
        for i in ok:
            dx, dy = rel[i]
            cover = max(0.0, 1 - abs(dx) / w) * max(0.0, 1 - abs(dy) / h)
            if cover < min_overlap:
                table.fail(int(i), OUT_OF_FIELD, Fate.REJECTED,
                           f"drifted out of the field: displaced ({dx:+.0f}, {dy:+.0f}) px, covering "
                           f"{100 * cover:.0f}% of the reference field (< {100 * min_overlap:.0f}%)")
                n_out += 1
    if n_out:
        run.say(f"{run.source}: {n_out} frame{'s' if n_out > 1 else ''} drifted out of the field; not used "
                "(listed in the report)")


@dataclass(frozen=True)
class Ranking:
    """The outcome of pass 1: ``order`` (usable frames, best first), ``rank`` (1-based per
    frame, 0 for unusable ones), how many to keep, the reference frames ``best``, every
    frame's coarse displacement ``rel`` against the reference (NaN where unknown) and the
    coarse position of the reference, ``origin`` (``rel = coarse − origin``)."""

    order: np.ndarray
    rank: np.ndarray
    n_keep: int
    best: np.ndarray
    rel: np.ndarray
    origin: np.ndarray
    gamma: float = 0.0  # --quality-weight, resolved for the mode
    top_quality: float = 0.0  # the best and the worst known quality of the usable frames
    low_quality: float = 0.0

    def weight(self, quality: np.ndarray | float) -> np.ndarray:
        """Stacking weight of frames of global ``quality``: 1 for the best frame, that of
        the worst usable one where the quality is unknown (no cell measured)."""
        q = np.nan_to_num(np.asarray(quality, np.float64), nan=self.low_quality)
        return np.exp(self.gamma * (np.minimum(q, self.top_quality) - self.top_quality))


def _usable_order(run: LuckyRun) -> np.ndarray:
    table = run.table
    cand = np.nonzero(table.status == OK)[0]
    return cand[np.lexsort((cand, -table.quality[cand]))]


def select(run: LuckyRun, mode: str) -> Ranking:
    """Order the usable frames, find the reference frames, drop those drifted out of the
    field and size the kept set from ``--keep``."""
    table, opts, source = run.table, run.opts, run.source
    order = _usable_order(run)
    if order.size == 0:
        raise RegistrationError(f"{source}: no frame could be located ({table.first_reason()})")
    keep = parse_keep(opts.keep)
    n_ref = opts.reference_frames or min(50, max(5, keep.count(int(order.size)) // 2))
    n_ref = max(1, min(n_ref, order.size))
    best = order[:n_ref]
    origin = np.median(table.coarse[best], axis=0)
    rel = table.coarse - origin  # displacement vs the reference, coarse
    _mark_out_of_field(run, rel, mode)
    order = _usable_order(run)
    if order.size == 0:
        raise RegistrationError(f"{source}: every frame drifted out of the field")
    n_keep, requested = keep.count(int(order.size)), keep.requested
    if requested is not None and requested > order.size:
        run.say(f"{source}: only {order.size} usable frame{'s' if order.size != 1 else ''}, fewer than "
                f"--keep {opts.keep}; "
                f"stacking all {order.size}")
    rank = np.zeros(table.n, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    gamma = QUALITY_WEIGHT[mode] if opts.quality_weight is None else float(opts.quality_weight)
    q = table.quality[order]
    known = q[np.isfinite(q)]
    top, low = (float(known.max()), float(known.min())) if known.size else (0.0, 0.0)
    return Ranking(order=order, rank=rank, n_keep=n_keep, best=order[:min(n_ref, order.size)], rel=rel,
                   origin=origin, gamma=gamma if known.size else 0.0, top_quality=top, low_quality=low)


# -- quality from the cells -------------------------------------------------------------------
