"""``skystack bench``: what it runs is what it reports, unusable backends are listed with
their reason, and the parity check catches a GPU backend whose stack is wrong.

The GPU backends themselves are stood in for by doubles (a CPU backend under a GPU
backend's name, with a deliberate fault), so the checks run on any machine; the real CuPy
backend runs once under Numba's CUDA simulator (in a subprocess), and natively where a
device is present (``gpu`` marker, run by scripts/gpu-check).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skystack import api
from skystack.backends._device import simulator_enabled
from skystack.backends.cpu import CpuBackend
from skystack.backends.registry import cupy_device_count, cv2_cuda_device_count
from skystack.cli import main
from skystack.errors import BackendUnavailableError, UsageError
from skystack.jobs import BenchJob
from skystack.options import build_job
from skystack.pipeline import bench as bench_pkg
from skystack.pipeline.bench import STAGES, run_bench

REPO = Path(__file__).resolve().parents[2]
USABLE = {"cupy": cupy_device_count() > 0 and not simulator_enabled(), "cv2cuda": cv2_cuda_device_count() > 0}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Options of a small synthetic bench; the set is written once and reused (``dir``)."""
    return dict(frames=4, size="128x96", dir=str(tmp_path_factory.mktemp("bench-set")), workers=1, quiet=True)


# -- test doubles: a CPU backend under a GPU backend's name ------------------------------
class FaithfulGpu(CpuBackend):
    """Stacks exactly as the CPU backend: parity must pass."""

    name = "cupy"


class TooBrightGpu(FaithfulGpu):
    """Every value 0.1 % too high: ten times the tolerance."""

    def combine_band(self, jobs, out_shape, weights, options):
        res = super().combine_band(jobs, out_shape, weights, options)
        res.image *= np.float32(1.001)
        return res


class LosesARowGpu(FaithfulGpu):
    """The band's first row uncovered."""

    def combine_band(self, jobs, out_shape, weights, options):
        res = super().combine_band(jobs, out_shape, weights, options)
        res.image[0] = np.nan
        res.count[0] = 0
        return res


class KeepsOneLessGpu(FaithfulGpu):
    """Reports one value fewer kept per pixel (the image itself right)."""

    def combine_band(self, jobs, out_shape, weights, options):
        res = super().combine_band(jobs, out_shape, weights, options)
        res.count[res.count > 0] -= 1
        return res


class CrashingGpu(FaithfulGpu):
    def combine_band(self, jobs, out_shape, weights, options):
        raise RuntimeError("CUDA_ERROR_INVALID_PTX: a PTX JIT compilation failed\nsecond line")


def resolver_with(gpu):
    """A resolver handing out ``gpu`` as "cupy", the CPU backend, and no cv2cuda."""
    def get(name):
        if name == "cpu":
            return CpuBackend()
        if name == "cupy":
            return gpu
        raise BackendUnavailableError(f"--backend {name}: not in this test")
    return get


def job(**kw):
    return build_job(BenchJob, kw)


