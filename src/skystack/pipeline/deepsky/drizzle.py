"""Phase 2 with ``--drizzle SCALE``: each kept frame's pixels dropped onto a finer grid.

Undersampled subs (stars under about 2 px FWHM: short focal lengths, large pixels) are
dithered by the mount's drift and the field's rotation, so their pixels sample the sky at
different subpixel phases. Drizzle (Fruchter & Hook 2002) shrinks every input pixel to a
drop of side ``pixfrac``, maps it through the frame's transform onto a grid ``SCALE``
times finer than the reference and adds it to the output pixels it overlaps, weighted by
the overlap: the stack resolves detail no single frame does and, unlike interpolation,
never blurs a frame by resampling it.

The work is cut into output blocks, like the band engine's (:mod:`.phase2`): a block task
(:func:`drizzle_block`) reads, for each kept frame, only the source region whose drops can
land on its block (:func:`skystack.stack.drizzle.source_region`), so memory is set by the
block, not by the number of frames or the output size. A block is a rectangle ``(y0, y1,
x0, x1)``: today the blocks are bands of whole rows (from :func:`~skystack.stack.plan.plan_bands`),
and the task runs unchanged on 2-D tiles.

* ``--method mean`` (the default) is the classic drizzle: one weighted sum of every
  frame's drops per output pixel (``Σ v·w / Σ w``); a block holds its accumulators only.
* Any other method drizzles each frame onto the block separately (its own weighted mean
  of drops) and hands the ``(N, h, w)`` stack of them to the rejection kernels, as the band
  engine does with warped frames.

Colour frames from a one-shot-colour sensor are drizzled from their calibrated mosaics
(Bayer drizzle): each photosite drops its value into its own colour plane only, so no
demosaicing interpolation enters the stack. Weight and coverage maps come out beside the
image (``--coverage``: ``OUT.weight.fits``, ``OUT.coverage.fits``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _skystack_kernels.cpu.drizzle import drizzle_affine_add

from ...backends.cpu import combine_host_band
from ...errors import InputChangedError
from ...options import RunOptions, StackOptions
from ...runtime.memory import memory_budget
from ...stack.blocks import run_blocks
from ...stack.drizzle import cfa_channels, output_matrix, output_shape, source_region
from ...stack.plan import plan_bands, rotation_extra_rows
from .phase1 import Phase1, workers_of
from .phase2 import reuse_done
from .resume import Journal, npy_data_offset, write_block
from .weights import Kept
from .workspace import Workspace

log = logging.getLogger("skystack")

# Bytes per output pixel and channel a classic (mean) drizzle block holds, in units of a
# float32 value: the float64 value and weight sums (2 + 2), the int32 count and the int32
# frame stamp (1 + 1).
_MEAN_BLOCK_UNITS = 6
# A rejection block holds the (N, h, w, C) float32 per-frame values, and while one frame
# drops, its float64 value and weight sums (2 + 2 units).
_REJECT_BLOCK_EXTRA_UNITS = 4
_NO_COUNT = np.zeros((1, 1, 1), dtype=np.int32)


@dataclass(frozen=True)
class DrizzleFrame:
    """One kept frame as a block task needs it."""

    index: int
    matrix: np.ndarray  # frame pixel → output pixel (2×3)
    mul: np.ndarray  # (C,) normalisation scale per output channel
    add: np.ndarray  # (C,) normalisation offset
    cfa: np.ndarray  # (2, 2) output channel per CFA site, all -1 for a frame that is not a mosaic
    fingerprint: tuple[int, int]


@dataclass(frozen=True)
class DrizzleTask:
    """What every block task of a drizzle run shares (small: matrices and paths)."""

    workspace: Workspace  # the frames as drizzle reads them (CFA frames as mosaics)
    frame_shape: tuple[int, int]
    out_shape: tuple[int, int]
    channels: int
    frames: tuple[DrizzleFrame, ...]
    weights: np.ndarray
    options: StackOptions
    image_path: str
    count_path: str
    weight_path: str
    offsets: tuple[int, int, int]  # data offsets of the three .npy files


@dataclass
class BlockResult:
    """A drizzled block: ``image`` (h, w, C) float32 (NaN where no drop landed), ``count``
    (h, w, C) int32 frames combined, ``weight`` (h, w) float32 summed drop weights (mean
    over the channels), ``rejected`` (N, 2) low/high rejections per kept frame."""

    image: np.ndarray
    count: np.ndarray
    weight: np.ndarray
    rejected: np.ndarray


def drizzle_block(task: DrizzleTask, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
    """Drizzle every kept frame onto output block ``[y0:y1, x0:x1]``, write the block into
    the accumulator files and return the (N, 2) rejection counts per kept frame."""
    x1 = task.out_shape[1] if x1 is None else x1
    res = combine_block(task, (y0, y1, x0, x1))
    shape = task.out_shape
    c = task.channels
    img = res.image if c > 1 else res.image[..., 0]
    cnt = res.count if c > 1 else res.count[..., 0]
    _write_block(Path(task.image_path), task.offsets[0], shape[1], y0, x0, img.astype(np.float32, copy=False))
    _write_block(Path(task.count_path), task.offsets[1], shape[1], y0, x0, cnt.astype(np.int32, copy=False))
    _write_block(Path(task.weight_path), task.offsets[2], shape[1], y0, x0, res.weight)
    return res.rejected


def combine_block(task: DrizzleTask, block: tuple[int, int, int, int]) -> BlockResult:
    """Drizzle and combine one output block ``(y0, y1, x0, x1)`` (no file is written)."""
    y0, y1, x0, x1 = block
    h, w, c = y1 - y0, x1 - x0, task.channels
    frames = task.workspace.frames()
    opts = task.options
    n = len(task.frames)
    rejected = np.zeros((n, 2), dtype=np.int64)
    classic = opts.method == "mean"
    if classic:
        out = np.zeros((h, w, c))
        wout = np.zeros((h, w, c))
        count = np.zeros((h, w, c), dtype=np.int32)
        stamp = np.full((h, w, c), -1, dtype=np.int32)
    else:
        values: list[np.ndarray] = []
        positions: list[int] = []
        wsum = np.zeros((h, w, c))
    for k, f in enumerate(task.frames):
        region = source_region(f.matrix, block, task.frame_shape, opts.pixfrac)
        if region is None:
            continue
        src = _read_region(frames, f, region)
        weight = float(task.weights[k])
        if classic:
            drizzle_affine_add(src, region[2], region[0], f.cfa, f.matrix, opts.pixfrac, f.mul, f.add, weight,
                               out, wout, count, stamp, k, x0, y0)
            continue
        fo = np.zeros((h, w, c))
        fw = np.zeros((h, w, c))
        drizzle_affine_add(src, region[2], region[0], f.cfa, f.matrix, opts.pixfrac, f.mul, f.add, 1.0,
                           fo, fw, _NO_COUNT, _NO_COUNT, k, x0, y0)
        if not fw.any():
            continue
        values.append(_ratio(fo, fw))
        positions.append(k)
        wsum += weight * fw
    if classic:
        return BlockResult(image=_ratio(out, wout), count=count, weight=_mean_weight(wout), rejected=rejected)
    if not values:
        return BlockResult(image=np.full((h, w, c), np.nan, dtype=np.float32),
                           count=np.zeros((h, w, c), dtype=np.int32), weight=_mean_weight(wsum), rejected=rejected)
    stacked = np.stack(values)
    del values
    res = combine_host_band(stacked, np.asarray(task.weights)[positions], opts)
    rejected[positions] += res.rejected
    return BlockResult(image=res.image.reshape(h, w, c), count=res.count.reshape(h, w, c),
                       weight=_mean_weight(wsum), rejected=rejected)


def _read_region(frames, f: DrizzleFrame, region: tuple[int, int, int, int]) -> np.ndarray:
    fp = frames.fingerprint(f.index)
    if fp != f.fingerprint:
        raise InputChangedError(f"{frames.name(f.index)}: changed on disk since it was registered "
                                f"(size/mtime {f.fingerprint} → {fp}); rerun to register it again")
    ry0, ry1, rx0, rx1 = region
    rows = frames.read_rows(f.index, ry0, ry1)
    src = np.ascontiguousarray(rows[:, rx0:rx1], dtype=np.float32)
    return src if src.ndim == 3 else src[:, :, None]


def _ratio(out: np.ndarray, wout: np.ndarray) -> np.ndarray:
    """``out / wout`` as float32, NaN where nothing landed."""
    img = np.full(out.shape, np.nan, dtype=np.float32)
    np.divide(out, wout, out=img, where=wout > 0, casting="unsafe")
    return img


def _mean_weight(wout: np.ndarray) -> np.ndarray:
    return wout.mean(axis=2).astype(np.float32)


def _write_block(path: Path, offset: int, width: int, y0: int, x0: int, data: np.ndarray) -> None:
    """:func:`.resume.write_block` for a block of a file ``width`` pixels wide with
    ``data``'s own channels and item size."""
    a = np.ascontiguousarray(data)
    channels = int(np.prod(a.shape[2:])) if a.ndim > 2 else 1
    write_block(path, offset, (0, width, channels), a.itemsize, y0, x0, a)


