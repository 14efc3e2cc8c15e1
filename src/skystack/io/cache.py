"""Decode-once cache: compressed frames decoded a single time into memory-mapped ``.npy``.

Phase 2 reads bands of rows from every kept frame, in an order that suits the stack, not
the file. That is cheap for FITS, SER and uncompressed TIFF (memory-mapped), but a video,
a RAW or a PNG would have to be decoded whole for every band. :func:`ensure_sliceable`
decodes such frames once, in file order (one straight pass through a video), into
``.npy`` files holding the raw plane in its native dtype (CFA data stays a mosaic, so
calibration and demosaicing still happen at read time), and returns a :class:`CachedFrames`
that reads those frames from the cache.

Cache files are named from the source's absolute path, size and mtime and the frame
index, so a rerun on unchanged inputs reuses them and a changed file never matches. Each
file is written under a temporary name and renamed, so an interrupted run leaves no
half-written frame behind. Memory stays at one frame.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import BadFrameError, InputChangedError
from ..options import ReadOptions
from .discover import DEFAULT_MAX_OPEN, FrameSet, FrameSetSpec, SourceEntry, open_source


def cache_key(path: str, fingerprint: tuple[int, int] | None) -> str:
    """Stable key of one source file version: absolute path, size, mtime."""
    size, mtime = fingerprint or (-1, -1)
    text = f"{os.path.abspath(path)}\0{size}\0{mtime}"
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def cache_file(cache_dir: str, key: str, k: int) -> str:
    """Path of the cached frame ``k`` of the source with ``key``."""
    return os.path.join(cache_dir, f"{key}-{k:07d}.npy")


def _runs(indices: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted indices as half-open ``(start, stop)`` runs (compact in a pickled spec)."""
    out: list[list[int]] = []
    for k in sorted(set(indices)):
        if out and out[-1][1] == k:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1])
    return tuple((a, b) for a, b in out)


def _in_runs(runs: Sequence[tuple[int, int]], k: int) -> bool:
    return any(a <= k < b for a, b in runs)


class NpyCacheSource:
    """The cached frames of one source file; frames not in the cache are decoded from the
    original file (``orig_kind``/``orig_hints``)."""

    sequential = False
    thread_safe = True  # cached reads are independent; the fallback decoder has a lock

    def __init__(
        self,
        path: str,
        *,
        cache_dir: str,
        key: str,
        cached: Sequence[tuple[int, int]],
        n_frames: int,
        shape: tuple[int, ...],
        dtype: str,
        bayer: str | None,
        orig_kind: str,
        orig_hints: dict[str, Any],
        meta: dict[str, Any] | None = None,
    ):
        self.path = path
        self.problems: list[str] = []
        self._dir, self._key, self._cached = cache_dir, key, tuple(cached)
        self._n, self._shape, self._dtype, self._bayer = n_frames, tuple(shape), np.dtype(dtype), bayer
        self._orig_kind, self._orig_hints = orig_kind, orig_hints
        self._orig = None
        self._orig_lock = threading.Lock()
        self._meta = dict(meta or {})

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def bayer(self) -> str | None:
        return self._bayer

    @property
    def sliceable(self) -> bool:
        return sum(b - a for a, b in self._cached) == self._n

    def name(self, i: int) -> str:
        return self.path if self._n == 1 else f"{self.path}#{i}"

    def meta(self, i: int) -> dict[str, Any]:
        return dict(self._meta)

    def read(self, i: int) -> np.ndarray:
        return self.read_rows(i, 0, self._shape[0])

    def read_rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        if not 0 <= i < self._n:
            raise IndexError(f"frame {i} out of range for {self.path} ({self._n} frames)")
        y0, y1 = max(0, int(y0)), min(self._shape[0], int(y1))
        if _in_runs(self._cached, i):
            f = cache_file(self._dir, self._key, i)
            try:
                # A fresh map per read: a descriptor is held only while rows are copied.
                arr = np.load(f, mmap_mode="r")
                if arr.shape != self._shape or arr.dtype != self._dtype:
                    raise ValueError(f"cached array is {arr.shape} {arr.dtype}")
                return np.array(arr[y0:y1])
            except (OSError, ValueError) as e:
                raise BadFrameError(self.path, f"decode cache {f} is unreadable ({e}); "
                                               "delete the cache folder and rerun") from e
        with self._orig_lock:
            if self._orig is None:
                self._orig = open_source(self.path, self._orig_kind, self._orig_hints)
            return self._orig.read_rows(i, y0, y1)

    def close(self) -> None:
        with self._orig_lock:
            if self._orig is not None:
                self._orig.close()
                self._orig = None


