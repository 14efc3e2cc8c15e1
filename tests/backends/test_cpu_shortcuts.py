"""The CPU backend's shortcuts change nothing: the coverage warp is skipped only where it
would mark nothing (a tile mapped wholly inside its source gives the same pixels, to the
bit), and a tile band reused from the last tile gives what a fresh one gives."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.backends import cpu as cpu_backend
from skystack.backends.cpu import CpuBackend, maps_inside


def _affine(angle_deg: float, tx: float, ty: float, scale: float = 1.0) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


@pytest.mark.parametrize("angle,tx,ty,inside", [
    (0.0, -3.0, -4.0, True),      # the output window sits 3-4 px inside the source
    (0.0, 0.0, 0.0, False),       # identity: the edge centres are 0.5 px from the border
    (0.0, 2.0, 0.0, False),       # shifted right: the left columns come from outside
    (1.5, -20.0, -20.0, True),
    (-1.5, 0.0, -20.0, False),    # rotated: a corner of the left edge leaves the source
])
def test_maps_inside_agrees_with_the_coverage_warp(angle, tx, ty, inside):
    import cv2

    src_shape, out_shape = (120, 160), (80, 110)
    m = _affine(angle, tx, ty)
    ones = np.ones(src_shape, np.uint8)
    cov = cv2.warpAffine(ones, m, out_shape[::-1], flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    assert maps_inside(m, out_shape, src_shape) is inside
    if inside:
        assert cov.all()  # the shortcut never skips a pixel the mask would have removed


@pytest.mark.parametrize("interp", ["bilinear", "cubic", "lanczos"])
@pytest.mark.parametrize("tx,ty", [(-3.0, -4.0), (1.5, 0.3), (-30.0, 2.0)])
def test_warp_is_the_same_with_and_without_the_shortcut(monkeypatch, interp, tx, ty):
    rng = np.random.default_rng(3)
    src = rng.normal(100, 10, (120, 160)).astype(np.float32)
    m = _affine(0.7, tx, ty, 1.001)
    fast = CpuBackend().warp(src, m, (80, 110), interp)
    monkeypatch.setattr(cpu_backend, "maps_inside", lambda *a, **k: False)
    slow = CpuBackend().warp(src, m, (80, 110), interp)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_array_equal(np.nan_to_num(fast, nan=-1), np.nan_to_num(slow, nan=-1))


def test_a_reused_tile_band_gives_what_a_fresh_backend_gives():
    # one backend, one thread, tiles of every shape in turn (bigger, smaller, colour): the
    # band kept from the last tile must never leak into the next one's result
    from backend_cases import all_cases

    shared = CpuBackend()
    for case in all_cases(seed=11) + all_cases(seed=12)[::-1]:
        got = shared.combine_band(case.jobs, case.out_shape, case.weights, case.options)
        want = CpuBackend().combine_band(case.jobs, case.out_shape, case.weights, case.options)
        np.testing.assert_array_equal(got.image, want.image, err_msg=case.name)
        np.testing.assert_array_equal(got.count, want.count, err_msg=case.name)
        np.testing.assert_array_equal(got.rejected, want.rejected, err_msg=case.name)


@pytest.mark.parametrize("angle,scale", [(0.0, 1.0), (1.7, 1.0), (-2.3, 0.998), (0.4, 1.01)])
def test_cells_inside_agrees_with_maps_inside_cell_by_cell(angle, scale):
    from skystack.backends.cpu import cells_inside
    from skystack.stack.plan import WARP_TILE_ROWS, cell_warps

    rng = np.random.default_rng(int(angle * 10) % 97)
    fm = _affine(angle, *rng.uniform(-30, 30, 2), scale)
    fm[0, 2] -= 40  # output column 0 comes from about source column 40: a strip inside a wider source
    height, width, src_width = 300, 180, 260
    seen = set()
    for band_y0, band_y1 in [(0, 120), (64, 200), (200, 300)]:
        cells = cell_warps(fm, band_y0, band_y1, 0, height, width, height, "cubic")
        heights = cells.sy1 - cells.sy0
        got = cells_inside(cells.matrices, (WARP_TILE_ROWS, width), heights, src_width)
        want = [maps_inside(m, (WARP_TILE_ROWS, width), (int(h), src_width))
                for m, h in zip(cells.matrices, heights)]
        assert got.tolist() == want
        seen.update(want)
    assert seen == {True, False}  # the cases reach both answers
