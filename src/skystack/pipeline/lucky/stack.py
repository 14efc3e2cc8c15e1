"""Stacking steps of a lucky run: shift-and-add of the kept frames (global), or the
multi-point stack (each frame de-warped where it is selected and blended with smooth
per-point weights); optional drizzle; the fill of uncovered edges; the colour decision and
the R/B dispersion against G."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ...errors import BadFrameError
from ...io import luminance
from ...options import LuckyOptions
from ...register.multipoint import APGrid, NodeInterpolator, dewarp, fill_from_neighbours, node_values
from ...register.planetary import PhaseCorrelator, covered_only, shift_image, shifted_covered, valid_rect
from ...runtime.progress import Progress
from ...types import Fate
from .align import PointAligner, Reference, global_measure
from .frames import NO_MATCH, UNREADABLE, LuckyRun, chunked
from .gpu import GpuShifts
from .pool import Buffers
from .points import PointChoice
from .rank import Ranking

if TYPE_CHECKING:
    from ...stack.drizzle import Drizzle

_EMPTY = 1e-6  # a pixel whose summed weight is below this was covered by no frame
# Rows of a window de-warped and added at a time by the multi-point pass (see
# _PointStacker): a band's maps, pixels and weights (~7 planes) stay within a core's L2.
_BAND_ROWS = 32
# Planet mode weights a frame at an AP by its correlation response there to this power: the
# few APs of a planet sit on the limb and the belts, where how well a frame matched the
# reference says how well it will stack (a 1-D limb leaves the shift along it loose).
# Measured on the shared planet videos, seeds 1-3: detail +0.0004, +0.0003, +0.0001
# (power 2: +0.0002, +0.0001, 0.0000); on the Moon's surface it cost 0.0002, so surfaces
# are not weighted. _RESPONSE_SCALE brings a typical response (0.5) to weight 1, the
# weight of the globally kept frames that fill the sky nodes.
_RESPONSE_POWER = 4
_RESPONSE_SCALE = 2.0 ** _RESPONSE_POWER


@dataclass
class Stacked:
    """A stack: the image, the per-pixel sum of blending weights, the best frame aligned
    like the stack (for the comparison preview), the AP grid of a multi-point stack and
    how many edge pixels no frame covered (filled from their nearest covered pixel)."""

    image: np.ndarray
    weight: np.ndarray
    best_aligned: np.ndarray | None
    grid: APGrid | None = None
    filled_px: int = 0
    extra: dict = field(default_factory=dict)


def decide_colour(run: LuckyRun, first: int) -> bool:
    """Stack RGB (True) or luminance: ``--color``, and for ``auto`` whether the channels
    of the first frame differ at all (a mono video in a colour container)."""
    opts, source = run.opts, run.source
    if opts.color == "mono":
        return False
    try:
        img = run.frames.read(first)
    except BadFrameError:
        return False
    if img.ndim != 3:
        if opts.color == "rgb":
            run.say(f"{source}: frames are monochrome; --color rgb ignored")
        return False
    if opts.color == "rgb":
        return True
    sub = np.asarray(img[::4, ::4], dtype=np.float32)
    spread = float(np.percentile(sub.max(axis=2) - sub.min(axis=2), 99))
    top = float(np.percentile(sub, 99.9)) or 1.0
    if spread <= max(2.0, 0.01 * top):
        run.say(f"{source}: the colour channels are identical (within {spread:.1f}): a monochrome video in a "
                "colour container; stacking luminance (use --color rgb to keep the channels)", logging.INFO)
        return False
    return True


def _drizzle(shape: tuple[int, int], channels: int, opts: LuckyOptions) -> Drizzle | None:
    if not opts.drizzle:
        return None
    # the drizzle kernel is Numba: importing numba costs 0.13 s (measured on the project's
    # 2-core machine), a tenth of a 1000-frame run that does not drizzle
    from ...stack.drizzle import Drizzle

    return Drizzle(shape, channels=channels, scale=opts.drizzle, pixfrac=opts.pixfrac)


def fill_uncovered(image: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, int]:
    """Give pixels no frame covered (weight ≤ :data:`_EMPTY`, e.g. a frame edge every
    frame drifted away from) the value of their nearest covered pixel, so the stack has no
    NaN; returns the image and how many pixels were filled."""
    empty = weight <= _EMPTY
    n = int(empty.sum())
    if n == 0 or n == empty.size:
        return image, 0 if n == 0 else n
    # each empty pixel gets the label of its nearest covered one; covered pixels are
    # labelled 1, 2, ... in row-major order
    _, labels = cv2.distanceTransformWithLabels(empty.astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    covered = image[~empty]
    out = image.copy()
    out[empty] = covered[labels[empty] - 1]
    return out, n


def _finish(acc: np.ndarray, wsum: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    with np.errstate(invalid="ignore", divide="ignore"):
        image = (acc / np.maximum(wsum, _EMPTY)[:, :, None]).astype(np.float32)
    image = image[:, :, 0] if image.shape[2] == 1 else image
    image, filled = fill_uncovered(image, wsum)
    return image, wsum.astype(np.float32), filled


def _finish_drizzle(drz: Drizzle) -> tuple[np.ndarray, np.ndarray, int]:
    image, wmap = drz.result(min_weight=_EMPTY)
    image, filled = fill_uncovered(np.where(np.isfinite(image), image, 0).astype(np.float32), wmap)
    return image, wmap, filled


def chunk_frames(shape: tuple[int, int], channels: int, n: int) -> int:
    """Frames per stacking task of a pass over ``n`` frames: each task sums its frames into
    one frame-sized buffer (sent back from a forked worker, or read ahead by the calling
    thread for a video decoder): up to 32 frames, fewer for big frames (~32 MB of float32
    frames a chunk), and at most a :data:`_MIN_TASKS`-th of the pass. Fixed by the video
    and the frames alone, so the partial sums do not depend on the worker count."""
    return max(1, min(32, (1 << 25) // max(1, shape[0] * shape[1] * 4 * channels), -(-n // _MIN_TASKS)))


# Stacking tasks per pass, at least. The results are taken in order with workers + 1 tasks
# in flight, so a worker that finished two small tasks while the other still ran a big one
# waited for it: the 107 frames of a uniform-seeing Moon (640x480 mono, 27 frames a chunk)
# made one task of 27 and nine of 9 (the tapered end), and the second of two workers idled
# ~0.1 s of the pass's 0.7 s (timed inside the workers).
_MIN_TASKS = 12


@dataclass
class _Partial:
    """A stacking task's outcome: its frames' results (in order) and their partial sums
    (``acc`` (h, w, c), ``weight`` (h, w)), or ``None`` when the frames are drizzled (the
    calling thread adds them)."""

    frames: list
    acc: np.ndarray | None = None
    weight: np.ndarray | None = None
    shared: bool = False  # the sums are a forked worker's slot, reused by a later task


def _merge(total: np.ndarray | None, part: np.ndarray | None, shared: bool) -> np.ndarray | None:
    if part is None:
        return total
    if total is None:
        return part.copy() if shared else part
    total += part
    return total


def _parts(run: LuckyRun, task, chunks, read, drizzled: bool, sums: Buffers):
    """The stacking tasks' :class:`_Partial` results in order. ``task(chunk, arrays)``
    returns its :class:`_Partial`: it fills ``arrays`` (zeroed shared memory, in a forked
    worker) with its partial sums and leaves them out of the result, or with ``None``
    makes its own; drizzled frames are added by the calling thread, the tasks stay in
    this process."""
    inflight = run.workers.workers + 1
    if drizzled:
        return run.map(lambda chunk: task(chunk, None), run.tasks(chunks, read), inflight=inflight, fork=False)
    return (part if arrays is None else _Partial(part.frames, *arrays, shared=True) for part, arrays in
            run.map(task, run.tasks(chunks, read), inflight=inflight, buffers=sums))


def stack_global(run: LuckyRun, ranking: Ranking, ref: Reference, colour: bool, device=None) -> Stacked:
    """Align the kept frames globally and shift-and-add them (or drizzle them); with a
    ``device`` (:mod:`.gpu`) each task's shifts are measured there, in one batch."""
    opts, table, rel, rank = run.opts, run.table, ranking.rel, ranking.rank
    kept = np.sort(ranking.order[:ranking.n_keep])
    h, w = shape = run.shape
    nc = 3 if colour else 1
    drz = _drizzle(shape, nc, opts)
    best_i = int(kept[np.argmin(rank[kept])]) if kept.size else -1
    best_aligned = None
    read = lambda i: run.reader.read(i, colour)  # noqa: E731
    weight = ranking.weight(table.quality)  # per frame, by its quality

    shifts = GpuShifts(device, ref.aligner, rel) if device is not None else None

    def frame(i, img, pre=None):  # pre: the shift measured on the device, if any
        if isinstance(img, BadFrameError):
            return i, img, None, None
        if pre is not None:
            s, ok = pre, pre.response >= opts.min_response
        else:
            lum = luminance(img)
            s, ok = global_measure(ref.aligner, lum, rel[i], opts.min_response)
        if not ok:
            return i, None, s, None
        if drz is not None:
            return i, img, s, None
        return i, shift_image(img, s.sx, s.sy), s, valid_rect(shape, s.sx, s.sy)

    def task(chunk, sums):
        if shifts is None:
            out = [frame(i, img) for i, img in LuckyRun.frames_of(chunk, read)]
        else:
            out = [frame(i, img, s) for i, img, s in shifts(LuckyRun.frames_of(chunk, read))]
        if drz is not None:
            return _Partial(out)
        # the partial sums: in shared memory (a forked worker), else this task's own
        acc, cnt = sums if sums is not None else (np.zeros((h, w, nc), np.float64), np.zeros((h, w), np.float64))
        for k, (i, img, s, rect) in enumerate(out):
            if rect is None:
                continue
            y0, y1, x0, x1 = rect
            wi = weight[i]
            acc[y0:y1, x0:x1] += wi * (img[y0:y1, x0:x1] if img.ndim == 3 else img[y0:y1, x0:x1, None])
            cnt[y0:y1, x0:x1] += wi
            if i != best_i:
                out[k] = (i, True, s, rect)  # the frame itself need not travel back
        return _Partial(out) if sums is not None else _Partial(out, acc, cnt)

    acc = cnt = None
    chunks = chunked(kept, chunk_frames(shape, nc, kept.size), taper=True)
    parts = _parts(run, task, chunks, read, drz is not None,
                   Buffers((((h, w, nc), np.float64), ((h, w), np.float64))))
    run.workers.release_background()  # e.g. the FITS writer's import, beside these big tasks
    with Progress(int(kept.size), "lucky: align + stack", run.quiet) as bar:
        for part in parts:
            acc, cnt = _merge(acc, part.acc, part.shared), _merge(cnt, part.weight, part.shared)
            for i, img, s, rect in part.frames:
                bar.update()
                if not table.record_alignment(i, img, s, opts.min_response):
                    continue
                table.used[i] = True
                if drz is not None:
                    drz.add(img, (s.sx, s.sy), weight=float(weight[i]))
                    if i == best_i:
                        best_aligned = shifted_covered(img, s.sx, s.sy)
                elif i == best_i:
                    best_aligned = covered_only(img, rect)
    if drz is None:
        acc = acc if acc is not None else np.zeros((h, w, nc), np.float64)
        cnt = cnt if cnt is not None else np.zeros((h, w), np.float64)
    image, wmap, filled = _finish_drizzle(drz) if drz is not None else _finish(acc, cnt)
    return Stacked(image, wmap, best_aligned, filled_px=filled)


