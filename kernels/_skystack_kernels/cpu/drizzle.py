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


# -- general (affine) drizzle: the deep-sky stack ---------------------------------------
# Deep-sky frames are rotated and scaled against the reference (field rotation of an alt-az
# mount, a meridian flip, refocusing), so a drop is a parallelogram on the output grid.
# Its overlap with an output pixel is computed exactly by the "boxer" algorithm of STScI's
# cdrizzle (Fruchter & Hook 2002; drizzle/src/cdrizzlebox.c): the signed area of the
# polygon ∩ unit square is the sum, over the polygon's edges, of the signed area between
# each edge (clipped to the square's x range) and the square's bottom, capped at its top.


@numba.njit(nogil=True, cache=True, inline="always")
def _sgarea(x1, y1, x2, y2, slope):
    """Signed area between segment (x1, y1)-(x2, y2) and y = 0, inside the unit square."""
    dx = x2 - x1
    if dx == 0.0:
        return 0.0
    if dx < 0.0:
        sgn = -1.0
        xlo = x2
        xhi = x1
    else:
        sgn = 1.0
        xlo = x1
        xhi = x2
    if xlo >= 1.0 or xhi <= 0.0:
        return 0.0
    xlo = max(xlo, 0.0)
    xhi = min(xhi, 1.0)
    c = y1 - slope * x1
    ylo = slope * xlo + c
    yhi = slope * xhi + c
    if ylo <= 0.0 and yhi <= 0.0:
        return 0.0
    # slope != 0 below: a horizontal segment has ylo == yhi, so it returned above or
    # falls into one of the two cases that follow without crossing an axis
    if ylo < 0.0:
        ylo = 0.0
        xlo = -c / slope
    if yhi < 0.0:
        yhi = 0.0
        xhi = -c / slope
    if ylo >= 1.0 and yhi >= 1.0:
        return sgn * (xhi - xlo)
    if ylo <= 1.0 and yhi <= 1.0:
        return sgn * 0.5 * (xhi - xlo) * (yhi + ylo)
    xtop = (1.0 - c) / slope
    if ylo < 1.0:
        return sgn * (0.5 * (xtop - xlo) * (1.0 + ylo) + xhi - xtop)
    return sgn * (0.5 * (xhi - xtop) * (1.0 + yhi) + xtop - xlo)


