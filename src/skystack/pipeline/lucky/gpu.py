"""The lucky pipeline's work on a GPU: a chunk task's frames measured at once by a
:class:`~skystack.backends.lucky_gpu.LuckyDevice`.

:class:`GpuRanker` returns for a ranking task (a :class:`.rank._RankTask`: a chunk of
frames and its key frame) what :meth:`.rank.Ranker.chunk` returns for it (one ``_Rank``
per frame, in order), so :func:`.rank.rank_all` keeps its bookkeeping (table, key-frame
renewal with its lag, failures) and only hands it the task. On the device: the views
(frames uploaded in their own dtype), the blank check's extrema, the coarse correlation of
a surface against the task's key frame, the LoG energy and the cells; on the host, as on
the CPU path: luminance of colour frames, a planet's disk centroid (connected
components), the key frame's reference spectrum (the Ranker's own correlator, uploaded
once per key) and the last few arithmetic steps of the cells.

:class:`GpuShifts` measures the global shifts of a stacking task's frames against the
reference in one batch, inside the task, before they are shifted and added into the
task's partial sums.

With a device the run's workers are threads (a CUDA context cannot be used in a forked
child), and one :class:`LuckyDevice` serves one thread at a time: the device work of
concurrent tasks takes turns behind its ``lock``, their host work (reading, luminance, disk
centroids, shifting and adding) overlaps. The device is chosen once per run by
:func:`skystack.backends.registry.resolve_lucky`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from ...backends.lucky_gpu import DeviceAligner, DeviceCorrelator, LuckyDevice
from ...errors import BadFrameError
from ...io import luminance
from ...quality.metrics import _TINY, BLANK_SPAN, ViewSharpness
from ...register.planetary import GlobalAligner, Shift, disk_centroid
from .frames import LuckyRun
from .rank import KeyFrame, Ranker, _Rank, _RankTask


class GpuRanker:
    """Measures the ranking pass's chunk tasks on the device for a :class:`.rank.Ranker`
    (whose mode, first key frame, anchor, grid and ``keep_views`` it reads)."""

    def __init__(self, ranker: Ranker, device: LuckyDevice):
        self.ranker = ranker
        self.device = device
        self._key: tuple[int, DeviceCorrelator] | None = None  # one key alive, as Ranker's

    def _correlator(self, key: KeyFrame | None, read: Callable[[int], Any]) -> DeviceCorrelator | None:
        """The key frame's correlator on the device: the Ranker's own (its spectrum, from
        the same key view), uploaded once per key. Call it holding the lock."""
        if key is None:
            return None
        held = self._key
        if held is None or held[0] != key.no:
            held = (key.no, self.device.correlator(self.ranker._correlator(key, read)))
            self._key = held
        return held[1]

    def chunk(self, task: _RankTask, read: Callable[[int], Any]) -> list[_Rank]:
        """Rank the frames of one chunk task (as :meth:`.rank.Ranker.chunk`)."""
        ranks: list[_Rank] = []
        frames: list[np.ndarray] = []
        for i, img in LuckyRun.frames_of(task.chunk, read):
            if isinstance(img, BadFrameError):
                ranks.append(_Rank(i, error=img))
                continue
            ranks.append(_Rank(i))
            frames.append(luminance(img) if img.ndim == 3 else img)
        if not frames:
            return ranks
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:  # the reader checks every frame's geometry; this never batches
            raise ValueError(f"frames of different shapes in one batch: {sorted(shapes)}")
        good = [r for r in ranks if r.error is None]
        with self.device.lock:
            self._measure(frames, good, task.key, read)
        return ranks

    def _measure(self, frames: list[np.ndarray], ranks: list[_Rank], key: KeyFrame | None, read) -> None:
        ranker, dev = self.ranker, self.device
        batch = dev.views(frames, ranker.f)
        lo, hi = dev.extrema(batch)
        active = np.nonzero(hi - lo >= BLANK_SPAN)[0]
        if active.size:
            if ranker.mode == "planet":
                self._locate_planets(batch, active, [ranks[k] for k in active])
            else:
                self._locate_surfaces(batch, active, [ranks[k] for k in active], key, read)
        self._cells(batch, ranks, lo, hi)

    def _locate_planets(self, batch, rows: np.ndarray, ranks: list[_Rank]) -> None:
        views = self.device.download(self.device.take(batch, rows))
        for r, view in zip(ranks, views):
            d = disk_centroid(view)
            if d is not None:
                self.ranker.found_disk(r, d)

    def _locate_surfaces(self, batch, rows: np.ndarray, ranks: list[_Rank], key: KeyFrame | None, read) -> None:
        ranker, dev = self.ranker, self.device
        shape = tuple(batch.views.shape[1:])
        coarse = dev.take(batch, rows)
        if ranker.coarse_halves(shape):
            coarse = dev.area(coarse, 2)
        # rank_all keeps the last located frame's coarse view for the next key frame
        host = dev.download(coarse) if ranker.keep_views else [None] * len(ranks)
        for r, cv in zip(ranks, host):
            r.keyable = True
            r.coarse_view = cv
        corr = self._correlator(key, read)
        if corr is None:
            return
        shifts, resp = corr.measure_many(coarse)
        for r, (sx, sy), q in zip(ranks, shifts, resp):
            ranker.matched(r, key, shape, float(sx), float(sy), float(q))

    def _cells(self, batch, ranks: list[_Rank], lo: np.ndarray, hi: np.ndarray) -> None:
        """``measure_view`` for every frame of the batch: the cells at the frame's coarse
        position (or the anchor), blank frames all zero."""
        ranker = self.ranker
        grid = ranker.grid
        shape = (grid.ny, grid.nx)
        blank = hi - lo < BLANK_SPAN
        # Python's round, as measure_view rounds the offset
        offsets = [ranker.cell_offset(r) for r in ranks]
        dx = np.array([int(round(o[0])) for o in offsets], np.int64)
        dy = np.array([int(round(o[1])) for o in offsets], np.int64)
        live = np.nonzero(~blank)[0]
        e, lev, area = self.device.cells(batch, live, grid.size, grid.ny, grid.nx, dx[live], dy[live])
        inside = area >= grid.size * grid.size / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            le = np.where(inside, np.log(np.maximum(e, _TINY)), np.nan).astype(np.float32)
            ll = np.where(inside, np.log(np.maximum(lev, BLANK_SPAN)), np.nan).astype(np.float32)
        for j, k in enumerate(live):
            ranks[k].cells = ViewSharpness(le[j].reshape(shape), ll[j].reshape(shape), float(hi[k]), False)
        for k in np.nonzero(blank)[0]:
            z = np.zeros(shape, np.float32)
            ranks[k].cells = ViewSharpness(z, z, float(hi[k]), True)


class GpuShifts:
    """The global shifts of a stacking task's frames against the reference, measured on
    the device in one batch (:class:`~skystack.backends.lucky_gpu.DeviceAligner`, from
    each frame's coarse displacement as :func:`.align.global_measure` does).

    Parameters
    ----------
    device
        The run's device.
    aligner
        The reference's CPU :class:`GlobalAligner` (its spectrum is uploaded once).
    rel
        Every frame's coarse displacement from the reference.
    which
        The frames to measure (default: all); the others get ``None``.
    """

    def __init__(self, device: LuckyDevice, aligner: GlobalAligner, rel: np.ndarray,
                 which: Iterable[int] | None = None):
        self.device, self.rel = device, rel
        self.wanted = None if which is None else {int(i) for i in which}
        self._aligner = aligner
        self._dev_aligner: DeviceAligner | None = None

    def __call__(self, items: Iterable[tuple[int, np.ndarray | BadFrameError]]) -> list[tuple]:
        """``(i, frame, shift)`` for each ``(i, frame)``: the frame's global shift, or
        ``None`` for an unreadable frame or one not asked for."""
        items = list(items)
        good = [k for k, (i, img) in enumerate(items)
                if not isinstance(img, BadFrameError) and (self.wanted is None or i in self.wanted)]
        lums = [luminance(items[k][1]) for k in good]
        coarse = np.array([self.rel[items[k][0]] for k in good], np.float64).reshape(-1, 2)
        coarse[~np.all(np.isfinite(coarse), axis=1)] = 0.0  # as global_measure: no coarse position
        with self.device.lock:
            if self._dev_aligner is None:
                self._dev_aligner = self.device.aligner(self._aligner)
            shifts: list[Shift] = self._dev_aligner.measure_many(lums, coarse)[0] if good else []
        found = dict(zip(good, shifts))
        return [(i, img, found.get(k)) for k, (i, img) in enumerate(items)]
