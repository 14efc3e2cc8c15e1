"""What every lucky-imaging step shares: opening a video (and calibrating it), the
per-frame table, the frame reader, chunk tasks and the run's context (:class:`LuckyRun`)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ...errors import BadFrameError, NoFramesError, UsageError
from ...io import input_files, open_frames
from ...jobs import LuckyJob
from ...options import LuckyOptions, ReadOptions, RunOptions
from ...output.guard import guard_outputs
from ...output.products import lucky_outputs
from ...output.sidecar import FitsSidecar
from ...quality.metrics import BLANK_SPAN
from ...types import Fate
from .pool import Buffers, Workers

log = logging.getLogger("skystack")

_UNMAP_EVERY = 256  # reads between closing memory-mapped inputs (see Reader)

# per-frame status codes of FrameTable.status
OK, UNREADABLE, BLANK, NO_DISK, OUT_OF_FIELD, NO_MATCH = range(6)


@dataclass
class FrameTable:
    """Small per-frame arrays (the only O(N) state of a run). ``log_energy`` and
    ``log_level`` hold each frame's sharpness cells (:mod:`skystack.quality.metrics`) in
    frame coordinates, float16 (a log to a few thousandths is all ranking needs), set
    up by :meth:`cells` once the cell grid is known."""

    n: int
    quality: np.ndarray = field(init=False)
    log_gain: np.ndarray = field(init=False)
    peak: np.ndarray = field(init=False)
    coarse: np.ndarray = field(init=False)  # full-res px; planet: centroid, surface: vs frame 0
    status: np.ndarray = field(init=False)
    shift: np.ndarray = field(init=False)  # refined displacement vs the reference
    response: np.ndarray = field(init=False)
    ap_used: np.ndarray = field(init=False)
    used: np.ndarray = field(init=False)
    nonfinite: np.ndarray = field(init=False)  # NaN/infinite pixels replaced (float frames)
    log_energy: np.ndarray = field(init=False)
    log_level: np.ndarray = field(init=False)
    reasons: dict[int, tuple[Fate, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.n
        self.quality = np.full(n, np.nan)
        self.log_gain = np.zeros(n)
        self.peak = np.full(n, np.nan)
        self.coarse = np.full((n, 2), np.nan)
        self.status = np.full(n, OK, dtype=np.int8)
        self.shift = np.full((n, 2), np.nan)
        self.response = np.full(n, np.nan)
        self.ap_used = np.zeros(n, dtype=np.int32)
        self.used = np.zeros(n, dtype=bool)
        self.nonfinite = np.zeros(n, dtype=np.int64)
        self.cells((1, 1))

    def cells(self, shape: tuple[int, int]) -> None:
        """Allocate the sharpness cells, ``shape`` = (ny, nx) per frame."""
        self.log_energy = np.full((self.n,) + tuple(shape), np.nan, np.float16)
        self.log_level = np.full((self.n,) + tuple(shape), np.nan, np.float16)

    def fail(self, i: int, status: int, fate: Fate, reason: str) -> None:
        self.status[i] = status
        self.reasons[i] = (fate, reason)

    def first_reason(self) -> str:
        for i in sorted(self.reasons):
            return f"frame {i}: {self.reasons[i][1]}"
        return "no reason recorded"

    def record_alignment(self, i: int, result: Any, s: Any, min_response: float) -> bool:
        """Record frame ``i``'s alignment outcome; False when the frame could not be read
        (``result`` is the BadFrameError) or did not match the reference (``None``)."""
        if isinstance(result, BadFrameError):
            self.fail(i, UNREADABLE, Fate.UNREADABLE, result.reason)
            return False
        self.response[i] = s.response
        self.shift[i] = (s.sx, s.sy)
        if result is None:
            self.fail(i, NO_MATCH, Fate.FAILED_REGISTRATION,
                      f"no match with the reference (correlation response {s.response:.3f} < {min_response})")
            return False
        return True


# -- frame access -----------------------------------------------------------------------------

def open_input(inputs: Any, read: ReadOptions) -> Any:
    """An already open frame set as is, else :func:`skystack.io.open_frames`."""
    if hasattr(inputs, "luminance") and hasattr(inputs, "__len__"):
        return inputs
    return open_frames(inputs, options=read)


@dataclass
class Source:
    """An opened video: its frames (calibrated when asked), the first usable frame, the
    messages said so far, the readers' problems, the input paths and the calibration's
    summary for the report."""

    frames: Any
    first: int
    shape: tuple[int, int]
    first_image: np.ndarray
    messages: list[str]
    problems: list
    input_paths: list[str]
    calibration: dict[str, Any] | None = None


def guard(inputs: Any, job: LuckyJob) -> None:
    """Refuse, before any frame is read, a run whose outputs (the stack, its report,
    previews, plot, comparison, sharpened copy) would replace an input: a video, a list
    file or a calibration frame (:func:`skystack.output.guard.guard_outputs`)."""
    cal = job.calibration
    read = input_files([p for group in (cal.bias, cal.darks, cal.flats, cal.dark_flats) for p in group])
    if isinstance(inputs, (str, os.PathLike, list, tuple)):
        read += input_files(inputs)
    else:  # an open frame set (the API): the files it names
        read += sorted({frame_path(inputs, i) for i in sample_indices(len(inputs))})
    guard_outputs(lucky_outputs(job.output, sharpen=job.enhance is not None), read)


def open_video(inputs: Any, job: LuckyJob, cache_dir: Path) -> Source:
    """Check the outputs against the inputs, open the frames, insert the calibration
    (``--darks``/``--flats``/``--bias``: masters built or reused by
    :func:`skystack.calibrate.prepare_calibration`, applied to the raw plane before
    demosaicing), and find the first usable frame."""
    guard(inputs, job)
    frames = open_input(inputs, job.read)
    n = len(frames)
    if n == 0:
        raise NoFramesError("no input frame")
    messages: list[str] = []
    problems = list(getattr(frames, "problems", []) or [])
    for idx, path, reason in problems:
        if idx < 0:  # file-level warnings (a truncated SER ...); bad frames are reported later
            messages.append(f"{path}: {reason}")
            log.warning("%s", messages[-1])
    input_paths = sorted({frame_path(frames, i) for i in sample_indices(n)})
    info = None
    if job.calibration.active:
        if not hasattr(frames, "with_raw_steps"):
            raise UsageError("calibration (--darks/--flats/--bias) needs frames opened from files")
        # the calibration package imports numba and scipy.ndimage (0.37 s measured on the
        # project's 2-core machine), which an uncalibrated run never needs
        from ...calibrate import prepare_calibration

        frames, info = prepare_calibration(frames, job.calibration, cache_dir=cache_dir,
                                           run=RunOptions(workers=job.lucky.workers, quiet=job.quiet))
        messages += [f"calibration: {w}" for w in info.get("warnings", [])]
    first, shape, img = first_frame(frames)
    return Source(frames, first, shape, img, messages, problems, input_paths, info)


def frame_path(frames: Any, i: int) -> str:
    p = getattr(frames, "path", None)
    if callable(p):
        try:
            return str(p(i))
        except Exception:
            return str(frames.name(i))
    return str(p) if p is not None else str(frames.name(i))


def sample_indices(n: int) -> list[int]:
    # a frame set spanning many files: name every file without touching every frame
    return sorted(set(np.linspace(0, n - 1, min(n, 64)).astype(int).tolist()))


def has_raw_fast_path(frames: Any) -> bool:
    """True when ``read_raw`` gives the plane :meth:`read` would process unchanged except
    for demosaicing (no calibration steps): then ranking can bin the raw plane 2×2."""
    if not hasattr(frames, "read_raw"):
        return False
    spec = getattr(frames, "spec", None)
    return not (spec is not None and getattr(spec, "raw_steps", ()))


def finite_frame(img: np.ndarray) -> tuple[np.ndarray, int]:
    """``img`` with its NaN and infinite pixels (a float frame's: the holes a calibration
    or a derotation left) replaced by the median of its finite ones, and how many there
    were. A lucky stack sums frames and correlates them: one NaN pixel would poison both,
    and the frame would be rejected as not matching its neighbours. Integer frames (SER,
    AVI, PNG) cannot hold one and are returned as they are."""
    if img.dtype.kind != "f" or np.isfinite(img.sum(dtype=np.float64)):
        return img, 0
    ok = np.isfinite(img)
    n = int(img.size - np.count_nonzero(ok))
    if n == img.size:
        return img, n
    return np.where(ok, img, np.median(img[ok])).astype(img.dtype, copy=False), n


def _common_geometry(frames: Any) -> tuple[int, int] | None:
    """The (H, W) most of the frames have, from the files' headers, for frames gathered
    from several files; None for one video. (The first frame's geometry was the clip's: a
    folder of FITS whose first file was cut to 4×48 rejected every 64×48 frame after it.)"""
    if len(getattr(frames, "entries", ()) or ()) < 2:
        return None
    try:
        return tuple(int(v) for v in frames.shape[:2])
    except Exception:  # no readable header at all: the frames themselves will say why
        return None


def first_frame(frames: Any) -> tuple[int, tuple[int, int], np.ndarray]:
    """The first readable, non-blank frame: the clip's geometry, the mode decision and the
    first key frame come from it. (Blank and unreadable frames before it are found again
    and reported by the ranking pass.)"""
    first_err = None
    fallback = None
    common = _common_geometry(frames)
    for i in range(len(frames)):
        try:
            img, bad = finite_frame(np.asarray(frames.luminance(i), dtype=np.float32))
        except BadFrameError as e:
            first_err = first_err or e
            continue
        if bad == img.size:
            continue  # no finite pixel: the ranking pass reports it
        if common is not None and tuple(img.shape[:2]) != common:
            continue  # an odd-sized frame is not the clip's geometry: the ranking pass reports it
        if fallback is None:
            fallback = (i, (int(img.shape[0]), int(img.shape[1])), img)
        if float(img.max()) - float(img.min()) >= BLANK_SPAN:
            return i, (int(img.shape[0]), int(img.shape[1])), img
        if i - fallback[0] >= 200:  # a long blank start: let the ranking pass judge the clip
            break
    if fallback is not None:
        return fallback
    raise NoFramesError(f"{frame_path(frames, 0)}: no readable frame"
                        + (f" ({first_err.reason})" if first_err else ""))


class Reader:
    """Reads frames with the clip's geometry check; a bad frame becomes a value.

    Every :data:`_UNMAP_EVERY` reads it closes the frame set's memory-mapped files (SER,
    FITS; they reopen on the next read, and readers return copies): the pages of frames
    already processed would otherwise stay mapped and make the resident size grow with the
    length of the video, although nothing needs them any more.
    """

    def __init__(self, frames: Any, shape: tuple[int, int]):
        self.frames = frames
        self.shape = shape
        self.record_repairs = False  # set for the ranking pass, which reports them
        self.repaired: dict[int, int] = {}  # frame -> NaN/infinite pixels replaced (in this process)
        # a flat's zero pixels divide: calibrated frames are checked whatever the files hold
        self._calibrated = bool(getattr(getattr(frames, "spec", None), "raw_steps", ()))
        self._float_dtype: dict[str, bool] = {}
        self._reads = 0
        self._can_unmap = callable(getattr(frames, "close", None)) and hasattr(frames, "frame_sliceable")

    def _check(self, i: int, img: np.ndarray) -> None:
        if tuple(img.shape[:2]) != self.shape:
            h, w = img.shape[:2]
            raise BadFrameError(frame_path(self.frames, i),
                                f"frame {i} is {w}x{h}, the clip's frames are {self.shape[1]}x{self.shape[0]}")

    def _tick(self, i: int) -> None:
        self._reads += 1
        if self._can_unmap and self._reads % _UNMAP_EVERY == 0:
            try:
                mapped = self.frames.frame_sliceable(i) and not self.frames.frame_sequential(i)
            except Exception:
                mapped = False
            if mapped:
                self.frames.close()

    def raw(self, i: int) -> np.ndarray | BadFrameError:
        self._tick(i)
        try:
            img = self.frames.read_raw(i)
            self._check(i, img)
            return self._finite(i, np.asarray(img))
        except BadFrameError as e:
            return e

    def read(self, i: int, colour: bool) -> np.ndarray | BadFrameError:
        self._tick(i)
        try:
            img = self.frames.read(i) if colour else self.frames.luminance(i)
            self._check(i, img)
            return self._finite(i, np.asarray(img, dtype=np.float32))
        except BadFrameError as e:
            return e

    def _may_be_nonfinite(self, i: int) -> bool:
        """Whether frame ``i`` can hold NaN or infinity: a float file's, a calibrated one,
        or one whose file type the frame set does not say. The check costs 0.07-0.2 ms a
        640×480 frame, a tenth of a lucky frame's work: SER, AVI and integer FITS skip it."""
        if self._calibrated:
            return True
        try:
            dt = self.frames.locate(i)[0].dtype
        except Exception:
            return True
        if dt not in self._float_dtype:
            try:
                self._float_dtype[dt] = not dt or np.dtype(dt).kind in "fc"
            except TypeError:
                self._float_dtype[dt] = True
        return self._float_dtype[dt]

    def _finite(self, i: int, img: np.ndarray) -> np.ndarray:
        """The frame with its NaN/infinite pixels replaced (:func:`finite_frame`), the
        same in every pass; one without a finite pixel is a bad frame."""
        if not self._may_be_nonfinite(i):
            return img
        img, n = finite_frame(img)
        if n == img.size:
            raise BadFrameError(frame_path(self.frames, i), f"frame {i} has no finite pixel (NaN or infinite everywhere)")
        if n and self.record_repairs:
            self.repaired[i] = n
        return img


