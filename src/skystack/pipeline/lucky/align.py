"""Alignment steps of a lucky run: the reference from the best frames, each frame's global
subpixel shift against it, the alignment points and each frame's displacement at the
points it is stacked at."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ...errors import BadFrameError, RegistrationError
from ...register.multipoint import APGrid, LocalAligner, LocalMeasure, place_alignment_points
from ...register.planetary import Disk, GlobalAligner, Shift, disk_centroid, shift_image
from .frames import LuckyRun, chunked
from .rank import Ranking


# reference frames per task (at most 50 frames: a few tasks per worker). These tasks run
# on threads even where the passes over the whole video fork: whole-frame warps and FFTs
# release the GIL, and two forks per pass would cost more than the GIL does here
_REF_CHUNK = 8


@dataclass(frozen=True)
class Reference:
    """The mean of the best frames, the aligner that measures frames against it, and the
    planet's disk on it (``None`` for a surface)."""

    image: np.ndarray
    aligner: GlobalAligner
    disk: Disk | None


def _aligner(ref: np.ndarray, roi: tuple[int, int, int, int]) -> GlobalAligner:
    # big fields correlate at half resolution: a quarter of the FFT work, same accuracy
    # (tests/pipeline/lucky: 0.04 px RMS either way on the synthetic Moon)
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


def build_reference(run: LuckyRun, ranking: Ranking, mode: str) -> Reference:
    """Mean of the best frames at their coarse positions, then once more at positions
    measured against that mean (two streamed passes over at most 50 frames)."""
    idx = np.sort(ranking.best)
    rel, shape, reader = ranking.rel, run.shape, run.reader
    read = lambda i: reader.read(i, False)  # noqa: E731
    chunks = chunked(idx, _REF_CHUNK)

    def mean_of(shifts: dict[int, tuple[float, float]], interpolation: int) -> np.ndarray:
        def task(chunk):
            acc = np.zeros(shape, np.float64)
            k = 0
            for i, img in LuckyRun.frames_of(chunk, read):
                if isinstance(img, BadFrameError):
                    continue
                sx, sy = shifts[i]
                acc += shift_image(img, sx, sy, interpolation=interpolation)
                k += 1
            return acc, k

        use = [c[np.isin(c, list(shifts))] for c in chunks]
        acc, k = np.zeros(shape, np.float64), 0
        for a, n in run.map(task, run.tasks([c for c in use if c.size], read), fork=False):
            acc += a
            k += n
        if k == 0:
            raise RegistrationError("no reference frame could be read")
        return (acc / k).astype(np.float32)

    # the first mean only serves to measure the frames against: bilinear (15 times faster
    # than bicubic in OpenCV) is enough for that
    ref0 = mean_of({int(i): (float(rel[i, 0]), float(rel[i, 1])) for i in idx}, cv2.INTER_LINEAR)
    roi, disk = _roi(ref0, rel[idx], mode)
    aligner = _aligner(ref0, roi)

    def measure(chunk):
        out = []
        for i, img in LuckyRun.frames_of(chunk, read):
            if not isinstance(img, BadFrameError):
                s, _ = aligner.measure(img, (float(rel[i, 0]), float(rel[i, 1])))
                out.append((i, s))
        return out

    refined: dict[int, tuple[float, float]] = {}
    for part in run.map(measure, run.tasks(chunks, read), fork=False):
        for i, s in part:
            if s.response > 0:
                refined[i] = (s.sx, s.sy)
    if refined:
        # keep the coarse frame of reference: remove the refined shifts' mean offset
        mx = float(np.mean([v[0] for v in refined.values()]))
        my = float(np.mean([v[1] for v in refined.values()]))
        ref = mean_of({i: (v[0] - mx, v[1] - my) for i, v in refined.items()}, cv2.INTER_CUBIC)
    else:
        ref = ref0
    roi, disk = _roi(ref, rel[idx], mode)
    return Reference(ref, _aligner(ref, roi), disk)


def global_measure(aligner: GlobalAligner, lum: np.ndarray, coarse: np.ndarray,
                   min_response: float) -> tuple[Shift, bool]:
    """A frame's subpixel shift from its coarse position, and whether it matched."""
    c = (0.0, 0.0) if not np.all(np.isfinite(coarse)) else (float(coarse[0]), float(coarse[1]))
    s, _ = aligner.measure(lum, c)
    return s, s.response >= min_response


def place_points(run: LuckyRun, ranking: Ranking, ref: Reference) -> APGrid:
    """The alignment-point lattice on the reference, kept clear of the border by the
    usual drift (most frames then keep every AP box inside; the few displaced further lose
    their edge APs)."""
    opts = run.opts
    h, w = run.shape
    rel = ranking.rel[ranking.order]
    margin = int(math.ceil(np.percentile(np.abs(rel), 90) + 2)) if rel.size else 0
    margin = min(margin, min(h, w) // 4)
    return place_alignment_points(ref.image, ap_size=opts.ap_size, spacing=opts.ap_spacing,
                                  min_structure=opts.ap_min_structure, margin=margin)


@dataclass(frozen=True)
class FrameAlignment:
    """One frame's alignment in the multi-point pass: its global shift and whether it
    matched (``ok``), and its displacement at the APs measured (``points``)."""

    shift: Shift
    ok: bool
    points: LocalMeasure


class PointAligner:
    """Aligns frames of the multi-point pass: globally (frames that fill the nodes without
    an AP, against the whole reference) and at their selected APs.

    A frame used only at some APs needs no global alignment: its APs are correlated from
    its coarse position (good to a pixel; an AP tolerates a quarter of its size), and its
    global shift for the report is the median of its AP displacements.
    """

    def __init__(self, run: LuckyRun, ref: Reference, grid: APGrid, ranking: Ranking):
        self.opts, self.ref, self.rel = run.opts, ref, ranking.rel
        self.local = LocalAligner(ref.image, grid)

    def __call__(self, i: int, lum: np.ndarray, which: np.ndarray | None, global_too: bool,
                 shift: Shift | None = None) -> FrameAlignment:
        """Measure frame ``i`` at the APs ``which`` (None: all), and globally when
        ``global_too`` (then the APs are correlated from the global shift; ``shift``: that
        shift, already measured on a GPU)."""
        if global_too:
            s, ok = ((shift, shift.response >= self.opts.min_response) if shift is not None
                     else global_measure(self.ref.aligner, lum, self.rel[i], self.opts.min_response))
            pm = self.local.measure(lum, (s.sx, s.sy) if ok else tuple(self.rel[i]), which)
            return FrameAlignment(s, ok, pm)
        c = self.rel[i]
        pm = self.local.measure(lum, (float(c[0]), float(c[1])), which)
        if pm.valid.any():
            d = np.median(pm.disp[pm.valid], axis=0)
            s = Shift(float(d[0]), float(d[1]), float(np.median(pm.response[pm.valid])))
        else:
            s = Shift(float(c[0]), float(c[1]), float(np.max(pm.response, initial=0.0)))
        return FrameAlignment(s, bool(pm.valid.any()), pm)

