"""Where the CuPy backend's combine time goes: host staging, PCIe transfers, kernels.

    PYTHONPATH=src:kernels python benchmarks/gpu.py [skystack bench options]
        e.g. --frames 24 --size 3840x2160 --method sigma --interpolation lanczos --dir bench-data/gpu

``skystack bench`` measures every backend per stage, checks each GPU stack against the
CPU's and bounds the combine by the measured PCIe bandwidth; this script runs exactly that
(``--backend cupy``) with the CuPy backend's profiling on, and adds what only its CUDA
events can tell: the combine stage split into host staging (copies into and out of
page-locked buffers, loading rows), host↔device transfers and kernels. Copies and kernels
overlap, so the parts need not add up to the wall time.

Without a usable CuPy device it runs the bench on the CPU backend and prints the bound
that nominal PCIe 4.0 / 5.0 x16 bandwidths would put on a GPU combine of the same bytes.
"""
from __future__ import annotations

import sys
import threading

import _common  # noqa: F401  (puts src/ and kernels/ on sys.path)

from skystack.backends.registry import resolve
from skystack.cli.args import given
from skystack.cli.main import build_parser
from skystack.errors import BackendUnavailableError
from skystack.jobs import BenchJob
from skystack.options import build_job
from skystack.pipeline.bench import measurable_backend, run_bench

# achievable host→device rates of a x16 link with pinned memory (≈ 80 % of the raw rate)
NOMINAL_PCIE = {"PCIe 4.0 x16 (nominal 25 GB/s)": 25e9, "PCIe 5.0 x16 (nominal 50 GB/s)": 50e9}


class CombineSplit:
    """The profiled CuPy backend, remembering its timings when the bench's combine stage
    starts: the bench calls ``warp`` for its warp stage, then ``combine_band`` for every
    band (pipeline/bench/run.py, measure_backend), so the first ``combine_band`` after a
    ``warp`` opens the combine stage."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.before = None
        self._warped = False
        self._lock = threading.Lock()

    def warp(self, *args, **kw):
        self._warped = True
        return self.inner.warp(*args, **kw)

    def combine_band(self, *args, **kw):
        with self._lock:
            if self._warped and self.before is None:
                self.before = self.inner.timings()
        return self.inner.combine_band(*args, **kw)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    kw = given(args)
    profiled: dict[str, CombineSplit] = {}

    def resolver(name: str):
        if name != "cupy":
            return resolve(name)
        measurable_backend(name)  # refuses a missing device and the simulator, with the reason
        from skystack.backends.cupy import CupyBackend

        profiled[name] = CombineSplit(CupyBackend(profile=True))
        return profiled[name]

    try:
        r = run_bench(args.inputs or None, build_job(BenchJob, {**kw, "backend": "cupy"}), resolver=resolver)
    except BackendUnavailableError as e:
        print(f"no GPU profile: {e}\n")
        r = run_bench(args.inputs or None, build_job(BenchJob, {**kw, "backend": "cpu"}))
        print(r.table())
        cpu = r.backends[0]
        n = r.run["kept"]
        for name, bw in NOMINAL_PCIE.items():
            print(f"combine bound by the bus alone, {name}: {n / max(cpu.bytes_up, cpu.bytes_down) * bw:8.1f} frames/s "
                  f"({cpu.bytes_up / 1e9:.2f} GB up, {cpu.bytes_down / 1e9:.3f} GB down)")
        return 0
    print(r.table())
    split = profiled["cupy"]
    after = split.inner.timings()
    before = split.before
    combine = next(s for s in r.results if s.backend == "cupy" and s.stage == "combine")
    print(f"\ncupy combine stage: {combine.frames_per_s:.2f} frames/s, wall {combine.seconds:.3f} s | "
          f"host staging {after.host_io_s - before.host_io_s:.3f} s | transfers {after.transfer_s - before.transfer_s:.3f} s "
          f"({(after.bytes_h2d - before.bytes_h2d) / 1e9:.2f} GB up, {(after.bytes_d2h - before.bytes_d2h) / 1e9:.3f} GB "
          f"down) | kernels {after.kernel_s - before.kernel_s:.3f} s  (summed over band threads)")
    return 0 if r.ok else 10


if __name__ == "__main__":
    sys.exit(main())