@dataclass(frozen=True)
class FrameChunk:
    """The frames one task handles: chunk number ``no``, frame indices ``idx`` and, when
    the calling thread reads (a video decoder reads in order), the frames themselves
    (``images``: arrays or the :class:`BadFrameError` of each)."""

    no: int
    idx: np.ndarray
    images: list | None = None


def chunked(idx: np.ndarray, size: int, *, taper: bool = False) -> list[np.ndarray]:
    """``idx`` cut into consecutive chunks of ``size`` (the last one shorter): fixed by the
    frames alone, so that partial sums do not depend on the worker count.

    ``taper``: the last two chunks' worth of frames in chunks of a third of ``size``, so
    that the pass ends on small tasks. Big tasks that end together leave a worker idle
    for half a task on average: in the planet's stacking pass (9-frame tasks of 70-120
    ms) one of two workers finished 66 ms before the other (measured on the project's
    2-core machine)."""
    idx = np.asarray(idx, dtype=np.int64)
    if not taper or idx.size <= size:
        return [idx[a:a + size] for a in range(0, idx.size, size)]
    bulk = max(0, (idx.size - 2 * size) // size) * size
    small = max(1, -(-size // 3))
    return ([idx[a:a + size] for a in range(0, bulk, size)]
            + [idx[a:a + small] for a in range(bulk, idx.size, small)])


@dataclass
class LuckyRun:
    """The state every step of one run shares: the frames and their reader, the per-frame
    table, the options, the workers, and what is said to the user. ``reads_in_task``:
    tasks read their own frames (one worker, or forked workers on a memory-mapped set);
    otherwise the calling thread reads them in order."""

    frames: Any
    reader: Reader
    table: FrameTable
    opts: LuckyOptions
    source: str
    workers: Workers
    quiet: bool
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    reads_in_task: bool = True
    fits_writer: FitsSidecar | None = None  # writes the FITS stack in a helper process

    @property
    def shape(self) -> tuple[int, int]:
        return self.reader.shape

    def say(self, msg: str, level: int = logging.WARNING) -> None:
        """Tell the user (and keep the line for the report)."""
        self.messages.append(msg)
        log.log(level, "%s", msg)

    def lap(self, name: str, cpu_start: float) -> tuple[float, float]:
        """Record the CPU seconds (this process and its forked workers) a phase used since
        ``cpu_start``; returns the wall clock and CPU seconds now, where the next phase
        starts."""
        now = self.workers.cpu_s()
        self.cpu_timings[name] = round(now - cpu_start, 4)
        return time.perf_counter(), now

    def tasks(self, chunks: Iterable[np.ndarray], read: Callable[[int], Any]) -> Iterator[FrameChunk]:
        """One :class:`FrameChunk` per chunk; the frames read here unless tasks read them."""
        for no, idx in enumerate(chunks):
            images = None if self.reads_in_task else [read(int(i)) for i in idx]
            yield FrameChunk(no, idx, images)

    @staticmethod
    def frames_of(chunk: FrameChunk, read: Callable[[int], Any]) -> Iterator[tuple[int, Any]]:
        """``(index, frame or BadFrameError)`` of a chunk's frames (inside its task)."""
        if chunk.images is not None:
            return zip((int(i) for i in chunk.idx), chunk.images)
        return ((int(i), read(int(i))) for i in chunk.idx)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, inflight: int | None = None,
            fork: bool = True, buffers: Buffers | None = None) -> Iterator[Any]:
        """:meth:`Workers.map` on this run's workers."""
        return self.workers.map(fn, items, inflight=inflight, fork=fork, buffers=buffers)


def tasks_can_read(frames: Any, workers: Workers) -> bool:
    """Whether tasks may read their own frames: always with one worker; with forked
    workers when every input is memory-mapped or cached (not a video decoder, which must be
    read in order)."""
    if workers.workers == 1:
        return True
    if not workers.processes or not callable(getattr(frames, "frame_sliceable", None)):
        return False
    try:
        return all(frames.frame_sliceable(i) for i in sample_indices(len(frames)))
    except Exception:
        return False
