"""The compiled cell geometry of phase 2 gives what plan.cell_warps and cpu.cells_inside
give, to the bit (the warps, hence the stacks, must not change with it)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skystack.backends.base import BandJob
from skystack.backends.cpu import _cells, cells_inside
from skystack.stack.plan import WARP_TILE_ROWS, cell_warps


def _matrices(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        th = math.radians(rng.uniform(-3, 3))
        s = rng.uniform(0.98, 1.02)
        yield np.array([[s * math.cos(th), -s * math.sin(th), rng.uniform(-60, 60)],
                        [s * math.sin(th), s * math.cos(th), rng.uniform(-60, 60)]])


@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
def test_cells_match_the_numpy_geometry(interpolation):
    H, width = 600, 300
    checked = 0
    for k, m in enumerate(_matrices(7, 60)):
        band_y0 = int(np.random.default_rng(k).integers(0, 560))
        band_y1 = min(H, band_y0 + 8 * int(np.random.default_rng(k + 1).integers(1, 12)))
        # the source rows the whole band needs, with room, as tile_jobs gives them
        src_y0 = 0 if k % 3 == 0 else max(0, band_y0 - 80)
        src_y1 = H if k % 3 == 0 else min(H, band_y1 + 80)
        src_width = width + 20 * (k % 4)
        try:
            ref = cell_warps(m, band_y0, band_y1, src_y0, src_y1, width, H, interpolation)
        except ValueError:
            with pytest.raises(ValueError, match="do not cover tile rows"):
                _cells(BandJob(rows=None, matrix=m, scale=1.0, offset=0.0, frame_matrix=m, src_y0=src_y0, band_y0=band_y0, src_height=H),
                       band_y0, band_y1, src_y1 - src_y0, src_width, width, interpolation)
            continue
        job = BandJob(rows=None, matrix=m, scale=1.0, offset=0.0, frame_matrix=m, src_y0=src_y0, band_y0=band_y0, src_height=H)
        ty0, sy0, sy1, mats, inside = _cells(job, band_y0, band_y1, src_y1 - src_y0, src_width, width, interpolation)
        assert np.array_equal(ty0, ref.ty0) and np.array_equal(sy0, ref.sy0) and np.array_equal(sy1, ref.sy1)
        assert np.array_equal(mats, ref.matrices)  # bit for bit
        want = cells_inside(ref.matrices, (WARP_TILE_ROWS, width), ref.sy1 - ref.sy0, src_width)
        assert np.array_equal(inside, want)
        checked += 1
    assert checked > 20


def test_cells_off_the_frame_are_skipped():
    # a frame shifted 400 rows down: the band's first cells see no row of it
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 400.0]])
    ref = cell_warps(m, 0, 480, 0, 100, 200, 100, "cubic")
    job = BandJob(rows=None, matrix=m, scale=1.0, offset=0.0, frame_matrix=m, src_y0=0, band_y0=0, src_height=100)
    ty0, *_ = _cells(job, 0, 480, 100, 200, 200, "cubic")
    assert np.array_equal(ty0, ref.ty0) and 0 < len(ty0) < 480 // WARP_TILE_ROWS
