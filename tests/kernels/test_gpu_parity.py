"""GPU kernels (_skystack_kernels.gpu) against their CPU twins and OpenCV.

Where they run:

- With a CUDA device and CuPy: in this process, natively, on CuPy arrays.
- Without one (CI): ``test_gpu_parity_under_cudasim`` re-runs this file in a subprocess
  with ``NUMBA_ENABLE_CUDASIM=1`` (the simulator must be on before numba is imported, and
  the parent process has imported it already), where the kernels run in Numba's CUDA
  simulator on NumPy arrays. In the parent the in-process tests skip, saying so.

Nothing else is needed: a plain ``pytest`` run covers both cases. Bands are tiny (the
simulator runs every CUDA thread as a Python thread).
"""
from __future__ import annotations


import numpy as np
import pytest
from cudasim_run import SIMULATOR, native_gpu, simulated_module

NATIVE = native_gpu()
here, test_gpu_parity_under_cudasim = simulated_module(__file__, "GPU parity tests", NATIVE)


# ---------------------------------------------------------------------------------
# device arrays: CuPy on a GPU, the simulator's device arrays under the simulator


def to_device(a: np.ndarray):
    if NATIVE:
        import cupy

        return cupy.asarray(a)
    from numba import cuda

    return cuda.to_device(a)


def to_host(a) -> np.ndarray:
    if NATIVE:
        import cupy

        return cupy.asnumpy(a)
    return a.copy_to_host()


PARAMS = {"none": (0.0, 0.0), "sigma": (2.0, 2.5), "winsorized": (2.0, 2.5), "mad": (2.5, 2.0),
          "linear-fit": (2.0, 2.0), "percentile": (0.05, 0.08), "gesd": (0.05, 0.3), "minmax": (1.0, 2.0)}


