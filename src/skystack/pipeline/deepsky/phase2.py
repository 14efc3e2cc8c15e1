"""Phase 2 on the tile engine: one task per output tile.

For a tile, every kept frame's source block (the tile's inverse image plus the
interpolation margin, :func:`~skystack.stack.plan.source_block`) is read and warped onto
the tile cell by cell, normalised, and a kernel rejects and reduces along the frames; the
tile is written into the accumulator files of the journal, so finished tiles survive an
interruption. Peak memory is set by the tile size, which the plan derives from the memory
budget (:func:`~skystack.stack.plan.plan_tiles`). The plan is recorded in the journal, and
a resumed run finishes that plan (or a refinement of it nesting in its tiles when the
budget is now smaller), so no tile is lost or counted twice.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.base import BandJob
from ...errors import InputChangedError, UsageError
from ...io.pages import release
from ...options import RunOptions, StackOptions
from ...runtime.executor import ClusterShape
from ...runtime.memory import current_rss, memory_budget
from ...stack.blocks import run_blocks
from ...stack.plan import (INTERP_MARGIN, MAX_TILE_BUFFER, MAX_TILE_PIXELS, WARP_TILE_ROWS, Geometry, TilePlan,
                           band_matrix, cells_end, fits_in, plan_tiles, source_block, strip_matrix)
from .mean import streaming_mean_fits
from .phase1 import Phase1, workers_of
from .resume import Journal, npy_data_offset, write_block
from .weights import Kept
from .workspace import OPEN_FILE_BYTES, Workspace, keep_files_open

log = logging.getLogger("skystack")


@dataclass(frozen=True)
class KeptFrame:
    """One kept frame as a tile task needs it."""

    index: int
    matrix: np.ndarray  # frame → reference
    mul: np.ndarray  # (C,) normalisation scale
    add: np.ndarray  # (C,) normalisation offset
    fingerprint: tuple[int, int]  # (size, mtime) when registered


@dataclass(frozen=True)
class TileTask:
    """What every tile task of a run shares (small: matrices and paths, no pixels)."""

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


@dataclass(frozen=True)
class Phase2Plan:
    """How phase 2 runs: the engine, and for the tile engine its plan and how many tiles
    are in flight; ``budget`` is the memory it was sized for (``limit`` less what the run
    still ``held`` from phase 1)."""

    engine: str  # "tiles" or "streaming-mean"
    tiles: TilePlan | None
    in_flight: int
    budget: int
    resumed_plan: bool = False
    limit: int = 0
    held: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "tiles": self.tiles.to_json() if self.tiles is not None else None}


def tile_jobs(task: TileTask, frames, y0: int, y1: int, x0: int, x1: int) -> tuple[list[BandJob], list[int]]:
    """One :class:`~skystack.backends.base.BandJob` per kept frame that reaches output
    pixels ``[y0, y1) × [x0, x1)`` (one strip's tile), and the frames' positions.

    Each job presents the strip as a narrower frame (:func:`~skystack.stack.plan.strip_matrix`):
    its source array spans the columns the whole strip needs, of which only the tile's own
    block is read (the rest is NaN and never reached by a tap)."""
    interp = task.options.interpolation
    H, W = task.height, task.width
    y_end = cells_end(y1)
    jobs, positions = [], []
    for pos, kf in enumerate(task.frames):
        fp = frames.fingerprint(kf.index)
        if fp != kf.fingerprint:
            raise InputChangedError(
                f"{frames.name(kf.index)}: changed on disk since it was registered "
                f"(size/mtime {kf.fingerprint} → {fp}); rerun to register it again")
        strip = source_block(kf.matrix, 0, cells_end(H), x0, x1, H, W, interp)
        if strip is None:
            continue
        sx0, sx1 = strip[2], strip[3]
        m = strip_matrix(kf.matrix, x0, sx0)
        block = source_block(m, y0, y_end, 0, x1 - x0, H, sx1 - sx0, interp)
        if block is None:
            continue
        by0, by1, bx0, bx1 = block
        load = functools.partial(_strip_rows, frames, kf.index, by0, by1, sx0, sx1 - sx0, bx0, bx1)
        jobs.append(BandJob(rows=load, matrix=band_matrix(m, by0, y0), scale=kf.mul, offset=kf.add,
                            frame_matrix=m, src_y0=by0, band_y0=y0, src_height=H))
        positions.append(pos)
    return jobs, positions


def _strip_rows(frames, index: int, y0: int, y1: int, sx0: int, width: int, bx0: int, bx1: int) -> np.ndarray:
    """Rows ``y0:y1`` of a strip's source array (frame columns ``sx0 : sx0 + width``), of
    which only the local columns ``bx0:bx1`` are read; the others are NaN. The block is
    converted straight into its place where the file allows it
    (:meth:`~skystack.io.frameset.FrameSet.read_block_into`: one pass over a mono FITS
    block instead of four, the copy, the float conversion, the NaN fill and the placing).
    """
    out = np.empty((y1 - y0, width) + tuple(frames.processed_shape(index)[2:]), dtype=np.float32)
    out[:, :bx0] = np.nan
    out[:, bx1:] = np.nan
    frames.read_block_into(index, y0, y1, sx0 + bx0, sx0 + bx1, out[:, bx0:bx1])
    return out


def tile_task(task: TileTask, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Warp, normalise, reject and reduce output pixels ``[y0, y1) × [x0, x1)``; write them
    into the accumulator files; return the (N, 2) low/high rejection counts per kept frame."""
    frames = task.workspace.frames()
    backend = task.workspace.backend()
    jobs, positions = tile_jobs(task, frames, y0, y1, x0, x1)
    shape = (y1 - y0, x1 - x0) + ((task.channels,) if task.channels > 1 else ())
    rejected = np.zeros((len(task.frames), 2), dtype=np.int64)
    if jobs:
        res = backend.combine_band(jobs, shape, np.asarray(task.weights)[positions], task.options)
        image, count = res.image, res.count
        rejected[positions] += res.rejected
    else:
        image = np.full(shape, np.nan, dtype=np.float32)
        count = np.zeros(shape, dtype=np.int32)
    full = (task.height, task.width, task.channels)
    write_block(Path(task.image_path), task.image_offset, full, 4, y0, x0, image.astype(np.float32, copy=False))
    write_block(Path(task.count_path), task.count_offset, full, 4, y0, x0, count.astype(np.int32, copy=False))
    return rejected


def plan_phase2(p1: Phase1, kept: Kept, stack: StackOptions, run: RunOptions, journal: Journal,
                resumed: bool, cluster: ClusterShape | None = None) -> Phase2Plan:
    """Choose the engine and cut the plan, or take the ones an interrupted run recorded;
    record them in the journal before the first tile.

    ``--method mean`` streams frames into H×W accumulators when they fit the budget in one
    process; everything else, and the mean on a cluster or in a budget too small for the
    accumulators, runs the tile engine. On a cluster (``cluster``: its threads and the
    memory a task may use on its tightest worker) tiles are sized for one per worker
    thread, capped by ``--memory-limit`` when given.

    Raises
    ------
    UsageError
        The budget cannot hold one tile, or not the recorded plan on resume.
    """
    # what the run still holds from phase 1 (the frame index, results, allocator slack)
    # comes out of the budget phase 2 may use
    held = max(0, current_rss() - p1.rss_warm) if p1.rss_warm else 0
    limit = memory_budget(stack.memory_limit, this_machine=cluster is None)
    # the tile engine keeps every input file open (workspace.keep_files_open)
    budget = max(limit - held - len(p1.results) * OPEN_FILE_BYTES, 1)
    workers = workers_of(run)
    recorded = journal.load_plan() if resumed else None
    streaming = streaming_mean_fits(p1.shape, budget)
    if recorded is not None and recorded.get("engine") == "streaming-mean":
        if streaming < 1:
            raise UsageError(f"--resume: the interrupted run streamed the mean into accumulators that do not fit "
                             f"--memory-limit {limit / 2**20:.0f} MiB; resume with its limit, or rerun without --resume")
        return Phase2Plan(engine="streaming-mean", tiles=None, in_flight=min(streaming, workers + 1), budget=budget,
                          resumed_plan=True, limit=limit, held=held)
    if recorded is None and stack.method == "mean" and not run.scheduler and streaming >= 1:
        plan = Phase2Plan(engine="streaming-mean", tiles=None, in_flight=min(streaming, workers + 1), budget=budget)
    elif cluster is not None:
        share = cluster.thread_memory if cluster.thread_memory is not None else limit
        if stack.memory_limit:
            share = min(share, stack.memory_limit)
        plan = plan_tile_engine(p1, kept, stack, max(share, 1), 1, recorded, parallel=cluster.threads,
                                sized_to_work=cluster.thread_memory is None and not stack.memory_limit)
        plan = replace(plan, in_flight=cluster.threads, budget=max(share, 1))
        limit, held = share, 0
    else:
        plan = plan_tile_engine(p1, kept, stack, budget, workers, recorded, sized_to_work=not stack.memory_limit)
    plan = replace(plan, limit=limit, held=held)
    if not plan.resumed_plan:
        journal.save_plan(plan.to_json())
    return plan


def plan_tile_engine(p1: Phase1, kept: Kept, stack: StackOptions, budget: int, workers: int,
                     recorded: dict[str, Any] | None, parallel: int | None = None,
                     sized_to_work: bool = False) -> Phase2Plan:
    """The tile plan for this run: the recorded one of an interrupted run (or a refinement
    nesting in it when the budget is now smaller), else a new one for ``budget`` with
    ``workers`` tiles in flight and ``parallel`` workers to balance (default ``workers``).
    ``sized_to_work`` (the budget is the default, not the user's) caps the tiles at
    :data:`~skystack.stack.plan.MAX_TILE_PIXELS` and :data:`~skystack.stack.plan.MAX_TILE_BUFFER`.

    Raises
    ------
    UsageError
        The budget cannot hold one tile (of the recorded plan, on resume).
    """
    H, W = p1.shape[:2]
    res = p1.by_index()
    geometry = Geometry.of([res[i].transform.matrix for i in kept.indices], stack.interpolation)
    if recorded is not None and recorded.get("tiles"):
        old = TilePlan.from_json(recorded["tiles"])
        if (old.height, old.width, old.channels, old.n_frames) != (H, W, p1.channels, len(kept)):
            raise UsageError("--resume: the journal's tile plan is for another geometry or frame count; "
                             "rerun without --resume")
        plan = fits_in(old, budget, workers, geometry, max_rows=stack.tile_rows)
        if plan is None:
            raise UsageError(
                f"--resume: the interrupted run's tiles ({old.n_frames} frames × {old.tile_rows} rows × "
                f"{old.strip_cols} columns) do not fit --memory-limit {budget / 2**20:.0f} MiB even one at a time; "
                "resume with a larger --memory-limit, or rerun without --resume")
        return Phase2Plan(engine="tiles", tiles=plan, in_flight=plan.in_flight, budget=budget, resumed_plan=True)
    plan = plan_tiles(height=H, width=W, channels=p1.channels, n_frames=len(kept), memory_limit=budget,
                      workers=workers, parallel=parallel, geometry=geometry, tile_rows=stack.tile_rows,
                      strip_cols=stack.strip_cols, max_tile_pixels=MAX_TILE_PIXELS if sized_to_work else None,
                      max_tile_buffer=MAX_TILE_BUFFER if sized_to_work else None)
    return Phase2Plan(engine="tiles", tiles=plan, in_flight=plan.in_flight, budget=budget)


def run_tiles(frames, p1: Phase1, kept: Kept, stack: StackOptions, run: RunOptions, journal: Journal,
              resumed: bool, backend_name: str, plan: Phase2Plan) -> tuple[Path, Path, np.ndarray, dict]:
    """Stack every tile of ``plan`` not already in the journal. Returns the image and count
    accumulator files, the per-frame rejection counts and the plan's figures."""
    tiles_plan = plan.tiles
    assert tiles_plan is not None
    H, W = p1.shape[:2]
    C = p1.channels
    res = p1.by_index()
    shape = (H, W, C) if C > 1 else (H, W)
    img_path, new_image = journal.accumulator("image", shape, "float32", fresh=not resumed)
    cnt_path, new_count = journal.accumulator("count", shape, "int32", fresh=not resumed)
    tiles = tiles_plan.tiles
    rejected = np.zeros((len(kept), 2), dtype=np.int64)
    skip: set[int] = set()
    if resumed and not (new_image or new_count):
        rejected += reuse_done(journal.tiles_done(), tiles, skip, len(kept))
    task = TileTask(
        workspace=Workspace(keep_files_open(frames.spec), backend_name, shared=True), height=H, width=W, channels=C,
        frames=tuple(KeptFrame(i, res[i].transform.matrix, kept.mul[k], kept.add[k], p1.fingerprints[i])
                     for k, i in enumerate(kept.indices)),
        weights=kept.weights, options=stack, image_path=str(img_path), count_path=str(cnt_path),
        image_offset=npy_data_offset(img_path), count_offset=npy_data_offset(cnt_path))
    todo = [t for t in range(len(tiles)) if t not in skip]
    log.info("phase 2: %d tile(s) of %d×%d, %d frames, %d in flight, memory limit %.0f MiB",
             len(tiles), tiles_plan.tile_rows, tiles_plan.strip_cols, len(kept), plan.in_flight,
             plan.budget / 2**20)
    workers = min(plan.in_flight, max(1, len(todo)))
    blocks = first_cell_apart([tiles[t] for t in todo]) if workers > 1 and not run.scheduler else \
        [tiles[t] for t in todo]
    rejected += run_blocks(tile_task, [(task, *b) for b in blocks], len(kept), workers=workers,
                           scheduler=run.scheduler, label="phase 2: stack", quiet=run.quiet, done=len(skip),
                           on_block=lambda k, rej: journal.record_tile(blocks[k], rej))
    matrices = [res[i].transform.matrix for i in kept.indices]
    info = {"tile_rows": tiles_plan.tile_rows, "strip_cols": tiles_plan.strip_cols, "tiles": len(tiles),
            "in_flight": plan.in_flight, "phase2_budget": plan.budget, "tile_bytes": tiles_plan.tile_bytes,
            "read_amplification": round(read_amplification(tiles_plan, matrices, (H, W), stack.interpolation), 3),
            "tiles_reused": len(skip), "plan_from_journal": plan.resumed_plan}
    return img_path, cnt_path, rejected, info


def first_cell_apart(tiles: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The tiles with the first one's top row of cells split off as a block of its own.

    :func:`~skystack.stack.blocks.run_blocks` runs the first block alone (the kernels load
    on their first call, one thread at a time): a row of cells loads them as well as a whole
    tile, while the other core waits for a 30th of the time (a tile's time on one core was
    ~0.07 s of an 18-sub Seestar stack). Every pixel still comes from the same cell warps,
    so the output is the same to the bit; the journal records the two rectangles, which a
    resumed run counts only where its own tiles lie inside them (tile 0 is then redone).
    """
    if not tiles:
        return tiles
    y0, y1, x0, x1 = tiles[0]
    if y1 - y0 <= WARP_TILE_ROWS:
        return tiles
    return [(y0, y0 + WARP_TILE_ROWS, x0, x1), (y0 + WARP_TILE_ROWS, y1, x0, x1), *tiles[1:]]


def coverage_of(count_path: Path, rows: int = 256) -> np.ndarray:
    """The coverage map of a count accumulator: how many values were combined per pixel,
    the most of any channel for a colour stack; read ``rows`` rows at a time, so a colour
    count (H, W, 3) is never in memory whole: the pages of the map each strip was read
    through are dropped after it (they stayed resident until the map closed: +25 MB at the
    end of an 18-sub 1080×1920 colour stack, the run's peak)."""
    counts = np.load(count_path, mmap_mode="r")
    if counts.ndim == 2:
        return np.array(counts)
    out = np.empty(counts.shape[:2], dtype=counts.dtype)
    for y0 in range(0, counts.shape[0], rows):
        np.max(counts[y0:y0 + rows], axis=2, out=out[y0:y0 + rows])
        release(counts)
    del counts
    return out


def reuse_done(done: list[tuple[tuple[int, int, int, int], np.ndarray]], tiles: list[tuple[int, int, int, int]],
                skip: set[int], n_frames: int) -> np.ndarray:
    """Which tiles an interrupted run finished: a recorded rectangle counts when every tile
    of this plan that meets it lies inside it (the plan, or one nesting in it); those tiles
    are skipped and its rejection counts taken once. Returns the counts taken."""
    taken = np.zeros((n_frames, 2), dtype=np.int64)
    used: list[tuple[int, int, int, int]] = []
    for rect, counts in done:
        if counts.shape != taken.shape or any(_overlap(rect, u) for u in used):
            continue
        meets = [t for t, tile in enumerate(tiles) if _overlap(rect, tile)]
        if meets and all(_inside(tiles[t], rect) for t in meets):
            used.append(rect)
            skip.update(meets)
            taken += counts
    return taken


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _inside(a, b) -> bool:
    return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]


def read_amplification(plan: TilePlan, matrices: list[np.ndarray], src_shape: tuple[int, int],
                       interpolation: str) -> float:
    """Source pixels read per output pixel warped, over every (tile, frame) pair where the
    frame reaches the tile (1 would be reading exactly the tiles; the margin for rotation and
    interpolation taps adds the rest). The blocks are :func:`~skystack.stack.plan.source_block`'s,
    computed for all frames at once."""
    if not matrices:
        return 1.0
    h_src, w_src = src_shape
    inv = np.array([np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2] for m in matrices])  # (F, 2, 3)
    margin = INTERP_MARGIN.get(interpolation, 5)
    read = out = 0.0
    for y0, y1, x0, x1 in plan.tiles:
        xs = np.array([x0 - 0.5, x1 - 0.5, x0 - 0.5, x1 - 0.5])
        ys = np.array([y0 - 0.5, y0 - 0.5, cells_end(y1) - 0.5, cells_end(y1) - 0.5])
        sx = inv[:, 0, :1] * xs + inv[:, 0, 1:2] * ys + inv[:, 0, 2:]
        sy = inv[:, 1, :1] * xs + inv[:, 1, 1:2] * ys + inv[:, 1, 2:]
        by = np.minimum(np.ceil(sy.max(1)) + margin + 1, h_src) - np.maximum(np.floor(sy.min(1)) - margin, 0)
        bx = np.minimum(np.ceil(sx.max(1)) + margin + 1, w_src) - np.maximum(np.floor(sx.min(1)) - margin, 0)
        seen = (by > 0) & (bx > 0)
        read += float((by * bx)[seen].sum())
        out += float(seen.sum()) * (y1 - y0) * (x1 - x0)
    return read / out if out else 1.0
