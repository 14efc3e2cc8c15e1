"""Phase 2 for ``--method mean``: a weighted mean streamed frame by frame.

Memory is the H×W accumulators plus a few frames in flight, whatever the number of
frames; the accumulator is checkpointed into the journal every
:data:`MEAN_CHECKPOINT_EVERY` frames (more often for small sets) for ``--resume``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from _skystack_kernels.cpu.combine import accumulate_mean, finish_mean

from ...errors import InputChangedError
from ...options import RunOptions, StackOptions
from ...runtime.progress import Progress
from .phase1 import Phase1, workers_of
from .resume import Journal
from .weights import Kept
from .workspace import Workspace

# How often (in frames) the streaming mean checkpoints its accumulator for --resume: every
# 25 frames, and at least 4 times a run (a small set's frames are few but may be large).
MEAN_CHECKPOINT_EVERY = 25

# Streaming mean memory per output pixel and channel: float64 sum + float64 weight sum +
# int32 count; each frame in flight holds its decoded float32 copy and its warped copy.
_MEAN_ACC_BYTES = 20
_MEAN_FLIGHT_BYTES = 8


def streaming_mean_fits(shape: tuple[int, ...], memory_limit: int) -> int:
    """How many frames the streaming mean may keep in flight within ``memory_limit``;
    0 when even one does not fit (then the band engine computes the mean)."""
    px = int(np.prod(shape))
    room = memory_limit - _MEAN_ACC_BYTES * px
    return max(0, room // (_MEAN_FLIGHT_BYTES * px))


def run_streaming_mean(frames, p1: Phase1, kept: Kept, stack: StackOptions, run: RunOptions,
                       journal: Journal, resumed: bool, backend, in_flight: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean, frame by frame: memory is the H×W accumulators plus ``in_flight``
    frames, whatever the number of frames. Frames are read and warped by a small thread
    pool but accumulated strictly in frame order, so the float sums (and the output) are
    bit-identical for any worker count."""
    H, W = p1.shape[:2]
    C = p1.channels
    res = p1.by_index()
    mul, add, weights = kept.mul, kept.add, kept.weights
    acc = np.zeros((H, W, C), dtype=np.float64)
    wsum = np.zeros((H, W, C), dtype=np.float64)
    count = np.zeros((H, W, C), dtype=np.int32)
    start = 0
    if resumed:
        state = journal.load_mean()
        if state is not None and state[1]["acc"].shape == acc.shape:
            start, arrays = state
            acc, wsum, count = arrays["acc"], arrays["wsum"], arrays["count"]
    fps = p1.fingerprints
    ws = Workspace(frames.spec)

    def load(k: int) -> np.ndarray:
        i = kept.indices[k]
        f = ws.frames()
        if f.fingerprint(i) != fps[i]:
            raise InputChangedError(f"{f.name(i)}: changed on disk since it was registered; rerun")
        img = f.read(i)
        out = backend.warp(img, res[i].transform.matrix, (H, W), stack.interpolation)
        out = out.reshape(H, W, C)
        out *= mul[k]
        out += add[k]
        return out

    every = max(1, min(MEAN_CHECKPOINT_EVERY, len(kept) // 4))
    workers = max(1, min(workers_of(run), in_flight))
    bar = Progress(len(kept), "phase 2: mean", run.quiet, initial=start)
    # Not ``with ThreadPoolExecutor``: its exit waits for the workers, and a Ctrl-C that lands
    # inside the pool's own bookkeeping (the main thread holding its idle semaphore's lock)
    # leaves them blocked on that lock for ever; an interrupted run must end (exit 130).
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending: dict[int, Any] = {}
        nxt = start
        for k in range(start, len(kept)):
            while nxt < len(kept) and len(pending) < max(1, in_flight):
                pending[nxt] = pool.submit(load, nxt)
                nxt += 1
            warped = pending.pop(k).result()
            accumulate_mean(warped, np.float64(weights[k]), acc, wsum, count)
            del warped
            bar.update()
            if (k + 1) % every == 0 and k + 1 < len(kept):
                journal.save_mean(k + 1, {"acc": acc, "wsum": wsum, "count": count})
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()
    finally:
        bar.close()
    image = np.empty((H, W, C), dtype=np.float32)
    finish_mean(acc, wsum, image)
    del acc, wsum
    if C == 1:
        return image[..., 0], count[..., 0]
    return image, count
