"""Every input frame behind one global index: :class:`FrameSet`.

A :class:`FrameSet` is built by :func:`~skystack.io.resolve.open_frames`: every frame of
every file gets a global index, in natural order. Opening is lazy: each file's header is
read once to learn its frame count, geometry and CFA pattern, and no pixel is decoded.
Files are reopened on demand through a small LRU, so a folder of 5000 frames never holds
5000 descriptors or memory maps.

A file that cannot be used (not an image, truncated, ...) still gets one global index: it
shows up in :attr:`FrameSet.problems` and in the report, and reading it raises
:class:`~skystack.errors.BadFrameError` with the same reason.

The processing of a frame happens in one place, :meth:`FrameSet._process`: raw plane →
raw steps (calibration, added with :meth:`FrameSet.with_raw_steps`) → demosaic →
float32. ``read_rows`` and ``read_block`` run the same chain on a strip or block with a
margin, so ``read_rows(i, y0, y1) == read(i)[y0:y1]`` and ``read_block(i, y0, y1, x0, x1)
== read(i)[y0:y1, x0:x1]`` exactly.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import os
import pickle
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import BadFrameError, InputChangedError, NoFramesError, UsageError
from ..options import ReadOptions
from ..types import FrameInfo, shape_text
from .base import SourceBase
from .bayer import STRIP_MARGIN, debayer, normalize_pattern, pattern_shift
from .npycache import in_runs
from .registry import open_source

DEFAULT_MAX_OPEN = 8


# -- the resolved description of one file ---------------------------------------------
@dataclass(frozen=True)
class SourceEntry:
    """What :func:`open_frames` learnt about one input file (small and picklable)."""

    path: str
    kind: str | None  # None: the file is unusable, ``error`` says why
    n_frames: int = 1
    shape: tuple[int, ...] = ()
    dtype: str = ""
    bayer: str | None = None
    sliceable: bool = False
    sequential: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    fingerprint: tuple[int, int] | None = None  # (size, mtime_ns) when opened
    hints: dict[str, Any] = field(default_factory=dict)  # reader kwargs for reopening
    frame_errors: dict[int, str] = field(default_factory=dict)  # local index -> reason
    warnings: tuple[str, ...] = ()

    @property
    def readable(self) -> bool:
        return self.kind is not None and self.error is None


@dataclass(frozen=True)
class FrameSetSpec:
    """Everything needed to reopen a :class:`FrameSet` in another process.

    ``entries`` holds the per-file facts found when the set was opened, so reopening reads
    no header; ``raw_steps`` must be picklable callables.
    """

    entries: tuple[SourceEntry, ...]
    options: ReadOptions = field(default_factory=ReadOptions)
    inputs: tuple[str, ...] = ()
    raw_steps: tuple[Any, ...] = ()
    max_open: int = DEFAULT_MAX_OPEN

    @functools.cached_property
    def token(self) -> str:
        """A short digest identifying this spec (computed once; use it as a cache key
        instead of pickling the spec again)."""
        return hashlib.sha1(pickle.dumps(self, protocol=5)).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("token", None)  # the digest is recomputed, never shipped
        return state


class RawStep(Protocol):
    """A processing step on the raw plane, before demosaicing (calibration).

    Called with a raw strip of frame ``index`` holding rows ``y0 : y0 + len(plane)``
    (the whole frame when ``y0 == 0`` and the strip is full height), in native dtype or
    float32 from an earlier step. Returns float32 of the same shape. Must only look at
    pixels within a few rows of each output pixel (``read_rows`` gives it a margin of
    :data:`~skystack.io.bayer.STRIP_MARGIN` rows) and be picklable.
    """

    def __call__(self, plane: np.ndarray, *, index: int, y0: int) -> np.ndarray: ...


def fingerprint(path: str) -> tuple[int, int] | None:
    """``(size_bytes, mtime_ns)`` of a file now, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (int(st.st_size), int(st.st_mtime_ns))


