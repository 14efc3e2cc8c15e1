"""Sharpness metric: ranks frames by their true blur, globally and region by region,
ignores brightness changes, and drops cells that do not follow the seeing."""
from __future__ import annotations

import cv2
import numpy as np
from scipy.stats import spearmanr

import warnings

import pytest

from skystack.quality.metrics import (BLANK_SPAN, cell_grid, fit_cells, gaussian_ksize, global_quality,
                                      local_quality, log_energy_map, measure_view, nanmedian, sample_cells,
                                      sharpness_view)
from skystack.testing.planetary import Seeing, make_lunar_video


def _cells(video, n: int | None = None, gain: np.ndarray | None = None):
    """Every frame's cells at the same object places (the true shifts as the offsets)."""
    n = len(video) if n is None else n
    view0 = sharpness_view(video.frame(0))
    grid = cell_grid(view0.shape)
    e, lv = [], []
    for i in range(n):
        f = video.frame(i).astype(np.float32) * (1.0 if gain is None else gain[i])
        d = (video.shifts[i] - video.shifts[0]) / 2.0
        m = measure_view(sharpness_view(f), grid, (d[0], d[1]))
        e.append(m.log_energy.ravel())
        lv.append(m.log_level.ravel())
    return np.array(e), np.array(lv), grid


def test_quality_ranks_frames_by_true_blur(moon_video):
    e, lv, _ = _cells(moon_video)
    q = global_quality(e, lv).quality
    rho, _ = spearmanr(q, moon_video.blur)
    assert rho < -0.95  # sharper (smaller sigma) frames score higher, almost perfectly in order
    top = np.argsort(-q)[:12]
    assert np.median(moon_video.blur[top]) < np.percentile(moon_video.blur, 20)


def test_quality_is_invariant_to_a_gain(moon_video):
    """Thin cloud scales a frame; the brightness correction takes that out of the quality."""
    gain = np.where(np.arange(40) % 3 == 0, 0.5, 1.0)
    e, lv, _ = _cells(moon_video, 40)
    eg, lvg, _ = _cells(moon_video, 40, gain)
    model = fit_cells(e, lv)
    q, qg = global_quality(e, lv, model).quality, global_quality(eg, lvg, model).quality
    assert np.allclose(q, qg, atol=1e-4)  # without the correction the dimmed ones would lose 2 log 2
    # and a model fitted on the dimmed set ranks the frames the same way
    assert spearmanr(global_quality(eg, lvg).quality, q)[0] > 0.98


def test_blank_frames():
    grid = cell_grid((32, 32))
    z = measure_view(np.zeros((32, 32), np.float32), grid)
    assert z.blank and z.peak == 0.0
    assert measure_view(np.full((32, 32), 200.0, np.float32), grid).blank
    n = measure_view(np.random.default_rng(1).normal(100, 3, (32, 32)).astype(np.float32), grid)
    assert not n.blank and np.isfinite(n.log_energy).all()
    assert BLANK_SPAN > 0


def test_cells_follow_the_offset(rng):
    view = cv2.GaussianBlur(rng.normal(100, 20, (96, 128)).astype(np.float32), (0, 0), 1.0)
    grid = cell_grid(view.shape, size=16)
    assert (grid.ny, grid.nx) == (6, 8)
    base = measure_view(view, grid)
    # the scene moved by (+16, +16): the first frame's cell (j, i) is the moved frame's (j+1, i+1)
    moved = np.zeros_like(view)
    moved[16:, 16:] = view[:-16, :-16]
    m = measure_view(moved, grid, (16.0, 16.0))
    # (the first cells see the zero border the move left, the last ones the frame edge)
    assert np.allclose(m.log_energy[1:-2, 1:-2], base.log_energy[1:-2, 1:-2], atol=1e-4)
    # cells more than half outside the frame are not measured
    assert np.isnan(m.log_energy[-1]).all() and np.isnan(m.log_energy[:, -1]).all()


