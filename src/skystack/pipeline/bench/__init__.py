"""``skystack bench``: how fast each backend stacks on this machine, and whether its stack
equals the CPU backend's.

Read :func:`~.run.run_bench` top to bottom: resolve the backends (an unusable one is
listed with the reason), generate a synthetic set (or open INPUT), measure the host stages
once, then each backend's stages, compare every GPU backend's stack with the CPU backend's
(:mod:`.parity`), and describe the machine (:mod:`.machine`); :mod:`.results` holds what
was measured and prints it.

The stages, each in frames/s and MB/s (frames/s × the decoded frame's size, float32
H × W × C × 4 bytes: the data every stage works on):

``decode``
    every frame read and decoded to float32 (:meth:`FrameSet.read`), one thread. Part of
    ``register`` and ``combine``; shown alone because slow storage or a compressed format
    shows here first.
``register``
    phase 1 exactly as ``skystack stack`` runs it on ``--workers`` threads: read, detect
    stars, match, estimate and measure every frame. Host only (no backend has a GPU path
    for it), so ``decode`` and ``register`` are measured once and shown for every backend.
``warp``
    the backend's :meth:`Backend.warp` of each kept frame onto the whole output grid, one
    calling thread (the frame is read before the clock starts). Part of ``combine``.
``combine``
    phase 2 as ``skystack stack`` runs it on ``--workers`` threads: for each output band
    the source rows of every kept frame are read, warped, normalised, rejected and reduced
    by :meth:`Backend.combine_band` (the backends fuse the warp into it: on a GPU the warped
    frames never leave the device). The bands are kept in memory, not written.
``total``
    ``register`` + ``combine`` (+ decoding into the cache for formats that cannot be
    sliced): what ``skystack stack`` spends, less writing the outputs.

First calls (JIT compilation of the Numba and numba.cuda kernels, device buffers) are made
before the clocks start and reported apart.

Only the :class:`~skystack.backends.base.Backend` protocol (``warp``, ``combine_band``
with :class:`~skystack.backends.base.BandJob`) and the backend registry are used, so the
bench measures any backend the registry resolves, and a test can hand it a double.

Parity: a GPU backend's stack must cover the same pixels as the CPU backend's, keep the
same number of values per pixel (a value at a rejection threshold may fall the other way
after float rounding: at most :data:`~.parity.PARITY_MAX_FLIPPED` of the pixels), and
elsewhere agree to :data:`~.parity.PARITY_RTOL`. A failure is reported, and makes the
command exit with :class:`~skystack.errors.ParityError`'s code (10).
"""
from __future__ import annotations

from .parity import PARITY_FLOOR, PARITY_MAX_FLIPPED, PARITY_RTOL, Parity, compare
from .results import STAGES, BackendRun, BenchResult, StageResult
from .run import measurable_backend, run_bench

__all__ = ["run_bench", "measurable_backend", "BenchResult", "BackendRun", "StageResult", "Parity", "compare",
           "STAGES", "PARITY_RTOL", "PARITY_FLOOR", "PARITY_MAX_FLIPPED"]
