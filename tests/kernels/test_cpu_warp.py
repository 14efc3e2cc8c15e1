"""The Numba affine warp (_skystack_kernels.cpu.warp) against cv2.warpAffine with a NaN
constant border, and its coverage rule on hand-worked cases."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from _skystack_kernels.cpu.warp import LANCZOS4_TABLE, invert_affine, warp_affine_cpu

CV_FLAGS = {"bilinear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}


def cv_warp(src, matrix, shape, interpolation):
    h, w = shape
    return cv2.warpAffine(src, np.asarray(matrix, np.float64), (w, h), flags=CV_FLAGS[interpolation],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan,) * 4)


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


def assert_matches_cv(src, matrix, shape, interpolation):
    ref = cv_warp(src, matrix, shape, interpolation)
    out = warp(src, matrix, shape, interpolation)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    if interpolation == "lanczos":  # OpenCV's float32 arithmetic, reproduced to the bit
        np.testing.assert_array_equal(out, ref)
    else:  # float64 interpolation here: within a float32 ulp or two of OpenCV's
        scale = float(np.nanmax(np.abs(src))) if np.isfinite(src).any() else 1.0
        np.testing.assert_allclose(out, ref, rtol=0, atol=2.5e-7 * scale, equal_nan=True)
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "lanczos"])
def test_matches_opencv_on_random_transforms(interpolation):
    rng = np.random.default_rng(21)
    covered = 0
    for _ in range(25):
        h, w = rng.integers(12, 40, 2)
        src = rng.normal(1000, 50, (h, w)).astype(np.float32)
        src[rng.random(src.shape) < 0.02] = np.nan  # masked pixels propagate to their taps
        out = assert_matches_cv(src, random_matrix(rng), tuple(rng.integers(8, 40, 2)), interpolation)
        covered += np.isfinite(out).sum()
    assert covered > 1000  # the comparison was not all-NaN


@pytest.mark.parametrize("interpolation", ["bilinear", "lanczos"])
@pytest.mark.parametrize("shift", [(0, 0), (2, -1), (-3, 4)])
def test_integer_translations_match_opencv(interpolation, shift):
    rng = np.random.default_rng(1)
    src = rng.normal(0, 1, (20, 24)).astype(np.float32)
    src[5, 7] = np.nan
    m = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    out = assert_matches_cv(src, m, (20, 24), interpolation)
    if interpolation == "bilinear":  # an exact copy, edges included
        dx, dy = shift
        np.testing.assert_array_equal(out[max(dy, 0):20 + min(dy, 0), max(dx, 0):24 + min(dx, 0)],
                                      src[max(-dy, 0):20 - max(dy, 0), max(-dx, 0):24 - max(dx, 0)])


def test_colour_and_integer_sources():
    rng = np.random.default_rng(2)
    src = rng.integers(0, 65535, (30, 26, 3)).astype(np.uint16)
    m = random_matrix(rng)
    for interpolation in ("bilinear", "lanczos"):
        out = warp(src, m, (22, 28), interpolation)
        for c in range(3):
            ref = cv_warp(src[..., c].astype(np.float32), m, (22, 28), interpolation)
            np.testing.assert_array_equal(np.isnan(out[..., c]), np.isnan(ref))
            np.testing.assert_allclose(out[..., c], ref, rtol=1e-6, atol=0.2, equal_nan=True)


def test_bilinear_interpolates_a_plane_exactly():
    y, x = np.mgrid[0:16, 0:20].astype(np.float64)
    src = (3.0 * x - 2.0 * y + 7.0).astype(np.float32)
    m = np.array([[1.0, 0.0, 0.25], [0.0, 1.0, -0.5]])  # source (x, y) -> (x + 0.25, y - 0.5)
    out = warp(src, m, (16, 20), "bilinear")
    yy, xx = np.mgrid[0:16, 0:20].astype(np.float64)
    expected = 3.0 * (xx - 0.25) - 2.0 * (yy + 0.5) + 7.0
    ok = np.isfinite(out)
    np.testing.assert_allclose(out[ok], expected[ok], atol=1e-4)
    # covered: the source point (x - 0.25, y + 0.5) has its 2x2 taps inside 20 x 16
    assert ok.tolist() == ((xx >= 1) & (yy <= 14)).tolist()


def test_bilinear_source_point_on_the_last_row_is_not_covered():
    # y + 0.0 on the last row would need row h for its (zero-weight) second tap
    src = np.arange(48, dtype=np.float32).reshape(6, 8)
    out = warp(src, [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], (6, 8), "bilinear")
    assert np.isnan(out[5]).all() and np.isnan(out[:, 0]).all()
    assert np.isfinite(out[:5, 1:]).all()
    np.testing.assert_array_equal(out[:5, 1:], src[:5, :-1] + 0.5)


def test_lanczos_needs_all_64_taps_inside():
    src = np.ones((20, 24), np.float32)
    out = warp(src, np.eye(2, 3), (20, 24), "lanczos")
    # taps x-3 .. x+4: columns 3..19 and rows 3..15 are covered
    covered = np.zeros((20, 24), bool)
    covered[3:16, 3:20] = True
    np.testing.assert_array_equal(np.isfinite(out), covered)
    np.testing.assert_allclose(out[covered], 1.0, rtol=1e-6)  # the weights sum to one


def test_lanczos_table_is_normalised_and_interpolating():
    np.testing.assert_allclose(LANCZOS4_TABLE.astype(np.float64).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(LANCZOS4_TABLE[0], np.eye(8)[3], atol=1e-6)  # fraction 0: the pixel itself
    np.testing.assert_allclose(LANCZOS4_TABLE[16], LANCZOS4_TABLE[16][::-1], atol=1e-7)  # half: symmetric


def test_nan_source_pixel_spreads_to_its_taps_only():
    src = np.ones((12, 12), np.float32)
    src[6, 6] = np.nan
    out = warp(src, [[1.0, 0.0, 0.3], [0.0, 1.0, 0.4]], (12, 12), "bilinear")
    # output (x, y) reads source columns floor(x - 0.3), +1 and rows floor(y - 0.4), +1
    assert np.isnan(out[6:8, 6:8]).all()
    assert np.isfinite(out[1:11, 1:6]).all() and np.isfinite(out[1:6, 1:11]).all()


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
        warp_affine_cpu(src, np.eye(2, 3), np.zeros((4, 4), np.float32), "cubic")
