"""Lucky imaging's GPU path against the CPU path: the ranking pass and the batched global
alignment, frames per second and the largest differences.

    PYTHONPATH=src:kernels python benchmarks/lucky_gpu.py [--frames 512] [--size 640x480]
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=src:kernels python benchmarks/lucky_gpu.py --simulator --frames 8 --size 96x64

The video is the synthetic Moon (``skystack.testing.planetary``, seed 1, uint8), held in
memory so that decoding is not measured. Without a usable CUDA device the GPU rows say
why; ``--simulator`` runs the same code under Numba's CUDA simulator (a code-path check:
its speed means nothing).
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (puts src/ and kernels/ on sys.path)
import numpy as np

from skystack.errors import BackendUnavailableError
from skystack.options import LuckyOptions
from skystack.pipeline.lucky.frames import FrameTable, LuckyRun, Reader
from skystack.pipeline.lucky.gpu import GpuRanker
from skystack.pipeline.lucky.pool import Workers
from skystack.pipeline.lucky.rank import Ranker, rank_all
from skystack.register.planetary import GlobalAligner, shift_image
from skystack.testing.planetary import ArrayFrames, make_lunar_video


def rank(frames, shape, device):
    """The ranking pass on one worker (chunk tasks inline), on the CPU or the device."""
    opts = LuckyOptions()
    workers = Workers(1, processes=False)
    try:
        run = LuckyRun(frames=frames, reader=Reader(frames, shape), table=FrameTable(len(frames)), opts=opts,
                       source="bench", workers=workers, quiet=True)
        ranker = Ranker(opts, shape)
        ranker.start(run, frames.read_raw(0).astype(np.float32))
        t0 = time.perf_counter()
        rank_all(run, ranker, True, GpuRanker(ranker, device) if device is not None else None)
        return time.perf_counter() - t0, run.table
    finally:
        workers.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--size", default="640x480", help="WxH")
    p.add_argument("--batch", type=int, default=64, help="frames per batched alignment")
    p.add_argument("--simulator", action="store_true", help="run the GPU path under the CUDA simulator")
    a = p.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    video = make_lunar_video(a.frames, (h, w), seed=1)
    frames = ArrayFrames(list(video.frames()), name="moon")
    try:
        from skystack.backends.lucky_gpu import LuckyDevice

        device, why = LuckyDevice(simulator=a.simulator), ""
    except BackendUnavailableError as e:
        device, why = None, str(e)
    print(f"{a.frames} frames of {w}x{h} uint8; device: {device.device if device else 'none (' + why + ')'}")
    print(f"{'stage':<22}{'path':<6}{'frames/s':>10}  difference from the CPU")
    t_cpu, cpu = rank(frames, (h, w), None)
    print(f"{'rank (pass 1)':<22}{'cpu':<6}{a.frames / t_cpu:>10.1f}")
    if device is not None:
        t_gpu, gpu = rank(frames, (h, w), device)
        ok = cpu.status == 0
        d_cells = np.nanmax(np.abs(gpu.log_energy.astype(np.float32) - cpu.log_energy.astype(np.float32)))
        d_coarse = np.nanmax(np.abs(gpu.coarse[ok] - cpu.coarse[ok])) if ok.any() else 0.0
        print(f"{'rank (pass 1)':<22}{'gpu':<6}{a.frames / t_gpu:>10.1f}  cells {d_cells:.1e} (log), "
              f"coarse {d_coarse:.1e} px")
    lums = [f.astype(np.float32) for f in frames._frames]
    ref = np.mean([shift_image(lums[i], *video.shifts[i]) for i in range(min(8, a.frames))], axis=0)
    m = max(8, min(h, w) // 10)
    aligner = GlobalAligner(ref.astype(np.float32), (m, h - m, m, w - m), peak_sigma=1.5,
                            downsample=2 if min(h, w) - 2 * m >= 256 else 1)
    coarse = np.round(np.asarray(video.shifts))
    t0 = time.perf_counter()
    want = [aligner.measure(lum, tuple(c))[0] for lum, c in zip(lums, coarse)]
    t_cpu = time.perf_counter() - t0
    print(f"{'global alignment':<22}{'cpu':<6}{a.frames / t_cpu:>10.1f}")
    if device is not None:
        dev_aligner = device.aligner(aligner)
        t0 = time.perf_counter()
        got = []
        for k in range(0, a.frames, a.batch):
            got += dev_aligner.measure_many(lums[k:k + a.batch], coarse[k:k + a.batch])[0]
        t_gpu = time.perf_counter() - t0
        d = max(max(abs(g.sx - c.sx), abs(g.sy - c.sy)) for g, c in zip(got, want))
        print(f"{'global alignment':<22}{'gpu':<6}{a.frames / t_gpu:>10.1f}  shifts {d:.1e} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
