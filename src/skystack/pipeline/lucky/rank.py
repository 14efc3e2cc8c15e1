"""Pass 1 of a lucky run: measure every frame (quality, coarse position, blank and
out-of-field checks), then order the usable frames best first and choose the reference
frames and the kept count."""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import cv2
import numpy as np

from ...errors import BadFrameError, NoFramesError, RegistrationError
from ...io import luminance
from ...options import LuckyOptions, parse_keep
from ...quality.metrics import gaussian_ksize, quality_of_view
from ...register.planetary import PhaseCorrelator, disk_centroid, pick_mode
from ...runtime.progress import Progress
from ...types import Fate
from .frames import BLANK, NO_DISK, NO_MATCH, OK, OUT_OF_FIELD, UNREADABLE, LuckyRun, frame_path

# a coarse (4x-downsampled) correlation weaker than this is no match at all
_COARSE_MIN_RESPONSE = 0.02
_CHUNK = 16  # frames per key-frame decision in the ranking pass


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


class Ranker:
    """Measures one frame of pass 1: quality on a downsampled view, and its coarse position
    (the planet's centroid, or a phase correlation against the current key frame)."""

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

    def start(self, run: LuckyRun, first_img: np.ndarray) -> str:
        """Decide the mode from the first frame (``auto``) and make it the first key frame."""
        v0 = self.view(first_img)
        if run.opts.mode == "auto":
            mode, why = pick_mode(v0)
            run.say(f"{run.source}: {mode} mode ({why})", logging.INFO)
        else:
            mode = run.opts.mode
        self.mode = mode
        if mode == "surface":
            self.key = PhaseCorrelator(self.coarse_view(v0), peak_sigma=1.0, window="tukey")
        return mode

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


def rank_all(run: LuckyRun, ranker: Ranker, raw_path: bool) -> None:
    """Pass 1 over every frame: fill the table's quality, signal, peak and coarse position,
    and mark unreadable, blank, lost and out-of-field frames."""
    table, reader = run.table, run.reader
    n = table.n
    key_limit = None
    with Progress(n, "lucky: rank", run.quiet) as bar:
        for c0 in range(0, n, _CHUNK):
            idx = range(c0, min(n, c0 + _CHUNK))
            items = ((i, reader.raw(i) if raw_path else reader.read(i, False)) for i in idx)
            last_ok = None
            for r in run.map(ranker, items):
                i = r.i
                bar.update()
                if r.error is not None:
                    table.fail(i, UNREADABLE, Fate.UNREADABLE, r.error.reason)
                    continue
                table.quality[i] = r.quality
                table.signal[i] = r.signal
                table.peak[i] = r.peak
                table.response[i] = r.response
                if r.blank:
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


def report_unreadable(run: LuckyRun) -> None:
    """One line per file and kind of problem, not one per frame."""
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
    frame, 0 for unusable ones), how many to keep, the reference frames ``best`` and every
    frame's coarse displacement ``rel`` against the reference (NaN where unknown)."""

    order: np.ndarray
    rank: np.ndarray
    n_keep: int
    best: np.ndarray
    rel: np.ndarray


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
        run.say(f"{source}: only {order.size} usable frames, fewer than --keep {opts.keep}; "
                f"stacking all {order.size}")
    rank = np.zeros(table.n, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    return Ranking(order=order, rank=rank, n_keep=n_keep, best=order[:min(n_ref, order.size)], rel=rel)
