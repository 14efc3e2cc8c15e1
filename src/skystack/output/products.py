"""What a stack run writes: the image by extension, and beside it the coverage map, the
stretched preview and the quality plot. Both pipelines write through :func:`write_stack`
(the lucky pipeline adds its comparison and sharpened images with the same writers).

The names of every side file live here, once: :func:`stack_outputs` and
:func:`lucky_outputs` list what a run will write (for the output guard, before any frame
is read) from the same functions the writers use."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..options import OutputOptions
from ..types import FrameResult
from .plots import plot_frames
from .write import write_fits, write_image, write_preview


def preview_path(out: Path) -> Path:
    return out.with_suffix(".preview.png") if out.suffix else Path(str(out) + ".png")


def coverage_path(out: Path) -> Path:
    return out.with_name(out.stem + ".coverage.fits")


def quality_plot_path(out: Path) -> Path:
    return out.with_suffix(".quality.png") if out.suffix else Path(str(out) + ".quality.png")


def weight_path(out: Path) -> Path:
    return out.with_name(out.stem + ".weight.fits")


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
            files += [("coverage map", coverage_path(out)), ("weight map", weight_path(out))]
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


def write_stack(out: Path, image: np.ndarray, *, header: Any, history: Sequence[str] = (),
                output: OutputOptions, count: np.ndarray | None = None, weight: np.ndarray | None = None,
                results: Sequence[FrameResult] | None = None, reference: int | None = None) -> list[Path]:
    """Write the stack ``out`` and its side files; returns every path written.

    ``header`` is an astropy Header (:func:`~skystack.output.header.fits_header`) or a dict
    of cards. ``count`` (per-pixel frames combined) becomes ``OUT.coverage.fits`` with
    ``output.coverage``, and ``weight`` (drizzle's weight map) ``OUT.weight.fits``; both
    carry the stack's celestial WCS. ``results`` (deep-sky) become ``OUT.quality.png`` with
    previews on.
    """
    # the preview and the plot only read: drawn on a side thread while the image and the
    # maps are written (OpenCV, NumPy and the file writes release the GIL; ~0.15 s of an
    # 18-sub Seestar stack's 0.35 s of writing overlapped)
    side: list[Future[Path]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="skystack-side") as pool:
        if output.preview and out.suffix.lower() != ".png":
            side.append(pool.submit(write_preview, preview_path(out), image))
        if output.preview and results is not None:
            side.append(pool.submit(plot_frames, quality_plot_path(out), list(results), reference or 0))
        try:
            written = [write_image(out, image, header=header, history=history, tiff_dtype=output.tiff_dtype)]
            if output.coverage and count is not None:
                c = np.asarray(count)
                written.append(write_fits(coverage_path(out), (c.max(axis=2) if c.ndim == 3 else c).astype(np.float32),
                                          header={"BUNIT": ("frames", "values combined per pixel"),
                                                  **_wcs_cards(header)}))
            if output.coverage and weight is not None:
                written.append(write_fits(weight_path(out), np.asarray(weight, dtype=np.float32),
                                          header={"BUNIT": ("weight", "drizzle drop overlap x frame weight"),
                                                  **_wcs_cards(header)}))
        except BaseException:
            for f in side:
                f.cancel()
            raise
        written += [f.result() for f in side]
    return written


def _wcs_cards(header: Any) -> dict[str, Any]:
    """The 2-D celestial WCS cards of a stack's header (for its mono side maps)."""
    keys = ("CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "CUNIT1", "CUNIT2", "CTYPE1", "CTYPE2",
            "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "LONPOLE", "LATPOLE",
            "RADESYS", "EQUINOX")
    if header is None or "CTYPE1" not in header:
        return {}
    out = {"WCSAXES": 2}
    for k in keys:
        if k in header:
            v = header[k]
            v = v[0] if isinstance(v, tuple) else v
            out[k] = v.replace("-SIP", "") if k.startswith("CTYPE") else v
    return out
