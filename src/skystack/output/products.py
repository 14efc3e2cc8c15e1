"""What a stack run writes: the image by extension, and beside it the coverage map, the
stretched preview and the quality plot. Both pipelines write through :func:`write_stack`
(the lucky pipeline adds its comparison and sharpened images with the same writers)."""
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
