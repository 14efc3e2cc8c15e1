"""Compile every numba.cuda kernel of ``_skystack_kernels.gpu`` to PTX with NVVM, without a
GPU, for the compute capabilities given; print a JSON report.

``python ptx_compile.py 80 90`` (run by test_gpu_ptx.py in a subprocess with the CUDA
simulator off: the simulator does not compile anything). Each kernel is compiled with the
argument types the backends launch it with: the arguments are built by the launchers' own
helpers (``combine_launch_args``, ``warp_launch_args``, ``_carve``) from NumPy stand-ins
shaped as ``skystack/backends/cupy.py`` shapes its CuPy buffers, and typed by
``numba.typeof`` exactly as a launch types its device arrays (dtype, dimensions, layout).

A kernel that calls ``cuda.jit(device=True)`` functions (the twins) makes numba-cuda ask
the current device for its compute capability (``dispatcher.compile_device`` ->
``get_current_device()``), which needs a driver; the target being compiled for is
supplied instead.
"""
from __future__ import annotations

import json
import re
import sys
import time
import types
from unittest import mock


def kernel_cases() -> dict:
    """``name -> (kernel dispatcher, launch arguments)`` for every kernel."""
    import numpy as np

    from _skystack_kernels.codes import REDUCE_MEAN, REJECT_SIGMA
    from _skystack_kernels.cpu.warp import TILE_COLUMNS
    from _skystack_kernels.gpu import combine as gc
    from _skystack_kernels.gpu import lucky as gl
    from _skystack_kernels.gpu import warp as gw

    n, h, w, c, hs, ws, t, threads = 7, 3, 5, 3, 6, 5, 2, 4
    # CupyBackend buffers (cupy.py): the band (C, N, h, W) float32, launched per channel
    band = np.zeros((c, n, h, w), np.float32)
    weights = np.zeros(n, np.float32)  # lane.small.view((n,))
    image = np.zeros((c, h, w), np.float32)  # lane.image.view((c, h, w)), per channel
    count = np.zeros((c, h, w), np.int32)
    rejected = np.zeros((n, 2), np.int64)
    crit = np.full(n + 1, np.inf)  # cuda.to_device(crit) of a float64 host array
    scratch = np.zeros(gc.combine_scratch_nbytes(n, threads), np.uint8)  # lane.scratch.view(...)
    parts = gc._carve(scratch, n, threads)
    planar = np.zeros((c, hs, ws), np.float32)  # lane.planar.view((c, hs, ws)): the frame's float32 planes
    tables = np.zeros((n, t + 1, TILE_COLUMNS), np.float64)  # lane.tables.view((n, t_cap, 12))
    frame = np.zeros((hs, ws), np.float32)
    frame_rgb = np.zeros((hs, ws, c), np.float32)
    matrix = np.array([[1.0, 0.01, 0.3], [-0.01, 1.0, 0.2]])
    # LuckyDevice (backends/lucky_gpu.py): a batch of frames uploaded in their own dtype,
    # (B, H, W) C-contiguous; views, blur and energy buffers (B, h, w) float32; the Gaussian
    # taps float64; per-frame cell offsets int64; cell sums (B, cells) float64 / int64
    raw_shape = (n, 2 * hs + 1, 2 * ws)  # an odd height: the views of odd-sized frames
    lucky_views = np.zeros((n, hs, ws), np.float32)
    taps = np.zeros(5, np.float64)
    offsets = np.zeros(n, np.int64)
    cell_means = np.zeros((n, 6), np.float64)
    cell_area = np.zeros((n, 6), np.int64)
    return {
        # every rejection method and both reductions live in this one kernel (runtime codes)
        "combine": (gc._combine_kernel, gc.combine_launch_args(band[0], weights, REJECT_SIGMA, REDUCE_MEAN, 3.0, 3.0,
                                                               5, crit, image[0], count[0], rejected, parts)),
        # CupyBackend.combine_band / .warp: one launch per frame and channel
        "warp_tiles_2d": (gw._tiles_kernel_2d, (planar[0], tables[0, :t], band[0, 0])),
        "warp_tiles_planar": (gw._tiles_kernel_planar, (planar, tables[0, :t], image)),
        "warp_affine_2d": (gw._warp_kernel_2d, gw.warp_launch_args(frame, matrix, image[0], "lanczos")),
        "warp_affine_3d": (gw._warp_kernel_3d, gw.warp_launch_args(frame_rgb, matrix, np.zeros((h, w, c), np.float32),
                                                                   "bilinear")),
        # LuckyDevice.area: raw 8- and 16-bit frames, float32 crops / coarse views
        "lucky_area_u8": (gl._area_kernel, gl.area_launch_args(np.zeros(raw_shape, np.uint8), lucky_views)),
        "lucky_area_u16": (gl._area_kernel, gl.area_launch_args(np.zeros(raw_shape, np.uint16), lucky_views)),
        "lucky_area_f32": (gl._area_kernel, gl.area_launch_args(np.zeros(raw_shape, np.float32), lucky_views)),
        "lucky_blur": (gl._blur_kernel, (lucky_views, taps, 2, lucky_views.copy())),
        "lucky_log_energy": (gl._log_energy_kernel, (lucky_views, lucky_views.copy())),
        "lucky_cells": (gl._cells_kernel, (lucky_views, lucky_views.copy(), offsets, offsets.copy(), 16, 3, cell_means,
                                           cell_means.copy(), cell_area)),
    }


