"""``skystack bench``, the conductor: :func:`run_bench` and its stages (see the package
docstring for what each stage measures)."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from astropy.io import fits

from ...backends._device import simulator_enabled
from ...backends.base import BandJob
from ...backends.registry import resolve
from ...errors import BackendUnavailableError, BadFrameError, RegistrationError, UsageError
from ...io import FrameSet, ensure_sliceable, luminance, open_frames
from ...jobs import BenchJob
from ...options import BenchOptions, RunOptions, SelectOptions, StackOptions
from ...output.write import write_json
from ...register.deepsky import Reference, measure_frame, register_frame
from ...runtime.memory import current_rss, memory_budget, size_text, tune_allocator
from ...runtime.progress import setup_logging
from ...stack.blocks import run_blocks
from ...stack.normalize import robust_stats
from ...stack.plan import WARP_TILE_ROWS, band_matrix, plan_bands, rotation_extra_rows, source_rows
from ...testing.synthetic import make_deepsky
from ...types import Fate
from ..deepsky.phase1 import Phase1, register_all, workers_of
from ..deepsky.weights import Kept, apply_selection, normalisation
from ..deepsky.workspace import Workspace
from .machine import describe_machine, describe_use, device_memory_used_mb
from .parity import check_parity
from .results import GPU_BACKENDS, BackendRun, BenchResult, StageResult, one_line

log = logging.getLogger("skystack")

SIMULATOR_REASON = ("the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): its kernels run as Python, which measures "
                    "nothing; unset it to benchmark the GPU")

# stars in a small synthetic frame, at least (see synthetic_params)
SMALL_FRAME_STARS = 60

Resolver = Callable[[str], Any]


def run_bench(inputs: Sequence[str] | None, job: BenchJob, *, resolver: Resolver | None = None) -> BenchResult:
    """Measure each requested backend on a synthetic set (or ``inputs``).

    Parameters
    ----------
    inputs
        Frames to stack (files, folders, globs, list files), or ``None`` for a synthetic
        set made as ``job.bench`` says.
    job
        The options (:class:`~skystack.jobs.BenchJob`).
    resolver
        ``name → backend instance`` (default: :func:`measurable_backend`, the registry's);
        raises :class:`~skystack.errors.BackendUnavailableError` for an unusable one.

    Returns
    -------
    BenchResult
        With ``ok`` False when a GPU backend failed or its stack differs from the CPU's
        (the figures are complete either way; ``--json`` is written either way).

    Raises
    ------
    BackendUnavailableError
        A GPU backend named explicitly (``--backend cupy``) is not usable here.
    UsageError, NoFramesError, RegistrationError
    """
    setup_logging(job.quiet)
    tune_allocator()
    runs = resolve_backends(job.bench.backend, resolver or measurable_backend)
    device = describe_machine()
    with ExitStack() as cleanup:
        folder = cleanup.enter_context(_work_folder(job.bench.data_dir))
        paths = list(inputs) if inputs else synthetic_set(folder, job.bench, job.quiet)
        frames = open_frames(paths, options=job.read)
        cleanup.callback(frames.close)
        host, frames = host_stages(frames, job, folder / ".skystack-cache")
        cleanup.callback(frames.close)
        plan = stack_plan(frames, host.p1, host.kept, job)
        results = [stage for run in runs if run.usable for stage in measure_backend(run, plan, host, job)]
    parity = check_parity(runs)
    describe_use(device, runs, len(plan.kept))
    result = BenchResult(device=device, run=describe_run(job, plan, host, paths if inputs else None),
                         backends=runs, results=results, parity=parity)
    if job.bench.json:
        result.json_path = write_json(job.bench.json, result.as_json())
    return result


def measurable_backend(name: str) -> Any:
    """The registry's backend ``name``, refusing a GPU backend under Numba's CUDA simulator
    (its timings would be those of Python running each CUDA thread)."""
    if name != "cpu" and simulator_enabled():
        raise BackendUnavailableError(f"--backend {name}: {SIMULATOR_REASON}")
    return resolve(name)


def resolve_backends(which: str, resolver: Resolver) -> list[BackendRun]:
    """The backends to measure: the CPU backend first (every GPU backend is checked against
    it), then the GPU ones; with ``all``, an unusable GPU backend is a :class:`BackendRun`
    with the reason, with an explicit name it stops the run."""
    names = ["cpu"] + ([which] if which in GPU_BACKENDS else list(GPU_BACKENDS) if which == "all" else [])
    runs = []
    for name in names:
        try:
            backend = resolver(name)
        except BackendUnavailableError as e:
            if which == name:
                raise
            runs.append(BackendRun(name, usable=False, reason=str(e)))
            continue
        except Exception as e:  # a broken GPU stack (a library that loads but fails) is "unusable" too
            if which == name:
                raise BackendUnavailableError(f"--backend {name}: {one_line(e)}") from e
            runs.append(BackendRun(name, usable=False, reason=one_line(e)))
            continue
        runs.append(BackendRun(name, usable=True, device=_backend_device(backend),
                               simulated=name != "cpu" and simulator_enabled(), backend=backend))
    return runs


def _backend_device(backend: Any) -> str:
    if getattr(backend, "name", "") == "cpu":
        return f"CPU ({os.cpu_count()} threads)"
    try:
        return str(getattr(backend, "device", "") or getattr(backend, "name", ""))
    except Exception as e:  # a device that cannot even be named
        return f"unknown ({one_line(e)})"


@contextmanager
def _work_folder(data_dir: str | None) -> Iterator[Path]:
    """The folder of the synthetic set and of the decode cache: ``data_dir`` (kept), or a
    temporary one (removed)."""
    if data_dir:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        yield Path(data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="skystack-bench-") as tmp:
        yield Path(tmp)


# what generating one synthetic frame holds at its peak, per pixel (measured: 3000×3000 frames
# take 200 MB more than 1000×1000 ones, ~25 B; with a margin)
_GENERATOR_BYTES_PER_PX = 32


def _check_room(folder: Path, opts: BenchOptions) -> None:
    """Refuse a synthetic set this machine cannot generate or hold (``--size 100000x100000``
    asked NumPy for 149 GiB: a MemoryError traceback), before anything is written."""
    import psutil

    w, h = opts.width_height
    need_ram = w * h * _GENERATOR_BYTES_PER_PX
    need_disk = opts.frames * w * h * (2 if opts.dtype == "uint16" else 4)
    try:
        avail = psutil.virtual_memory().available
    except Exception:  # an unsupported platform: no check
        avail = None
    if avail is not None and need_ram > avail:
        raise UsageError(f"--size {opts.size}: generating one synthetic frame needs about {size_text(need_ram)}, "
                         f"{size_text(avail)} of memory is available")
    free = shutil.disk_usage(folder).free
    if need_disk > free:
        raise UsageError(f"--frames {opts.frames} --size {opts.size}: the synthetic set needs about "
                         f"{size_text(need_disk)} in {folder}, {size_text(free)} is free")


def synthetic_set(folder: Path, opts: BenchOptions, quiet: bool) -> list[str]:
    """Write (or reuse, when ``folder`` holds the same set) ``opts.frames`` synthetic
    deep-sky frames of ``opts.size`` as FITS in ``opts.dtype``; returns their paths.

    The set has drift, rotation, varying seeing, hot pixels, cosmic rays and, from eight
    frames on, a satellite trail, so a rejection stack has outliers to reject."""
    params = synthetic_params(opts)
    manifest = {"generator": "skystack.testing.synthetic.make_deepsky", "params": params, "dtype": opts.dtype}
    names = [f"bench_{i:04d}.fits" for i in range(opts.frames)]
    mpath = folder / "bench-set.json"
    if mpath.exists() and all((folder / n).exists() for n in names):
        try:
            if json.loads(mpath.read_text()) == manifest:
                log.info("reusing the synthetic set in %s", folder)
                return [str(folder / n) for n in names]
        except ValueError:
            pass  # a damaged manifest: write the set again
    _check_room(folder, opts)
    # lists in the manifest (JSON has no tuples), tuples for the generator
    synth = make_deepsky(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    dtype = np.uint16 if opts.dtype == "uint16" else np.float32
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        # astropy writes uint16 as BITPIX 16 + BZERO 32768, as cameras do
        fits.PrimaryHDU(synth.frame(i).astype(dtype, copy=False)).writeto(folder / name, overwrite=True)
    write_json(mpath, manifest)
    if not quiet:
        log.info("generated %d synthetic %s frames of %s in %s (%.1f s)", opts.frames, opts.dtype, opts.size,
                 folder, time.perf_counter() - t0)
    return [str(folder / n) for n in names]


def synthetic_params(opts: BenchOptions) -> dict[str, Any]:
    """The :func:`~skystack.testing.synthetic.make_deepsky` parameters of the bench's set.

    The generator's defaults (1e-3 stars per pixel, from 150 e- up, drift up to ±40 px)
    suit frames of a thousand pixels and more. A frame with fewer than
    :data:`SMALL_FRAME_STARS` stars gets that many, all bright enough to detect, and a
    drift in proportion to its size, so that its frames still overlap and register
    (measured: 96×96 frames with the defaults register 1 to 2 frames of 4)."""
    w, h = opts.width_height
    params: dict[str, Any] = {"n_frames": opts.frames, "shape": [h, w], "seed": opts.seed,
                              "max_shift": min(40.0, 0.04 * min(w, h))}
    if w * h * 1e-3 < SMALL_FRAME_STARS:
        params.update(star_density=SMALL_FRAME_STARS / (w * h), flux_range=[3000.0, 4.0e5])
    return params


@dataclass
class HostStages:
    """The backend-independent stages: decode and phase 1."""

    n_frames: int
    n_decoded: int
    decode_s: float
    cache_s: float
    warmup_s: float  # first calls of phase 1's code (JIT compilation), outside the clock
    register_s: float
    register_threads: int
    p1: Phase1
    kept: Kept
    frame_bytes: int

    def stages(self, backend: str, simulated: bool) -> list[StageResult]:
        return [StageResult(backend, "decode", self.n_decoded, self.decode_s, self.frame_bytes, 1, simulated),
                StageResult(backend, "register", self.n_frames, self.register_s, self.frame_bytes,
                            self.register_threads, simulated)]


def host_stages(frames: FrameSet, job: BenchJob, cache_dir: Path) -> tuple[HostStages, FrameSet]:
    """Decode every frame once (timed), decode into the cache what cannot be sliced (as
    ``skystack stack`` does), then phase 1 and the selection/normalisation of phase 2.
    Returns the figures and the frame set phase 2 reads."""
    shape = frames.shape
    frame_bytes = int(np.prod(shape)) * 4
    decode_s, decoded = 0.0, 0
    for i in range(len(frames)):
        t0 = time.perf_counter()
        try:
            image = frames.read(i)
        except (BadFrameError, OSError, ValueError):
            continue  # phase 1 reports it, with the reason
        decode_s += time.perf_counter() - t0
        decoded += 1
        del image
    t0 = time.perf_counter()
    sliceable = ensure_sliceable(frames, cache_dir)
    cache_s = time.perf_counter() - t0 if sliceable is not frames else 0.0
    run = RunOptions(workers=job.bench.workers, quiet=job.quiet)
    warmup_s = _warm_up_phase1(sliceable, job)
    t0 = time.perf_counter()
    p1 = register_all(sliceable, job.register, run, None, False, job.stack.memory_limit)
    register_s = time.perf_counter() - t0
    if not any(r.fate is Fate.USED for r in p1.results):
        raise RegistrationError("no frame could be registered; see the reasons above")
    kept_idx = apply_selection(p1, SelectOptions())
    kept = normalisation(p1, kept_idx, job.stack)
    return HostStages(n_frames=len(frames), n_decoded=decoded, decode_s=decode_s, cache_s=cache_s,
                      warmup_s=warmup_s, register_s=register_s, register_threads=workers_of(run), p1=p1, kept=kept,
                      frame_bytes=frame_bytes), sliceable


def _warm_up_phase1(frames: FrameSet, job: BenchJob) -> float:
    """Run phase 1's per-frame code once on the first readable frame, so that compiling
    its Numba functions (seconds, on a first run) is not counted as registering."""
    t0 = time.perf_counter()
    for i in range(len(frames)):
        try:
            image = frames.read(i)
        except (BadFrameError, OSError, ValueError):
            continue
        lum = luminance(image)
        measure_frame(lum, job.register)  # how the reference is chosen
        register_frame(lum, Reference.build(lum, job.register), job.register)
        robust_stats(image)  # normalisation statistics, measured in phase 1
        break
    return time.perf_counter() - t0


@dataclass(frozen=True)
class StackPlan:
    """What every backend stacks: the kept frames, their matrices, the bands."""

    spec: Any  # FrameSetSpec: each thread opens its own frame set from it, as phase 2
    kept: Kept
    matrices: tuple[np.ndarray, ...]
    height: int
    width: int
    channels: int
    band_rows: int
    options: StackOptions
    workers: int

    @property
    def bands(self) -> list[tuple[int, int]]:
        return [(y0, min(y0 + self.band_rows, self.height)) for y0 in range(0, self.height, self.band_rows)]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.height, self.width) + ((self.channels,) if self.channels > 1 else ())


def stack_plan(frames: FrameSet, p1: Phase1, kept: Kept, job: BenchJob) -> StackPlan:
    """The bands ``skystack stack`` would use for these frames and options."""
    h, w = p1.shape[:2]
    res = p1.by_index()
    matrices = tuple(res[i].transform.matrix for i in kept.indices)
    workers = workers_of(RunOptions(workers=job.bench.workers))
    plan = plan_bands(height=h, width=w, channels=p1.channels, n_frames=len(kept),
                      memory_limit=memory_budget(job.stack.memory_limit), concurrent=workers,
                      src_rows_extra=rotation_extra_rows(w, list(matrices), job.stack.interpolation),
                      band_rows=job.stack.tile_rows)
    return StackPlan(spec=frames.spec, kept=kept, matrices=matrices, height=h, width=w, channels=p1.channels,
                     band_rows=plan.band_rows, options=job.stack, workers=workers)


def band_jobs(frames: FrameSet, plan: StackPlan, y0: int, y1: int) -> tuple[list[BandJob], list[int], int]:
    """Each kept frame's part of output rows ``y0:y1``, as phase 2's band task builds it
    (rows read lazily, on the fixed warp-tile grid). Returns the jobs, their positions in
    the kept list, and the bytes of source rows they carry."""
    # the source block must cover every whole warp tile of the band
    y1_tiles = -(-y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    jobs, positions, nbytes = [], [], 0
    for pos, (i, m) in enumerate(zip(plan.kept.indices, plan.matrices)):
        rows = source_rows(m, y0, y1_tiles, plan.width, plan.height, plan.options.interpolation)
        if rows is None:
            continue
        sy0, sy1 = rows
        jobs.append(BandJob(rows=functools.partial(frames.read_rows, i, sy0, sy1), matrix=band_matrix(m, sy0, y0),
                            scale=plan.kept.mul[pos], offset=plan.kept.add[pos], frame_matrix=m, src_y0=sy0,
                            band_y0=y0, src_height=plan.height))
        positions.append(pos)
        nbytes += (sy1 - sy0) * plan.width * plan.channels * 4
    return jobs, positions, nbytes


class _BandStacker:
    """Stacks bands of ``plan`` with one backend into in-memory image and count arrays."""

    def __init__(self, backend: Any, plan: StackPlan) -> None:
        self.backend = backend
        self.plan = plan
        self.workspace = Workspace(plan.spec)  # one frame set per thread, as phase 2
        self.image = np.full(plan.out_shape, np.nan, dtype=np.float32)
        self.count = np.zeros(plan.out_shape, dtype=np.int32)
        self.bytes_up = 0
        self._lock = threading.Lock()

    def band(self, y0: int, y1: int) -> np.ndarray:
        plan = self.plan
        jobs, positions, nbytes = band_jobs(self.workspace.frames(), plan, y0, y1)
        rejected = np.zeros((len(plan.kept), 2), dtype=np.int64)
        if jobs:
            shape = (y1 - y0,) + plan.out_shape[1:]
            res = self.backend.combine_band(jobs, shape, np.asarray(plan.kept.weights)[positions], plan.options)
            self.image[y0:y1] = res.image
            self.count[y0:y1] = res.count
            rejected[positions] += res.rejected
        with self._lock:  # band tasks run on several threads
            self.bytes_up += nbytes
        return rejected


def measure_backend(run: BackendRun, plan: StackPlan, host: HostStages, job: BenchJob) -> list[StageResult]:
    """Warm up, then time ``warp`` and ``combine`` of one backend; keep its stack for the
    parity check. A backend that raises is recorded as failed (one line; the traceback
    with -v), and the figures measured before it failed are kept."""
    backend = run.backend
    n = len(plan.kept)
    out = host.stages(run.name, run.simulated)
    try:
        run.warmup_s = warm_up(backend, plan)
        warp_s = warp_stage(backend, plan)
        out.append(StageResult(run.name, "warp", n, warp_s, host.frame_bytes, 1, run.simulated))
        stacker, combine_s = combine_stage(backend, plan, f"bench: combine on {run.name}", job.quiet)
    except Exception as e:  # a GPU kernel that does not compile on this device, a driver error, ...
        log.debug("%s backend failed", run.name, exc_info=True)
        run.failed = one_line(e)
        return out
    finally:
        run.host_rss_mb = current_rss() / 2**20
        run.device_used_mb = device_memory_used_mb()
    out.append(StageResult(run.name, "combine", n, combine_s, host.frame_bytes, plan.workers, run.simulated))
    total = host.cache_s + host.register_s + combine_s
    out.append(StageResult(run.name, "total", host.n_frames, total, host.frame_bytes, None, run.simulated))
    run.image, run.count = stacker.image, stacker.count
    run.bytes_up, run.bytes_down = stacker.bytes_up, int(np.prod(plan.out_shape)) * 8
    return out


def warm_up(backend: Any, plan: StackPlan) -> float:
    """First calls (JIT compilation of the kernels, device buffers) outside the clock: one
    warp tile of rows through ``combine_band`` and a small ``warp``."""
    t0 = time.perf_counter()
    stacker = _BandStacker(backend, plan)
    stacker.band(0, min(WARP_TILE_ROWS, plan.height))
    frames = stacker.workspace.frames()
    rows = frames.read_rows(plan.kept.indices[0], 0, min(WARP_TILE_ROWS, plan.height))
    backend.warp(rows, plan.matrices[0], (rows.shape[0], plan.width), plan.options.interpolation)
    return time.perf_counter() - t0


def warp_stage(backend: Any, plan: StackPlan) -> float:
    """Seconds ``backend.warp`` takes for every kept frame onto the whole output grid
    (reading the frames is not counted)."""
    frames = Workspace(plan.spec).frames()
    total = 0.0
    for i, m in zip(plan.kept.indices, plan.matrices):
        rows = frames.read(i)
        t0 = time.perf_counter()
        backend.warp(rows, m, (plan.height, plan.width), plan.options.interpolation)
        total += time.perf_counter() - t0
    return total


def combine_stage(backend: Any, plan: StackPlan, label: str, quiet: bool) -> tuple[_BandStacker, float]:
    """Phase 2 on ``backend``: every band of ``plan`` on ``plan.workers`` threads (the
    pipeline's executor). Returns the stacker (its image and count) and the wall time."""
    stacker = _BandStacker(backend, plan)
    t0 = time.perf_counter()
    run_blocks(stacker.band, plan.bands, len(plan.kept), workers=plan.workers, scheduler=None, label=label,
               quiet=quiet)
    return stacker, time.perf_counter() - t0


def describe_run(job: BenchJob, plan: StackPlan, host: HostStages, inputs: list[str] | None) -> dict[str, Any]:
    """What was run: the frames, the stack's options, the band plan."""
    opts, stack = job.bench, job.stack
    d: dict[str, Any] = {"source": "input" if inputs else "synthetic", "frames": host.n_frames, "kept": len(plan.kept),
                         "width": plan.width, "height": plan.height, "channels": plan.channels,
                         "frame_mb": round(host.frame_bytes / 1e6, 3), "method": stack.method,
                         "kappa": [stack.kappa_low, stack.kappa_high], "interpolation": stack.interpolation,
                         "normalization": stack.norm, "band_rows": plan.band_rows, "bands": len(plan.bands),
                         "workers": plan.workers, "decode_cache_s": round(host.cache_s, 4),
                         "host_warmup_s": round(host.warmup_s, 4)}
    if inputs:
        d["inputs"] = inputs
    else:
        d.update(dtype=opts.dtype, seed=opts.seed, dir=opts.data_dir)
    return d
