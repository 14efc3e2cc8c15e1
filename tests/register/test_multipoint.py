"""Multi-point alignment: AP placement, local shifts against the truth, selection, smooth fields."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from skystack.register.multipoint import (APGrid, LocalAligner, NodeInterpolator, dewarp, fill_from_neighbours,
                                          node_values, place_alignment_points, select_per_ap)


def test_no_alignment_point_on_empty_sky(planet_video):
    ref = planet_video.truth
    grid = place_alignment_points(ref, ap_size=32)
    assert 0 < grid.n_active < grid.active.size  # sky nodes exist and got none
    sky = planet_video.black_adu + 2.0
    for x0, y0, x1, y1 in grid.boxes():
        box = ref[y0:y1, x0:x1]
        assert np.percentile(box, 90) > sky + 10  # every AP box holds lit planet
    # and every node whose box is entirely sky is inactive
    for j, y in enumerate(grid.ys):
        for i, x in enumerate(grid.xs):
            box = ref[int(y) - 16:int(y) + 16, int(x) - 16:int(x) + 16]
            if box.max() < sky:
                assert not grid.active[j, i]


def test_placement_on_the_moon_covers_the_field(moon_video):
    grid = place_alignment_points(moon_video.truth, ap_size=48)
    assert grid.size == 48 and grid.spacing == pytest.approx(16.0)  # boxes overlap by two thirds
    assert place_alignment_points(moon_video.truth, ap_size=48, spacing=24).spacing == 24.0
    assert grid.n_active >= 0.8 * grid.active.size
    b = grid.boxes()
    assert b[:, :2].min() >= 0 and b[:, 2].max() <= 256 and b[:, 3].max() <= 256


def test_placement_margin_and_flat_regions():
    img = np.full((200, 200), 100.0, np.float32)
    img[:, :100] += np.random.default_rng(2).normal(0, 20, (200, 100)).astype(np.float32)
    grid = place_alignment_points(img, ap_size=40, margin=15)
    b = grid.boxes()
    assert b[:, :2].min() >= 15 and b[:, 2:].max() <= 185
    # the featureless right half is lit but has no structure to align on
    assert np.all(grid.centers[:, 0] < 120)
    with pytest.raises(ValueError):
        place_alignment_points(img[:6, :6], ap_size=40)


def test_local_shifts_follow_the_true_distortion(moon_video):
    """Against the truth, AP displacements of the sharpest frames match the known field far
    better than the global shift does."""
    v = moon_video
    grid = place_alignment_points(v.truth, ap_size=48, spacing=24)  # boxes clear of the 256-px field's edges
    local = LocalAligner(v.truth, grid)
    c = grid.centers.astype(int)
    err_local, err_global = [], []
    for i in np.argsort(v.blur)[:12]:
        f = v.frame(int(i)).astype(np.float32)
        m = local.measure(f, (v.shifts[i, 0], v.shifts[i, 1]))
        sx, sy = v.displacement(int(i))
        tx, ty = sx[c[:, 1], c[:, 0]], sy[c[:, 1], c[:, 0]]
        assert m.valid.mean() > 0.9
        err_local += list(np.hypot(m.disp[:, 0] - tx, m.disp[:, 1] - ty)[m.valid])
        err_global += list(np.hypot(v.shifts[i, 0] - tx, v.shifts[i, 1] - ty))
    rl, rg = np.sqrt(np.mean(np.square(err_local))), np.sqrt(np.mean(np.square(err_global)))
    assert rl < 0.5 and rl < 0.55 * rg  # measured: 0.39 px against 0.92 px


def test_measuring_some_points_equals_measuring_all(moon_video):
    v = moon_video
    grid = place_alignment_points(v.truth, ap_size=48)
    local = LocalAligner(v.truth, grid)
    f = v.frame(3).astype(np.float32)
    everything = local.measure(f, tuple(v.shifts[3]))
    which = np.array([2, 7, 11])
    some = local.measure(f, tuple(v.shifts[3]), which)
    assert some.which.tolist() == [2, 7, 11]
    assert np.allclose(some.disp, everything.disp[which]) and np.array_equal(some.valid, everything.valid[which])


def test_boxes_leaving_the_frame_are_invalid(moon_video):
    v = moon_video
    grid = place_alignment_points(v.truth, ap_size=48)
    local = LocalAligner(v.truth, grid)
    m = local.measure(v.frame(0).astype(np.float32), (40.0, 0.0))
    right = grid.boxes()[:, 2] + 40 > 256
    assert right.any() and not m.valid[right].any()


def test_select_per_ap():
    q = np.array([[5.0, 1.0], [4.0, 3.0], [3.0, 9.0], [2.0, 2.0]])
    valid = np.ones_like(q, bool)
    valid[2, 1] = False
    sel = select_per_ap(q, valid, 2)
    assert sel[:, 0].tolist() == [True, True, False, False]
    assert sel[:, 1].tolist() == [False, True, False, True]  # frame 2 is best there but invalid
    assert select_per_ap(q, valid, 10).sum() == 7


def test_node_interpolation_is_bilinear_and_smooth():
    grid = APGrid(xs=np.array([10.0, 30.0, 50.0]), ys=np.array([5.0, 25.0]), size=20,
                  active=np.ones((2, 3), bool))
    interp = NodeInterpolator(grid, (30, 60))
    ones = interp(np.ones((2, 3)))
    assert np.allclose(ones, 1.0)  # partition of unity: blending weights never dip
    v = np.array([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]])
    f = interp(v)
    assert np.allclose([f[5, 10], f[25, 50], f[5, 30]], [0.0, 10.0, 2.0], atol=1e-5)  # exact at nodes
    assert abs(f[15, 20] - 4.0) < 1e-5  # bilinear midpoint of 0, 2, 6, 8
    assert abs(f[0, 0]) < 1e-5 and abs(f[29, 59] - 10.0) < 1e-5  # constant beyond the outer nodes
    # bilinear up to OpenCV's 1/32-of-a-spacing sample grid
    yy, xx = np.mgrid[0:30, 0:60].astype(float)
    u = np.clip((xx - 10) / 20, 0, 2)
    w = np.clip((yy - 5) / 20, 0, 1)
    exact = (2 * u) * (1 - w) + (6 + 2 * u) * w
    assert np.abs(f - exact).max() <= 8.0 / 32 / 2 + 1e-5
    # a window is the same field, cut
    assert np.allclose(interp(v, (3, 20, 7, 41)), f[3:20, 7:41], atol=1e-6)
    # several values per node at once (displacement x, y and weight in one call)
    three = interp(np.dstack([v, 2 * v, np.ones_like(v)]))
    assert three.shape == (30, 60, 3) and np.allclose(three[..., 1], 2 * f, atol=1e-5)
    one = NodeInterpolator(APGrid(xs=np.array([5.0]), ys=np.array([5.0]), size=8, active=np.ones((1, 1), bool)),
                           (10, 12))
    assert np.allclose(one(np.array([[3.0]])), 3.0)


def test_fill_from_neighbours():
    known = np.array([[True, False, False], [False, False, False], [False, False, True]])
    vals = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 5.0]], np.float32)
    out = fill_from_neighbours(vals, known, fallback=-7.0)
    assert out[0, 0] == 1.0 and out[2, 2] == 5.0  # known nodes keep their values
    assert out[0, 1] == 1.0 and out[1, 1] == 3.0  # the mean of the known neighbours
    assert out[2, 1] == 5.0
    far = fill_from_neighbours(np.zeros((3, 5), np.float32), np.eye(3, 5, dtype=bool) & False, fallback=-7.0)
    assert np.all(far == -7.0)  # no known neighbour: the fallback


def test_node_values_fill():
    grid = APGrid(xs=np.array([0.0, 1.0, 2.0]), ys=np.array([0.0, 1.0]), size=8,
                  active=np.array([[True, False, True], [False, True, True]]))
    out = node_values(grid, np.array([1.0, np.nan, 3.0, 4.0]), fill=-1.0)
    assert out.tolist() == [[1.0, -1.0, -1.0], [-1.0, 3.0, 4.0]]


def test_dewarp_inverts_a_known_field(moon_video):
    ref = moon_video.truth
    h, w = ref.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sx = (1.5 * np.sin(xx / 40.0) + 0.7).astype(np.float32)
    sy = (-1.0 * np.cos(yy / 35.0)).astype(np.float32)
    # frame(p + s(p)) = ref(p): build it by inverting the smooth map with a fixed-point step
    px, py = xx - sx, yy - sy
    px2 = xx - cv2.remap(sx, px, py, cv2.INTER_LINEAR)
    py2 = yy - cv2.remap(sy, px, py, cv2.INTER_LINEAR)
    frame = cv2.remap(ref, px2, py2, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    out, inside = dewarp(frame, sx, sy)
    d = (out - ref)[10:-10, 10:-10]
    assert np.sqrt(np.mean(d ** 2)) < 0.6  # of a 10..220 ADU scene: interpolation error only
    assert inside is not None and inside[10:-10, 10:-10].all()
    # sources beyond the frame: x = 255 + 0.85 on the right, y = 0 - 1 on the top row
    assert inside[:, -1].max() == 0.0 and inside[0].max() == 0.0 and inside[60:200, 0].min() == 1.0


def test_dewarp_of_a_window_equals_the_full_frame(moon_video):
    frame = moon_video.frame(4).astype(np.float32)
    h, w = frame.shape
    sx = np.full((h, w), 0.37, np.float32)
    sy = np.full((h, w), -1.2, np.float32)
    full, inside = dewarp(frame, sx, sy)
    assert inside is not None and inside[0].max() == 0.0  # sources above the top row
    win = (40, 90, 100, 180)
    part, part_inside = dewarp(frame, sx[40:90, 100:180], sy[40:90, 100:180], win)
    assert np.allclose(part, full[40:90, 100:180])
    assert part_inside is None  # every source inside the frame: no mask needed


def test_lit_box_test_equals_the_percentile_of_each_box():
    """The lit test counts pixels above the level (one integral image) instead of taking
    each box's 90th percentile: the same answer for every box, ties (integer-valued
    images), NaN and the interpolation boundary included."""
    from skystack.register.multipoint import _BoxCounts

    rng = np.random.default_rng(11)
    boxes = boundary = 0
    for k in range(12):
        img = rng.integers(0, 4 + k, (90, 120)).astype(np.float32)
        if k % 3 == 0:
            img[rng.random(img.shape) < 0.002] = np.nan
        if k % 4 == 1:
            img = cv2.GaussianBlur(img, (0, 0), 2.0)
        for size in (10, 16, 32):
            n, q = size * size, 0.9 * (size * size - 1)
            for thr in np.unique(np.nanpercentile(img, [10, 50, 80, 90, 97]).astype(np.float32)):
                above = _BoxCounts(img, thr, size)
                for y0 in range(0, img.shape[0] - size, 5):
                    for x0 in range(0, img.shape[1] - size, 7):
                        box = img[y0:y0 + size, x0:x0 + size]
                        want = float(np.percentile(box, 90)) > thr
                        assert above.p90_above(y0, x0) == want, (k, size, thr, y0, x0)
                        boxes += 1
                        boundary += int(np.sum(box > thr)) == n - int(q) - 1
    assert boxes > 10_000 and boundary > 50  # the sorted fallback was exercised too
