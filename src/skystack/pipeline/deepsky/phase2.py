"""Phase 2 on the band engine: one task per band of output rows.

For a band, every kept frame's source rows are read and warped onto the band, normalised,
and a kernel rejects and reduces along the frames; the band's rows are written into the
accumulator files of the journal (so finished bands survive an interruption). Peak
memory is set by the band height, which the plan derives from the memory budget.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...backends.base import BandJob
from ...errors import InputChangedError
from ...options import RunOptions, StackOptions
from ...runtime.memory import default_memory_limit
from ...stack.blocks import run_blocks
from ...stack.plan import WARP_TILE_ROWS, band_matrix, plan_bands, rotation_extra_rows, source_rows
from .phase1 import Phase1, workers_of
from .resume import Journal, npy_data_offset, write_rows
from .weights import Kept
from .workspace import Workspace

log = logging.getLogger("skystack")


@dataclass(frozen=True)
class KeptFrame:
    """One kept frame as a band task needs it."""

    index: int
    matrix: np.ndarray  # frame → reference
    mul: np.ndarray  # (C,) normalisation scale
    add: np.ndarray  # (C,) normalisation offset
    fingerprint: tuple[int, int]  # (size, mtime) when registered


@dataclass(frozen=True)
class BandTask:
    """What every band task of a run shares (small: matrices and paths, no pixels)."""

    workspace: Workspace
    height: int
    width: int
    channels: int
    frames: tuple[KeptFrame, ...]
    weights: np.ndarray
    options: StackOptions
    image_path: str
    count_path: str
    image_offset: int
    count_offset: int


def band_task(task: BandTask, y0: int, y1: int) -> np.ndarray:
    """Warp, normalise, reject and reduce output rows ``y0:y1``; write them into the
    accumulator files; return the (N, 2) low/high rejection counts per kept frame."""
    frames = task.workspace.frames()
    backend = task.workspace.backend()
    # the source block must cover every whole warp tile of the band (the last band may end
    # inside a tile at the image's bottom edge)
    y1_tiles = -(-y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    jobs, positions = [], []
    for pos, kf in enumerate(task.frames):
        fp = frames.fingerprint(kf.index)
        if fp != kf.fingerprint:
            raise InputChangedError(
                f"{frames.name(kf.index)}: changed on disk since it was registered "
                f"(size/mtime {kf.fingerprint} → {fp}); rerun to register it again")
        rows = source_rows(kf.matrix, y0, y1_tiles, task.width, task.height, task.options.interpolation)
        if rows is None:
            continue
        sy0, sy1 = rows
        jobs.append(BandJob(rows=functools.partial(frames.read_rows, kf.index, sy0, sy1),
                            matrix=band_matrix(kf.matrix, sy0, y0),
                            scale=kf.mul, offset=kf.add, frame_matrix=kf.matrix, src_y0=sy0, band_y0=y0,
                            src_height=task.height))
        positions.append(pos)
    shape = (y1 - y0, task.width) + ((task.channels,) if task.channels > 1 else ())
    rejected = np.zeros((len(task.frames), 2), dtype=np.int64)
    if jobs:
        res = backend.combine_band(jobs, shape, np.asarray(task.weights)[positions], task.options)
        image, count = res.image, res.count
        rejected[positions] += res.rejected
    else:
        image = np.full(shape, np.nan, dtype=np.float32)
        count = np.zeros(shape, dtype=np.int32)
    row_bytes = task.width * task.channels * 4
    write_rows(Path(task.image_path), task.image_offset, row_bytes, y0, image.astype(np.float32, copy=False))
    write_rows(Path(task.count_path), task.count_offset, row_bytes, y0, count.astype(np.int32, copy=False))
    return rejected


def run_bands(frames, p1: Phase1, kept: Kept, stack: StackOptions, run: RunOptions, journal: Journal,
              resumed: bool, backend_name: str) -> tuple[Path, Path, np.ndarray, dict]:
    """Stack every band not already in the journal. Returns the image and count
    accumulator files, the per-frame rejection counts and the plan's figures."""
    H, W = p1.shape[:2]
    C = p1.channels
    res = p1.by_index()
    matrices = [res[i].transform.matrix for i in kept.indices]
    workers = workers_of(run)
    limit = stack.memory_limit or default_memory_limit()
    extra = rotation_extra_rows(W, matrices, stack.interpolation)
    plan = plan_bands(height=H, width=W, channels=C, n_frames=len(kept), memory_limit=limit,
                      concurrent=workers, src_rows_extra=extra, band_rows=stack.band_rows)
    shape = (H, W, C) if C > 1 else (H, W)
    img_path = journal.accumulator("image", shape, "float32", fresh=not resumed)
    cnt_path = journal.accumulator("count", shape, "int32", fresh=not resumed)
    done = journal.bands_done() if resumed else {}
    bands = plan.bands
    rejected = np.zeros((len(kept), 2), dtype=np.int64)
    for b, r in list(done.items()):
        if r.shape == rejected.shape:
            rejected += r
        else:
            done.pop(b)
    task = BandTask(
        workspace=Workspace(frames.spec, backend_name), height=H, width=W, channels=C,
        frames=tuple(KeptFrame(i, res[i].transform.matrix, kept.mul[k], kept.add[k], p1.fingerprints[i])
                     for k, i in enumerate(kept.indices)),
        weights=kept.weights, options=stack, image_path=str(img_path), count_path=str(cnt_path),
        image_offset=npy_data_offset(img_path), count_offset=npy_data_offset(cnt_path))
    todo = [b for b in range(len(bands)) if b not in done]
    log.info("phase 2: %d band(s) of %d row(s), %d frames, memory limit %.0f MiB",
             len(bands), plan.band_rows, len(kept), limit / 2**20)
    rejected += run_blocks(band_task, [(task, *bands[b]) for b in todo], len(kept), workers=workers,
                           scheduler=run.scheduler, label="phase 2: stack", quiet=run.quiet, done=len(done),
                           on_block=lambda k, rej: journal.record_band(todo[k], rej))
    info = {"band_rows": plan.band_rows, "bands": len(bands), "phase2_budget": limit, "bands_reused": len(done)}
    return img_path, cnt_path, rejected, info
