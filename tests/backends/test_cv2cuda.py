"""The cv2.cuda backend, driven through a stand-in ``cv2.cuda`` (fake_cv2cuda.py) because
the PyPI OpenCV wheels have no CUDA.

The stand-in enforces the real module's rules (GpuMat sources only, no Lanczos, 1/3/4
channels, ROI and stream semantics, results of a stream op only after
``waitForCompletion``) and does its pixel arithmetic with OpenCV's CPU warp. So these tests
check the backend's own logic — matrices, the tile grid and ROIs, the NaN border, channel
groups, dtype handling, stream discipline, where Lanczos and the combine go — against the
CPU backend and against known shifts; they cannot check OpenCV's CUDA numerics.
"""
from __future__ import annotations

import numpy as np
import pytest

from skystack.backends.base import BandJob
from skystack.backends.cpu import CpuBackend
from skystack.errors import BackendUnavailableError
from skystack.options import StackOptions

import backend_cases as bc


def test_unavailable_on_an_opencv_without_cuda():
    import cv2

    if getattr(cv2, "cuda", None) is not None and hasattr(cv2.cuda, "warpAffine") \
            and cv2.cuda.getCudaEnabledDeviceCount() > 0:
        pytest.skip("this OpenCV has CUDA and a device")
    from skystack.backends.cv2cuda import Cv2CudaBackend

    with pytest.raises(BackendUnavailableError, match="without CUDA.*--backend cupy / cpu") as err:
        Cv2CudaBackend()
    assert err.value.exit_code == 7


def test_the_stand_in_enforces_the_real_modules_limits(fake_cv2cuda):
    """What the real cv2.cuda.warpAffine refuses, the stand-in refuses: the backend cannot
    pass here by relying on something a CUDA build would reject."""
    import cv2

    cuda = cv2.cuda
    st = cuda.Stream()
    src = cuda.GpuMat()
    src.upload(np.ones((6, 5), np.float32), st)
    m = np.array([[1.0, 0, 0.5], [0, 1, 0]])
    with pytest.raises(cv2.error, match="INTER_LINEAR"):
        cuda.warpAffine(src, m, (5, 6), flags=cv2.INTER_LANCZOS4, stream=st)
    with pytest.raises(cv2.error, match="GpuMat"):
        cuda.warpAffine(np.ones((6, 5), np.float32), m, (5, 6), stream=st)
    two = cuda.GpuMat()
    two.upload(np.ones((6, 5, 2), np.float32), st)
    with pytest.raises(cv2.error, match="1, 3 or 4 channels"):
        cuda.warpAffine(two, m, (5, 6), stream=st)
    out = src.download(st)
    assert not np.all(out == 1)  # nothing has run yet: the stream was not waited for
    st.waitForCompletion()
    assert np.all(out == 1)


@pytest.fixture
def cv2cuda(fake_cv2cuda):
    from skystack.backends.cv2cuda import Cv2CudaBackend

    be = Cv2CudaBackend()
    # no CuPy here and the simulator is not asked for: combine and Lanczos on the CPU
    assert be.stacks_on == "cpu"
    return be


@pytest.mark.parametrize("kw", [
    dict(method="sigma"),  # mono float32 with NaN holes, rotated, tile grid, band end mid-tile
    dict(method="winsorized", channels=3, dtype=np.uint16, n=5),  # one 3-channel group, 16-bit upload
    dict(method="median", y0=16, y1=22, height=22, n=5, loader=True),  # last tile cut by the bottom edge; loaders
    dict(method="percentile", tiled=False, n=5),  # a job without absolute geometry: one warp
], ids=["mono-nan", "rgb-u16", "bottom-edge", "untiled"])
def test_bilinear_stack_equals_the_cpu_backend(cv2cuda, kw):
    rng = np.random.default_rng(5)
    case = bc.make_case("cv2", rng, interpolation="bilinear", **kw)
    got = cv2cuda.combine_band(case.jobs, case.out_shape, case.weights, case.options)
    want = CpuBackend().combine_band(case.jobs, case.out_shape, case.weights, case.options)
    assert (want.count < len(case.jobs)).any()  # rotation uncovered some edge pixels
    # the stand-in warps with OpenCV's CPU arithmetic, and the combine is the CPU kernel:
    # any difference is the backend's doing
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_array_equal(got.rejected, want.rejected)