# -- what runs is what is reported -------------------------------------------------------------
def test_cpu_bench_of_8_frames_1024x768_writes_what_it_ran(tmp_path, capsys):
    out = tmp_path / "B.json"
    rc = main(["bench", "--backend", "cpu", "--frames", "8", "--size", "1024x768", "--json", str(out), "-q"])
    assert rc == 0
    d = json.loads(out.read_text())
    run = d["run"]
    assert (run["source"], run["frames"], run["width"], run["height"], run["channels"]) == ("synthetic", 8, 1024, 768, 1)
    assert (run["dtype"], run["method"], run["interpolation"]) == ("uint16", "sigma", "cubic")
    assert run["kept"] == 8  # every synthetic frame registered and stacked
    assert run["frame_mb"] == pytest.approx(1024 * 768 * 4 / 1e6, abs=1e-3)
    assert [b["backend"] for b in d["backends"]] == ["cpu"] and d["backends"][0]["usable"]
    assert d["parity"] == []  # nothing to compare a lone CPU backend with
    rows = {r["stage"]: r for r in d["results"]}
    assert [r["backend"] for r in d["results"]] == ["cpu"] * len(STAGES) and list(rows) == list(STAGES)
    for stage, r in rows.items():
        assert r["frames"] == 8 and r["seconds"] > 0, stage
        assert r["frames_per_s"] == pytest.approx(8 / r["seconds"], rel=1e-3), stage
        assert r["mb_per_s"] == pytest.approx(r["frames_per_s"] * run["frame_mb"], rel=1e-3), stage
    assert rows["total"]["seconds"] == pytest.approx(
        rows["register"]["seconds"] + rows["combine"]["seconds"] + run["decode_cache_s"], abs=1e-5)
    assert (rows["decode"]["threads"], rows["warp"]["threads"], rows["total"]["threads"]) == (1, 1, None)
    dev = d["device"]
    assert dev["versions"]["numpy"] == np.__version__ and dev["peak_host_rss_mb"] > 0
    assert dev["host"]["cores"] == os.cpu_count()
    printed = capsys.readouterr().out
    for stage in STAGES:
        assert f"\n  {stage} " in printed
    assert "cpu on CPU" in printed and str(out) in printed


@pytest.mark.parametrize("name", ["cupy", "cv2cuda"])
def test_naming_an_unusable_gpu_backend_exits_7_with_one_line(name, capsys):
    if USABLE[name]:
        pytest.skip(f"{name} is usable on this machine")
    rc = main(["bench", "--backend", name, "--frames", "2", "--size", "128x96"])
    assert rc == 7
    cap = capsys.readouterr()
    assert cap.out == ""  # stopped before generating or measuring anything
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skystack: --backend {name}:"), cap.err


def test_all_lists_every_unusable_backend_with_its_reason(tmp_path, small, capsys):
    out = tmp_path / "all.json"
    args = ["bench", "--backend", "all", "--frames", str(small["frames"]), "--size", small["size"], "--dir",
            small["dir"], "--json", str(out), "-q"]
    assert main(args) == 0
    d = json.loads(out.read_text())
    printed = capsys.readouterr()
    assert [b["backend"] for b in d["backends"]] == ["cpu", "cupy", "cv2cuda"]
    for b in d["backends"]:
        assert b["usable"] == (b["backend"] == "cpu" or USABLE[b["backend"]])
        if not b["usable"]:
            assert b["reason"] and "\n" not in b["reason"]
            assert f"{b['backend']}: {b['reason']}" in printed.out
    assert "Traceback" not in printed.out + printed.err


def test_a_broken_gpu_stack_is_unusable_with_the_error_not_a_traceback(small):
    def broken(name):
        if name == "cpu":
            return CpuBackend()
        raise OSError("libcudart.so.12: cannot open shared object file")

    r = run_bench(None, job(**small, backend="all"), resolver=broken)
    reasons = {b.name: b.reason for b in r.backends}
    assert reasons["cupy"] == "OSError: libcudart.so.12: cannot open shared object file"
    assert r.ok and [s.backend for s in r.results] == ["cpu"] * len(STAGES)
    with pytest.raises(BackendUnavailableError, match=r"^--backend cupy: OSError: libcudart") as err:
        run_bench(None, job(**small, backend="cupy"), resolver=broken)
    assert err.value.exit_code == 7


# -- parity -----------------------------------------------------------------------------------
def test_a_faithful_gpu_backend_passes_parity(small):
    r = run_bench(None, job(**small, backend="cupy"), resolver=resolver_with(FaithfulGpu()))
    assert r.ok and r.problems() == []
    (p,) = r.parity
    assert (p.backend, p.ok, p.max_abs_diff, p.coverage_mismatch_px, p.count_mismatch_px) == ("cupy", True, 0.0, 0, 0)
    assert p.pixels == 128 * 96
    assert {s.backend for s in r.results} == {"cpu", "cupy"} and len(r.results) == 2 * len(STAGES)


