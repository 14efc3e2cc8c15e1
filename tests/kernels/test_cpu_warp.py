"""The Numba affine warp (_skystack_kernels.cpu.warp) against OpenCV as the CPU backend
uses it: ``cv2.warpAffine`` with a replicated border for the values, and a
nearest-neighbour warp of an all-ones plane for coverage (NaN where it is 0); its edge
rules on hand-worked cases; and the tiled warp against per-tile warps."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from _skystack_kernels.cpu.warp import (LANCZOS4_TABLE, TILE_COLUMNS, invert_affine, tile_table, warp_affine_cpu,
                                        warp_tiles_cpu)

CV_FLAGS = {"bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


def cv_coverage(src_shape, matrix, shape):
    h, w = shape
    ones = np.ones(src_shape[:2], np.uint8)
    return cv2.warpAffine(ones, np.asarray(matrix, np.float64), (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0


def cv_warp(src, matrix, shape, interpolation):
    """What ``CpuBackend.warp`` computes (written out here, so the kernels' tests do not
    depend on the backend's code)."""
    h, w = shape
    out = cv2.warpAffine(src, np.asarray(matrix, np.float64), (w, h), flags=CV_FLAGS[interpolation],
                         borderMode=cv2.BORDER_REPLICATE)
    out[~cv_coverage(src.shape, matrix, shape)] = np.nan
    return out


def warp(src, matrix, shape, interpolation):
    out = np.full(shape + src.shape[2:], -7.0, np.float32)  # sentinel: every pixel is written
    warp_affine_cpu(src, matrix, out, interpolation)
    return out


def random_matrix(rng):
    """A registration-like transform: small rotation, scale near 1, sub-pixel shift."""
    a = rng.uniform(-0.4, 0.4)
    s = rng.uniform(0.85, 1.15)
    return np.array([[s * np.cos(a), -s * np.sin(a), rng.uniform(-6, 6)],
                     [s * np.sin(a), s * np.cos(a), rng.uniform(-6, 6)]])


def source_points(matrix, shape):
    """Float64 source point of every output pixel (the kernel's inverse map)."""
    a = invert_affine(matrix)
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return a[0] * x + a[1] * y + a[2], a[3] * x + a[4] * y + a[5]


def assert_matches_cv(src, matrix, shape, interpolation):
    ref = cv_warp(src, matrix, shape, interpolation)
    out = warp(src, matrix, shape, interpolation)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    if interpolation == "lanczos":  # OpenCV's float32 arithmetic, reproduced to the bit, edges too
        np.testing.assert_array_equal(out, ref)
    else:  # float64 interpolation here: within float32 rounding of OpenCV's
        scale = float(np.nanmax(np.abs(src))) if np.isfinite(src).any() else 1.0
        tol = 2.5e-7 if interpolation == "bilinear" else 1.5e-6  # bicubic: 16 float32 terms in OpenCV
        np.testing.assert_allclose(out, ref, rtol=0, atol=tol * scale, equal_nan=True)
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
def test_matches_opencv_on_random_transforms(interpolation):
    rng = np.random.default_rng(21)
    covered = edge = 0
    reach = {"bilinear": (0, 1), "cubic": (1, 2), "lanczos": (3, 4)}[interpolation]  # taps before / after the point
    for _ in range(25):
        h, w = rng.integers(12, 40, 2)
        src = rng.normal(1000, 50, (h, w)).astype(np.float32)
        src[rng.random(src.shape) < 0.02] = np.nan  # masked pixels propagate to their taps
        src[0, rng.integers(0, w)] = np.nan  # ... and are replicated with the edge
        shape = tuple(int(v) for v in rng.integers(8, 40, 2))
        m = random_matrix(rng)
        out = assert_matches_cv(src, m, shape, interpolation)
        covered += np.isfinite(out).sum()
        sx, sy = source_points(m, shape)
        ok = np.isfinite(out)
        off = ((np.floor(sx) - reach[0] < 0) | (np.floor(sx) + reach[1] > w - 1) |
               (np.floor(sy) - reach[0] < 0) | (np.floor(sy) + reach[1] > h - 1))
        edge += (ok & off).sum()
    assert covered > 1000  # the comparison was not all-NaN
    assert edge > 200  # ... and many covered pixels read replicated taps


@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
@pytest.mark.parametrize("shift", [(0, 0), (2, -1), (-3, 4)])
def test_integer_translations_match_opencv(interpolation, shift):
    rng = np.random.default_rng(1)
    src = rng.normal(0, 1, (20, 24)).astype(np.float32)
    src[5, 7] = np.nan
    m = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    out = assert_matches_cv(src, m, (20, 24), interpolation)
    dx, dy = shift
    # covered: exactly the pixels the shifted frame lands on
    covered = np.zeros((20, 24), bool)
    covered[max(dy, 0):20 + min(dy, 0), max(dx, 0):24 + min(dx, 0)] = True
    np.testing.assert_array_equal(np.isfinite(warp(np.ones_like(src), m, (20, 24), interpolation)), covered)
    if interpolation == "bilinear":  # an exact copy, edges included
        np.testing.assert_array_equal(out[max(dy, 0):20 + min(dy, 0), max(dx, 0):24 + min(dx, 0)],
                                      src[max(-dy, 0):20 - max(dy, 0), max(-dx, 0):24 - max(dx, 0)])


def test_colour_and_integer_sources():
    rng = np.random.default_rng(2)
    src = rng.integers(0, 65535, (30, 26, 3)).astype(np.uint16)
    m = random_matrix(rng)
    for interpolation in ("bilinear", "cubic", "lanczos"):
        out = warp(src, m, (22, 28), interpolation)
        for c in range(3):
            ref = cv_warp(src[..., c].astype(np.float32), m, (22, 28), interpolation)
            np.testing.assert_array_equal(np.isnan(out[..., c]), np.isnan(ref))
            np.testing.assert_allclose(out[..., c], ref, rtol=1e-6, atol=0.2, equal_nan=True)


def test_bilinear_interpolates_a_plane_and_replicates_its_edge():
    y, x = np.mgrid[0:16, 0:20].astype(np.float64)
    src = (3.0 * x - 2.0 * y + 7.0).astype(np.float32)
    m = np.array([[1.0, 0.0, 0.25], [0.0, 1.0, -0.5]])  # source (x, y) -> (x + 0.25, y - 0.5)
    out = warp(src, m, (16, 20), "bilinear")
    # every centre lands inside: x - 0.25 >= -0.5 and y + 0.5 <= 15.5
    assert np.isfinite(out).all()
    # exact plane inside; past the edge the value of the nearest edge point (replicated)
    sx = np.clip(x - 0.25, 0, 19)
    sy = np.clip(y + 0.5, 0, 15)
    np.testing.assert_allclose(out, 3.0 * sx - 2.0 * sy + 7.0, atol=1e-4)
    assert (x - 0.25 < 0).any() and (y + 0.5 > 15).any()  # both edges were exercised


@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
def test_covered_when_the_centre_maps_inside_both_ends_closed(interpolation):
    # an 8x upscale: output x samples source x/8 - 1, i.e. every 1/8 pixel from -1 on
    src = np.arange(30, dtype=np.float32).reshape(3, 10) + 1
    m = np.array([[8.0, 0.0, 8.0], [0.0, 1.0, 0.0]])
    out = warp(src, m, (3, 8 * 12), interpolation)
    s = np.arange(8 * 12) / 8.0 - 1.0
    expected = (s >= -0.5) & (s <= 9.5)  # [-0.5, w - 0.5], both ends included
    np.testing.assert_array_equal(np.isfinite(out[1]), expected)
    np.testing.assert_array_equal(expected, cv_coverage(src.shape, m, (3, 8 * 12))[1])  # as OpenCV


def test_identity_lanczos_keeps_every_pixel_edges_included():
    rng = np.random.default_rng(6)
    src = rng.normal(100, 10, (20, 24)).astype(np.float32)
    out = warp(src, np.eye(2, 3), (20, 24), "lanczos")
    np.testing.assert_allclose(out, src, rtol=1e-6)  # fraction 0: the pixel itself, weight ~1
    np.testing.assert_array_equal(out, cv_warp(src, np.eye(2, 3), (20, 24), "lanczos"))


def test_lanczos_table_is_normalised_and_interpolating():
    np.testing.assert_allclose(LANCZOS4_TABLE.astype(np.float64).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(LANCZOS4_TABLE[0], np.eye(8)[3], atol=1e-6)  # fraction 0: the pixel itself
    np.testing.assert_allclose(LANCZOS4_TABLE[16], LANCZOS4_TABLE[16][::-1], atol=1e-7)  # half: symmetric


def test_nan_source_pixel_spreads_to_its_taps_only():
    src = np.ones((12, 12), np.float32)
    src[6, 6] = np.nan
    out = warp(src, [[1.0, 0.0, 0.3], [0.0, 1.0, 0.4]], (12, 12), "bilinear")
    # output (x, y) reads source columns floor(x - 0.3), +1 and rows floor(y - 0.4), +1
    nan = np.zeros((12, 12), bool)
    nan[6:8, 6:8] = True
    np.testing.assert_array_equal(np.isnan(out), nan)


def test_nan_on_the_edge_is_replicated_with_it():
    src = np.full((10, 12), 5.0, np.float32)
    src[4, 0] = np.nan
    # shifted right by 1.5 px: output column x samples source column x - 1.5
    m = [[1.0, 0.0, 1.5], [0.0, 1.0, 0.0]]
    out = warp(src, m, (10, 12), "bilinear")
    nan = np.zeros((10, 12), bool)
    nan[:, 0] = True  # centre at -1.5: not covered
    nan[3:5, 1:3] = True  # centres at -0.5 and 0.5 read column 0 (replicated), rows y and y + 1
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(cv_warp(src, m, (10, 12), "bilinear")))


def test_bilinear_left_of_the_first_column_reads_the_second_as_opencv():
    # OpenCV 5.1 clamps the source point to column 0 before taking taps 0 and 1, so a NaN in
    # column 1 reaches outputs whose centre lands in [-0.5, 0) (with weight 0): measured, and
    # reproduced, because a NaN there is "no data" in the stack
    src = np.full((6, 8), 2.0, np.float32)
    src[2, 1] = np.nan
    m = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]])  # output x -> source x - 0.3
    out = warp(src, m, (6, 8), "bilinear")
    ref = cv_warp(src, m, (6, 8), "bilinear")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(out[2, 0]) and np.isnan(out[1, 0])  # column 0's centre maps to -0.3
    assert np.isfinite(out[3, 0])