def test_two_channels_go_one_plane_at_a_time(cv2cuda):
    """cv2.cuda.warpAffine takes 1, 3 or 4 channels: a 2-channel band is warped plane by
    plane, and equals the CPU backend run on each plane alone. (Not on both planes at once:
    for 2 channels OpenCV's CPU bilinear warp takes its older 1/32-pixel fixed-point path,
    while 1, 3 and 4 channels get float coordinates, as the CUDA warp does.)"""
    from dataclasses import replace

    rng = np.random.default_rng(6)
    case = bc.make_case("two", rng, method="mad", channels=2, n=5, interpolation="bilinear")
    got = cv2cuda.combine_band(case.jobs, case.out_shape, case.weights, case.options)
    cpu = CpuBackend()
    rejected = np.zeros_like(got.rejected)
    for ch in range(2):
        plane_jobs = [replace(j, rows=np.ascontiguousarray(j.rows[..., ch]), scale=np.atleast_1d(j.scale)[ch:ch + 1],
                              offset=np.atleast_1d(j.offset)[ch:ch + 1]) for j in case.jobs]
        want = cpu.combine_band(plane_jobs, case.out_shape[:2], case.weights, case.options)
        np.testing.assert_array_equal(got.image[..., ch], want.image)
        np.testing.assert_array_equal(got.count[..., ch], want.count)
        rejected += want.rejected
    assert rejected.sum() > 0
    np.testing.assert_array_equal(got.rejected, rejected)  # summed over the channels


def test_known_shift_through_combine_and_warp(cv2cuda):
    """A frame shifted by exactly (+2, +1) px: the output is the input moved, its first two
    columns and first row uncovered (NaN), and normalised ``v * 2 + 10``."""
    h, w = 16, 12
    frame = (np.arange(h * w, dtype=np.float32).reshape(h, w) * 3 + 100)
    m = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    opts = StackOptions(method="mean", interpolation="bilinear")
    job = BandJob(rows=frame, matrix=m, scale=np.float32([2.0]), offset=np.float32([10.0]), frame_matrix=m,
                  src_y0=0, band_y0=0, src_height=h)
    res = cv2cuda.combine_band([job], (h, w), np.ones(1, np.float32), opts)
    expect = np.full((h, w), np.nan, np.float32)
    expect[1:, 2:] = frame[:-1, :-2] * 2 + 10
    np.testing.assert_array_equal(res.image, expect)
    np.testing.assert_array_equal(res.count, np.isfinite(expect).astype(np.int32))
    warped = cv2cuda.warp(frame, m, (h, w), "bilinear")
    expect_w = np.full((h, w), np.nan, np.float32)
    expect_w[1:, 2:] = frame[:-1, :-2]
    np.testing.assert_array_equal(warped, expect_w)


@pytest.mark.parametrize("channels,dtype", [(1, np.float32), (3, np.uint16), (4, np.float32)])
def test_warp_equals_the_cpu_backend(cv2cuda, channels, dtype):
    rng = np.random.default_rng(8)
    frames = bc.star_frames(rng, 2, 20, 16, channels=channels, dtype=dtype)
    m = bc.transforms(rng, 2, 20, 16)[1]
    got = cv2cuda.warp(frames[1], m, (20, 16), "bilinear")
    want = CpuBackend().warp(frames[1], m, (20, 16), "bilinear")
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)


def test_lanczos_does_not_go_to_cv2_cuda(cv2cuda):
    """cv2.cuda has no Lanczos (the stand-in raises, as the real one asserts): a Lanczos
    stack must be done elsewhere — here, without CuPy, on the CPU backend."""
    rng = np.random.default_rng(9)
    case = bc.make_case("lanczos", rng, method="sigma", interpolation="lanczos", n=5)
    got = cv2cuda.combine_band(case.jobs, case.out_shape, case.weights, case.options)
    want = CpuBackend().combine_band(case.jobs, case.out_shape, case.weights, case.options)
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.rejected, want.rejected)


# ---------------------------------------------------------------------------------
# the stand-in cv2.cuda + the numba.cuda combine kernel, under the CUDA simulator

CV2_KEYS = [k for k in bc.gpu_tasks()[0] if k.startswith("cv2cuda:")]


@pytest.mark.cudasim
@pytest.mark.parametrize("key", CV2_KEYS)
def test_cv2cuda_with_gpu_combine_under_simulator(cudasim, key):
    """Bilinear: the stand-in's warps + the simulated numba.cuda combine equal the CPU
    backend. Lanczos goes to the numba.cuda warp kernel (cv2.cuda has none): it equals both
    the CPU backend warping with that kernel's CPU twin and the CPU backend itself."""
    results, cases, _ = cudasim
    got, case = results[key], cases[key]
    assert got["layer"] == "cuda-simulator"  # combine (and Lanczos) ran on the numba.cuda kernels
    refs = [CpuBackend()]
    if case.options.interpolation == "lanczos":
        refs = [bc.KernelTwinBackend(), CpuBackend()]
    for ref in refs:
        want = ref.combine_band(case.jobs, case.out_shape, case.weights, case.options)
        assert want.rejected.sum() > 0
        np.testing.assert_array_equal(np.isnan(got["image"]), np.isnan(want.image), err_msg=ref.name)
        np.testing.assert_allclose(got["image"], want.image, rtol=2e-6, atol=0, err_msg=ref.name)
        np.testing.assert_array_equal(got["count"], want.count, err_msg=ref.name)
        np.testing.assert_array_equal(got["rejected"], want.rejected, err_msg=ref.name)
