"""Small, seeded band-stacking cases for the backend parity tests.

Frames are tiny star fields (a few bright Gaussian stars on a sky background with noise),
rotated and shifted by known transforms, some with NaN holes (masked pixels), one with a
bright "satellite trail" so that rejection has something to reject. Jobs are built
exactly as ``pipeline.deepsky.phase2.band_task`` builds them: source rows from
:func:`skystack.stack.plan.source_rows` over whole warp tiles, local matrices from
:func:`skystack.stack.plan.band_matrix`, and the absolute geometry for the tile grid.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from skystack.backends.base import BandJob
from skystack.backends.cpu import CpuBackend
from skystack.options import StackOptions
from skystack.stack.plan import WARP_TILE_ROWS, band_matrix, source_rows
from skystack.types import Transform

# kappa_low / kappa_high mean different things per method (see the kernels' reject.py):
# sigmas, fractions of the median, GESD alpha / outlier fraction, counts to drop
METHOD_PARAMS = {
    "none": (3.0, 3.0),
    "mean": (3.0, 3.0),
    "median": (3.0, 3.0),
    "sigma": (2.0, 2.0),
    "winsorized": (2.0, 2.0),
    "mad": (2.5, 2.5),
    "linear-fit": (2.0, 2.0),
    "percentile": (0.2, 0.2),
    "gesd": (0.05, 0.3),
    "minmax": (1.0, 1.0),
}


class KernelTwinBackend(CpuBackend):
    """The CPU backend with OpenCV's warp replaced by the Numba CPU twin of the GPU warp
    kernel (``_skystack_kernels.cpu.warp.warp_affine_cpu``: the same per-pixel function the
    GPU kernel is compiled from), on the same tile grid, with the same CPU combine kernel.

    A GPU backend must equal this whatever the warp's edge rules are: it checks the GPU
    backend's own plumbing (staging, tiles, normalisation, channels, combine, downloads).
    Whether those edge rules are :class:`CpuBackend`'s is :func:`warp_semantics_mismatch`.
    """

    name = "kernel-twin"

    def warp(self, rows, matrix, out_shape, interpolation, out=None, inside=None):
        from _skystack_kernels.cpu.warp import warp_affine_cpu

        # (``inside`` is CpuBackend's shortcut for its coverage warp; the twin marks coverage itself)

        h, w = out_shape
        src = rows if rows.dtype == np.float32 else rows.astype(np.float32)
        if out is None:
            out = np.empty((h, w) + src.shape[2:], dtype=np.float32)
        warp_affine_cpu(src, np.asarray(matrix, dtype=np.float64), out, interpolation)
        return out


def warp_semantics_mismatch() -> str | None:
    """Why the GPU warp kernel cannot reproduce :meth:`CpuBackend.warp` (None if it can).

    Probed on the kernel's CPU twin (same per-pixel source as the GPU kernel): a rotated
    and shifted 24x20 frame with a masked pixel, both interpolations, compared with the CPU
    backend for coverage (NaN where not covered) and values.
    """
    rng = np.random.default_rng(3)
    src = (rng.random((24, 20)) * 1000 + 100).astype(np.float32)
    src[10, 9] = np.nan
    m = Transform.from_params(dx=0.37, dy=-0.61, angle_deg=1.3, center=(10, 12)).matrix
    problems = []
    for interp in ("bilinear", "lanczos"):
        want = CpuBackend().warp(src, m, (24, 20), interp)
        got = KernelTwinBackend().warp(src, m, (24, 20), interp)
        diff = np.isnan(want) != np.isnan(got)
        if diff.any():
            problems.append(f"{interp}: coverage differs at {int(diff.sum())} of {diff.size} pixels "
                            f"(CPU backend NaN: {int(np.isnan(want).sum())}, kernel: {int(np.isnan(got).sum())})")
            continue
        both = np.isfinite(want)
        if not np.allclose(got[both], want[both], rtol=2e-6, atol=0):
            problems.append(f"{interp}: values differ by up to "
                            f"{float(np.max(np.abs(got[both] - want[both]) / np.abs(want[both]))):.1e} (relative)")
    if not problems:
        return None
    return ("the GPU warp kernel (kernels/_skystack_kernels/cpu/warp.py: warp_pixel, compiled for the GPU) "
            "does not follow CpuBackend.warp's edge rules: " + "; ".join(problems))


@dataclass
class Case:
    """One ``combine_band`` call: its inputs, as the pipeline would make them."""

    name: str
    jobs: list[BandJob]
    out_shape: tuple[int, ...]
    weights: np.ndarray
    options: StackOptions


def star_frames(rng: np.random.Generator, n: int, height: int, width: int, channels: int = 1,
                dtype=np.float32, nan_frames: tuple[int, ...] = (1, 4), outlier: int | None = 2) -> np.ndarray:
    """``n`` frames (n, H, W[, C]): the same stars, each frame with its own noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    sky = np.full((height, width), 900.0)
    for _ in range(4):
        sx, sy = rng.uniform(2, width - 2), rng.uniform(2, height - 2)
        sky += rng.uniform(2000, 9000) * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * 1.3**2))
    shape = (n, height, width) + ((channels,) if channels > 1 else ())
    gain = np.linspace(0.9, 1.1, channels) if channels > 1 else np.ones(1)
    frames = np.empty(shape, dtype=np.float64)
    for i in range(n):
        img = sky[..., None] * gain if channels > 1 else sky
        frames[i] = img + rng.normal(0, 25.0, img.shape)
    if outlier is not None and outlier < n:
        r = height // 2  # a bright trail across the middle of one frame
        frames[outlier, r:r + 2] += 20000.0
    if np.issubdtype(np.dtype(dtype), np.integer):
        return np.clip(np.rint(frames), 0, np.iinfo(dtype).max).astype(dtype)
    frames = frames.astype(dtype)
    for i in nan_frames:
        if i < n:
            holes = rng.random(frames.shape[1:3]) < 0.005  # Lanczos spreads each over 8x8 taps
            frames[i][holes] = np.nan  # masked pixels: "no data", never a value
    return frames


