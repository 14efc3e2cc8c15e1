"""Stacking steps of a lucky run: shift-and-add of the kept frames (global), or per-AP
selection and a de-warped, smoothly blended stack (multi-point); optional drizzle; the
colour decision and the R/B dispersion against G."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ...errors import BadFrameError
from ...io import luminance
from ...options import LuckyOptions
from ...register.multipoint import APGrid, NodeInterpolator, dewarp, node_values, select_per_ap
from ...register.planetary import PhaseCorrelator, shift_image, valid_rect
from ...runtime.progress import Progress
from ...stack.drizzle import Drizzle
from ...types import Fate
from .align import PointMeasures, Reference, global_measure
from .frames import UNREADABLE, LuckyRun
from .rank import Ranking


@dataclass
class Stacked:
    """A stack: the image (NaN where nothing covered), the per-pixel sum of blending
    weights, the best frame aligned like the stack (for the comparison preview) and the AP
    grid of a multi-point stack."""

    image: np.ndarray
    weight: np.ndarray
    best_aligned: np.ndarray | None
    grid: APGrid | None = None


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
    return Drizzle(shape, channels=channels, scale=opts.drizzle, pixfrac=opts.pixfrac)


def _normalise(acc: np.ndarray, wsum: np.ndarray, nc: int, empty: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        image = (acc / wsum[:, :, None]).astype(np.float32)
    image[empty] = np.nan
    return image[:, :, 0] if nc == 1 else image


def stack_global(run: LuckyRun, ranking: Ranking, ref: Reference, colour: bool) -> Stacked:
    """Align the kept frames globally and shift-and-add them (or drizzle them)."""
    opts, table, rel, rank = run.opts, run.table, ranking.rel, ranking.rank
    kept = np.sort(ranking.order[:ranking.n_keep])
    h, w = shape = run.shape
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
        s, ok = global_measure(ref.aligner, lum, rel[i], opts.min_response)
        if not ok:
            return i, None, s, None
        if drz is not None:
            return i, img, s, None
        return i, shift_image(img, s.sx, s.sy), s, valid_rect(shape, s.sx, s.sy)

    items = ((int(i), run.reader.read(int(i), colour)) for i in kept)
    with Progress(int(kept.size), "lucky: align + stack", run.quiet) as bar:
        for i, img, s, rect in run.map(work, items):
            bar.update()
            if not table.record_alignment(i, img, s, opts.min_response):
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
        image = _normalise(acc, cnt, nc, cnt == 0)
        wmap = cnt.astype(np.float32)
    return Stacked(image, wmap, best_aligned)


@dataclass(frozen=True)
class _Selection:
    """Which pool frames contribute: globally (``gkeep``, for nodes without an AP) and per
    AP (``sel``, (m, n_ap)); ``order`` is the matched pool rows, best first."""

    gkeep: np.ndarray
    sel: np.ndarray
    order: np.ndarray

    @property
    def contributes(self) -> np.ndarray:
        return self.gkeep | self.sel.any(axis=1)


def _select(pm: PointMeasures, ranking: Ranking) -> _Selection:
    # global selection among the frames that registered (for nodes without an AP), then
    # per-AP selection by local quality among the same pool
    m, n_keep = pm.pool.size, ranking.n_keep
    reg = np.nonzero(pm.ok)[0]
    reg_sorted = reg[np.lexsort((pm.pool[reg], ranking.rank[pm.pool[reg]]))]
    gkeep = np.zeros(m, bool)
    gkeep[reg_sorted[:n_keep]] = True
    n_ap = pm.grid.n_active
    sel = select_per_ap(pm.quality, pm.valid & pm.ok[:, None], n_keep) if n_ap else np.zeros((m, 0), bool)
    return _Selection(gkeep, sel, reg_sorted)


def stack_multipoint(run: LuckyRun, pm: PointMeasures, ranking: Ranking, colour: bool) -> Stacked:
    """Select per AP, then de-warp every contributing frame by its interpolated
    displacement field and blend it with its interpolated selection weights."""
    opts, table, rank = run.opts, run.table, ranking.rank
    grid, pool_idx = pm.grid, pm.pool
    choice = _select(pm, ranking)
    contributes = choice.contributes
    t0 = time.perf_counter()
    h, w = shape = run.shape
    m = pool_idx.size
    nc = 3 if colour else 1
    interp = NodeInterpolator(grid, shape)
    drz = _drizzle(shape, nc, opts)
    acc = np.zeros((h, w, nc), np.float64) if drz is None else None
    wsum = np.zeros((h, w), np.float64) if drz is None else None
    best_k = int(choice.order[0]) if choice.order.size else -1
    best_aligned = None

    def fields(k: int):
        gx, gy = pm.gshift[k]
        d = pm.disp[k]
        good = pm.valid[k]
        vx = np.where(good, d[:, 0], np.nan)
        vy = np.where(good, d[:, 1], np.nan)
        sx = interp(node_values(grid, vx, gx))
        sy = interp(node_values(grid, vy, gy))
        wgt = interp(node_values(grid, choice.sel[k].astype(np.float32), float(choice.gkeep[k])))
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
    items = ((k, int(pool_idx[k]), run.reader.read(int(pool_idx[k]), colour)) for k in todo)
    with Progress(len(todo), "lucky: stack (multi-point)", run.quiet) as bar:
        for k, i, v, fld, wgt in run.map(stack_one, items):
            bar.update()
            if isinstance(v, BadFrameError):  # changed since pass 2: report, go on
                table.fail(i, UNREADABLE, Fate.UNREADABLE, v.reason)
                continue
            table.used[i] = True
            table.ap_used[i] = int(choice.sel[k].sum())
            if drz is not None:
                drz.add(v, (0.0, 0.0), field=fld, weight=wgt)
                if k == best_k:
                    best_aligned = shift_image(v, *pm.gshift[k])
                continue
            acc += v
            wsum += wgt
            if k == best_k:
                img = run.reader.read(i, colour)
                if not isinstance(img, BadFrameError):
                    best_aligned = shift_image(img, *pm.gshift[k])
    run.timings["stack_s"] = time.perf_counter() - t0
    n_keep = ranking.n_keep
    for k in range(m):
        i = int(pool_idx[k])
        if pm.ok[k] and not contributes[k] and i not in table.reasons:
            table.reasons[i] = (Fate.REJECTED, f"quality rank {rank[i]}: not among the best {n_keep} "
                                               "globally nor at any alignment point")
    if drz is not None:
        image, wmap = drz.result()
    else:
        image = _normalise(acc, wsum, nc, wsum <= 1e-6)
        wmap = wsum.astype(np.float32)
    return Stacked(image, wmap, best_aligned, grid)


def rgb_dispersion(image: np.ndarray, apply: bool) -> tuple[np.ndarray, dict[str, list[float]]]:
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
