"""The CuPy + numba.cuda backend against the CPU backend (and against the CPU twin of its
warp kernel: see REFERENCES).

Without a GPU (CI, most developer machines) the backend runs in a subprocess under Numba's
CUDA simulator (``cudasim`` fixture, conftest.py): the same backend code — pinned staging,
double-buffered uploads, tile-grid warps, normalisation, per-channel combine, downloads —
with NumPy as the device memory and the real numba.cuda kernels simulated. With CuPy and a
CUDA device the same tasks also run natively (``test_native_*``; skipped otherwise).
"""
from __future__ import annotations

import numpy as np
import pytest

from skystack.backends.cpu import CpuBackend
from skystack.errors import BackendUnavailableError
from skystack.stack.plan import tile_warps

from backend_cases import KernelTwinBackend, gpu_tasks, warp_semantics_mismatch  # tests/backends (conftest)

# A float32 result may differ from the reference's in its last bits (another summation
# order, FMA contraction on a GPU); everything else — which pixels are covered, which values
# are kept, how many are rejected per frame — must be identical.
RTOL = 2e-6

TASKS, CASES = gpu_tasks()
COMBINE_KEYS = [k for k, t in TASKS.items() if k.startswith("cupy:") and t["call"] == "combine"]
WARP_KEYS = [k for k, t in TASKS.items() if k.startswith("cupy:") and t["call"] == "warp"]

# Two references. KernelTwinBackend: the CPU backend warping with the CPU twin of the GPU
# warp kernel: the GPU backend must equal it whatever the warp's edge rules (its own
# plumbing). CpuBackend (OpenCV warps): what the GPU backend must equal in the end, which
# also needs the warp kernel to follow the CPU backend's edge rules
# (test_warp_kernel_follows_the_cpu_backend checks that on its own, so a failure there
# says which of the two broke).
REFERENCES = {"kernel-twin": KernelTwinBackend, "cpu": CpuBackend}


def reference(name: str):
    return REFERENCES[name]()


def test_warp_kernel_follows_the_cpu_backend():
    """The GPU warp kernel's per-pixel function, run on the CPU, warps as CpuBackend.warp:
    the same covered pixels, values within float32 rounding (both interpolations)."""
    why = warp_semantics_mismatch()
    assert why is None, why


def assert_same_band(got: dict, want, what: str) -> None:
    assert got["image"].dtype == np.float32 and got["image"].shape == want.image.shape, what
    assert got["count"].dtype == np.int32 and got["count"].shape == want.count.shape, what
    np.testing.assert_array_equal(np.isnan(got["image"]), np.isnan(want.image), err_msg=f"{what}: coverage")
    # OpenCV's float32 bicubic sums 16 products in float32 (the twin in float64): a few ulp
    rtol = 1e-5 if "cubic" in what else RTOL
    np.testing.assert_allclose(got["image"], want.image, rtol=rtol, atol=0, err_msg=f"{what}: image")
    np.testing.assert_array_equal(got["count"], want.count, err_msg=f"{what}: kept values per pixel")
    np.testing.assert_array_equal(got["rejected"], want.rejected, err_msg=f"{what}: rejected per frame")


def check_combine(key: str, got: dict, ref) -> None:
    case = CASES[key]
    want = ref.combine_band(case.jobs, case.out_shape, case.weights, case.options)
    # the case must exercise what it claims: rejection rejects, rotation uncovers edges
    if case.options.reject != "none":
        assert want.rejected.sum() > 0, f"{key}: the reference rejected nothing; the case tests nothing"
    assert (want.count < len(case.jobs)).any(), f"{key}: every pixel covered by every frame"
    assert_same_band(got, want, key)


def check_warp(key: str, got: np.ndarray, ref) -> None:
    t = TASKS[key]
    want = ref.warp(t["rows"], t["matrix"], t["out_shape"], t["interpolation"])
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{key}: coverage")
    assert np.isnan(want).any() and np.isfinite(want).mean() > 0.3  # a real warp, with uncovered edges
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-3, err_msg=key)


# ---------------------------------------------------------------------------------
# under the CUDA simulator


@pytest.mark.cudasim
@pytest.mark.parametrize("ref", list(REFERENCES))
@pytest.mark.parametrize("key", COMBINE_KEYS)
def test_combine_band_under_simulator(cudasim, key, ref):
    got = cudasim[0][key]
    assert got["layer"] == "cuda-simulator"
    check_combine(key, got, reference(ref))


