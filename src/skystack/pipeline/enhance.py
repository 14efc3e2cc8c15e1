"""``skystack enhance``: sharpen and stretch one stacked image file."""
from __future__ import annotations

from pathlib import Path

from ..enhance.wavelets import before_after, enhance
from ..errors import UsageError
from ..io import open_frames
from ..jobs import EnhanceJob
from ..output.guard import guard_outputs
from ..output.products import before_after_path
from ..output.write import write_image, write_png


def run_enhance(input: str, job: EnhanceJob) -> list[Path]:
    """Sharpen/stretch one stacked image file.

    Reads ``input`` (FITS, TIFF, PNG; colour FITS cubes as RGB), writes the enhanced image
    to ``job.output.output`` (by extension) and a before/after preview beside it
    (``OUT.before-after.png``). Returns the written paths.

    Raises
    ------
    UsageError
        ``input`` holds more than one frame.
    OutputError
        The output is the input, or cannot be written.
    """
    opts = job.enhance
    output = job.output.output
    if output is None:
        raise UsageError("enhance needs an output path (-o OUT)")
    dst = Path(output)
    guard_outputs([("image", dst), ("before/after preview", before_after_path(dst))], [input])
    frames = open_frames([input])
    if len(frames) != 1:
        raise UsageError(f"{input}: holds {len(frames)} frames; enhance takes one stacked image")
    image = frames.read(0)
    out = enhance(image, opts)
    gains = ",".join(f"{g:g}" for g in opts.gains)
    written = [write_image(dst, out, tiff_dtype=job.output.tiff_dtype,
                           history=[f"skystack enhance {Path(input).name}: wavelets {gains}, stretch {opts.stretch}"])]
    written.append(write_png(before_after_path(dst), before_after(image, out)))
    return written
