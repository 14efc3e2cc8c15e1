"""The warp cells of one (tile, frame) pair of phase 2, in one compiled pass.

Plain arrays in, plain arrays out; only numpy, numba and math are imported here.

Phase 2 warps every frame onto every tile in 8-row cells
(:func:`skystack.stack.plan.cell_warps` says which source rows each cell reads and the
cell's own matrix; :func:`skystack.backends.cpu.cells_inside` whether every output centre
of the cell lands inside those rows). Those two are NumPy passes over the ~20 cells of a
tile: 57 µs a pair, almost all of it NumPy's per-call overhead, paid tiles × frames times.
Under a fixed memory budget the tiles get shorter as the frames get more, so the pairs grow
as the square of the frame count: 33 600 pairs (about 2 s of one core, holding the GIL)
for 400 frames of 3000×2000 at 256 MB. :func:`cell_geometry` computes the same numbers,
the same float operations in the same order (so the same bits: tests/kernels compare them
with the NumPy versions), in ~3 µs with its Python wrapper.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def cell_geometry(m, band_y0, band_y1, src_y0, src_y1, width, src_height, margin, rows, src_width,
                  inside_margin, ty0, sy0, sy1, mats, inside):
    """Fill the first ``n`` entries of ``ty0``, ``sy0``, ``sy1`` (int64), ``mats``
    (n, 2, 3) and ``inside`` (bool) for the ``rows``-high cells of output rows
    ``[band_y0, band_y1)`` of a frame whose forward matrix is ``m`` (2, 3), ``width``
    output columns, ``src_height`` source rows, interpolation ``margin``; cells that see no
    source row are skipped. ``inside`` is judged against a source block of ``src_width``
    columns and each cell's own rows, ``inside_margin`` pixels in. Returns ``(n, bad)``:
    ``bad`` is the first cell whose rows leave ``[src_y0, src_y1)`` (-1: none)."""
    a = m[0, 0]
    b = m[0, 1]
    c = m[0, 2]
    d = m[1, 0]
    e = m[1, 1]
    f = m[1, 2]
    # plan._inverse's second row
    det = a * e - b * d
    p = -d / det
    q = a / det
    r = -(p * c + q * f)
    # cells_inside's inverse of the linear part
    ia = e / det
    ib = -b / det
    ic = -d / det
    id_ = a / det
    x0 = -0.5
    x1 = width - 0.5
    lo_in = inside_margin - 0.5
    hi_x = src_width - 0.5 - inside_margin
    cx1 = width - 1.0
    cy1 = rows - 1.0
    # the corners' linear parts (xs = 0, w-1, 0, w-1; ys = 0, 0, h-1, h-1)
    ax0 = ia * 0.0 + ib * 0.0
    ax1 = ia * cx1 + ib * 0.0
    ax2 = ia * 0.0 + ib * cy1
    ax3 = ia * cx1 + ib * cy1
    ay0 = ic * 0.0 + id_ * 0.0
    ay1 = ic * cx1 + id_ * 0.0
    ay2 = ic * 0.0 + id_ * cy1
    ay3 = ic * cx1 + id_ * cy1
    n = 0
    bad = -1
    t = (band_y0 // rows) * rows
    while t < band_y1:
        y0 = t - 0.5
        y1 = (t + rows) - 0.5
        k0 = p * x0 + q * y0 + r
        k1 = p * x1 + q * y0 + r
        k2 = p * x0 + q * y1 + r
        k3 = p * x1 + q * y1 + r
        lo = min(min(k0, k1), min(k2, k3))
        hi = max(max(k0, k1), max(k2, k3))
        s0 = max(0, np.int64(math.floor(lo)) - margin)
        s1 = min(src_height, np.int64(math.ceil(hi)) + margin + 1)
        if s1 > s0:
            if bad < 0 and (s0 < src_y0 or s1 > src_y1):
                bad = n
            src0 = float(s0)
            m02 = c + b * src0
            m12 = f + (e * src0 - t)
            ty0[n] = t
            sy0[n] = s0
            sy1[n] = s1
            mats[n, 0, 0] = a
            mats[n, 0, 1] = b
            mats[n, 0, 2] = m02
            mats[n, 1, 0] = d
            mats[n, 1, 1] = e
            mats[n, 1, 2] = m12
            tx = -(ia * m02 + ib * m12)
            ty = -(ic * m02 + id_ * m12)
            hi_y = (s1 - s0) - 0.5 - inside_margin
            ok = True
            for sx in (ax0 + tx, ax1 + tx, ax2 + tx, ax3 + tx):
                if not (sx >= lo_in and sx <= hi_x):
                    ok = False
            for sy in (ay0 + ty, ay1 + ty, ay2 + ty, ay3 + ty):
                if not (sy >= lo_in and sy <= hi_y):
                    ok = False
            inside[n] = ok
            n += 1
        t += rows
    return n, bad