def test_inverse_matches_opencv():
    rng = np.random.default_rng(4)
    for _ in range(10):
        m = random_matrix(rng)
        np.testing.assert_array_equal(invert_affine(m).reshape(2, 3), cv2.invertAffineTransform(m))


def test_bad_arguments_raise():
    src = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError):
        warp_affine_cpu(src, np.eye(2, 3), np.zeros((4, 4, 3), np.float32), "bilinear")
    with pytest.raises(ValueError):
        warp_affine_cpu(src, np.eye(3), np.zeros((4, 4), np.float32), "bilinear")
    with pytest.raises(ValueError):
        warp_affine_cpu(src, np.eye(2, 3), np.zeros((4, 4), np.float32), "nearest")


# ---------------------------------------------------------------------------------
# tiles


def band_tiles(frame_matrix, band_y0, band_y1, width, src_height, interpolation):
    """The band engine's tiles (``skystack.stack.plan.tile_warps``) of output rows
    ``band_y0:band_y1``: ``(tiles, src_y0, src_y1)``, the tiles relative to the band and to
    the source rows ``src_y0:src_y1`` the band reads."""
    from skystack.stack.plan import WARP_TILE_ROWS, source_rows, tile_warps

    end = -(-band_y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    s0, s1 = source_rows(frame_matrix, band_y0, end, width, src_height, interpolation)
    tiles = [(a - band_y0, b - band_y0, ty0 - band_y0, sy0 - s0, sy1 - s0, m) for ty0, _, a, b, sy0, sy1, m in
             tile_warps(frame_matrix, band_y0, band_y1, s0, s1, width, src_height, interpolation)]
    return tiles, s0, s1


def per_tile(rows, tiles, out_shape, interpolation):
    """Each tile warped alone from its own row slice with OpenCV (as the CPU backend's
    ``warp_job`` does, a tile cut by the band warped whole and cropped); NaN elsewhere."""
    out = np.full(out_shape, np.nan, np.float32)
    for y0, y1, ty0, s0, s1, m in tiles:
        tile = np.stack([cv_warp(np.ascontiguousarray(rows[c, s0:s1]), m, (8, out_shape[2]), interpolation)
                         for c in range(rows.shape[0])])
        out[:, y0:y1] = tile[:, y0 - ty0:y1 - ty0]
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
@pytest.mark.parametrize("band", [(8, 24), (16, 30), (0, 8)], ids=["middle", "cut-by-bottom-edge", "top"])
def test_tiles_equal_warping_each_tile_alone(interpolation, band):
    rng = np.random.default_rng(band[0] + len(interpolation))
    height, width = 30, 22
    frames = rng.normal(1000, 40, (2, height, width)).astype(np.float32)  # two channels, planar
    frames[0][rng.random((height, width)) < 0.02] = np.nan
    a = np.deg2rad(2.0)
    fm = np.array([[np.cos(a), -np.sin(a), 0.6], [np.sin(a), np.cos(a), -1.3]])
    y0, y1 = band
    tiles, s0, s1 = band_tiles(fm, y0, y1, width, height, interpolation)
    rows = frames[:, s0:s1]
    table = tile_table(tiles, interpolation, y1 - y0, s1 - s0)
    assert table.shape == (len(tiles), TILE_COLUMNS)
    out = np.full((2, y1 - y0, width), -7.0, np.float32)
    warp_tiles_cpu(rows, table, out)
    ref = per_tile(rows, tiles, out.shape, interpolation)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    if interpolation == "lanczos":
        np.testing.assert_array_equal(out, ref)
    else:
        tol = 2.5e-7 if interpolation == "bilinear" else 1.5e-6  # bicubic: 16 float32 terms in OpenCV
        np.testing.assert_allclose(out, ref, rtol=tol, atol=0, equal_nan=True)
    assert np.isnan(out).any() and np.isfinite(out).mean() > 0.5
    # one plane at a time gives the same
    one = np.empty((y1 - y0, width), np.float32)
    warp_tiles_cpu(np.ascontiguousarray(rows[1]), table, one)
    np.testing.assert_array_equal(one, out[1])


def test_rows_no_tile_writes_are_nan():
    src = np.ones((12, 10), np.float32)
    m = np.eye(2, 3)
    # tiles for rows 0:4 and 8:12 of a 16-row band: rows 4:8 and 12:16 have none
    table = tile_table([(0, 4, 0, 0, 12, m), (8, 12, 8, 0, 12, np.array([[1.0, 0, 0], [0, 1, -8]]))],
                       "bilinear", 16, 12)
    out = np.zeros((16, 10), np.float32)
    warp_tiles_cpu(src, table, out)
    assert np.isnan(out[4:8]).all() and np.isnan(out[12:]).all()
    np.testing.assert_array_equal(out[0:4], 1.0)
    np.testing.assert_array_equal(out[8:12], 1.0)
    empty = np.zeros((4, 10), np.float32)
    warp_tiles_cpu(src, tile_table([], "lanczos", 4, 12), empty)
    assert np.isnan(empty).all()


def test_tile_table_checks_its_tiles():
    m = np.eye(2, 3)
    with pytest.raises(ValueError, match="out of order"):
        tile_table([(8, 16, 8, 0, 10, m), (0, 8, 0, 0, 10, m)], "bilinear", 16, 10)
    with pytest.raises(ValueError, match="out of order"):
        tile_table([(0, 8, 0, 0, 10, m), (6, 12, 6, 0, 10, m)], "bilinear", 16, 10)  # overlapping
    with pytest.raises(ValueError, match="outside"):
        tile_table([(0, 20, 0, 0, 10, m)], "bilinear", 16, 10)
    with pytest.raises(ValueError, match="source rows"):
        tile_table([(0, 8, 0, 4, 12, m)], "bilinear", 16, 10)
    with pytest.raises(ValueError):
        tile_table([(0, 8, 0, 0, 10, m)], "nearest", 16, 10)
    with pytest.raises(ValueError):
        warp_tiles_cpu(np.zeros((2, 10, 10), np.float32), np.zeros((1, 5)), np.zeros((2, 8, 10), np.float32))
    # an integer translation is a copy (OpenCV's shortcut), per tile
    shift = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -3.0]])
    from _skystack_kernels.cpu.warp import INTERP_SHIFT, TILE_INTERP

    assert tile_table([(0, 8, 0, 0, 10, shift)], "bilinear", 8, 10)[0, TILE_INTERP] == INTERP_SHIFT