@pytest.mark.parametrize("offset", [(0.0, 0.0), (5.4, -9.6), (-20.0, 7.0)])
def test_cells_are_the_mean_of_their_pixels_inside_the_view(rng, offset):
    view = cv2.GaussianBlur(rng.normal(100, 20, (96, 128)).astype(np.float32), (0, 0), 1.0)
    grid = cell_grid(view.shape, size=16)
    m = measure_view(view, grid, offset)
    energy = log_energy_map(view).astype(np.float64)
    ox, oy = int(round(offset[0])), int(round(offset[1]))
    for j in range(grid.ny):
        for i in range(grid.nx):
            y0, x0 = oy + 16 * j, ox + 16 * i
            box = (slice(max(y0, 0), max(min(y0 + 16, 96), 0)), slice(max(x0, 0), max(min(x0 + 16, 128), 0)))
            if energy[box].size < 128:  # less than half inside: not measured
                assert np.isnan(m.log_energy[j, i]) and np.isnan(m.log_level[j, i])
                continue
            assert m.log_energy[j, i] == pytest.approx(np.log(energy[box].mean()), abs=1e-5)
            assert m.log_level[j, i] == pytest.approx(np.log(view[box].astype(np.float64).mean()), abs=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1])
def test_nanmedian_is_numpys(rng, dtype, axis):
    a = rng.normal(0, 1, (101, 40)).astype(dtype)
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 3] = np.nan  # an all-NaN column
    a[7, :] = np.nan  # and row
    a[:, 5] = 1.0  # an all-equal column with no NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(a, axis=axis)
    got = nanmedian(a, axis)
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)


def test_cells_that_do_not_follow_the_seeing_get_no_weight(rng):
    """One factor (the frames' seeing) drives the structured cells; cells of pure noise
    (empty sky) get no weight and do not dilute the ranking."""
    n, k = 300, 40
    seeing = rng.normal(0, 1, n)
    e = np.empty((n, k))
    e[:, :10] = 1.5 * seeing[:, None] + rng.normal(0, 0.3, (n, 10))  # a planet's disk
    e[:, 10:] = rng.normal(0, 0.3, (n, 30))  # its sky
    model = fit_cells(e, np.zeros((n, k)))
    assert model.weight[10:].max() < 0.1 * model.weight[:10].min()
    assert np.all(np.abs(model.loading[:10] - 1.5 * np.std(seeing) / np.std(seeing)) < 0.5)
    q = global_quality(e, np.zeros((n, k)), model).quality
    assert spearmanr(q, seeing)[0] > 0.99
    plain = np.mean(e - np.median(e, axis=0), axis=1)
    assert spearmanr(q, seeing)[0] > spearmanr(plain, seeing)[0]


def test_local_quality_ranks_regions_by_their_own_blur():
    """With patchy seeing each region has its own best frames; the box energy finds them."""
    v = make_lunar_video(40, (192, 192), seed=4,
                         seeing=Seeing(jitter_px=0.0, distortion_px=0.0, patchy=0.8, patchy_cell_px=64.0))
    centres = np.array([[48.0, 48.0], [144.0, 48.0], [48.0, 144.0], [144.0, 144.0]])
    q = np.array([local_quality(v.frame(i), centres, 48) for i in range(len(v))])
    blur = np.array([v.local_blur(i)[centres[:, 1].astype(int), centres[:, 0].astype(int)] for i in range(len(v))])
    for c in range(4):
        assert spearmanr(q[:, c], blur[:, c])[0] < -0.8


def test_local_quality_boxes_outside_are_nan(rng):
    img = np.full((64, 128), 50.0, np.float32)
    img[:, :64] += rng.normal(0, 10, (64, 64)).astype(np.float32)
    q = local_quality(img, np.array([[32.0, 32.0], [96.0, 32.0], [-100.0, -100.0]]), 32)
    assert q[0] > q[1] + 3  # textured against flat: e^3 = 20 times the energy
    assert np.isnan(q[2])


def test_sample_cells_is_bilinear_and_nan_outside():
    maps = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    pts = np.array([[0.0, 0.0], [1.5, 0.0], [1.0, 1.5], [-0.4, 2.4], [3.6, 0.0], [0.0, -0.6]])
    v = sample_cells(maps, pts)[0]
    assert np.allclose(v[:4], [0.0, 1.5, 7.0, 8.0])
    assert np.isnan(v[4]) and np.isnan(v[5])


def test_log_energy_map_of_a_ramp_is_zero_inside():
    ramp = np.tile(np.arange(64, dtype=np.float32), (32, 1))
    assert np.abs(log_energy_map(ramp)[8:-8, 8:-8]).max() < 1e-6


def test_gaussian_ksize():
    assert gaussian_ksize(1.0) == 7 and gaussian_ksize(0.5) == 5 and gaussian_ksize(2.0) == 11