class CachedFrames(FrameSet):
    """A :class:`FrameSet` whose non-sliceable frames read from the decode cache.

    Names, paths, metadata and fingerprints are those of the original files; only where
    the pixels come from changes. Pickles through its spec like any FrameSet.
    """

    def __init__(self, entries: Sequence[SourceEntry], options: ReadOptions = ReadOptions(), *,
                 cache_dir: str, inputs: Sequence[str] = (), raw_steps: Sequence[Any] = (),
                 max_open: int = DEFAULT_MAX_OPEN):
        super().__init__(entries, options, inputs=inputs, raw_steps=raw_steps, max_open=max_open)
        self.cache_dir = cache_dir

    @property
    def spec(self) -> FrameSetSpec:
        return replace(super().spec, cache_dir=self.cache_dir)

    def frame_sliceable(self, i: int) -> bool:
        e, k = self.locate(i)
        if e.kind == "npy-cache":
            return e.readable and _in_runs(e.hints["cached"], k)
        return super().frame_sliceable(i)

    def frame_sequential(self, i: int) -> bool:
        return not self.frame_sliceable(i) and super().frame_sequential(i)


def _write_atomic(path: str, frame: np.ndarray) -> None:
    from ..output.write import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(frame), allow_pickle=False)


def _valid_cache(path: str, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    ok = arr.shape == tuple(shape) and arr.dtype == dtype
    del arr
    return ok


def ensure_sliceable(
    frames: FrameSet,
    cache_dir: str | os.PathLike[str],
    *,
    indices: Iterable[int] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> FrameSet:
    """Make every readable frame cheap to read by rows, decoding non-sliceable ones once.

    Parameters
    ----------
    frames : FrameSet
        The set to make sliceable.
    cache_dir : path
        Folder for the cache (created if needed); reused across runs.
    indices : iterable of int, optional
        Global indices worth caching (e.g. the frames phase 2 keeps); default all.
        Frames left out still read, by decoding the original file.
    progress : callable, optional
        Called with the number of frames decoded (or found in the cache) after each one.

    Returns
    -------
    FrameSet
        ``frames`` itself when nothing needs caching, else a :class:`CachedFrames` over the
        same files and global indices. A frame that fails to decode is marked unreadable in
        it (see :attr:`FrameSet.problems`), with the reason.

    Raises
    ------
    InputChangedError
        A file to be cached changed on disk since ``frames`` was opened.
    """
    cache_dir = os.fspath(cache_dir)
    wanted: set[int] | None = None if indices is None else {int(i) for i in indices}
    new_entries: list[SourceEntry] = []
    changed = False
    done = 0
    for entry_no, e in enumerate(frames.entries):
        if not e.readable or e.sliceable or e.kind == "npy-cache":
            new_entries.append(e)
            continue
        start = frames.entry_start(entry_no)
        local = [k for k in range(e.n_frames)
                 if k not in e.frame_errors and (wanted is None or start + k in wanted)]
        if not local:
            new_entries.append(e)
            continue
        os.makedirs(cache_dir, exist_ok=True)
        frames.check_unchanged(start)
        key = cache_key(e.path, e.fingerprint)
        dtype = np.dtype(e.dtype)
        missing = [k for k in local if not _valid_cache(cache_file(cache_dir, key, k), e.shape, dtype)]
        errors = dict(e.frame_errors)
        for k in local:
            if k not in missing:
                done += 1
                if progress is not None:
                    progress(done)
        # In file order: for a video this is one sequential decode, no seeking.
        for k in missing:
            try:
                frame = frames.read_raw(start + k)
                if frame.shape != tuple(e.shape) or frame.dtype != dtype:
                    raise BadFrameError(e.path, f"frame {k} decodes to {frame.shape} {frame.dtype}, "
                                                f"expected {tuple(e.shape)} {dtype}")
                _write_atomic(cache_file(cache_dir, key, k), frame)
            except BadFrameError as err:
                errors[k] = err.reason
            done += 1
            if progress is not None:
                progress(done)
        if _fingerprint_now(e.path) != e.fingerprint:
            raise InputChangedError(f"{e.path}: changed on disk while it was being cached")
        cached = _runs(k for k in local if k not in errors)
        hints = dict(cache_dir=cache_dir, key=key, cached=cached, n_frames=e.n_frames,
                     shape=tuple(e.shape), dtype=e.dtype, bayer=e.bayer, orig_kind=e.kind,
                     orig_hints=dict(e.hints), meta=dict(e.meta))
        all_cached = sum(b - a for a, b in cached) == e.n_frames
        new_entries.append(replace(e, kind="npy-cache", hints=hints, sliceable=all_cached,
                                   sequential=e.sequential and not all_cached, frame_errors=errors))
        changed = True
    if not changed:
        return frames
    spec = frames.spec
    return CachedFrames(new_entries, spec.options, cache_dir=cache_dir, inputs=spec.inputs,
                        raw_steps=spec.raw_steps, max_open=spec.max_open)


def _fingerprint_now(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (int(st.st_size), int(st.st_mtime_ns))
