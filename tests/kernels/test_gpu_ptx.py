"""Every numba.cuda kernel compiles to PTX with NVVM for sm_80 and sm_90, on a machine
without a GPU.

The CUDA simulator (what the parity tests run on) executes kernels as Python and never
type-infers or compiles them, so a kernel could pass every simulator test and still fail
on a device. Here NVVM (from the ``nvidia-cuda-nvcc-cu12`` wheel, installed by the test
extra's ``numba-cuda[cu12]``) compiles each kernel with the argument types the backends
launch it with (see ptx_compile.py). Without NVVM these tests fail, they never skip: CI
must prove the GPU code compiles.

The compilation runs in subprocesses with the simulator off (one per compute capability,
side by side), so the result does not depend on ``NUMBA_ENABLE_CUDASIM`` in this process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGETS = ("sm_80", "sm_90")
KERNELS = ("combine", "warp_tiles_2d", "warp_tiles_planar", "warp_affine_2d", "warp_affine_3d",
           "lucky_area_u8", "lucky_area_u16", "lucky_area_f32", "lucky_blur", "lucky_log_energy", "lucky_cells")
TIMEOUT_S = 600  # generous: ~15 s of CPU per target on the 2-core CI machine


@pytest.fixture(scope="module")
def ptx() -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "kernels"), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, str(HERE / "ptx_compile.py"), target[3:]], env=env, cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for target in TARGETS]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        if proc.returncode != 0:
            pytest.fail(f"ptx_compile.py failed (exit {proc.returncode}):\n{err[-6000:]}", pytrace=False)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    merged = dict(reports[0])
    merged["results"] = {k: v for r in reports for k, v in r["results"].items()}
    return merged


def test_ptx_nvvm_is_installed(ptx):
    assert ptx["nvvm"]["ok"], (f"NVVM is not available ({ptx['nvvm'].get('error')}): install the test extra "
                               "(pip install -e '.[test]', which brings numba-cuda[cu12] and its NVVM)")


def test_ptx_cases_cover_every_kernel(ptx):
    """A new @cuda.jit kernel must be added to ptx_compile.kernel_cases (and to KERNELS),
    one case per argument signature it is launched with."""
    assert ptx["covered"] == ptx["kernels"]
    assert sorted(KERNELS) == ptx["cases"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_ptx_kernel_compiles(ptx, kernel, target):
    assert ptx["nvvm"]["ok"], ptx["nvvm"].get("error")
    res = ptx["results"][f"{kernel}@{target}"]
    assert res["ok"], f"{kernel} does not compile for {target}: {res['error']}"
    assert res["target"] == target and res["entry"] and res["bytes"] > 1000


def test_ptx_combine_is_launched_with_contiguous_typed_buffers(ptx):
    """The signature compiled is the backends' (C-contiguous float32 band, int64 codes,
    float64 parameters, the scratch carved in float64 / int32 / int8 rows)."""
    sig = ptx["results"]["combine@sm_90"]["signature"]
    assert sig[:8] == ["array(float32, 3d, C)", "array(float32, 1d, C)", "int64", "int64", "float64", "float64",
                       "int64", "array(float64, 1d, C)"]
    assert sig.count("array(float64, 2d, C)") == 6 and sig[-2] == "array(int8, 2d, C)"


def test_ptx_lucky_kernels_are_launched_with_the_device_buffers(ptx):
    """The lucky kernels' compiled signatures are LuckyDevice's: frames in their own dtype,
    C-contiguous (B, H, W); float32 views; float64 taps and cell sums; int64 offsets."""
    res = ptx["results"]
    assert [res[f"lucky_area_{t}@sm_80"]["signature"][0] for t in ("u8", "u16", "f32")] == [
        "array(uint8, 3d, C)", "array(uint16, 3d, C)", "array(float32, 3d, C)"]
    assert res["lucky_area_u8@sm_80"]["signature"][1:] == ["float64", "float64", "array(float32, 3d, C)"]
    assert res["lucky_blur@sm_90"]["signature"] == ["array(float32, 3d, C)", "array(float64, 1d, C)", "int64",
                                                     "array(float32, 3d, C)"]
    assert res["lucky_cells@sm_90"]["signature"] == (["array(float32, 3d, C)"] * 2 + ["array(int64, 1d, C)"] * 2
                                                      + ["int64"] * 2 + ["array(float64, 2d, C)"] * 2
                                                      + ["array(int64, 2d, C)"])
