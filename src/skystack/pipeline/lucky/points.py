"""The local side of the selection: every frame's sharpness cells sampled at the same
places on the object (:func:`score_frames`), then, once the alignment points are placed,
every frame's local quality at each point and the per-point selection
(:func:`choose_points`), which may reach any usable frame, not only the globally best."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...quality.metrics import CellGrid, CellModel, fit_cells, global_quality, nanmedian, sample_cells
from ...register.multipoint import APGrid
from .frames import BLANK, OK, UNREADABLE, LuckyRun
from .rank import Ranker, Ranking

_CHUNK_FRAMES = 2048  # frames sampled at once (bounds the temporaries of long videos)
_MEDIAN_FRAMES = 2048  # frames whose cells fit the cell model (and the per-point medians) of a long video
_BLUR_CHANNELS = 128  # the most channels OpenCV's Python binding takes
_LOCAL_SMOOTH = 0.7  # cells: the Gaussian that averages a region's noisy cell energies
# The weight of the local residual against the global quality is the residual's share of
# local signal (neighbour covariance over smoothed variance; measured on the shared
# benchmark videos: 0.0-0.02 with uniform seeing, 0.63 for the planet, 1.1-1.3 for the
# patchy Moon) times _LOCAL_SHRINK, at most _LOCAL_MAX. Measured detail on the patchy Moon
# is flat for weights 0.5-0.8 while the frames read grow from 420 to 730 (1000-frame
# video); beyond 1.0 it falls.
_LOCAL_SHRINK = 0.5
_LOCAL_MAX = 0.6


@dataclass(frozen=True)
class Sharpness:
    """From the global ranking, what the local qualities need: the cell grid and its
    cell side in frame pixels, the coarse position ``anchor`` at which the cells tile a
    frame exactly (cell positions are object positions: a point ``p`` of the reference
    sits on cell coordinates ``(p − origin + anchor) / cell_px − ½``), the fitted
    :class:`~skystack.quality.metrics.CellModel` and the estimated variance of the
    residual cells' local (seeing) part, ``local_signal``."""

    grid: CellGrid
    cell_px: float
    anchor: tuple[float, float]
    model: CellModel | None
    local_signal: float