def all_kernels() -> list[str]:
    """Names of every numba.cuda kernel (not device function) in the gpu modules."""
    from numba.cuda.dispatcher import CUDADispatcher

    from _skystack_kernels.gpu import combine as gc
    from _skystack_kernels.gpu import lucky as gl
    from _skystack_kernels.gpu import warp as gw

    names = []
    for mod in (gc, gl, gw):
        for name, obj in vars(mod).items():
            if isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device"):
                names.append(f"{mod.__name__}.{name}")
    return sorted(names)


def nvvm_status() -> dict:
    try:
        from numba.cuda.cudadrv import nvvm

        version = nvvm.NVVM().get_version()
        return {"ok": True, "version": ".".join(map(str, version))}
    except Exception as e:  # no libNVVM: the CUDA toolkit wheels are missing
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def compile_all(ccs: list[tuple[int, int]]) -> dict:
    import numba
    from numba import cuda

    cases = kernel_cases()
    # a kernel launched with several argument types (the lucky area kernel: uint8, uint16,
    # float32 frames) has one case per signature
    covered = sorted({f"{k.py_func.__module__}.{k.py_func.__name__}" for k, _ in cases.values()})
    report = {"nvvm": nvvm_status(), "kernels": all_kernels(), "covered": covered, "cases": sorted(cases),
              "results": {}}
    if not report["nvvm"]["ok"]:
        return report
    for cc in ccs:
        target = f"sm_{cc[0]}{cc[1]}"
        device = types.SimpleNamespace(compute_capability=cc)
        with mock.patch("numba.cuda.dispatcher.get_current_device", lambda: device):
            for name, (kernel, args) in cases.items():
                sig = tuple(numba.typeof(a) for a in args)
                t0 = time.perf_counter()
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
                except Exception as e:  # reported per kernel: the test says which one and why
                    report["results"][f"{name}@{target}"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                    continue
                m = re.search(r"^\.target\s+(\w+)", ptx, re.M)
                report["results"][f"{name}@{target}"] = {
                    "ok": True, "target": m.group(1) if m else None, "entry": ".entry" in ptx, "bytes": len(ptx),
                    "signature": [str(s) for s in sig], "seconds": round(time.perf_counter() - t0, 2)}
    return report


def main(argv: list[str]) -> int:
    ccs = [(int(a[:-1]), int(a[-1])) for a in argv[1:]] or [(8, 0), (9, 0)]
    print(json.dumps(compile_all(ccs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
