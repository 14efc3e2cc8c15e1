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

    try:
        run_tasks(task, list(blocks), workers=workers, scheduler=scheduler, on_result=on_result)
    finally:
        bar.close()
    return rejected