@pytest.mark.cudasim
@pytest.mark.parametrize("key", COMBINE_KEYS)
def test_frames_cross_the_bus_in_native_dtype(cudasim, key):
    """16-bit frames are uploaded as 16-bit (converted to float32 on the device), besides
    them only each frame's tile table goes up (12 float64 per 8-row warp tile, one tile
    for a job without the tile grid), and the only downloads are the image, the count and
    the rejection tallies."""
    got = cudasim[0][key]
    case = CASES[key]
    rows = [job.load_rows() for job in case.jobs]
    expected_up = sum(r.size * (r.itemsize if r.dtype in (np.uint8, np.uint16, np.float32) else 4) for r in rows)
    h, w = case.out_shape[:2]
    tiles = 0
    for job, r in zip(case.jobs, rows):
        if job.frame_matrix is None:
            tiles += 1
        else:
            tiles += len(list(tile_warps(job.frame_matrix, job.band_y0, job.band_y0 + h, job.src_y0,
                                         job.src_y0 + r.shape[0], w, job.src_height, case.options.interpolation)))
    assert tiles >= len(case.jobs)
    assert got["bytes_h2d"] == expected_up + tiles * 12 * 8
    h, w = case.out_shape[:2]
    c = case.out_shape[2] if len(case.out_shape) == 3 else 1
    assert got["bytes_d2h"] == h * w * c * (4 + 4) + len(case.jobs) * 2 * 8


@pytest.mark.cudasim
@pytest.mark.parametrize("ref", list(REFERENCES))
@pytest.mark.parametrize("key", WARP_KEYS)
def test_warp_under_simulator(cudasim, key, ref):
    check_warp(key, cudasim[0][key]["warped"], reference(ref))


@pytest.mark.cudasim
@pytest.mark.parametrize("ref", list(REFERENCES))
def test_concurrent_bands_on_one_instance_under_simulator(cudasim, ref):
    """Two threads stacking two bands at once (as Dask workers do) each get their own lane
    of streams and buffers: both results are the reference's."""
    results, cases, _ = cudasim
    backend = reference(ref)
    for g, case in zip(results["cupy:threads"]["bands"], cases["cupy:threads"]):
        assert_same_band(g, backend.combine_band(case.jobs, case.out_shape, case.weights, case.options), case.name)


@pytest.mark.cudasim
@pytest.mark.parametrize("key", [k for k in COMBINE_KEYS if k.startswith("cupy:reject-")])
def test_combine_warped_under_simulator(cudasim, key):
    """Rejection and reduction alone, on a band warped and normalised by the CPU backend
    (the cv2.cuda backend's path): independent of any warp kernel."""
    case = CASES[key]
    want = CpuBackend().combine_band(case.jobs, case.out_shape, case.weights, case.options)
    assert want.rejected.sum() > 0 or case.options.reject == "none"
    assert_same_band(cudasim[0][key.replace("cupy:", "warped:")], want, key)


# ---------------------------------------------------------------------------------
# natively, on a CUDA GPU


def _native_skip_reason() -> str | None:
    from numba import config

    if config.ENABLE_CUDASIM:
        return "NUMBA_ENABLE_CUDASIM is set in this process: kernels would be simulated"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'skystack[gpu]' on a machine with an NVIDIA GPU)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver
        return f"CuPy finds no CUDA driver ({e})"
    return None if n > 0 else "no CUDA device"


@pytest.fixture(scope="module")
def native():
    reason = _native_skip_reason()
    if reason:
        pytest.skip(f"native GPU run skipped: {reason}")
    import gpu_runner as runner

    return runner.run_tasks({k: t for k, t in TASKS.items() if k.startswith(("cupy:", "warped:"))})


@pytest.mark.gpu
@pytest.mark.parametrize("ref", list(REFERENCES))
@pytest.mark.parametrize("key", COMBINE_KEYS)
def test_native_combine_band(native, key, ref):
    assert native[key]["layer"] == "cupy"
    check_combine(key, native[key], reference(ref))


@pytest.mark.gpu
@pytest.mark.parametrize("ref", list(REFERENCES))
@pytest.mark.parametrize("key", WARP_KEYS)
def test_native_warp(native, key, ref):
    check_warp(key, native[key]["warped"], reference(ref))


@pytest.mark.gpu
@pytest.mark.parametrize("ref", list(REFERENCES))
def test_native_concurrent_bands(native, ref):
    backend = reference(ref)
    for g, case in zip(native["cupy:threads"]["bands"], CASES["cupy:threads"]):
        assert_same_band(g, backend.combine_band(case.jobs, case.out_shape, case.weights, case.options), case.name)


@pytest.mark.gpu
@pytest.mark.parametrize("key", [k for k in COMBINE_KEYS if k.startswith("cupy:reject-")])
def test_native_combine_warped(native, key):
    case = CASES[key]
    want = CpuBackend().combine_band(case.jobs, case.out_shape, case.weights, case.options)
    assert_same_band(native[key.replace("cupy:", "warped:")], want, key)


# ---------------------------------------------------------------------------------
# without either


def test_constructing_without_cupy_or_simulator_is_a_clear_error(monkeypatch):
    """Not asked to simulate, with CuPy unimportable (or the simulator on), the backend refuses
    with the exit code and a way out, rather than failing later inside a band."""
    import sys

    from skystack.backends.cupy import CupyBackend

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(BackendUnavailableError, match="--backend cpu") as err:
        CupyBackend()
    assert err.value.exit_code == 7