def run_drizzle(frames, p1: Phase1, kept: Kept, stack: StackOptions, run: RunOptions, journal: Journal,
                resumed: bool, backend_name: str) -> tuple[Path, Path, Path, np.ndarray, dict]:
    """Drizzle every block not already in the journal. Returns the image, count and weight
    accumulator files, the per-frame rejection counts and the plan's figures."""
    H, W = p1.shape[:2]
    C = p1.channels
    scale = float(stack.drizzle)
    Ho, Wo = output_shape((H, W), scale)
    res = p1.by_index()
    mosaic = frames.options.debayer == "auto" and any(frames.pattern(i) is not None for i in kept.indices)
    source = frames.with_options(dataclasses.replace(frames.options, debayer="none")) if mosaic else frames
    dframes = tuple(
        DrizzleFrame(index=i, matrix=output_matrix(res[i].transform.matrix, scale), mul=kept.mul[k], add=kept.add[k],
                     cfa=cfa_channels(frames.pattern(i) if mosaic else None), fingerprint=p1.fingerprints[i])
        for k, i in enumerate(kept.indices))
    workers = workers_of(run)
    limit = memory_budget(stack.memory_limit)
    weight_bytes = Ho * Wo * 4  # the weight map, resident beside the image and count
    units = _MEAN_BLOCK_UNITS if stack.method == "mean" else len(kept) + _REJECT_BLOCK_EXTRA_UNITS
    extra = rotation_extra_rows(W, [res[i].transform.matrix for i in kept.indices], "bilinear")
    # the band height is recorded with the journal: a resumed run finishes the same bands
    recorded = journal.load_plan() if resumed else None
    if recorded is not None and recorded.get("engine") == "drizzle":
        band_rows = int(recorded["band_rows"])
    else:
        band_rows = plan_bands(height=Ho, width=Wo, channels=C, n_frames=units,
                               memory_limit=limit, resident=weight_bytes, concurrent=workers, src_rows_extra=extra,
                               band_rows=stack.tile_rows,
                               subject=f"a {Wo}×{Ho}{'×' + str(C) if C > 1 else ''} drizzle of {len(kept)} frames"
                               ).band_rows
        journal.save_plan({"engine": "drizzle", "band_rows": band_rows})
    shape = (Ho, Wo, C) if C > 1 else (Ho, Wo)
    img_path, new_i = journal.accumulator("image", shape, "float32", fresh=not resumed)
    cnt_path, new_c = journal.accumulator("count", shape, "int32", fresh=not resumed)
    wgt_path, new_w = journal.accumulator("weight", (Ho, Wo), "float32", fresh=not resumed)
    bands = [(y0, min(y0 + band_rows, Ho)) for y0 in range(0, Ho, band_rows)]
    rects = [(y0, y1, 0, Wo) for y0, y1 in bands]
    done: set[int] = set()
    rejected = np.zeros((len(kept), 2), dtype=np.int64)
    if resumed and not (new_i or new_c or new_w):
        rejected += reuse_done(journal.tiles_done(), rects, done, len(kept))
    task = DrizzleTask(workspace=Workspace(source.spec, backend_name), frame_shape=(H, W), out_shape=(Ho, Wo),
                       channels=C, frames=dframes, weights=np.asarray(kept.weights), options=stack,
                       image_path=str(img_path), count_path=str(cnt_path), weight_path=str(wgt_path),
                       offsets=(npy_data_offset(img_path), npy_data_offset(cnt_path), npy_data_offset(wgt_path)))
    todo = [b for b in range(len(bands)) if b not in done]
    log.info("phase 2: drizzle ×%g (pixfrac %g%s) onto %d×%d in %d band(s) of %d row(s), %d frames, memory limit "
             "%.0f MiB", scale, stack.pixfrac, ", Bayer" if mosaic else "", Wo, Ho, len(bands), band_rows,
             len(kept), limit / 2**20)
    rejected += run_blocks(drizzle_block, [(task, *bands[b]) for b in todo], len(kept), workers=workers,
                           scheduler=run.scheduler, label="phase 2: drizzle", quiet=run.quiet, done=len(done),
                           on_block=lambda k, rej: journal.record_tile(rects[todo[k]], rej))
    info = {"band_rows": band_rows, "bands": len(bands), "phase2_budget": limit, "tiles_reused": len(done),
            "drizzle": scale, "pixfrac": float(stack.pixfrac), "bayer_drizzle": mosaic,
            "output_shape": list(shape), "output_pixels": float(Ho * Wo * C)}
    return img_path, cnt_path, wgt_path, rejected, info
