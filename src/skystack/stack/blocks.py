"""The one loop over output blocks (bands of rows) that every combine uses: the deep-sky
band engine (:mod:`skystack.pipeline.deepsky.phase2`) and the calibration masters
(:mod:`skystack.calibrate.masters`).

A block task combines one block of output pixels and returns the per-frame rejection
counts ``(N, 2)`` (low, high); the loop runs the tasks on the executor, shows progress,
sums the counts and tells the caller as each block finishes (the resume journal records
it there).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..runtime.executor import run_tasks
from ..runtime.progress import Progress


def run_blocks(task: Callable[..., np.ndarray], blocks: Sequence[tuple], n_frames: int, *, workers: int,
               scheduler: str | None, label: str, quiet: bool, done: int = 0,
               on_block: Callable[[int, np.ndarray], Any] | None = None) -> np.ndarray:
    """Run ``task(*blocks[k])`` for every block; return the summed ``(n_frames, 2)``
    rejection counts.

    ``done`` blocks were finished earlier (the progress bar starts there); ``on_block(k,
    counts)`` is called in this thread as block ``k`` finishes.
    """
    rejected = np.zeros((n_frames, 2), dtype=np.int64)
    bar = Progress(done + len(blocks), label, quiet, initial=done)

    def on_result(k: int, counts: np.ndarray) -> None:
        rejected[...] += counts
        if on_block is not None:
            on_block(k, counts)
        bar.update()

    blocks = list(blocks)
    try:
        if blocks and workers > 1 and not scheduler:
            # the first block alone, in this thread: Numba loads each kernel from its cache on
            # its first call, and threads making that first call at once can crash the
            # process (seen with detection's kernels: SIGSEGV in 1 run of 5 on 2 threads)
            on_result(0, task(*blocks[0]))
            run_tasks(task, blocks[1:], workers=workers, scheduler=scheduler,
                      on_result=lambda k, counts: on_result(k + 1, counts))
        else:
            run_tasks(task, blocks, workers=workers, scheduler=scheduler, on_result=on_result)
    finally:
        bar.close()
    return rejected
