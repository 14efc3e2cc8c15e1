"""The affine drizzle kernel: exact drop overlaps, conserved weight, CFA routing, and
blocks that add up to the whole (the block tasks' contract)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _skystack_kernels.cpu.drizzle import drizzle_affine_add

from skystack.stack.drizzle import cfa_channels, output_matrix, source_region

NO_CFA = np.full((2, 2), -1, np.int64)
NO_COUNT = np.zeros((1, 1, 1), np.int32)
ONE, ZERO = np.ones(3, np.float32), np.zeros(3, np.float32)


def _affine(rng, scale=2.0):
    ang = rng.uniform(-math.pi, math.pi)
    s = rng.uniform(0.8, 1.25)
    shear = rng.uniform(-0.1, 0.1)
    a = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) @ [[s, shear], [0, s]]
    if rng.uniform() < 0.3:
        a = a @ [[1, 0], [0, -1]]  # a mirrored frame (meridian flip seen in a mirror)
    return np.hstack([scale * a, rng.uniform(10, 20, (2, 1))])


def _drop(src, m, shape, pixfrac, x0=0, y0=0, src_x0=0, src_y0=0, cfa=NO_CFA, weight=1.0):
    c = 3 if cfa[0, 0] >= 0 else src.shape[2]
    out = np.zeros(shape + (c,))
    w = np.zeros(shape + (c,))
    drizzle_affine_add(src, src_x0, src_y0, cfa, m, pixfrac, ONE[:c], ZERO[:c], weight, out, w, NO_COUNT, NO_COUNT,
                       0, x0, y0)
    return out, w


@pytest.mark.parametrize("seed", range(6))
def test_a_drop_spreads_exactly_its_weight_over_the_exact_overlaps(seed):
    rng = np.random.default_rng(seed)
    m = _affine(rng)
    pixfrac = rng.uniform(0.3, 1.0)
    out, w = _drop(np.full((1, 1, 1), 7.0, np.float32), m, (40, 40), pixfrac, src_x0=3, src_y0=2, weight=0.5)
    assert w.sum() == pytest.approx(0.5, abs=1e-12)
    assert np.allclose(out[w > 0] / w[w > 0], 7.0)
    # brute force: the share of the drop's area inside each output pixel, on a fine grid
    k = 400
    u = (np.arange(k) + 0.5) / k - 0.5
    uu, vv = np.meshgrid(u * pixfrac + 3, u * pixfrac + 2)
    ox = m[0, 0] * uu + m[0, 1] * vv + m[0, 2]
    oy = m[1, 0] * uu + m[1, 1] * vv + m[1, 2]
    hist = np.zeros((40, 40))
    np.add.at(hist, (np.floor(oy + 0.5).astype(int), np.floor(ox + 0.5).astype(int)), 0.5 / k ** 2)
    assert np.abs(hist - w[..., 0]).max() < 5e-3


def test_blocks_add_up_to_the_whole_bit_for_bit():
    rng = np.random.default_rng(3)
    h, w, scale, pixfrac = 30, 40, 2.0, 0.7
    frames = [rng.normal(100, 10, (h, w, 1)).astype(np.float32) for _ in range(3)]
    frames[1][5, 7, 0] = np.nan  # missing data is skipped
    matrices = [output_matrix(np.array([[math.cos(t), -math.sin(t), dx], [math.sin(t), math.cos(t), dy]]), scale)
                for t, dx, dy in ((0.0, 0, 0), (0.03, 1.3, -0.7), (-0.02, -2.2, 0.4))]
    shape = (60, 80)
    whole_o, whole_w = np.zeros(shape + (1,)), np.zeros(shape + (1,))
    for f, m in zip(frames, matrices):
        drizzle_affine_add(f, 0, 0, NO_CFA, m, pixfrac, ONE[:1], ZERO[:1], 1.0, whole_o, whole_w, NO_COUNT, NO_COUNT,
                           0, 0, 0)
    tiled_o, tiled_w = np.zeros_like(whole_o), np.zeros_like(whole_w)
    for by0, by1 in ((0, 17), (17, 40), (40, 60)):
        for bx0, bx1 in ((0, 33), (33, 80)):
            o = np.zeros((by1 - by0, bx1 - bx0, 1))
            ww = np.zeros_like(o)
            for f, m in zip(frames, matrices):
                r = source_region(m, (by0, by1, bx0, bx1), (h, w), pixfrac)
                if r is None:
                    continue
                y0, y1, x0, x1 = r
                drizzle_affine_add(np.ascontiguousarray(f[y0:y1, x0:x1]), x0, y0, NO_CFA, m, pixfrac, ONE[:1],
                                   ZERO[:1], 1.0, o, ww, NO_COUNT, NO_COUNT, 0, bx0, by0)
            tiled_o[by0:by1, bx0:bx1], tiled_w[by0:by1, bx0:bx1] = o, ww
    np.testing.assert_array_equal(tiled_o, whole_o)
    np.testing.assert_array_equal(tiled_w, whole_w)


def test_bayer_drizzle_drops_each_photosite_into_its_colour():
    # a GRBG mosaic of a grey-green scene: R sites 10, G sites 20, B sites 30
    h, w = 12, 16
    pat = "GRBG"
    cfa = cfa_channels(pat)
    mosaic = np.empty((h, w, 1), np.float32)
    value = {0: 10.0, 1: 20.0, 2: 30.0}
    for y in range(h):
        for x in range(w):
            mosaic[y, x, 0] = value[int(cfa[y % 2, x % 2])]
    m = output_matrix(np.array([[1.0, 0, 0.3], [0, 1.0, -0.2]]), 2.0)
    out, wt = _drop(mosaic, m, (24, 32), 1.0, cfa=cfa)
    for c in range(3):
        has = wt[..., c] > 0
        assert has.mean() > 0.2
        np.testing.assert_allclose(out[..., c][has] / wt[..., c][has], value[c])
    # green has twice the photosites of red and blue (away from the mosaic's edges)
    inner = wt[4:-4, 4:-4].sum(axis=(0, 1))
    assert inner[1] == pytest.approx(2 * inner[0], rel=1e-9) and inner[1] == pytest.approx(2 * inner[2], rel=1e-9)


def test_count_and_stamp_count_frames_not_drops():
    src = np.ones((4, 4, 1), np.float32)
    out, w = np.zeros((8, 8, 1)), np.zeros((8, 8, 1))
    count, stamp = np.zeros((8, 8, 1), np.int32), np.full((8, 8, 1), -1, np.int32)
    m = output_matrix(np.array([[1.0, 0, 0], [0, 1.0, 0]]), 2.0)
    for k in range(3):
        drizzle_affine_add(src, 0, 0, NO_CFA, m, 1.0, ONE[:1], ZERO[:1], 1.0, out, w, count, stamp, k, 0, 0)
    assert count.max() == 3 and count.min() == 3