def make_band(seed: int, n: int, h: int = 6, w: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    band = rng.normal(100.0, 5.0, (n, h, w))
    hot = rng.random(band.shape) < 0.06
    band[hot] += rng.choice([-1.0, 1.0], hot.sum()) * rng.uniform(40, 400, hot.sum())
    band[rng.random(band.shape) < 0.1] = np.nan
    band[:, 0, 0] = np.nan  # one pixel no frame covers
    band[: n - 2, 1, 1] = np.nan  # one pixel with only two values
    return band.astype(np.float32)


def cpu_combine(band, weights, method, reduce, p_low, p_high, max_iter=5):
    from _skystack_kernels.codes import REDUCE, REJECT
    from _skystack_kernels.cpu.combine import combine_band

    n, h, w = band.shape
    out = np.empty((h, w), np.float32)
    count = np.empty((h, w), np.int32)
    rejected = np.zeros((n, 2), np.int64)
    combine_band(band, weights, REJECT[method], REDUCE[reduce], p_low, p_high, max_iter, out, count, rejected)
    return out, count, rejected


def gpu_combine(band, weights, method, reduce, p_low, p_high, max_iter=5, rejected=None, **kw):
    from _skystack_kernels.codes import REDUCE, REJECT
    from _skystack_kernels.gpu.combine import combine_band_gpu

    n, h, w = band.shape
    out = to_device(np.full((h, w), -7.0, np.float32))
    count = to_device(np.full((h, w), -7, np.int32))
    rej = to_device(np.zeros((n, 2), np.int64) if rejected is None else rejected)
    combine_band_gpu(to_device(band), to_device(weights), REJECT[method], REDUCE[reduce], p_low, p_high, max_iter,
                     out, count, rej, **kw)
    return to_host(out), to_host(count), to_host(rej)


def assert_same(cpu, gpu):
    (o1, c1, r1), (o2, c2, r2) = cpu, gpu
    np.testing.assert_array_equal(c2, c1)
    np.testing.assert_array_equal(r2, r1)
    np.testing.assert_array_equal(np.isnan(o2), np.isnan(o1))
    np.testing.assert_allclose(o2, o1, rtol=1e-6, equal_nan=True)  # float32 rounding


# ---------------------------------------------------------------------------------
# combine


@here
@pytest.mark.parametrize("reduce", ["mean", "median"])
@pytest.mark.parametrize("method", list(PARAMS))
def test_combine_matches_cpu(method, reduce):
    seed = sorted(PARAMS).index(method) * 2 + (reduce == "median")
    n = 7 + (seed * 5) % 19  # 7..25 frames
    band = make_band(seed, n)
    weights = np.random.default_rng(seed).uniform(0.5, 2.0, n).astype(np.float32)
    p_low, p_high = PARAMS[method]
    cpu = cpu_combine(band, weights, method, reduce, p_low, p_high)
    assert_same(cpu, gpu_combine(band, weights, method, reduce, p_low, p_high))
    if method != "none":
        assert cpu[2].sum() > 0  # there was something to reject


@here
@pytest.mark.parametrize("method", ["linear-fit", "gesd", "minmax", "winsorized"])
def test_combine_matches_cpu_beyond_32_frames(method):
    # n > 32: the merge sort and longer selections
    band = make_band(50, 40, 3, 4)
    weights = np.ones(40, np.float32)
    p_low, p_high = {"minmax": (6.0, 5.0)}.get(method, PARAMS[method])
    assert_same(cpu_combine(band, weights, method, "mean", p_low, p_high, 0),
                gpu_combine(band, weights, method, "mean", p_low, p_high, 0))


@here
def test_combine_with_few_threads_strides_over_the_band():
    # a scratch buffer for 5 threads: each thread walks ~11 of the 54 pixels
    from _skystack_kernels.gpu.combine import combine_scratch_nbytes

    band = make_band(7, 12)
    weights = np.ones(12, np.float32)
    scratch = to_device(np.zeros(combine_scratch_nbytes(12, 5), np.uint8))
    assert_same(cpu_combine(band, weights, "sigma", "median", 2.0, 2.0),
                gpu_combine(band, weights, "sigma", "median", 2.0, 2.0, scratch=scratch))


@here
def test_combine_accumulates_rejections_and_takes_strided_bands():
    from _skystack_kernels.codes import REDUCE, REJECT
    from _skystack_kernels.gpu.combine import combine_band_gpu

    band4d = np.stack([make_band(s, 14, 4, 5) for s in (11, 12)], axis=-1)  # (N, h, W, 2)
    weights = np.ones(14, np.float32)
    d_band4d = to_device(band4d)
    d_weights = to_device(weights)
    d_rejected = to_device(np.zeros((14, 2), np.int64))
    expected = np.zeros((14, 2), np.int64)
    for c in range(2):
        cpu = cpu_combine(np.ascontiguousarray(band4d[..., c]), weights, "mad", "mean", 2.0, 2.0)
        out = to_device(np.empty((4, 5), np.float32))
        count = to_device(np.empty((4, 5), np.int32))
        combine_band_gpu(d_band4d[..., c], d_weights, REJECT["mad"], REDUCE["mean"], 2.0, 2.0, 5, out, count,
                         d_rejected)  # a strided device view, as the colour path passes it
        expected += cpu[2]
        np.testing.assert_array_equal(to_host(count), cpu[1])
        np.testing.assert_allclose(to_host(out), cpu[0], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(to_host(d_rejected), expected)
    assert expected.sum() > 0


# ---------------------------------------------------------------------------------
# warp


def gpu_warp(src, matrix, shape, interpolation):
    from _skystack_kernels.gpu.warp import warp_affine_gpu

    out = to_device(np.full(shape + src.shape[2:], -7.0, np.float32))
    warp_affine_gpu(to_device(src), matrix, out, interpolation)
    return to_host(out)


def cv_reference(src, matrix, shape, interpolation):
    """``CpuBackend.warp``: OpenCV with a replicated border, NaN where a nearest-neighbour
    warp of ones says the pixel centre maps outside the source."""
    import cv2

    h, w = shape
    flags = {"bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}[interpolation]
    out = cv2.warpAffine(src, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    cov = cv2.warpAffine(np.ones(src.shape[:2], np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out[cov == 0] = np.nan
    return out


def assert_close_to_twin(gpu, cpu):
    """Same coverage; values equal in the simulator (the same Python arithmetic), within
    float32 rounding natively (FMA contraction, another summation order)."""
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    if SIMULATOR:
        np.testing.assert_array_equal(gpu, cpu)
    else:
        np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=1e-4, equal_nan=True)


WARPS = {
    "rotation": np.array([[0.98, -0.12, 1.3], [0.12, 0.98, -0.7]]),
    "scale": np.array([[1.07, 0.0, -0.4], [0.0, 1.07, 0.35]]),
    "shift": np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]),  # integer: a copy in bilinear
}


@here
@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
@pytest.mark.parametrize("name", list(WARPS))
def test_warp_matches_cpu_twin_and_opencv(name, interpolation):
    from _skystack_kernels.cpu.warp import warp_affine_cpu

    rng = np.random.default_rng(len(name))
    src = rng.normal(500.0, 40.0, (18, 20)).astype(np.float32)
    src[4, 9] = np.nan
    src[0, 3] = np.nan  # on the edge: replicated with it
    m = WARPS[name]
    gpu = gpu_warp(src, m, (14, 16), interpolation)
    cpu = np.empty((14, 16), np.float32)
    warp_affine_cpu(src, m, cpu, interpolation)
    ref = cv_reference(src, m, (14, 16), interpolation)
    assert_close_to_twin(gpu, cpu)
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(ref))
    np.testing.assert_allclose(gpu, ref, rtol=1e-6, atol=1e-3, equal_nan=True)
    assert np.isfinite(gpu).sum() > 20


@here
def test_warp_colour():
    rng = np.random.default_rng(5)
    src = rng.normal(0.0, 1.0, (16, 18, 3)).astype(np.float32)
    m = WARPS["rotation"]
    gpu = gpu_warp(src, m, (12, 14), "lanczos")
    for c in range(3):
        np.testing.assert_allclose(gpu[..., c], gpu_warp(np.ascontiguousarray(src[..., c]), m, (12, 14), "lanczos"),
                                   rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isfinite(gpu).any()


def band_tiles(frame_matrix, band_y0, band_y1, width, src_height, interpolation):
    """The band engine's tile grid over output rows ``band_y0:band_y1`` (as
    tests/kernels/test_cpu_warp.py): tiles relative to the band and to its source rows."""
    from skystack.stack.plan import WARP_TILE_ROWS, source_rows, tile_warps

    end = -(-band_y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    s0, s1 = source_rows(frame_matrix, band_y0, end, width, src_height, interpolation)
    tiles = [(a - band_y0, b - band_y0, ty0 - band_y0, sy0 - s0, sy1 - s0, m) for ty0, _, a, b, sy0, sy1, m in
             tile_warps(frame_matrix, band_y0, band_y1, s0, s1, width, src_height, interpolation)]
    return tiles, s0, s1


@here
@pytest.mark.parametrize("interpolation", ["bilinear", "cubic", "lanczos"])
def test_warp_tiles_matches_cpu_twin_and_per_tile_warps(interpolation):
    """All tiles of a band (two channels, planar) in one launch: equal to the CPU twin, and
    to warping each tile alone with the single-warp kernel (the per-tile path it replaces)."""
    from _skystack_kernels.cpu.warp import tile_table, warp_tiles_cpu
    from _skystack_kernels.gpu.warp import warp_tiles_gpu

    rng = np.random.default_rng(9 + len(interpolation))
    height, width = 28, 18
    frame = rng.normal(800.0, 30.0, (2, height, width)).astype(np.float32)
    frame[0][rng.random((height, width)) < 0.03] = np.nan
    a = np.deg2rad(-1.7)
    fm = np.array([[np.cos(a), -np.sin(a), -0.8], [np.sin(a), np.cos(a), 1.1]])
    y0, y1 = 16, 28  # a whole tile and one cut by the frame's bottom edge
    tiles, s0, s1 = band_tiles(fm, y0, y1, width, height, interpolation)
    assert len(tiles) == 2 and tiles[-1][1] - tiles[-1][0] == 4
    rows = np.ascontiguousarray(frame[:, s0:s1])
    table = tile_table(tiles, interpolation, y1 - y0, s1 - s0)
    out = to_device(np.full((2, y1 - y0, width), -7.0, np.float32))
    warp_tiles_gpu(to_device(rows), to_device(table), out)
    gpu = to_host(out)
    cpu = np.empty((2, y1 - y0, width), np.float32)
    warp_tiles_cpu(rows, table, cpu)
    assert_close_to_twin(gpu, cpu)
    per_tile = np.full_like(gpu[0], np.nan)  # one channel: the simulator is slow
    for oy0, oy1, ty0, ts0, ts1, m in tiles:
        tile = gpu_warp(np.ascontiguousarray(rows[0, ts0:ts1]), m, (8, width), interpolation)
        per_tile[oy0:oy1] = tile[oy0 - ty0:oy1 - ty0]
    np.testing.assert_array_equal(np.isnan(gpu[0]), np.isnan(per_tile))
    np.testing.assert_array_equal(gpu[0], per_tile)  # same device arithmetic, pixel for pixel
    assert np.isnan(gpu).any() and np.isfinite(gpu).mean() > 0.5
    # one plane, 2-d arrays: the same
    one = to_device(np.zeros((y1 - y0, width), np.float32))
    warp_tiles_gpu(to_device(np.ascontiguousarray(rows[1])), to_device(table), one)
    np.testing.assert_array_equal(to_host(one), gpu[1])


@here
def test_warp_tiles_leaves_rows_without_a_tile_nan():
    from _skystack_kernels.cpu.warp import tile_table
    from _skystack_kernels.gpu.warp import warp_tiles_gpu

    src = np.full((10, 9), 3.0, np.float32)
    table = tile_table([(2, 5, 2, 0, 10, np.array([[1.0, 0, 0], [0, 1, -2]]))], "lanczos", 8, 10)
    out = to_device(np.zeros((8, 9), np.float32))
    warp_tiles_gpu(to_device(src), to_device(table), out)
    got = to_host(out)
    assert np.isnan(got[:2]).all() and np.isnan(got[5:]).all()
    np.testing.assert_allclose(got[2:5], 3.0, rtol=1e-6)
