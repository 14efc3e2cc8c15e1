"""Drizzle (variable-pixel linear reconstruction, Fruchter & Hook 2002) for shifted frames.

Each input pixel is shrunk to a square "drop" of side ``pixfrac`` (in input pixels), moved
to where its content belongs on the reference grid, scaled by ``scale`` onto the finer
output grid, and its value is added to every output pixel it overlaps, weighted by the
overlap area. Dividing the accumulated values by the accumulated weights gives the image.

Lucky-imaging frames are only translated (globally, or locally by a smooth displacement
field from multi-point alignment), never rotated between consecutive frames, so a drop is
an axis-aligned square and its overlap with an output pixel is the product of two
interval overlaps: exact, and much cheaper than the polygon clipping general drizzle needs.

Coordinates: pixel centres at integers. Input pixel ``(x, y)`` shows the content of
reference position ``(x - sx, y - sy)`` where ``s = (dx + sx_field[y, x], dy + sy_field[y, x])``;
reference pixel edges ``[p - 0.5, p + 0.5]`` map to output edges ``[(p) * scale,
(p + 1) * scale]`` (the output grid covers the reference exactly).

Plain arrays in, plain arrays out; only numpy, numba and math are imported here.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def drizzle_add(frame, sx_field, sy_field, weight, dx, dy, scale, pixfrac, out, wout):
    """Drop one frame onto the output accumulators, in place.

    Parameters
    ----------
    frame : (H, W, C) float32
        Input values (finite).
    sx_field, sy_field : (H, W) float32, or (1, 1) for a constant 0 field
        Local displacement (added to ``dx``, ``dy``) of each input pixel, in input pixels.
    weight : (H, W) float32, or (1, 1) for a constant
        Per-input-pixel weight; pixels with weight <= 0 are skipped.
    dx, dy : float
        Global displacement of the frame, in input pixels.
    scale : float
        Output pixels per input pixel (1.5, 2, 3).
    pixfrac : float
        Drop side as a fraction of an input pixel (0 < pixfrac <= 1).
    out : (Ho, Wo, C) float64
        Accumulated ``value * weight * overlap``.
    wout : (Ho, Wo) float64
        Accumulated ``weight * overlap``.
    """
    h, w, nc = frame.shape
    ho, wo = wout.shape
    full_field = sx_field.shape[0] > 1
    full_weight = weight.shape[0] > 1
    half = 0.5 * pixfrac * scale
    area_norm = 1.0 / (pixfrac * scale * pixfrac * scale)
    for y in range(h):
        for x in range(w):
            wt = weight[y, x] if full_weight else weight[0, 0]
            if wt <= 0.0:
                continue
            ox = dx
            oy = dy
            if full_field:
                ox += sx_field[y, x]
                oy += sy_field[y, x]
            cx = (x - ox + 0.5) * scale
            cy = (y - oy + 0.5) * scale
            x0 = cx - half
            x1 = cx + half
            y0 = cy - half
            y1 = cy + half
            ix0 = max(int(math.floor(x0)), 0)
            ix1 = min(int(math.floor(x1)), wo - 1)
            iy0 = max(int(math.floor(y0)), 0)
            iy1 = min(int(math.floor(y1)), ho - 1)
            for oyi in range(iy0, iy1 + 1):
                ovy = min(y1, oyi + 1.0) - max(y0, float(oyi))
                if ovy <= 0.0:
                    continue
                for oxi in range(ix0, ix1 + 1):
                    ovx = min(x1, oxi + 1.0) - max(x0, float(oxi))
                    if ovx <= 0.0:
                        continue
                    # weight by the fraction of the drop that lands here, so a drop's total
                    # weight is ``wt`` whatever the scale and pixfrac
                    a = ovx * ovy * wt * area_norm
                    wout[oyi, oxi] += a
                    for c in range(nc):
                        out[oyi, oxi, c] += frame[y, x, c] * a


@numba.njit(nogil=True, cache=True)
def drizzle_finish(out, wout, min_weight, result):
    """``result = out / wout`` where ``wout > min_weight``, NaN elsewhere (float32)."""
    ho, wo, nc = out.shape
    for y in range(ho):
        for x in range(wo):
            wt = wout[y, x]
            if wt > min_weight:
                inv = 1.0 / wt
                for c in range(nc):
                    result[y, x, c] = out[y, x, c] * inv
            else:
                for c in range(nc):
                    result[y, x, c] = np.nan
