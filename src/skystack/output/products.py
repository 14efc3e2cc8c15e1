"""What a stack run writes: the image by extension, and beside it the coverage map, the
stretched preview and the quality plot. Both pipelines write through :func:`write_stack`
(the lucky pipeline adds its comparison and sharpened images with the same writers).

The names of every side file live here, once: :func:`stack_outputs` and
:func:`lucky_outputs` list what a run will write (for the output guard, before any frame
is read) from the same functions the writers use."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..options import OutputOptions
from ..types import FrameResult
from .write import write_fits, write_image, write_preview


def preview_path(out: Path) -> Path:
    return out.with_suffix(".preview.png") if out.suffix else Path(str(out) + ".png")


def coverage_path(out: Path) -> Path:
    return out.with_name(out.stem + ".coverage.fits")


def quality_plot_path(out: Path) -> Path:
    return out.with_suffix(".quality.png") if out.suffix else Path(str(out) + ".quality.png")


def compare_path(out: Path) -> Path:
    """Lucky imaging: the best single frame beside the stack."""
    return out.with_suffix(".compare.png") if out.suffix else Path(str(out) + ".compare.png")


def sharpened_path(out: Path) -> Path:
    """The wavelet-sharpened copy of a stack (``m.tif`` → ``m_sharpened.tif``)."""
    return out.with_name(out.stem + "_sharpened" + out.suffix)


def before_after_path(out: Path) -> Path:
    """The before/after preview of a sharpened image."""
    return out.with_suffix(".before-after.png") if out.suffix else Path(str(out) + ".before-after.png")


def report_path(output: OutputOptions) -> Path | None:
    """``--report``, else ``OUT.report.json`` beside the image; None when neither is set."""
    if output.report:
        return Path(output.report)
    if output.output is not None:
        return Path(str(output.output) + ".report.json")
    return None


def stack_outputs(output: OutputOptions, *, plot: bool) -> list[tuple[str, Path]]:
    """``(role, path)`` of every file :func:`write_stack` and the report may write for
    ``output`` (``plot``: the run draws a quality plot when previews are on)."""
    files: list[tuple[str, Path]] = []
    if output.output is not None:
        out = Path(output.output)
        files.append(("image", out))
        if output.coverage:
            files.append(("coverage map", coverage_path(out)))
        if output.preview and out.suffix.lower() != ".png":
            files.append(("preview", preview_path(out)))
        if output.preview and plot:
            files.append(("quality plot", quality_plot_path(out)))
    rep = report_path(output)
    if rep is not None:
        files.append(("report", rep))
    return files


def lucky_outputs(output: OutputOptions, *, sharpen: bool) -> list[tuple[str, Path]]:
    """``(role, path)`` of every file a lucky-imaging run may write: the stack's, the
    comparison, and with ``sharpen`` the sharpened copy and its before/after preview."""
    files = stack_outputs(output, plot=True)
    if output.output is not None:
        out = Path(output.output)
        if output.preview:
            files.append(("comparison", compare_path(out)))
        if sharpen:
            files += [("sharpened image", sharpened_path(out)),
                      ("before/after preview", before_after_path(sharpened_path(out)))]
    return files


def write_stack(out: Path, image: np.ndarray, *, header: dict[str, Any], history: Sequence[str],
                output: OutputOptions, count: np.ndarray | None = None,
                results: Sequence[FrameResult] | None = None, reference: int | None = None) -> list[Path]:
    """Write the stack ``out`` and its side files; returns every path written.

    ``count`` (per-pixel frames combined) becomes ``OUT.coverage.fits`` with
    ``output.coverage``; ``results`` (deep-sky) become ``OUT.quality.png`` with previews on.
    """
    written = [write_image(out, image, header=header, history=history, tiff_dtype=output.tiff_dtype)]
    if output.coverage and count is not None:
        c = np.asarray(count)
        written.append(write_fits(coverage_path(out), (c.max(axis=2) if c.ndim == 3 else c).astype(np.float32),
                                  header={"BUNIT": ("frames", "values combined per pixel")}))
    if output.preview and out.suffix.lower() != ".png":
        written.append(write_preview(preview_path(out), image))
    if output.preview and results is not None:
        from .plots import plot_frames  # matplotlib: only when a plot is drawn (see .plots)

        written.append(plot_frames(quality_plot_path(out), list(results), reference or 0))
    return written
