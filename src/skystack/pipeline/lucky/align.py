"""Alignment steps of a lucky run: the reference from the best frames, each frame's global
subpixel shift against it, and (multi-point) every alignment point's local shift and
sharpness for a pool of frames."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ...errors import BadFrameError, RegistrationError
from ...register.multipoint import APGrid, LocalAligner, place_alignment_points
from ...register.planetary import Disk, GlobalAligner, Shift, disk_centroid, shift_image
from ...runtime.progress import Progress
from .frames import LuckyRun
from .rank import Ranking


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
        for warped in run.map(work, items):
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
    for i, s in run.map(measure, items):
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
    return Reference(ref, _aligner(ref, roi), disk)


def global_measure(aligner: GlobalAligner, lum: np.ndarray, coarse: np.ndarray,
                   min_response: float) -> tuple[Shift, bool]:
    """A frame's subpixel shift from its coarse position, and whether it matched."""
    c = (0.0, 0.0) if not np.all(np.isfinite(coarse)) else (float(coarse[0]), float(coarse[1]))
    s, _ = aligner.measure(lum, c)
    return s, s.response >= min_response


@dataclass
class PointMeasures:
    """Multi-point alignment of a pool of frames (row ``k`` is frame ``pool[k]``): the AP
    grid, every AP's displacement ``disp`` (m, n_ap, 2), local quality ``quality``
    (m, n_ap) and trust ``valid``; which frames matched globally (``ok``) and their global
    shift ``gshift`` (m, 2)."""

    pool: np.ndarray
    grid: APGrid
    disp: np.ndarray
    quality: np.ndarray
    valid: np.ndarray
    ok: np.ndarray
    gshift: np.ndarray


def measure_points(run: LuckyRun, pool_idx: np.ndarray, ranking: Ranking, ref: Reference) -> PointMeasures:
    """Global shift of every frame in ``pool_idx``, then each AP's local shift and sharpness."""
    t0 = time.perf_counter()
    opts, table, rel = run.opts, run.table, ranking.rel
    h, w = run.shape
    # most frames keep every AP box inside; the few displaced further lose their edge APs
    margin = int(math.ceil(np.percentile(np.abs(rel[pool_idx]), 90) + 2)) if pool_idx.size else 0
    margin = min(margin, min(h, w) // 4)
    grid = place_alignment_points(ref.image, ap_size=opts.ap_size, spacing=opts.ap_spacing,
                                  min_structure=opts.ap_min_structure, margin=margin)
    local = LocalAligner(ref.image, grid)
    n_ap = grid.n_active
    m = pool_idx.size
    pm = PointMeasures(pool=pool_idx, grid=grid, disp=np.full((m, n_ap, 2), np.nan, np.float32),
                       quality=np.full((m, n_ap), -np.inf, np.float64), valid=np.zeros((m, n_ap), bool),
                       ok=np.zeros(m, bool), gshift=np.zeros((m, 2)))

    def measure(item):
        k, i, img = item
        if isinstance(img, BadFrameError):
            return k, i, img, None, None
        s, good = global_measure(ref.aligner, img, rel[i], opts.min_response)
        if not good:
            return k, i, None, s, None
        sig = table.signal[i] if math.isfinite(table.signal[i]) and table.signal[i] > 0 else 1.0
        return k, i, True, s, local.measure(local.prepare(img), (s.sx, s.sy), float(sig))

    items = ((k, int(i), run.reader.read(int(i), False)) for k, i in enumerate(pool_idx))
    with Progress(m, "lucky: align (multi-point)", run.quiet) as bar:
        for k, i, res, s, lm in run.map(measure, items):
            bar.update()
            if not table.record_alignment(i, res, s, opts.min_response):
                continue
            pm.ok[k] = True
            pm.gshift[k] = (s.sx, s.sy)
            if n_ap:
                pm.disp[k] = lm.disp
                pm.quality[k] = lm.quality
                pm.valid[k] = lm.valid
    run.timings["align_s"] = time.perf_counter() - t0
    return pm
