"""Drizzle accumulation for lucky imaging (``--drizzle 1.5|2|3``).

Undersampled planetary captures (pixels wider than half the telescope's resolution) gain
real detail from drizzle: thousands of frames land at random subpixel positions, so dropping
each (shrunken) input pixel onto a finer output grid samples the scene more finely than any
one frame. The per-pixel loop is a Numba kernel in
``_skystack_kernels.cpu.drizzle``; this module owns the accumulators and the API.
"""
from __future__ import annotations

import math

import numpy as np
from _skystack_kernels.cpu.drizzle import drizzle_add, drizzle_finish

_ZERO_FIELD = np.zeros((1, 1), dtype=np.float32)
_UNIT_WEIGHT = np.ones((1, 1), dtype=np.float32)


def output_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The drizzled ``(H, W)`` for a reference of ``shape`` at ``scale``."""
    h, w = shape
    return int(math.floor(h * scale + 0.5)), int(math.floor(w * scale + 0.5))


class Drizzle:
    """Accumulates frames into a ``scale``× finer grid.

    Parameters
    ----------
    shape
        Reference ``(H, W)`` in input pixels.
    channels
        1 for mono, 3 for RGB.
    scale
        Output pixels per input pixel (> 1; 1.5, 2 and 3 are the usual choices).
    pixfrac
        Drop size as a fraction of an input pixel (0 < pixfrac ≤ 1). Smaller drops give a
        sharper result but need more frames to cover every output pixel.
    """

    def __init__(self, shape: tuple[int, int], *, channels: int = 1, scale: float = 2.0,
                 pixfrac: float = 0.7):
        if not scale > 0:
            raise ValueError(f"drizzle scale must be positive, not {scale}")
        if not 0 < pixfrac <= 1:
            raise ValueError(f"drizzle pixfrac must be in (0, 1], not {pixfrac}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.scale = float(scale)
        self.pixfrac = float(pixfrac)
        self.channels = int(channels)
        ho, wo = output_shape(self.shape, self.scale)
        self._out = np.zeros((ho, wo, self.channels), dtype=np.float64)
        self._wout = np.zeros((ho, wo), dtype=np.float64)
        self.n_frames = 0

    @property
    def out_shape(self) -> tuple[int, int]:
        return self._wout.shape  # type: ignore[return-value]

    def add(self, frame: np.ndarray, shift: tuple[float, float], *, field: tuple[np.ndarray, np.ndarray] | None = None,
            weight: np.ndarray | float = 1.0) -> None:
        """Drop one frame.

        Parameters
        ----------
        frame
            ``(H, W)`` or ``(H, W, C)`` values on the input grid.
        shift
            Global displacement ``(sx, sy)``: the frame shows reference position ``p`` at
            ``p + s`` (see :mod:`skystack.register.planetary`).
        field
            Optional local displacement fields ``(sx, sy)``, each ``(H, W)``, added to
            ``shift`` per input pixel (multi-point alignment).
        weight
            A scalar or an ``(H, W)`` per-pixel weight (0 skips the pixel).
        """
        f = np.asarray(frame, dtype=np.float32)
        if f.ndim == 2:
            f = f[:, :, None]
        if f.shape[:2] != self.shape or f.shape[2] != self.channels:
            raise ValueError(f"frame shape {frame.shape} does not match the drizzle grid "
                             f"{self.shape} x {self.channels}")
        if field is None:
            sxf = syf = _ZERO_FIELD
        else:
            sxf = np.ascontiguousarray(field[0], dtype=np.float32)
            syf = np.ascontiguousarray(field[1], dtype=np.float32)
        if np.ndim(weight) == 0:
            if float(weight) <= 0:
                return
            wt = np.full((1, 1), float(weight), dtype=np.float32)
        else:
            wt = np.ascontiguousarray(weight, dtype=np.float32)
        drizzle_add(np.ascontiguousarray(f), sxf, syf, wt, float(shift[0]), float(shift[1]),
                    self.scale, self.pixfrac, self._out, self._wout)
        self.n_frames += 1

    def result(self, *, min_weight: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """The drizzled image ``(Ho, Wo)`` or ``(Ho, Wo, C)`` float32 (NaN where no drop
        landed) and the float32 weight map ``(Ho, Wo)``."""
        res = np.empty(self._out.shape, dtype=np.float32)
        drizzle_finish(self._out, self._wout, float(min_weight), res)
        img = res[:, :, 0] if self.channels == 1 else res
        return img, self._wout.astype(np.float32)
