"""The backend contract: how a band of output rows is warped and combined.

Pipeline code calls these methods and never asks which device it runs on. A backend is
resolved once per run by :func:`skystack.backends.registry.resolve`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from ..options import StackOptions


@dataclass
class BandJob:
    """One frame's contribution to one band: its source rows and where they go.

    ``rows`` is a host array (native dtype or float32) of shape ``(hs, W)`` or
    ``(hs, W, C)`` holding rows ``src_y0 : src_y0 + hs`` of the (debayered) frame, or a
    zero-argument callable returning it (see :meth:`load_rows`).
    ``matrix`` maps *local* source coordinates (x, y - src_y0) to *local* band
    coordinates (x, y - band_y0): see :func:`skystack.stack.plan.band_matrix`.
    ``scale``/``offset`` (one per channel) normalise the warped values:
    ``v' = v * scale + offset``.

    The optional absolute geometry (``frame_matrix``: frame → reference for the whole
    frame; ``src_y0``: frame row of ``rows[0]``; ``band_y0``: output row of the band's
    first row; ``src_height``: frame height) lets a backend warp on a fixed grid of row
    tiles (:func:`skystack.stack.plan.tile_warps`), which makes every output pixel
    independent of how the output was cut into bands, and therefore of the worker count.
    """

    rows: np.ndarray | Callable[[], np.ndarray]
    matrix: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    frame_matrix: np.ndarray | None = None
    src_y0: int = 0
    band_y0: int = 0
    src_height: int | None = None

    def load_rows(self) -> np.ndarray:
        """The source rows. ``rows`` may be a zero-argument loader, so that a band reads
        one frame at a time and never holds every frame's rows at once: call this once
        per job, right before warping, and drop the result after."""
        return self.rows() if callable(self.rows) else self.rows


@dataclass
class BandResult:
    """A combined band: ``image`` (h, W[, C]) float32, NaN where no frame contributed;
    ``count`` (h, W[, C]) int32 values kept per pixel; ``rejected`` (N, 2) int64 low/high
    rejections per frame, summed over the band's pixels and channels."""

    image: np.ndarray
    count: np.ndarray
    rejected: np.ndarray


class Backend(Protocol):
    name: str

    def warp(
        self, rows: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int],
        interpolation: str,
    ) -> np.ndarray:
        """Resample ``rows`` through ``matrix`` onto an ``out_shape`` (h, W) grid; float32
        host array, NaN where the frame does not cover the output."""
        ...

    def combine_band(
        self, jobs: Sequence[BandJob], out_shape: tuple[int, ...], weights: np.ndarray,
        options: StackOptions,
    ) -> BandResult:
        """Warp every job into an ``(N, h, W[, C])`` buffer, normalise, reject, reduce."""
        ...
