"""The one front door: every command and every Python user goes through these functions.

Each takes its inputs, an output path (``None``: nothing written, the result holds what
was computed) and options as keyword arguments. A keyword is the option's name on the
command line without the dashes (``memory_limit="256M"`` for ``--memory-limit 256M``,
``kappa=(2.5, 3)`` for ``--kappa 2.5 3``); :mod:`skystack.options` defines them all, with
their defaults and allowed values, and builds the per-stage option dataclasses from them.
An unknown keyword or a bad value is a :class:`~skystack.errors.UsageError` before any
frame is read.

The pipelines are imported inside the functions that run them: the deep-sky pipeline
imports star detection and triangle matching (0.78 s measured on the project's 2-core
machine, with ``scipy.stats`` and ``scipy.spatial`` then) that ``skystack lucky`` never uses, and the reverse holds for
the lucky pipeline's aligners; ``import skystack`` itself stays cheap.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError
from .jobs import BenchJob, CalibrateJob, EnhanceJob, LuckyJob, RegisterJob, StackJob
from .options import ColourOptions, EnhanceOptions, MasterOptions, OutputOptions, build, build_job
from .runtime.memory import parse_size
from .types import LuckyResult, StackResult

PathLike = str | os.PathLike


def _inputs(inputs: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(p) for p in inputs]


def _output(output: PathLike | None, kw: dict[str, Any]) -> OutputOptions:
    base = OutputOptions(output=os.fspath(output) if output is not None else None)
    return build(OutputOptions, kw, base=base)


def stack(inputs: PathLike | Sequence[PathLike], output: PathLike | None = None, **options: Any) -> StackResult:
    """Register ``inputs`` (files, folders, globs or a list file) and stack them.

    Parameters
    ----------
    inputs
        The light frames.
    output
        ``.fits``, ``.tif`` or ``.png``, with OUT.report.json and a preview beside it;
        ``None``: nothing is written, the result holds the stack.
    **options
        Any option of ``skystack stack --help`` by its long name (``method="sigma"``,
        ``kappa=(3, 3)``, ``memory_limit="512M"``, ``darks=["darks/"]``, ``drizzle=2`` ...).

    Returns
    -------
    StackResult
        ``image`` (float32, the pixels the FITS file holds), ``coverage``, ``weight``
        (drizzle), ``header`` (astropy Header: observation cards, WCS, DATE-OBS,
        STACKCNT, LIVETIME, ...), ``to_ccddata()``; the per-frame results, the reference
        index, timings, peak RSS and paths written.

    Raises
    ------
    UsageError, NoFramesError, RegistrationError, OutputError, InputChangedError, ClusterError
    """
    from .pipeline.deepsky.run import stack_frames

    out = _output(output, options)
    job = build_job(StackJob, options, output=out)
    return stack_frames(_inputs(inputs), job)


def register(inputs: PathLike | Sequence[PathLike], *, report: PathLike | None = None,
             **options: Any) -> StackResult:
    """Register only: each frame's transform to the reference and its fate, without
    stacking. With ``report``, writes them as JSON. Options: those of
    ``skystack register --help`` (registration, demosaicing, workers, scheduler)."""
    from .pipeline.deepsky.run import register_frames

    out = OutputOptions(report=os.fspath(report) if report is not None else None)
    job = build_job(RegisterJob, options, output=out)
    return register_frames(_inputs(inputs), job)


def lucky(inputs: Any, output: PathLike | None = None, *, fits_writer: Any = None, **options: Any) -> LuckyResult:
    """Lucky imaging of a video or frame sequence (``skystack lucky``).

    ``inputs``: paths (videos, SER files, frame folders) or an open frame set. Options:
    those of ``skystack lucky --help`` (``keep="10%"``, ``multipoint=False``,
    ``wavelets=(1.8, 1.4, 1, 1, 1)``, ...). Sharpening runs when ``wavelets`` or a
    ``stretch`` is given; a stretch alone does not sharpen. ``fits_writer``: a running
    :class:`skystack.output.sidecar.FitsSidecar` to write a FITS stack in (the CLI starts
    one at start-up; see that module).
    """
    from .pipeline.lucky.run import run_lucky

    out = _output(output, options)
    if ("stretch" in options or "black" in options or "white" in options) and "wavelets" not in options:
        options["wavelets"] = (1.0,)  # a stretch alone: gain 1 at one scale leaves the image as is
    job = build_job(LuckyJob, options, output=out)
    if not isinstance(inputs, (str, os.PathLike, list, tuple)):
        return run_lucky(inputs, job, fits_writer=fits_writer)
    return run_lucky(_inputs(inputs), job, fits_writer=fits_writer)


def lucky_batch(inputs: Sequence[PathLike], folder: PathLike, *, fits_writer: Any = None, **options: Any):
    """Lucky imaging of several videos (``skystack lucky A.ser B.ser ... -o FOLDER/``): one
    stack per video into ``folder`` (``<name>.fits``, or another ``suffix=".tif"``), its
    report and previews beside it, and ``folder/lucky-summary.json``. A video that fails is
    logged and skipped. Options and ``fits_writer``: those of :func:`lucky`. Returns a
    :class:`~skystack.pipeline.lucky.batch.BatchResult`."""
    from .pipeline.lucky.batch import run_batch

    suffix = str(options.pop("suffix", ".fits"))
    if ("stretch" in options or "black" in options or "white" in options) and "wavelets" not in options:
        options["wavelets"] = (1.0,)
    job = build_job(LuckyJob, options, output=_output(None, options))
    return run_batch(_inputs(inputs), folder, job, suffix=suffix, fits_writer=fits_writer)


def enhance(image, **options: Any):
    """Wavelet sharpening and stretch of a stacked image array (see
    :mod:`skystack.enhance.wavelets`); returns the enhanced float32 array."""
    from .enhance.wavelets import enhance as _enhance

    return _enhance(image, build(EnhanceOptions, dict(options)) if options else None)


def enhance_file(input: PathLike, output: PathLike, **options: Any) -> list[Path]:
    """``skystack enhance``: sharpen/stretch one stacked image file into ``output`` (and a
    before/after preview); returns the paths written."""
    from .pipeline.enhance import run_enhance

    out = _output(output, options)
    job = build_job(EnhanceJob, options, output=out)
    return run_enhance(os.fspath(input), job)


def master(kind: str, inputs: PathLike | Sequence[PathLike], output: PathLike, *,
           bias: PathLike | Sequence[PathLike] = (), dark_flats: PathLike | Sequence[PathLike] = (),
           memory_limit: str | int | None = None, workers: int | None = None, quiet: bool = False,
           keep_cache: bool = False, **options: Any):
    """``skystack master``: combine calibration frames (``kind``: bias, dark, flat,
    dark-flat) into a master FITS. Options: ``method``, ``kappa``; ``keep_cache`` keeps
    ``.skystack-cache`` beside the master (decoded frames, the flats' offset master)."""
    from .pipeline.calibration import make_master

    opts = build(MasterOptions, options)
    if options:
        raise UsageError(f"unknown option(s) {', '.join(sorted(options))} for master; known: method, kappa")
    return make_master(kind, _inputs(inputs), output, method=opts.method, kappa=opts.kappa,
                       bias=_inputs(bias) if bias else (), dark_flats=_inputs(dark_flats) if dark_flats else (),
                       memory_limit=parse_size(memory_limit), workers=workers, quiet=quiet,
                       keep_cache=bool(keep_cache))


def calibrate(inputs: PathLike | Sequence[PathLike], output: PathLike, *, debayer: bool = False,
              **options: Any) -> tuple[list[Path], dict[str, Any]]:
    """``skystack calibrate``: calibrated lights written as FITS into the folder
    ``output``. Options: the calibration options of ``skystack stack``, ``debayer_method``,
    ``bayer``, ``memory_limit``, ``workers``."""
    from .pipeline.calibration import calibrate_frames

    options = dict(options)
    if "memory_limit" in options:
        options["memory_limit"] = parse_size(options["memory_limit"])
    job = build_job(CalibrateJob, options)
    if debayer:
        job = replace(job, read=replace(job.read, debayer="auto"))
    return calibrate_frames(_inputs(inputs), output, job)


def colour(image: PathLike, output: PathLike, *, neutralize: bool = False,
           white_balance: str | Sequence[float] = "none", camera_from: PathLike | None = None,
           preview: bool = True) -> tuple[list[Path], dict[str, Any]]:
    """``skystack colour``: neutralise the background and/or white-balance a stacked RGB
    image file into ``output``."""
    from .pipeline.calibration import colour_balance_file

    opts = ColourOptions(neutralize=neutralize, white_balance=white_balance)  # validates
    return colour_balance_file(image, output, neutralize=opts.neutralize, white_balance=opts.white_balance,
                               camera_from=camera_from, preview=preview)


def demo(folder: PathLike | None = None, *, n_frames: int = 16, size: tuple[int, int] = (1200, 900),
         method: str = "sigma", quiet: bool = False) -> dict[str, Any]:
    """Generate a small synthetic deep-sky set with known transforms, stack it, and
    measure registration error and stack quality against the truth."""
    from .optionfields import positive_int
    from .pipeline.demo import run_demo

    positive_int(n_frames, "--frames", allow_none=False)  # 0 was a ValueError traceback
    return run_demo(Path(folder) if folder else None, n_frames=n_frames, size=size, method=method, quiet=quiet)


def bench(inputs: PathLike | Sequence[PathLike] | None = None, **options: Any):
    """``skystack bench``: each backend's throughput per stage (decode, register, warp,
    combine, total) on a synthetic set, or on ``inputs``, and every GPU backend's stack
    checked against the CPU backend's.

    Parameters
    ----------
    inputs
        Frames to measure on; ``None`` generates ``frames`` synthetic frames of ``size``.
    **options
        Those of ``skystack bench --help``: ``backend="all"`` (or ``"cpu"``, ``"cupy"``,
        ``"cv2cuda"``), ``frames=16``, ``size="3840x2160"`` (or ``(3840, 2160)``),
        ``dtype="uint16"``, ``method="sigma"``, ``interpolation``, ``workers``,
        ``json="bench.json"``, ``dir``, ``quiet`` ...

    Returns
    -------
    skystack.pipeline.bench.BenchResult
        ``results`` (one per backend and stage), ``parity``, ``device``; ``ok`` is False
        when a GPU backend failed or its stack differs from the CPU's.

    Raises
    ------
    UsageError, BackendUnavailableError (a GPU backend named explicitly is not usable),
    NoFramesError, RegistrationError
    """
    from .pipeline.bench import run_bench

    job = build_job(BenchJob, options)
    return run_bench(_inputs(inputs) if inputs is not None else None, job)
