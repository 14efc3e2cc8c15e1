"""Many videos in one command, as planetary imagers work (a night of captures, one SER per
filter or per few minutes): one stack per video into a folder, one report each, and a
summary; a video that cannot be stacked is reported and skipped, the rest go on."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ...errors import OutputError, SkystackError, UsageError
from ...jobs import LuckyJob
from ...output.sidecar import FitsSidecar
from ...output.write import write_json
from ...types import LuckyResult
from .run import run_lucky

log = logging.getLogger("skystack")

SUMMARY_NAME = "lucky-summary.json"


@dataclass
class BatchItem:
    """One video of a batch: where its stack went, or why it failed (``error``, with the
    exit code the failure would have had alone)."""

    input: str
    output: str | None = None
    result: LuckyResult | None = None
    error: str | None = None
    exit_code: int = 0

    def row(self) -> dict[str, Any]:
        r = self.result
        if r is None:
            return {"input": self.input, "status": "failed", "error": self.error, "exit_code": self.exit_code}
        total = r.timings.get("total_s", 0.0)
        return {"input": self.input, "status": "ok", "output": self.output, "frames": r.n_frames,
                "used": r.n_used, "mode": r.mode, "alignment_points": r.alignment_points,
                "seconds": round(total, 2), "frames_per_s": round(r.n_frames / total, 1) if total > 0 else None,
                "peak_rss_mb": round(r.peak_rss_mb, 1), "date_obs": (r.report.get("capture") or {}).get("mid_utc"),
                "report": str(r.report_path) if r.report_path else None}


@dataclass
class BatchResult:
    """Every video's outcome, in the order given, and the summary file written."""

    items: list[BatchItem] = field(default_factory=list)
    summary_path: Path | None = None

    @property
    def failed(self) -> list[BatchItem]:
        return [it for it in self.items if it.result is None]


def batch_videos(inputs: Sequence[str]) -> list[str]:
    """The batch's videos: each input, except that a folder holding only video files (SER,
    AVI, MP4, ...) stands for each of them, in natural order, as in AutoStakkert's or PSS's
    batch (`skystack lucky night/ -o stacks/` concatenated a night's videos of different
    targets and sizes into one clip). A folder of frame images stays one clip."""
    from ...io.resolve import discover

    out: list[str] = []
    for v in inputs:
        if os.path.isdir(v):
            found = discover([v]).candidates
            if found and all(c.error is None and c.kind in ("ser", "video") for c in found):
                out += [c.path for c in found]
                continue
        out.append(str(v))
    return out


def batch_output(video: str, folder: Path, suffix: str) -> Path:
    """``folder/<video name without extension><suffix>``; a folder of frames keeps its name."""
    p = Path(video.rstrip("/\\"))
    return folder / ((p.name if p.is_dir() else p.stem) + suffix)


def run_batch(videos: Sequence[str], folder: str | os.PathLike, job: LuckyJob, *,
              suffix: str = ".fits", fits_writer: FitsSidecar | None = None) -> BatchResult:
    """Stack each of ``videos`` (a video file, a folder of videos or a folder of frames:
    see :func:`batch_videos`) on its own into
    ``folder`` (``<name><suffix>`` with its report and previews beside it), then write
    ``folder/lucky-summary.json``.

    A video that fails (unreadable, no frame aligned, ...) is logged with its reason and
    skipped; the others go on. A bad option stops the batch before any video runs.

    Raises
    ------
    UsageError
        No video, or two videos that would write the same output name.
    """
    videos = batch_videos(videos)
    if not videos:
        raise UsageError("no input video")
    out_dir = Path(folder)
    if out_dir.exists() and not out_dir.is_dir():  # each video failed on it, then the summary
        raise OutputError(f"{out_dir}: is a file, not a folder; the stacks of a batch go into a folder")
    outs = [batch_output(v, out_dir, suffix) for v in videos]
    seen: dict[Path, str] = {}
    for v, o in zip(videos, outs):
        if o in seen:
            raise UsageError(f"{seen[o]} and {v} would both be written to {o}; rename one of them")
        seen[o] = v
    result = BatchResult()
    for k, (video, out) in enumerate(zip(videos, outs), 1):
        log.info("video %d of %d: %s", k, len(videos), video)
        item = BatchItem(input=str(video), output=str(out))
        vjob = dataclasses.replace(job, output=dataclasses.replace(job.output, output=str(out), report=None))
        try:
            item.result = run_lucky([str(video)], vjob, fits_writer=fits_writer)
        except SkystackError as e:
            item.error, item.exit_code, item.output = str(e), e.exit_code, None
            log.error("%s: not stacked: %s", video, e)
        result.items.append(item)
    result.summary_path = write_json(out_dir / SUMMARY_NAME, {
        "kind": "lucky-batch", "videos": len(videos), "stacked": len(videos) - len(result.failed),
        "failed": len(result.failed), "items": [it.row() for it in result.items]})
    return result