# -- the frame set ----------------------------------------------------------------------
class FrameSet(SourceBase):
    """All input frames behind one global index.

    Build one with :func:`open_frames`; reopen one elsewhere with :meth:`from_spec` (the
    object also pickles through its spec). Thread-safe: sources that keep decoder state
    are locked per file.
    """

    def __init__(
        self,
        entries: Sequence[SourceEntry],
        options: ReadOptions = ReadOptions(),
        *,
        inputs: Sequence[str] = (),
        raw_steps: Sequence[RawStep] = (),
        max_open: int = DEFAULT_MAX_OPEN,
        _open_sources: dict[str, Any] | None = None,
    ):
        self._entries = tuple(entries)
        self._options = options
        self._inputs = tuple(inputs)
        self._raw_steps = tuple(raw_steps)
        self._max_open = max(1, int(max_open))
        try:
            self._override = normalize_pattern(options.bayer_override)
        except ValueError as e:
            raise UsageError(f"--bayer: {e}") from e
        self._starts: list[int] = []
        total = 0
        for e in self._entries:
            self._starts.append(total)
            total += e.n_frames
        self._n = total
        self._lock = threading.RLock()
        self._lru: OrderedDict[str, Any] = OrderedDict()
        self._in_use: Counter[str] = Counter()
        self._source_locks: dict[str, threading.Lock] = {}
        self._by_path = {e.path: e for e in self._entries}
        for path, src in (_open_sources or {}).items():
            self._lru[path] = src
        self._evict()

    # -- construction / pickling --------------------------------------------------------
    @property
    def spec(self) -> FrameSetSpec:
        return FrameSetSpec(entries=self._entries, options=self._options, inputs=self._inputs,
                            raw_steps=self._raw_steps, max_open=self._max_open)

    @classmethod
    def from_spec(cls, spec: FrameSetSpec) -> FrameSet:
        """Reopen the set described by ``spec`` (no header is read; files open on demand)."""
        return FrameSet(spec.entries, spec.options, inputs=spec.inputs,
                        raw_steps=spec.raw_steps, max_open=spec.max_open)

    def __reduce__(self):
        return (FrameSet.from_spec, (self.spec,))

    def with_raw_steps(self, *steps: RawStep) -> FrameSet:
        """A new set over the same files whose frames pass through ``steps`` (e.g.
        calibration) between the raw plane and demosaicing."""
        spec = replace(self.spec, raw_steps=self._raw_steps + tuple(steps))
        return type(self).from_spec(spec)

    def with_options(self, options: ReadOptions) -> FrameSet:
        """A new set over the same files, decoded with other :class:`ReadOptions`."""
        return type(self).from_spec(replace(self.spec, options=options))

    @property
    def entries(self) -> tuple[SourceEntry, ...]:
        """One :class:`SourceEntry` per input file, in global order."""
        return self._entries

    @property
    def options(self) -> ReadOptions:
        return self._options

    def close(self) -> None:
        """Close every open file (the set stays usable: files reopen on demand)."""
        with self._lock:
            for path in list(self._lru):
                if self._in_use[path] == 0:
                    self._close_source(path)

    # -- indexing -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def locate(self, i: int) -> tuple[SourceEntry, int]:
        """``(entry, local index)`` of global frame ``i``."""
        if not 0 <= i < self._n:
            raise IndexError(f"frame {i} out of range (0..{self._n - 1})")
        k = bisect.bisect_right(self._starts, i) - 1
        return self._entries[k], i - self._starts[k]

    def entry_start(self, entry_no: int) -> int:
        """Global index of the first frame of ``entries[entry_no]``."""
        return self._starts[entry_no]

    def path(self, i: int) -> str:
        return self.locate(i)[0].path

    def name(self, i: int) -> str:
        e, k = self.locate(i)
        return e.path if e.n_frames == 1 else f"{e.path}#{k}"

    def bad_reason(self, i: int) -> str | None:
        """Why frame ``i`` is known to be unreadable, or ``None`` (it may still fail)."""
        e, k = self.locate(i)
        if not e.readable:
            return e.error or "unreadable"
        return e.frame_errors.get(k)

    def is_readable(self, i: int) -> bool:
        return self.bad_reason(i) is None

    def _check_readable(self, i: int) -> tuple[SourceEntry, int]:
        e, k = self.locate(i)
        reason = e.error if not e.readable else e.frame_errors.get(k)
        if reason is not None or e.kind is None:
            raise BadFrameError(e.path, reason or "unreadable")
        return e, k

    def frame_sliceable(self, i: int) -> bool:
        """Frame ``i`` reads by rows cheaply (memory-mapped, or decoded into the cache)."""
        e, k = self.locate(i)
        if e.kind == "npy-cache":
            return e.readable and in_runs(e.hints["cached"], k)
        return e.readable and e.sliceable

    def frame_sequential(self, i: int) -> bool:
        """Frame ``i`` comes from a decoder that must read the file in order (a video)."""
        e, _ = self.locate(i)
        return e.readable and e.sequential and not self.frame_sliceable(i)

    @property
    def problems(self) -> list[tuple[int, str, str]]:
        """``(global index or -1, path, reason)`` for every file that could not be used
        (with its index) and every warning found while opening (index -1)."""
        out: list[tuple[int, str, str]] = []
        for start, e in zip(self._starts, self._entries):
            if not e.readable:
                out.append((start, e.path, e.error or "unreadable"))
            for k, reason in sorted(e.frame_errors.items()):
                out.append((start + k, e.path, reason))
            for w in e.warnings:
                out.append((-1, e.path, w))
        return out

    # -- metadata -----------------------------------------------------------------------
    def pattern(self, i: int) -> str | None:
        """The CFA pattern used for frame ``i`` (the override, else the file's), or None
        for mono and RGB frames."""
        e, _ = self.locate(i)
        if not e.readable or len(e.shape) != 2:
            return None
        return self._override or e.bayer

    def processed_shape(self, i: int) -> tuple[int, ...]:
        """Shape of :meth:`read` for frame ``i``: ``(H, W)`` or ``(H, W, 3)``."""
        e, _ = self._check_readable(i)
        return self._processed_shape(e)

    def _processed_shape(self, e: SourceEntry) -> tuple[int, ...]:
        h, w = e.shape[:2]
        if len(e.shape) == 3:
            return (h, w, 3)
        if self._options.debayer == "auto" and (self._override or e.bayer):
            return (h, w, 3)
        return (h, w)

    @property
    def shape(self) -> tuple[int, ...]:
        """The processed shape of the most common readable frame geometry."""
        counts: Counter[tuple[int, ...]] = Counter()
        for e in self._entries:
            if e.readable:
                counts[self._processed_shape(e)] += e.n_frames - len(e.frame_errors)
        if not counts:
            raise NoFramesError("no readable frame in this set")
        # most_common is stable on ties: the geometry met first wins.
        return counts.most_common(1)[0][0]

    @property
    def is_colour(self) -> bool:
        return len(self.shape) == 3

    def meta(self, i: int) -> dict[str, Any]:
        """Cheap metadata of frame ``i``: exposure, temperature, date, binning, gain,
        per-frame timestamps, and for FITS the header cards (``meta["header"]``)."""
        e, k = self._check_readable(i)
        m = dict(e.meta)
        if e.n_frames > 1 or e.kind == "fits":
            m.update(self._use(e, lambda src: src.meta(k)))
        return m

    def info(self, i: int) -> FrameInfo:
        """:class:`~skystack.types.FrameInfo` of frame ``i`` from headers (raw shape)."""
        e, k = self._check_readable(i)
        meta = self.meta(i)
        exp = meta.get("exposure_s")
        return FrameInfo(
            index=i, path=e.path, name=self.name(i), shape=tuple(e.shape), dtype=e.dtype,
            bayer=self.pattern(i), exposure_s=float(exp) if exp is not None else None,
            meta=meta,
        )

    def fingerprint(self, i: int) -> tuple[int, int]:
        """``(size_bytes, mtime_ns)`` of frame ``i``'s file now; ``(-1, -1)`` if it is gone.

        Compare with the value recorded in phase 1 to detect a file changed on disk.
        """
        fp = fingerprint(self.path(i))
        return fp if fp is not None else (-1, -1)

    def opened_fingerprint(self, i: int) -> tuple[int, int] | None:
        """``(size_bytes, mtime_ns)`` of frame ``i``'s file when the set was opened."""
        return self.locate(i)[0].fingerprint

    def check_unchanged(self, i: int) -> None:
        """Raise :class:`~skystack.errors.InputChangedError` if frame ``i``'s file changed
        (size or mtime) since the set was opened."""
        e, _ = self.locate(i)
        now = fingerprint(e.path)
        if e.fingerprint is not None and now != e.fingerprint:
            raise InputChangedError(
                f"{e.path}: changed on disk since it was opened "
                f"(size, mtime_ns {e.fingerprint} -> {now})"
            )

    # -- pixels -------------------------------------------------------------------------
    def read_raw(self, i: int) -> np.ndarray:
        """The raw plane of frame ``i`` in the file's dtype: ``(H, W)`` mono or CFA,
        ``(H, W, 3)`` RGB."""
        e, k = self._check_readable(i)
        return self._use(e, lambda src: src.read(k))

    def read_raw_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of :meth:`read_raw` (cheap where the file is sliceable)."""
        e, k = self._check_readable(i)
        return self._use(e, lambda src: src.read_rows(k, y0, y1))

    def read_raw_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` of :meth:`read_raw` (only that block where the
        file is memory-mapped)."""
        e, k = self._check_readable(i)
        return self._use(e, lambda src: src.read_block(k, y0, y1, x0, x1))

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` processed: float32 ``(H, W)`` mono or ``(H, W, 3)`` RGB, CFA
        frames demosaiced (``ReadOptions.debayer == "auto"``). NaN/inf stay in place."""
        e, _ = self._check_readable(i)
        raw = self.read_raw(i)
        self._check_shape(e, raw, 0)
        return self._process(i, raw, 0)

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of :meth:`read`, reading only a strip around them where the
        file allows it. Equal to ``read(i)[y0:y1]`` exactly."""
        e, _ = self._check_readable(i)
        h = e.shape[0]
        y0, y1 = max(0, int(y0)), min(h, int(y1))
        if y1 <= y0:
            return np.empty((0,) + self._processed_shape(e)[1:], dtype=np.float32)
        if self.pattern(i) is None and not self._raw_steps:
            raw = self.read_raw_rows(i, y0, y1)
            self._check_shape(e, raw, y1 - y0)
            return self._process(i, raw, y0)
        # Demosaicing and raw steps look at neighbours: process an even-aligned strip with
        # a margin (the CFA pattern is unchanged at an even row) and crop it.
        ya = max(0, y0 - STRIP_MARGIN)
        ya -= ya % 2
        yb = min(h, y1 + STRIP_MARGIN)
        raw = self.read_raw_rows(i, ya, yb)
        self._check_shape(e, raw, yb - ya)
        return self._process(i, raw, ya, crop=(y0 - ya, y1 - ya, 0, raw.shape[1]))

    def read_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` of :meth:`read`, reading only a block around
        them where the file allows it. Equal to ``read(i)[y0:y1, x0:x1]`` exactly."""
        e, _ = self._check_readable(i)
        h, w = e.shape[:2]
        y0, y1 = max(0, int(y0)), min(h, int(y1))
        x0, x1 = max(0, int(x0)), min(w, int(x1))
        if y1 <= y0 or x1 <= x0:
            return np.empty((max(0, y1 - y0), max(0, x1 - x0)) + self._processed_shape(e)[2:], dtype=np.float32)
        if self._raw_steps:  # calibration steps work on whole rows of the raw plane
            return np.ascontiguousarray(self.read_rows(i, y0, y1)[:, x0:x1])
        if self.pattern(i) is None:
            raw = self.read_raw_block(i, y0, y1, x0, x1)
            self._check_block(e, raw, y1 - y0, x1 - x0)
            return self._process(i, raw, y0)
        # demosaicing looks at neighbours: an even-aligned block with a margin, cropped
        ya, xa = max(0, y0 - STRIP_MARGIN), max(0, x0 - STRIP_MARGIN)
        ya, xa = ya - ya % 2, xa - xa % 2
        yb, xb = min(h, y1 + STRIP_MARGIN), min(w, x1 + STRIP_MARGIN)
        raw = self.read_raw_block(i, ya, yb, xa, xb)
        self._check_block(e, raw, yb - ya, xb - xa)
        return self._process(i, raw, ya, xa, crop=(y0 - ya, y1 - ya, x0 - xa, x1 - xa))

    def read_block_into(self, i: int, y0: int, y1: int, x0: int, x1: int, out: np.ndarray) -> None:
        """:meth:`read_block` written into ``out`` (float32, its shape). Mono frames of a
        source that converts in one pass (a ``read_block_into`` of its own, as
        :meth:`skystack.io.fits.FitsSource.read_block_into`) go straight from the file into
        ``out``; any other is read as usual and copied."""
        e, k = self._check_readable(i)
        h, w = e.shape[:2]

        def direct(src) -> bool:
            into = getattr(src, "read_block_into", None)
            return into is not None and into(k, y0, y1, x0, x1, out)

        if (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w and not self._raw_steps and self.pattern(i) is None
                and out.dtype == np.float32 and out.shape == (y1 - y0, x1 - x0) and self._use(e, direct)):
            return
        out[...] = self.read_block(i, y0, y1, x0, x1)

    def _check_block(self, e: SourceEntry, raw: np.ndarray, rows: int, cols: int) -> None:
        want = (rows, cols) + tuple(e.shape[2:])
        if raw.shape != want:
            raise BadFrameError(e.path, f"block is {shape_text(raw.shape)}, the file's header said {shape_text(want)}")

    def luminance(self, i: int) -> np.ndarray:
        """float32 ``(H, W)``: :func:`luminance` of :meth:`read`."""
        return luminance(self.read(i))

    def luminance_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of :meth:`luminance`."""
        return luminance(self.read_rows(i, y0, y1))

    def _check_shape(self, e: SourceEntry, raw: np.ndarray, rows: int) -> None:
        want = (rows or e.shape[0],) + tuple(e.shape[1:])
        if raw.shape != want:
            raise BadFrameError(
                e.path,
                f"frame is {shape_text(raw.shape)}, the file's header said {shape_text(want)}",
            )

    def _process(self, i: int, raw: np.ndarray, y0: int, x0: int = 0,
                 crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The one place where a raw plane becomes a processed frame (``raw`` starts at row
        ``y0``, column ``x0``; raw steps are only ever given whole rows, ``x0 == 0``).
        ``crop`` (rows and columns of ``raw``) keeps only that part of the result, as a
        contiguous array: the margin a strip or block was read with for demosaicing."""
        plane = raw
        for step in self._raw_steps:
            plane = step(plane, index=i, y0=y0)
        pattern = self.pattern(i)
        if pattern is not None and self._options.debayer == "auto" and plane.ndim == 2:
            return debayer(plane, pattern_shift(pattern, x0, y0), self._options.debayer_method, crop=crop)
        if crop is None:
            return np.asarray(plane, dtype=np.float32)
        return np.ascontiguousarray(plane[crop[0]:crop[1], crop[2]:crop[3]], dtype=np.float32)

    # -- the open-file LRU --------------------------------------------------------------
    def _use(self, e: SourceEntry, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            src = self._lru.get(e.path)
            if src is None:
                if e.kind != "npy-cache" and e.fingerprint is not None:
                    # Facts in the entry (frame count, geometry) describe the file as it
                    # was opened; a file changed since then is not silently reread. (The
                    # decode cache keeps the opened version, so it needs no check.)
                    now = fingerprint(e.path)
                    if now != e.fingerprint:
                        raise InputChangedError(
                            f"{e.path}: changed on disk since it was opened "
                            f"(size, mtime_ns {e.fingerprint} -> {now})"
                        )
                src = open_source(e.path, e.kind, e.hints)  # type: ignore[arg-type]
                self._lru[e.path] = src
            self._lru.move_to_end(e.path)
            self._in_use[e.path] += 1
            lock = None
            if not getattr(src, "thread_safe", False):
                lock = self._source_locks.setdefault(e.path, threading.Lock())
        try:
            if lock is None:
                return fn(src)
            with lock:
                return fn(src)
        finally:
            with self._lock:
                self._in_use[e.path] -= 1
                self._evict()

    def _evict(self) -> None:
        # Oldest first; a file another thread is reading stays open until it is done.
        if len(self._lru) <= self._max_open:  # the usual case: no copy of a long LRU (every read calls this)
            return
        for path in list(self._lru):
            if len(self._lru) <= self._max_open:
                break
            if self._in_use[path] == 0:
                self._close_source(path)

    def _close_source(self, path: str) -> None:
        src = self._lru.pop(path, None)
        if src is not None:
            try:
                src.close()
            except Exception:
                pass

    @property
    def open_files(self) -> int:
        """How many files are open right now (at most ``max_open`` when idle)."""
        return len(self._lru)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self._n} frames from {len(self._entries)} files>"


_ONES_3 = np.ones((1, 3), np.float32)


def luminance(frame: np.ndarray) -> np.ndarray:
    """The plane registration, ranking and alignment work on, float32 ``(H, W)``: a mono
    frame as it is; colour as the plain mean of R, G and B.

    Equal weights keep the most signal for stars of any colour, for narrow-band targets
    (an H-alpha nebula is all red; a perceptual mix such as Rec. 709's 0.07 for blue would
    bury blue stars) and on camera RGB that is not yet white-balanced. One definition for
    both pipelines.
    """
    if frame.ndim == 2:
        return np.asarray(frame, dtype=np.float32)
    if frame.shape[2] == 3:
        # the same float32 values as frame.mean(axis=2): R + G + B in that order (OpenCV's
        # transform by weights 1, exact products; NaN and inf as in NumPy), then / 3 in
        # place. 0.23 ms for a 640x480 RGB frame, where NumPy's three planes summed took
        # 0.44 ms and its mean over the short last axis 4.9 ms (pixel by pixel).
        f = np.ascontiguousarray(frame, dtype=np.float32)
        lum = cv2.transform(f, _ONES_3)
        lum /= np.float32(3)
        return lum
    return frame.mean(axis=2, dtype=np.float32)