# -- multi-point --------------------------------------------------------------------------------

@dataclass
class _FrameStack:
    """What the stacking pass made of one frame."""

    k: int
    i: int
    error: BadFrameError | None = None
    reason: str = ""
    drizzle: tuple | None = None
    shift: object = None
    ap_used: int = 0
    best_aligned: np.ndarray | None = None


def _bounds(nodes: np.ndarray, n: int) -> np.ndarray:
    """Pixel boundaries of the bands between nodes: [0, node 0), [node 0, node 1), ...,
    [last node, n)."""
    return np.concatenate([[0], np.clip(np.ceil(nodes).astype(int), 0, n), [n]])


def _windows(active: np.ndarray, yb: np.ndarray, xb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Rectangles covering the cells where a node weight is non-zero: runs of cells along
    each band, vertically merged when consecutive bands have the same runs."""
    p = np.pad(active, 1, mode="edge")
    cells = p[:-1, :-1] | p[1:, :-1] | p[:-1, 1:] | p[1:, 1:]  # (ny+1, nx+1): any corner weighted
    out: list[list[int]] = []
    prev: list[tuple[int, int]] = []
    for b in range(cells.shape[0]):
        y0, y1 = int(yb[b]), int(yb[b + 1])
        if y1 <= y0:
            continue
        edges = np.flatnonzero(np.diff(np.concatenate([[False], cells[b], [False]]).astype(np.int8)))
        runs = [(int(xb[c0]), int(xb[c1])) for c0, c1 in zip(edges[::2], edges[1::2]) if xb[c1] > xb[c0]]
        if runs and runs == prev and out[-1][1] == y0:
            for r in out[-len(runs):]:
                r[1] = y1
        else:
            out += [[y0, y1, x0, x1] for x0, x1 in runs]
        prev = runs
    return [tuple(r) for r in out]  # type: ignore[misc]


class _PointStacker:
    """Stacks one frame of the multi-point pass (on a worker thread): aligns it at its
    selected APs, builds its displacement and weight fields from the node values and
    de-warps only the windows where it carries weight."""

    def __init__(self, run: LuckyRun, ranking: Ranking, ref: Reference, grid: APGrid, choice: PointChoice,
                 drz: Drizzle | None, best_i: int, mode: str):
        self.grid, self.choice, self.drz, self.best_i = grid, choice, drz, best_i
        self.response_power = _RESPONSE_POWER if mode == "planet" else 0
        self.aligner = PointAligner(run, ref, grid, ranking)
        self.interp = NodeInterpolator(grid, run.shape)
        h, w = run.shape
        self.yb, self.xb = _bounds(grid.ys, h), _bounds(grid.xs, w)
        self.n_ap = grid.n_active

    def __call__(self, item: tuple, acc: np.ndarray | None = None, wsum: np.ndarray | None = None) -> _FrameStack:
        """Stack one frame: its weighted de-warped pixels added to ``acc`` (h, w, c) and its
        weights to ``wsum`` (h, w); with drizzle (no sums) its inputs are in the result."""
        k, i, img, *pre = item  # pre: the global shift measured on the device, if any
        if isinstance(img, BadFrameError):
            return _FrameStack(k, i, error=img)
        lum = luminance(img) if img.ndim == 3 else img
        ch = self.choice
        gk = bool(ch.gkeep[k])
        # only the APs where the frame is stacked: elsewhere its weight is zero, and the
        # field between a measured AP and an unmeasured neighbour continues the measured one
        fa = self.aligner(i, lum, np.nonzero(ch.sel[k])[0], gk, *pre)
        pm = fa.points
        valid = np.zeros(self.n_ap, bool)
        valid[pm.which] = pm.valid
        disp = np.full((self.n_ap, 2), np.nan)
        disp[pm.which] = pm.disp
        use = ch.sel[k] & valid
        glob = float(ch.gweight[k]) if gk and fa.ok else 0.0
        res = _FrameStack(k, i, shift=fa.shift, ap_used=int(use.sum()))
        if not use.any() and not (gk and fa.ok):
            res.reason = (f"no match with the reference (correlation response {fa.shift.response:.3f})" if gk
                          else "its alignment points did not match the reference")
            return res
        g = self.grid
        known = np.zeros(g.active.shape, bool)
        known[g.active] = valid
        sx = fill_from_neighbours(node_values(g, np.where(valid, disp[:, 0], np.nan), fa.shift.sx), known, fa.shift.sx)
        sy = fill_from_neighbours(node_values(g, np.where(valid, disp[:, 1], np.nan), fa.shift.sy), known, fa.shift.sy)
        wq = np.where(use, ch.weight[k], np.float32(0))  # its quality weights where it is stacked
        if self.response_power:
            # planets: weight each AP's frames by how well they matched the reference there
            r = np.zeros(self.n_ap, np.float32)
            r[pm.which] = np.maximum(pm.response, 0.0)
            wq = wq * (r ** self.response_power * _RESPONSE_SCALE)
        wn = node_values(g, wq, glob)
        nodes = np.dstack([sx, sy, wn])
        if i == self.best_i and fa.ok:
            s = fa.shift
            res.best_aligned = shifted_covered(img, s.sx, s.sy)
        if self.drz is not None:
            f = self.interp(nodes)
            res.drizzle = (img, (f[..., 0], f[..., 1]), f[..., 2])
            return res
        windows = _windows(wn > 0, self.yb, self.xb)
        if not windows:
            return res
        # the fields once over the windows' bounding box (one 3-channel resampling of the
        # node lattice), then cut per window
        by0, by1 = min(w[0] for w in windows), max(w[1] for w in windows)
        bx0, bx1 = min(w[2] for w in windows), max(w[3] for w in windows)
        f = self.interp(nodes, (by0, by1, bx0, bx1))
        src = img if img.dtype == np.float32 else img.astype(np.float32)
        # de-warped, weighted and added band by band: a band's maps, pixels and weights stay
        # in the core's cache, where whole windows made ~15 MB of frame-sized temporaries a
        # frame, and two workers on two cores then waited on the memory bus. Every step is
        # per pixel, so the sums are the same to the bit.
        for y0, y1, x0, x1 in windows:
            for a in range(y0, y1, _BAND_ROWS):
                b = min(y1, a + _BAND_ROWS)
                fw = f[a - by0:b - by0, x0 - bx0:x1 - bx0]
                out, inside = dewarp(src, np.ascontiguousarray(fw[..., 0]), np.ascontiguousarray(fw[..., 1]),
                                     (a, b, x0, x1))
                wgt = np.ascontiguousarray(fw[..., 2]) if inside is None else fw[..., 2] * inside
                # sums += pixels × weights by OpenCV, in place on the sums' views (rows of
                # whole pixels): 11 µs a band of 32×300 RGB where NumPy's product and two
                # additions took 50 µs (0.5 ms of a planet frame's 9 ms)
                cv2.accumulateProduct(out, cv2.merge((wgt, wgt, wgt)) if out.ndim == 3 else wgt, acc[a:b, x0:x1])
                cv2.accumulate(wgt, wsum[a:b, x0:x1])
        return res


def stack_points(run: LuckyRun, ranking: Ranking, ref: Reference, grid: APGrid, choice: PointChoice,
                 colour: bool, mode: str, device=None) -> Stacked:
    """The multi-point stack: every frame of ``choice`` read once, aligned at its
    selected APs (all of them, and globally, for the globally kept frames), de-warped where
    it carries weight and blended with its interpolated selection weights (with a
    ``device``, :mod:`.gpu`, each task's global shifts are measured there, in one batch)."""
    t0 = time.perf_counter()
    opts, table = run.opts, run.table
    h, w = shape = run.shape
    nc = 3 if colour else 1
    drz = _drizzle(shape, nc, opts)
    gk = choice.frames[choice.gkeep]
    best_i = int(gk[np.argmin(ranking.rank[gk])]) if gk.size else -1
    best_aligned = None
    stacker = _PointStacker(run, ranking, ref, grid, choice, drz, best_i, mode)
    read = lambda i: run.reader.read(i, colour)  # noqa: E731
    position = {int(i): k for k, i in enumerate(choice.frames)}

    shifts = GpuShifts(device, ref.aligner, ranking.rel, gk) if device is not None else None

    def task(chunk, sums):
        if shifts is None:
            items = ((position[i], i, img) for i, img in LuckyRun.frames_of(chunk, read))
        else:
            items = ((position[i], i, img, s) for i, img, s in shifts(LuckyRun.frames_of(chunk, read)))
        if drz is not None:
            return _Partial([stacker(item) for item in items])
        # the partial sums: in shared memory (a forked worker), else this task's own
        acc, wsum = sums if sums is not None else (np.zeros((h, w, nc), np.float32), np.zeros((h, w), np.float32))
        out = [stacker(item, acc, wsum) for item in items]  # frame by frame, in order
        return _Partial(out) if sums is not None else _Partial(out, acc, wsum)

    acc = wsum = None
    chunks = chunked(choice.frames, chunk_frames(shape, nc, choice.frames.size), taper=True)
    parts = _parts(run, task, chunks, read, drz is not None,
                   Buffers((((h, w, nc), np.float32), ((h, w), np.float32))))
    run.workers.release_background()  # e.g. the FITS writer's import, beside these big tasks
    with Progress(int(choice.frames.size), "lucky: align + stack (multi-point)", run.quiet) as bar:
        for part in parts:
            acc, wsum = _merge(acc, part.acc, part.shared), _merge(wsum, part.weight, part.shared)
            for r in part.frames:
                bar.update()
                if r.error is not None:
                    table.fail(r.i, UNREADABLE, Fate.UNREADABLE, r.error.reason)
                    continue
                table.shift[r.i] = (r.shift.sx, r.shift.sy)
                table.response[r.i] = r.shift.response
                if r.reason:
                    table.fail(r.i, NO_MATCH, Fate.FAILED_REGISTRATION, r.reason)
                    continue
                table.used[r.i] = True
                table.ap_used[r.i] = r.ap_used
                if r.best_aligned is not None:
                    best_aligned = r.best_aligned
                if r.drizzle is not None:
                    img, fld, wgt = r.drizzle
                    drz.add(img, (0.0, 0.0), field=fld, weight=wgt)
    run.timings["align_stack_s"] = time.perf_counter() - t0
    if drz is None:
        acc = acc if acc is not None else np.zeros((h, w, nc), np.float32)
        wsum = wsum if wsum is not None else np.zeros((h, w), np.float32)
    image, wmap, filled = _finish_drizzle(drz) if drz is not None else _finish(acc, wsum)
    return Stacked(image, wmap, best_aligned, grid, filled_px=filled,
                   extra={"local_weight": round(choice.local_weight, 3), "beyond_pool": choice.beyond,
                          "frames_read": int(choice.frames.size)})


def rgb_dispersion(image: np.ndarray, apply: bool) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Measure R and B against G on the stack; with ``apply``, shift them onto G."""
    # a stack has no NaN once its uncovered edges are filled: the median (8 ms for a
    # 640x480 RGB stack) only where one is left
    fill = image if np.isfinite(image).all() else np.nan_to_num(image, nan=float(np.nanmedian(image)))
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
