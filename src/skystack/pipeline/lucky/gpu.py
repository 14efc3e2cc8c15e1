"""The ranking pass on a GPU: a chunk of frames measured at once by a
:class:`~skystack.backends.lucky_gpu.LuckyDevice`.

:class:`GpuRanker` returns for a chunk exactly what :class:`.rank.Ranker` returns frame by
frame (one ``_Rank`` each, in order), so :func:`.rank.rank_all` keeps its bookkeeping
(table, key-frame renewal, failures) and only hands it the chunk. On the device: the
views (frames uploaded in their own dtype), the blank check's extrema, the coarse
correlation of a surface against the current key frame, the LoG energy and the cells;
on the host, as on the CPU path: luminance of colour frames, a planet's disk centroid
(connected components) and the last few arithmetic steps of the cells.

:func:`premeasured` measures the global shifts of the kept frames against the reference
in batches on the device before the stacking threads shift and add them.

The device is chosen once per run by :func:`skystack.backends.registry.resolve_lucky`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ...backends.lucky_gpu import DeviceCorrelator, LuckyDevice
from ...errors import BadFrameError
from ...io import luminance
from ...quality.metrics import _TINY, BLANK_SPAN, ViewSharpness
from ...register.planetary import GlobalAligner, disk_centroid
from .rank import _COARSE_MIN_RESPONSE, Ranker, _Rank


class GpuRanker:
    """Measures chunks of pass 1 on the device for a :class:`.rank.Ranker` (whose mode,
    key frame, anchor and grid it reads as they change)."""

    def __init__(self, ranker: Ranker, device: LuckyDevice):
        self.ranker = ranker
        self.device = device
        self._key: tuple[object, DeviceCorrelator] | None = None

    def _correlator(self) -> DeviceCorrelator:
        key = self.ranker.key
        if self._key is None or self._key[0] is not key:  # renewed by rank_all: upload its spectrum
            self._key = (key, self.device.correlator(key))
        return self._key[1]

    def __call__(self, items: Iterable[tuple[int, np.ndarray | BadFrameError]]) -> list[_Rank]:
        """One ``_Rank`` per item, in order (as ``map(ranker, items)``)."""
        ranker, dev = self.ranker, self.device
        ranks: list[_Rank] = []
        frames: list[np.ndarray] = []
        where: list[int] = []  # ranks[] position of each frame in the batch
        for i, img in items:
            if isinstance(img, BadFrameError):
                ranks.append(_Rank(i, error=img))
                continue
            ranks.append(_Rank(i))
            where.append(len(ranks) - 1)
            frames.append(luminance(img) if img.ndim == 3 else img)
        if not frames:
            return ranks
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:  # the reader checks every frame's geometry; this never batches
            raise ValueError(f"frames of different shapes in one batch: {sorted(shapes)}")
        batch = dev.views(frames, ranker.f)
        lo, hi = dev.extrema(batch)
        active = np.nonzero(hi - lo >= BLANK_SPAN)[0]
        if active.size:
            if ranker.mode == "planet":
                self._locate_planets(batch, active, [ranks[where[k]] for k in active])
            else:
                self._locate_surfaces(batch, active, [ranks[where[k]] for k in active])
        self._cells(batch, np.arange(len(frames)), [ranks[p] for p in where], lo, hi)
        return ranks

    def _locate_planets(self, batch, rows: np.ndarray, ranks: list[_Rank]) -> None:
        f = self.ranker.f
        views = self.device.download(self.device.take(batch, rows))
        for r, view in zip(ranks, views):
            d = disk_centroid(view)
            if d is not None:
                r.coarse = (f * d.cx + (f - 1) / 2.0, f * d.cy + (f - 1) / 2.0)
                r.touches_edge = d.touches_edge
                r.response = 1.0

    def _locate_surfaces(self, batch, rows: np.ndarray, ranks: list[_Rank]) -> None:
        ranker, dev = self.ranker, self.device
        shape = tuple(batch.views.shape[1:])
        coarse = dev.take(batch, rows)
        if ranker.coarse_halves(shape):
            coarse = dev.area(coarse, 2)
        # rank_all keeps the last located frame's coarse view as the next key frame
        host = dev.download(coarse)
        for r, cv in zip(ranks, host):
            r.coarse_view = cv
        if ranker.key is None:
            return
        shifts, resp = self._correlator().measure_many(coarse)
        k = ranker.coarse_factor(shape)
        for r, (sx, sy), q in zip(ranks, shifts, resp):
            r.response = float(q)
            if q >= _COARSE_MIN_RESPONSE:
                r.coarse = (ranker.key_offset[0] + k * float(sx), ranker.key_offset[1] + k * float(sy))

    def _cells(self, batch, rows: np.ndarray, ranks: list[_Rank], lo: np.ndarray, hi: np.ndarray) -> None:
        """``measure_view`` for every frame of the batch: the cells at the frame's coarse
        position (or the anchor), blank frames all zero."""
        ranker = self.ranker
        grid, f = ranker.grid, ranker.f
        shape = (grid.ny, grid.nx)
        blank = hi - lo < BLANK_SPAN
        dx = np.zeros(len(ranks), np.int64)
        dy = np.zeros(len(ranks), np.int64)
        for k, r in enumerate(ranks):
            c = r.coarse if r.coarse is not None else ranker.anchor
            # Python's round, as measure_view rounds the offset
            dx[k] = int(round((c[0] - ranker.anchor[0]) / f))
            dy[k] = int(round((c[1] - ranker.anchor[1]) / f))
        live = np.nonzero(~blank)[0]
        e, lev, area = self.device.cells(batch, rows[live], grid.size, grid.ny, grid.nx, dx[live], dy[live])
        inside = area >= grid.size * grid.size / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            le = np.where(inside, np.log(np.maximum(e, _TINY)), np.nan).astype(np.float32)
            ll = np.where(inside, np.log(np.maximum(lev, BLANK_SPAN)), np.nan).astype(np.float32)
        for j, k in enumerate(live):
            ranks[k].cells = ViewSharpness(le[j].reshape(shape), ll[j].reshape(shape), float(hi[k]), False)
        for k in np.nonzero(blank)[0]:
            z = np.zeros(shape, np.float32)
            ranks[k].cells = ViewSharpness(z, z, float(hi[k]), True)


def premeasured(device: LuckyDevice, aligner: GlobalAligner, items: Iterable[tuple], rel: np.ndarray, batch: int,
                which: np.ndarray | None = None) -> Iterator[tuple]:
    """Items ending in ``(i, frame)`` (frame index, image or :class:`BadFrameError`), ``batch``
    at a time, each with the frame's global shift against the reference appended, measured
    on the device (:class:`~skystack.backends.lucky_gpu.DeviceAligner`, from its coarse
    displacement ``rel[i]`` as :func:`.align.global_measure` does). Only the frames in
    ``which`` (default: all) are measured; the others, and unreadable frames, get ``None``.
    Holds ``batch`` frames."""
    dev_aligner = device.aligner(aligner)
    wanted = None if which is None else {int(i) for i in which}
    pending: list[tuple] = []

    def flush() -> Iterator[tuple]:
        good = [k for k, item in enumerate(pending) if not isinstance(item[-1], BadFrameError)
                and (wanted is None or item[-2] in wanted)]
        lums = [luminance(pending[k][-1]) if pending[k][-1].ndim == 3 else pending[k][-1] for k in good]
        coarse = [rel[pending[k][-2]] for k in good]
        coarse = np.array([c if np.all(np.isfinite(c)) else (0.0, 0.0) for c in coarse], np.float64).reshape(-1, 2)
        shifts, _ = dev_aligner.measure_many(lums, coarse)
        found = dict(zip(good, shifts))
        for k, item in enumerate(pending):
            yield tuple(item) + (found.get(k),)

    for item in items:
        pending.append(item)
        if len(pending) >= batch:
            yield from flush()
            pending = []
    if pending:
        yield from flush()