def transforms(rng: np.random.Generator, n: int, height: int, width: int) -> list[np.ndarray]:
    """Frame → reference matrices: frame 0 is the reference, the others shifted by up to
    1.5 px and rotated by up to 2 degrees about the centre."""
    mats = [Transform.identity().matrix]
    for _ in range(1, n):
        t = Transform.from_params(dx=rng.uniform(-1.5, 1.5), dy=rng.uniform(-1.5, 1.5),
                                  angle_deg=rng.uniform(-2, 2), center=(width / 2, height / 2))
        mats.append(t.matrix)
    return mats


def band_jobs(frames: np.ndarray, matrices: list[np.ndarray], y0: int, y1: int, interpolation: str,
              scales: np.ndarray, offsets: np.ndarray, tiled: bool = True, loader: bool = False) -> list[BandJob]:
    """The jobs of output rows ``y0:y1``, as ``pipeline.deepsky.phase2.band_task`` makes them
    (``loader``: rows as a zero-argument loader, read when the backend asks)."""
    height, width = frames.shape[1:3]
    y1_tiles = -(-y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
    jobs = []
    for k, m in enumerate(matrices):
        rows = source_rows(m, y0, y1_tiles, width, height, interpolation)
        if rows is None:
            continue
        sy0, sy1 = rows
        geometry = dict(frame_matrix=m, src_y0=sy0, band_y0=y0, src_height=height) if tiled else {}
        rows = functools.partial(np.array, frames[k, sy0:sy1]) if loader else frames[k, sy0:sy1]
        jobs.append(BandJob(rows=rows, matrix=band_matrix(m, sy0, y0), scale=scales[k],
                            offset=offsets[k], **geometry))
    return jobs


def make_case(name: str, rng: np.random.Generator, *, method: str = "sigma", n: int = 7, height: int = 24,
              width: int = 20, channels: int = 1, dtype=np.float32, y0: int = 8, y1: int = 16,
              interpolation: str = "lanczos", normalise: bool = True, weighted: bool = True,
              tiled: bool = True, loader: bool = False) -> Case:
    """A ``combine_band`` call on output rows ``y0:y1`` of ``n`` frames."""
    frames = star_frames(rng, n, height, width, channels, dtype)
    mats = transforms(rng, n, height, width)
    c = max(channels, 1)
    if normalise:
        scales = rng.uniform(0.9, 1.1, (n, c)).astype(np.float32)
        offsets = rng.uniform(-30, 30, (n, c)).astype(np.float32)
    else:
        scales, offsets = np.ones((n, c), np.float32), np.zeros((n, c), np.float32)
    jobs = band_jobs(frames, mats, y0, y1, interpolation, scales, offsets, tiled=tiled, loader=loader)
    weights = rng.uniform(0.5, 1.5, len(jobs)).astype(np.float32) if weighted else np.ones(len(jobs), np.float32)
    lo, hi = METHOD_PARAMS[method]
    options = StackOptions(method=method, kappa_low=lo, kappa_high=hi, max_iter=5, interpolation=interpolation)
    out_shape = (y1 - y0, width) + ((channels,) if channels > 1 else ())
    return Case(name=name, jobs=jobs, out_shape=out_shape, weights=weights, options=options)


def all_cases(seed: int = 7) -> list[Case]:
    """Every rejection method and both reductions on mono float32 frames with NaNs, plus
    16-bit RGB, bilinear, a band cut by the image's bottom edge (rows given as loaders),
    and untiled jobs."""
    rng = np.random.default_rng(seed)
    cases = [make_case(f"reject-{m}", rng, method=m) for m in
             ("mean", "median", "sigma", "winsorized", "mad", "linear-fit", "percentile", "gesd", "minmax")]
    cases.append(make_case("rgb-u16-bilinear-sigma", rng, method="sigma", channels=3, dtype=np.uint16,
                           interpolation="bilinear", n=5))
    cases.append(make_case("bottom-edge-bilinear-loader", rng, method="winsorized", y0=16, y1=22, height=22,
                           interpolation="bilinear", n=5, loader=True))
    cases.append(make_case("cubic-sigma", rng, method="sigma", interpolation="cubic", n=5))
    cases.append(make_case("untiled-unweighted", rng, method="sigma", tiled=False, weighted=False,
                           normalise=False, n=6))
    return cases


def cpu_warped_band(case: Case) -> np.ndarray:
    """The ``(N, h, W[, C])`` band the CPU backend warps and normalises before combining."""
    from skystack.backends.cpu import _normalise_inplace

    cpu = CpuBackend()
    band = np.empty((len(case.jobs),) + tuple(case.out_shape), dtype=np.float32)
    for k, job in enumerate(case.jobs):
        cpu.warp_job(job, band[k], case.options.interpolation)
        _normalise_inplace(band[k], job.scale, job.offset)
    return band


def _combine_task(backend: str, case) -> dict:
    return dict(backend=backend, call="combine", jobs=case.jobs, out_shape=case.out_shape,
                weights=case.weights, options=case.options)


def gpu_tasks() -> tuple[dict[str, dict], dict[str, object]]:
    """Every task the GPU parity tests run, and the cases they came from (by task key)."""
    rng = np.random.default_rng(11)
    tasks: dict[str, dict] = {}
    cases: dict[str, object] = {}
    for case in all_cases():
        key = f"cupy:{case.name}"
        tasks[key], cases[key] = _combine_task("cupy", case), case
        if case.name.startswith("reject-"):
            # the same band warped and normalised on the CPU: the combine kernel alone
            tasks[f"warped:{case.name}"] = dict(backend="cupy", call="combine_warped", band=cpu_warped_band(case),
                                               weights=case.weights, options=case.options)
    # the streaming path: one whole frame at a time, no tile grid
    frames = star_frames(rng, 2, 20, 24, nan_frames=(1,))
    mats = transforms(rng, 2, 20, 24)
    tasks["cupy:warp-lanczos"] = dict(backend="cupy", call="warp", rows=frames[1], matrix=mats[1],
                                      out_shape=(20, 24), interpolation="lanczos")
    rgb = star_frames(rng, 2, 20, 24, channels=3, dtype=np.uint16)
    tasks["cupy:warp-bilinear-rgb-u16"] = dict(backend="cupy", call="warp", rows=rgb[1], matrix=mats[1],
                                               out_shape=(20, 24), interpolation="bilinear")
    # two bands on two threads at once, on one backend instance
    a = make_case("thread-a", rng, method="sigma", n=5, y0=0, y1=8)
    b = make_case("thread-b", rng, method="mad", n=5, y0=8, y1=16, channels=3)
    tasks["cupy:threads"] = dict(backend="cupy", call="threads",
                                 calls=[(c.jobs, c.out_shape, c.weights, c.options) for c in (a, b)])
    cases["cupy:threads"] = (a, b)
    # cv2.cuda (stand-in) warps + the simulated combine kernel; Lanczos on the numba warp
    for case in (make_case("cv2-bilinear-gesd", rng, method="gesd", n=6, interpolation="bilinear"),
                 make_case("cv2-lanczos-minmax", rng, method="minmax", n=5, y0=8, y1=16)):
        key = f"cv2cuda:{case.name}"
        tasks[key], cases[key] = _combine_task("cv2cuda", case), case
    return tasks, cases