@pytest.mark.parametrize("gpu, why", [
    (TooBrightGpu(), "values differ by up to 0.001 relative"),
    (LosesARowGpu(), "128 pixel(s) covered by one backend only"),
    (KeepsOneLessGpu(), "another number of values kept at"),
])
def test_parity_catches_a_wrong_gpu_backend(small, gpu, why):
    r = run_bench(None, job(**small, backend="cupy"), resolver=resolver_with(gpu))
    assert not r.ok
    (p,) = r.parity
    assert not p.ok and why in p.reason, p.reason
    assert r.problems() == [f"cupy: {p.reason}"]
    # the figures are all there all the same
    assert {s.stage for s in r.results if s.backend == "cupy"} == set(STAGES)


def test_the_bright_double_is_off_by_what_it_adds(small):
    r = run_bench(None, job(**small, backend="cupy"), resolver=resolver_with(TooBrightGpu()))
    cpu = next(b for b in r.backends if b.name == "cpu")
    (p,) = r.parity
    assert p.max_abs_diff == pytest.approx(float(np.nanmax(cpu.image)) * 1e-3, rel=1e-3)
    assert p.max_rel_diff == pytest.approx(1e-3, rel=1e-3)


def test_a_gpu_backend_that_fails_is_a_parity_failure_in_one_line(small):
    r = run_bench(None, job(**small, backend="cupy"), resolver=resolver_with(CrashingGpu()))
    assert not r.ok
    gpu = next(b for b in r.backends if b.name == "cupy")
    assert gpu.failed == "RuntimeError: CUDA_ERROR_INVALID_PTX: a PTX JIT compilation failed second line"
    assert r.problems() == [f"cupy: failed: {gpu.failed}"]
    assert {s.stage for s in r.results if s.backend == "cupy"} == {"decode", "register"}  # before it failed
    assert "FAILED" in r.table()


def test_cli_exits_10_after_writing_the_figures_when_parity_fails(tmp_path, small, monkeypatch, capsys):
    gpu = TooBrightGpu()
    monkeypatch.setattr(bench_pkg.run, "measurable_backend", resolver_with(gpu))
    out = tmp_path / "p.json"
    rc = main(["bench", "--backend", "cupy", "--frames", str(small["frames"]), "--size", small["size"],
               "--dir", small["dir"], "--json", str(out), "-q"])
    assert rc == 10
    cap = capsys.readouterr()
    assert "parity with the cpu backend" in cap.out and "cupy on cupy" in cap.out
    assert cap.err.strip().splitlines() == [f"skystack: bench: cupy: {json.loads(out.read_text())['parity'][0]['reason']}"]
    d = json.loads(out.read_text())
    assert d["parity"][0]["ok"] is False and d["parity"][0]["backend"] == "cupy"


