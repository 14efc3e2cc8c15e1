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


# -- deep-sky drizzle: geometry of a block task ---------------------------------------------
# A deep-sky drizzle block task (skystack.pipeline.deepsky.drizzle) fills one block of the
# output grid: for each kept frame it reads the frame's source region that drops onto the
# block and drops it with ``_skystack_kernels.cpu.drizzle.drizzle_affine_add``. These
# helpers are its geometry, for bands of rows and 2-D tiles alike.

# CFA colours to output channels (R, G, B).
_CHANNEL = {"R": 0, "G": 1, "B": 2}


def output_matrix(frame_to_ref: np.ndarray, scale: float) -> np.ndarray:
    """The 2×3 map from frame pixel centres to drizzled output pixel centres.

    Reference pixel ``p`` spans output edges ``[s·(p − 0.5) + s/2 …]``: the output grid
    covers the reference grid exactly, output pixel centre ``X = s·(p + 0.5) − 0.5``.
    """
    m = np.asarray(frame_to_ref, dtype=np.float64) * float(scale)
    m[:, 2] += 0.5 * scale - 0.5
    return m


def source_region(matrix: np.ndarray, block: tuple[int, int, int, int], frame_shape: tuple[int, int],
                  pixfrac: float) -> tuple[int, int, int, int] | None:
    """The frame pixels ``(y0, y1, x0, x1)`` whose drops can land on output ``block``
    ``(y0, y1, x0, x1)`` through ``matrix`` (frame → output), or ``None`` when none can.

    The block's corners are mapped back to the frame (an affine map sends the rectangle
    to a parallelogram whose extremes are at its corners) and widened by the drop's
    half-size plus a pixel of rounding slack.
    """
    by0, by1, bx0, bx1 = block
    inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    xs = np.array([bx0 - 0.5, bx1 - 0.5, bx0 - 0.5, bx1 - 0.5])
    ys = np.array([by0 - 0.5, by0 - 0.5, by1 - 0.5, by1 - 0.5])
    fx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    fy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    pad = 0.5 * pixfrac + 1.0
    h, w = frame_shape
    y0 = max(0, math.floor(fy.min() - pad))
    y1 = min(h, math.ceil(fy.max() + pad) + 1)
    x0 = max(0, math.floor(fx.min() - pad))
    x1 = min(w, math.ceil(fx.max() + pad) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def cfa_channels(pattern: str | None) -> np.ndarray:
    """``(2, 2)`` int64 output channel of each CFA site by ``(y % 2, x % 2)`` for a FITS
    ``BAYERPAT`` pattern (``"GRBG"``: top-left 2×2, row-major); all −1 for ``None`` (not
    a mosaic)."""
    if pattern is None:
        return np.full((2, 2), -1, dtype=np.int64)
    return np.array([[_CHANNEL[pattern[0]], _CHANNEL[pattern[1]]],
                     [_CHANNEL[pattern[2]], _CHANNEL[pattern[3]]]], dtype=np.int64)