def _spread(rows: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of ``rows``, evenly spread."""
    if rows.size <= limit:
        return rows
    return rows[np.linspace(0, rows.size - 1, limit).astype(int)]


def _lag_covariance(residual: np.ndarray, lag: int) -> float:
    """Mean product of residuals ``lag`` cells apart (along x and y)."""
    prods = []
    if residual.shape[2] > lag:
        prods.append((residual[:, :, lag:] * residual[:, :, :-lag]).ravel())
    if residual.shape[1] > lag:
        prods.append((residual[:, lag:, :] * residual[:, :-lag, :]).ravel())
    if not prods:
        return 0.0
    p = np.concatenate(prods)
    p = p[np.isfinite(p)]
    return float(p.mean()) if p.size else 0.0


def score_frames(run: LuckyRun, ranker: Ranker) -> Sharpness:
    """Every measured frame's global quality (:func:`skystack.quality.metrics.global_quality`)
    from its cells, with the cell model fitted on (a sample of) the located frames."""
    table, grid = run.table, ranker.grid
    cell_px = float(ranker.f * grid.size)
    flat = (table.n, grid.ny * grid.nx)
    energy, level = table.log_energy.reshape(flat), table.log_level.reshape(flat)
    located = np.nonzero((table.status == OK) & np.isfinite(table.coarse[:, 0]))[0]
    if located.size == 0:
        return Sharpness(grid, cell_px, ranker.anchor, None, 0.0)
    sample = _spread(located, _MEDIAN_FRAMES)
    e, lv = energy[sample].astype(np.float32), level[sample].astype(np.float32)
    model = fit_cells(e, lv)
    res = global_quality(e, lv, model).residual
    res = np.where(model.weight > 0, res, np.nan).reshape(sample.size, grid.ny, grid.nx)
    # neighbouring cells share the local seeing but not the noise (cells do not overlap);
    # the residual's weighted mean over cells is zero by construction, which biases every
    # pair's product by about -var/cells: the far pairs measure that bias
    signal = max(0.0, _lag_covariance(res, 1) - _lag_covariance(res, max(4, min(grid.ny, grid.nx) // 2)))
    measured = np.nonzero((table.status != UNREADABLE) & (table.status != BLANK))[0]
    for a in range(0, measured.size, _CHUNK_FRAMES):
        rows = measured[a:a + _CHUNK_FRAMES]
        gq = global_quality(energy[rows].astype(np.float32), level[rows].astype(np.float32), model)
        table.quality[rows] = gq.quality
        table.log_gain[rows] = gq.log_gain
    return Sharpness(grid, cell_px, ranker.anchor, model, signal)


@dataclass(frozen=True)
class PointChoice:
    """Which frames stack where: ``frames`` (sorted indices) to read in the stacking pass,
    ``sel`` (len(frames), n_ap) where each is among the best ``keep`` of an alignment
    point, ``gkeep`` (len(frames),) whether it is among the best ``keep`` globally (these
    fill the nodes without an AP); ``local_weight`` how much the local quality counted
    against the global one (0: selection by the global quality alone) and ``beyond`` how
    many frames a point took from outside the global pool of twice the kept count.
    ``weight`` and ``gweight`` are :meth:`.rank.Ranking.weight` of the frames' local
    quality at each selected point (relative to the point's best) and of their global
    quality."""

    frames: np.ndarray
    sel: np.ndarray
    gkeep: np.ndarray
    local_weight: float
    beyond: int
    weight: np.ndarray  # (len(frames), n_ap) stacking weight where selected, else 0
    gweight: np.ndarray  # (len(frames),) weight by the global quality (the nodes without an AP)


def _smoothed(maps: np.ndarray) -> np.ndarray:
    """Each frame's cell map smoothed by a Gaussian of :data:`_LOCAL_SMOOTH` cells, NaN
    cells (outside the frame) left out of the average and given the average of their
    measured neighbours (NaN only far from any)."""
    m = maps.astype(np.float32)
    ok = np.isfinite(m)
    num_in = np.where(ok, m, np.float32(0))
    den_in = ok.astype(np.float32)
    out = np.empty(m.shape, np.float32)
    n, ny, nx = m.shape
    # the frames as the channels of one image (at most _BLUR_CHANNELS at once): one
    # OpenCV call per 128 frames instead of two per frame (4x faster)
    for a in range(0, n, _BLUR_CHANNELS):
        b = min(n, a + _BLUR_CHANNELS)
        num, den = (cv2.GaussianBlur(np.ascontiguousarray(x[a:b].transpose(1, 2, 0)), (0, 0), _LOCAL_SMOOTH,
                                     borderType=cv2.BORDER_CONSTANT).reshape(ny, nx, b - a)
                    for x in (num_in, den_in))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = np.where(den > 0.05, num / den, np.nan).transpose(2, 0, 1)
    return out


class _LocalScores:
    """Frames' local residuals at the alignment points, chunk by chunk."""

    def __init__(self, run: LuckyRun, ranking: Ranking, sharp: Sharpness, grid: APGrid):
        self.table, self.ranking = run.table, ranking
        centres = grid.centers
        origin = ranking.origin
        # the points' fixed places on the object, in cell coordinates
        self.points = (centres - origin + np.asarray(sharp.anchor)) / sharp.cell_px - 0.5
        self.centres = centres
        self.half = grid.size / 2.0
        self.shape = run.shape
        n_ap = centres.shape[0]
        self.median = np.zeros(n_ap, np.float32)
        self.loading = np.ones(n_ap, np.float32)

    def inside(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_ap): whether each point's box lies inside each frame."""
        h, w = self.shape
        rel = self.ranking.rel[rows]
        x = self.centres[None, :, 0] + rel[:, None, 0]
        y = self.centres[None, :, 1] + rel[:, None, 1]
        return (x >= self.half) & (x <= w - self.half) & (y >= self.half) & (y <= h - self.half)

    def local(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_ap) smoothed log energy minus the brightness correction (NaN
        where the point's box leaves the frame or no cell is known)."""
        local = sample_cells(_smoothed(self.table.log_energy[rows]), self.points)
        local[~self.inside(rows)] = np.nan
        local -= (2.0 * self.table.log_gain[rows]).astype(np.float32)[:, None]
        return local

    def fit(self, rows: np.ndarray) -> np.ndarray:
        """Median and loading per point from frames ``rows``; returns their residuals."""
        local = self.local(rows)
        self.median = np.nan_to_num(nanmedian(local, 0)).astype(np.float32)
        q = self.table.quality[rows]
        ok = np.isfinite(local) & np.isfinite(q)[:, None]
        qc = np.where(ok, q[:, None] - np.nanmean(q), 0.0)
        lc = np.where(ok, local - self.median, 0.0)
        var_q = (qc * qc).sum(axis=0)
        self.loading = np.where(var_q > 0, (lc * qc).sum(axis=0) / np.maximum(var_q, 1e-12), 1.0).astype(np.float32)
        return self.residual(rows, local)

    def residual(self, rows: np.ndarray, local: np.ndarray | None = None) -> np.ndarray:
        if local is None:
            local = self.local(rows)
        q = self.table.quality[rows].astype(np.float32)
        return local - self.median - self.loading * q[:, None]


def choose_points(run: LuckyRun, ranking: Ranking, sharp: Sharpness, grid: APGrid) -> PointChoice:
    """Per alignment point, the best ``keep`` usable frames by local quality.

    A frame's local quality at a point is its global quality plus ``β`` times its
    residual there: the smoothed cell energies at the point, less what the frame's global
    quality predicts for that place (the region's own sharpness in this frame). ``β`` is
    estimated from the data: the variance of the residual that is correlated between
    neighbouring cells (the local seeing, less the share local warps cause) over the
    variance of the smoothed residual (signal plus noise); under uniform seeing it is 0
    and every point takes the globally best frames. Long videos are scored in chunks,
    keeping a running best ``keep`` per point.
    """
    table, order, n_keep = run.table, ranking.order, ranking.n_keep
    n_ap = grid.n_active
    k = min(n_keep, order.size)
    if n_ap == 0 or sharp.model is None:
        frames = np.sort(order[:k])
        none = np.zeros((frames.size, n_ap), bool)
        return PointChoice(frames, none, np.ones(frames.size, bool), 0.0, 0, none.astype(np.float32),
                           ranking.weight(table.quality[frames]).astype(np.float32))
    scores = _LocalScores(run, ranking, sharp, grid)
    resid = scores.fit(order[_spread(np.arange(order.size), _MEDIAN_FRAMES)])
    v = resid[np.isfinite(resid)].astype(np.float64)
    var_s = float(np.mean(v * v)) if v.size else 0.0
    if run.opts.local_weight is not None:
        beta = float(run.opts.local_weight)
    else:
        beta = float(np.clip(_LOCAL_SHRINK * sharp.local_signal / var_s, 0.0, _LOCAL_MAX)) if var_s > 0 else 0.0
    # running best k per point: row numbers into ``order`` (rank order, so a stable sort
    # gives ties to the better-ranked frame) and their scores
    top_rows = np.zeros((0, n_ap), np.int64)
    top_score = np.zeros((0, n_ap), np.float32)
    for a in range(0, order.size, _CHUNK_FRAMES):
        rows = np.arange(a, min(order.size, a + _CHUNK_FRAMES))
        q = table.quality[order[rows]].astype(np.float32)
        r = scores.residual(order[rows])
        # a point inside the frame whose cells are unknown takes the frame's global quality
        ok = scores.inside(order[rows]) & np.isfinite(q)[:, None]
        sc = np.where(ok, q[:, None] + np.float32(beta) * np.nan_to_num(r), -np.inf)
        cand_rows = np.concatenate([top_rows, np.broadcast_to(rows[:, None], sc.shape)])
        cand = np.concatenate([top_score, sc.astype(np.float32)])
        best = np.argsort(-cand, axis=0, kind="stable")[:k]
        top_rows = np.take_along_axis(cand_rows, best, 0)
        top_score = np.take_along_axis(cand, best, 0)
    ok = np.isfinite(top_score)
    chosen_rows = np.unique(np.concatenate([top_rows[ok], np.arange(k)]))
    lookup = np.full(order.size, -1, np.int64)
    lookup[chosen_rows] = np.arange(chosen_rows.size)
    at = (lookup[top_rows[ok]], np.broadcast_to(np.arange(n_ap), top_rows.shape)[ok])
    sel = np.zeros((chosen_rows.size, n_ap), bool)
    sel[at] = True
    # each point's frames weighted by their local quality there against the point's best
    weight = np.zeros((chosen_rows.size, n_ap), np.float32)
    weight[at] = ranking.weight(ranking.top_quality + (top_score - top_score[:1])[ok])
    frames = order[chosen_rows]
    srt = np.argsort(frames, kind="stable")
    beyond = int((sel.any(axis=1) & (chosen_rows >= 2 * n_keep)).sum())
    return PointChoice(frames[srt], sel[srt], (chosen_rows < k)[srt], beta, beyond, weight[srt],
                       ranking.weight(table.quality[frames[srt]]).astype(np.float32))