# -- inputs and options ---------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--frames", "2", "--size", "100000x100000"], "generating one synthetic frame needs about 298.0 GiB"),
    (["--frames", "2000000", "--size", "3840x2160"], "the synthetic set needs about 30.2 TiB in"),
])
def test_a_set_the_machine_cannot_hold_is_refused_before_it_is_written(tmp_path, args, words, capsys, monkeypatch):
    # --size 100000x100000 was a MemoryError traceback (NumPy asked for 149 GiB)
    import collections

    import psutil
    memory = collections.namedtuple("memory", "total available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(32 * 2**30, 16 * 2**30))  # as if 16 GiB free
    assert main(["bench", *args, "--dir", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_float32_set_is_written_once_and_reused(tmp_path):
    opts = dict(backend="cpu", frames=3, size="128x96", dtype="float32", dir=str(tmp_path), quiet=True, workers=1)
    r = api.bench(**opts)
    files = sorted(tmp_path.glob("bench_*.fits"))
    assert len(files) == 3 and r.run["dtype"] == "float32" and r.run["dir"] == str(tmp_path)
    with fits.open(files[0]) as hdul:
        assert hdul[0].header["BITPIX"] == -32
    stamps = [f.stat().st_mtime_ns for f in files]
    api.bench(**opts)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not rewritten
    api.bench(**{**opts, "dtype": "uint16"})
    with fits.open(files[0]) as hdul:
        assert hdul[0].header["BITPIX"] == 16  # another set: written again


def test_bench_on_input_frames(small):
    r = api.bench(small["dir"], backend="cpu", quiet=True, workers=1)
    assert r.run["source"] == "input" and r.run["inputs"] == [small["dir"]]
    assert r.run["frames"] == small["frames"] and (r.run["width"], r.run["height"]) == (128, 96)
    assert "dtype" not in r.run  # the synthetic set's options do not apply


@pytest.mark.parametrize("kw", [{"size": "12x"}, {"size": "axb"}, {"size": "64x64"}, {"size": (128,)},
                                {"frames": 0}, {"dtype": "int8"}, {"backend": "opencl"}, {"workers": 0},
                                {"method": "average"}, {"no_such_option": 1}])
def test_bad_options_are_refused_before_any_work(kw):
    with pytest.raises(UsageError):
        api.bench(**kw)


def test_size_is_width_by_height_from_the_cli_and_the_api():
    assert job(size=(1024, 768)).bench.width_height == (1024, 768)
    assert job(size="1024X768").bench.size == "1024x768"
    assert job().bench.size == "3840x2160" and job().stack.method == "sigma"


# -- the real GPU backend ------------------------------------------------------------------------
_SIMULATED_BENCH = """
import json, sys
from skystack.backends.cupy import CupyBackend
from skystack.backends.registry import resolve
from skystack.jobs import BenchJob
from skystack.options import build_job
from skystack.pipeline.bench import run_bench

# the smallest set that registers; bilinear: the simulator runs every tap of every thread as Python
job = build_job(BenchJob, dict(backend="cupy", frames=2, size="96x96", interpolation="bilinear", workers=1,
                               quiet=True, json=sys.argv[1]))
r = run_bench(None, job, resolver=lambda name: CupyBackend(simulator=True) if name == "cupy" else resolve(name))
"""


@pytest.mark.cudasim
def test_bench_drives_the_cupy_backend_under_the_cuda_simulator(tmp_path):
    """The real CuPy backend (its device layer on NumPy, its numba.cuda kernels simulated)
    takes the bench's band jobs, and its stack equals the CPU backend's."""
    out = tmp_path / "sim.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "kernels"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _SIMULATED_BENCH, str(out)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    d = json.loads(out.read_text())
    gpu = next(b for b in d["backends"] if b["backend"] == "cupy")
    assert gpu["usable"] and gpu["simulated"] and "simulator" in gpu["device"].lower()
    (p,) = d["parity"]
    assert p["ok"] and p["coverage_mismatch_px"] == 0 and p["count_mismatch_px"] == 0, p
    assert d["run"]["kept"] == 2
    assert all(r["simulated"] for r in d["results"] if r["backend"] == "cupy")


@pytest.mark.gpu
def test_native_bench_of_every_usable_backend():
    """On a machine with a CUDA device (scripts/gpu-check): every usable backend is
    measured and every GPU stack matches the CPU's."""
    if not USABLE["cupy"]:
        pytest.skip("no CUDA device usable by CuPy here (or the simulator is on)")
    r = api.bench(backend="all", frames=8, size="1024x768", quiet=True)
    assert r.ok, r.problems()
    assert {s.backend for s in r.results} >= {"cpu", "cupy"}
    assert r.device["gpu"] and r.device["peak_device_used_mb"] > 0
