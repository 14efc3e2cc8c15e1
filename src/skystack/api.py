"""High-level functions: what the CLI calls and what users import.

Each function builds the per-stage option dataclasses from plain keyword arguments and
hands them to the pipeline; no stage logic lives here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .options import (CalibrationOptions, ColourOptions, OutputOptions, ReadOptions, RegisterOptions,
                      RunOptions, SelectOptions, StackOptions)
from .pipeline.run import StackResult, stack_frames
from .stack.plan import parse_size

PathLike = str | os.PathLike


def _inputs(inputs: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(p) for p in inputs]


def stack(inputs: PathLike | Sequence[PathLike], output: PathLike, *,
          method: str = "mean", kappa: tuple[float, float] = (3.0, 3.0), norm: str = "auto",
          weights: str = "none", interpolation: str = "cubic", register: str = "auto",
          model: str = "similarity", reference: int | None = None, faint: bool = False,
          keep: str | None = None, max_fwhm: float | None = None, max_roundness: float | None = None,
          min_stars: int | None = None, memory_limit: str | int | None = None, workers: int | None = None,
          scheduler: str | None = None, backend: str = "auto", resume: bool = False,
          report: PathLike | None = None, tiff_dtype: str = "float32", preview: bool = True,
          coverage: bool = False, debayer: str = "auto", bayer: str | None = None,
          band_rows: int | None = None, cache_dir: PathLike | None = None, quiet: bool = True,
          bias: PathLike | Sequence[PathLike] = (), darks: PathLike | Sequence[PathLike] = (),
          flats: PathLike | Sequence[PathLike] = (), dark_flats: PathLike | Sequence[PathLike] = (),
          dark_scaling: str = "auto", cosmetic: str = "auto", hot_sigma: float = 5.0, cold_sigma: float = 5.0,
          master_method: str = "winsorized", debayer_method: str = "bilinear", neutralize: bool = False,
          white_balance: str | tuple[float, float, float] = "none",
          ) -> StackResult:
    """Register ``inputs`` (files, folders, globs or a list file) and stack them into
    ``output`` (.fits, .tif or .png), with a JSON report beside it.

    Parameters
    ----------
    method : mean | median | sigma | winsorized | mad | linear-fit | percentile | gesd | minmax
    kappa : (low, high) rejection parameters (σ multiples, or fractions / counts, per method)
    norm : auto | none | add | mul | addscale | mulscale (auto: add for mean/median, addscale
        for rejection methods)
    weights : none | noise | stars | fwhm
    register : auto | stars | orb
    memory_limit : bytes or a size such as "256M"; bounds phase 2's working memory
    bias, darks, flats, dark_flats : calibration frames (files, folders, globs) or master FITS
    debayer_method : bilinear (default: unbiased star colours) | ea | vng
    neutralize, white_balance : colour balance of a colour stack (none | auto | camera | "R,G,B")

    Returns
    -------
    StackResult
        The per-frame results, the reference index, timings, peak RSS and paths written.
    """
    return stack_frames(
        _inputs(inputs),
        output=OutputOptions(output=os.fspath(output), report=os.fspath(report) if report else None,
                             tiff_dtype=tiff_dtype, preview=preview, coverage=coverage),
        read=ReadOptions(debayer=debayer, bayer_override=bayer, debayer_method=debayer_method),
        register=RegisterOptions(method=register, model=model, reference=reference, faint=faint),
        select=SelectOptions(keep=keep, max_fwhm_px=max_fwhm, max_roundness=max_roundness, min_stars=min_stars),
        stack=StackOptions(method=method, kappa_low=kappa[0], kappa_high=kappa[1], normalization=norm,
                           weights=weights, interpolation=interpolation, memory_limit=parse_size(memory_limit),
                           band_rows=band_rows),
        run=RunOptions(workers=workers, scheduler=scheduler, backend=backend, resume=resume, quiet=quiet,
                       cache_dir=os.fspath(cache_dir) if cache_dir else None),
        calibration=CalibrationOptions(bias=_opt_inputs(bias), darks=_opt_inputs(darks), flats=_opt_inputs(flats),
                                       dark_flats=_opt_inputs(dark_flats), dark_scaling=dark_scaling,
                                       cosmetic=cosmetic, hot_sigma=hot_sigma, cold_sigma=cold_sigma,
                                       master_method=master_method),
        colour=ColourOptions(neutralize=neutralize, white_balance=_white_balance(white_balance)),
    )


def _white_balance(wb):
    from .calibrate.colour import parse_white_balance

    return wb if isinstance(wb, tuple) else parse_white_balance(wb)


def _opt_inputs(x: PathLike | Sequence[PathLike] | None) -> tuple[str, ...]:
    return tuple(_inputs(x)) if x else ()


def register(inputs: PathLike | Sequence[PathLike], *, report: PathLike | None = None, method: str = "auto",
             model: str = "similarity", reference: int | None = None, faint: bool = False,
             workers: int | None = None, scheduler: str | None = None, debayer: str = "auto",
             bayer: str | None = None, quiet: bool = True) -> StackResult:
    """Register only: the per-frame transforms (and fates) without stacking. With
    ``report``, writes them as report.json."""
    out = OutputOptions(output=os.fspath(report), report=os.fspath(report)) if report else None
    return stack_frames(
        _inputs(inputs), output=out, read=ReadOptions(debayer=debayer, bayer_override=bayer),
        register=RegisterOptions(method=method, model=model, reference=reference, faint=faint),
        run=RunOptions(workers=workers, scheduler=scheduler, quiet=quiet), transforms_only=True)


def lucky(inputs: PathLike | Sequence[PathLike], output: PathLike, **kwargs: Any):
    """Lucky imaging of a video or frame sequence (see :mod:`skystack.pipeline.lucky`)."""
    from .pipeline.lucky import LuckyOptions, run_lucky

    fields = set(LuckyOptions.__dataclass_fields__)
    opts = LuckyOptions(**{k: v for k, v in kwargs.items() if k in fields})
    rest = {k: v for k, v in kwargs.items() if k not in fields}
    return run_lucky(_inputs(inputs), os.fspath(output), opts, **rest)


def enhance(image, **kwargs: Any):
    """Wavelet sharpening and stretch of a stacked image (see :mod:`skystack.enhance`)."""
    from .enhance.wavelets import enhance as _enhance

    return _enhance(image, **kwargs)


def demo(folder: PathLike | None = None, *, n_frames: int = 16, size: tuple[int, int] = (1200, 900),
         method: str = "sigma", quiet: bool = False) -> dict[str, Any]:
    """Generate a small synthetic deep-sky set with known transforms, stack it, and
    measure registration error and stack quality against the truth."""
    from .pipeline.demo import run_demo

    return run_demo(Path(folder) if folder else None, n_frames=n_frames, size=size, method=method, quiet=quiet)