@numba.njit(nogil=True, cache=True)
def drizzle_affine_add(src, src_x0, src_y0, cfa, matrix, pixfrac, mul, add, weight, out, wout, count, stamp,
                       frame_id, out_x0, out_y0):
    """Drop a block of one frame onto an output block through an affine map, in place.

    Parameters
    ----------
    src : (hs, ws, C) float32
        Frame pixels ``[src_y0 : src_y0 + hs, src_x0 : src_x0 + ws]``; NaN pixels are
        missing data and skipped.
    src_x0, src_y0 : int
        Frame coordinates of ``src[0, 0]``.
    cfa : (2, 2) int64
        For a colour-filter-array mosaic (``C == 1``), the output channel of each site by
        ``(y % 2, x % 2)`` of absolute frame coordinates (Bayer drizzle: a photosite drops
        its value into its own colour only). ``cfa[0, 0] < 0``: not a mosaic, input
        channel ``c`` goes to output channel ``c``.
    matrix : (2, 3) float64
        Frame pixel centre (x, y) → output pixel centre (x, y), absolute coordinates.
    pixfrac : float
        Drop side as a fraction of an input pixel (0 < pixfrac <= 1).
    mul, add : (Cout,) float32
        Normalisation per output channel: ``v * mul + add``.
    weight : float
        The frame's weight; each drop spreads it over the output pixels it overlaps, in
        proportion to the overlap (a drop's total weight is ``weight`` whatever the scale).
    out, wout : (ho, wo, Cout) float64
        Accumulated ``value × w`` and ``w`` of the output block.
    count, stamp : (ho, wo, Cout) int32
        Frames contributing per pixel: where ``stamp != frame_id`` the pixel is first
        touched by this frame, ``count`` goes up by one and ``stamp`` becomes
        ``frame_id``. Pass (1, 1, 1) arrays to skip the count.
    frame_id : int
        A number unique to this frame within the block (>= 0).
    out_x0, out_y0 : int
        Absolute output coordinates of ``out[0, 0]``.
    """
    hs, ws, nc = src.shape
    ho, wo, nco = wout.shape
    counting = count.shape[0] == ho and count.shape[1] == wo
    mosaic = cfa[0, 0] >= 0
    # absolute output coordinates throughout (the block origin only offsets the indices), so
    # a pixel's sums are bit-identical however the output is cut into blocks
    a, b, tx = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    c, d, ty = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    h = 0.5 * pixfrac
    # the drop's corners relative to its mapped centre, counter-clockwise in (x, y)
    cx0 = -h * a - h * b
    cy0 = -h * c - h * d
    cx1 = h * a - h * b
    cy1 = h * c - h * d
    cx2 = h * a + h * b
    cy2 = h * c + h * d
    cx3 = -h * a + h * b
    cy3 = -h * c + h * d
    area = abs(a * d - b * c) * pixfrac * pixfrac  # the drop's area in output pixels
    if area <= 0.0 or weight <= 0.0:
        return
    # the corners run counter-clockwise in (x, y) when the map keeps orientation, and boxer
    # gives such a polygon a negative area
    orient = -1.0 if a * d - b * c > 0.0 else 1.0
    inv_area = weight / area
    # the edges' slopes are the same for every drop of the frame (an affine map)
    s01 = (cy1 - cy0) / (cx1 - cx0) if cx1 != cx0 else 0.0
    s12 = (cy2 - cy1) / (cx2 - cx1) if cx2 != cx1 else 0.0
    s23 = (cy3 - cy2) / (cx3 - cx2) if cx3 != cx2 else 0.0
    s30 = (cy0 - cy3) / (cx0 - cx3) if cx0 != cx3 else 0.0
    ext_x = max(abs(cx0), abs(cx1))
    ext_y = max(abs(cy0), abs(cy1))
    for yy in range(hs):
        fy = src_y0 + yy
        for xx in range(ws):
            fx = src_x0 + xx
            mx = a * fx + b * fy + tx
            my = c * fx + d * fy + ty
            ix0 = max(int(math.floor(mx - ext_x + 0.5)), out_x0)
            ix1 = min(int(math.floor(mx + ext_x + 0.5)), out_x0 + wo - 1)
            iy0 = max(int(math.floor(my - ext_y + 0.5)), out_y0)
            iy1 = min(int(math.floor(my + ext_y + 0.5)), out_y0 + ho - 1)
            if ix0 > ix1 or iy0 > iy1:
                continue
            for ci in range(nc):
                v = src[yy, xx, ci]
                if not math.isfinite(v):
                    continue
                co = cfa[fy & 1, fx & 1] if mosaic else ci
                v = v * mul[co] + add[co]
                for oy in range(iy0, iy1 + 1):
                    # the unit square of output pixel (ox, oy) is [ox-0.5, ox+0.5] × [oy-0.5, oy+0.5]
                    py0 = my + cy0 - oy + 0.5
                    py1 = my + cy1 - oy + 0.5
                    py2 = my + cy2 - oy + 0.5
                    py3 = my + cy3 - oy + 0.5
                    for ox in range(ix0, ix1 + 1):
                        px0 = mx + cx0 - ox + 0.5
                        px1 = mx + cx1 - ox + 0.5
                        px2 = mx + cx2 - ox + 0.5
                        px3 = mx + cx3 - ox + 0.5
                        ov = (_sgarea(px0, py0, px1, py1, s01) + _sgarea(px1, py1, px2, py2, s12)
                              + _sgarea(px2, py2, px3, py3, s23) + _sgarea(px3, py3, px0, py0, s30)) * orient
                        if ov <= 0.0:
                            continue
                        wgt = ov * inv_area
                        ly = oy - out_y0
                        lx = ox - out_x0
                        out[ly, lx, co] += v * wgt
                        wout[ly, lx, co] += wgt
                        if counting and stamp[ly, lx, co] != frame_id:
                            stamp[ly, lx, co] = frame_id
                            count[ly, lx, co] += 1
