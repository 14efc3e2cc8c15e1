"""Decode-once cache: compressed frames decoded a single time into memory-mapped ``.npy``.

Phase 2 reads bands of rows from every kept frame, in an order that suits the stack, not
the file. That is cheap for FITS, SER and uncompressed TIFF (memory-mapped), but a video,
a RAW or a PNG would have to be decoded whole for every band. :func:`ensure_sliceable`
decodes such frames once, in file order (one straight pass through a video), into
``.npy`` files holding the raw plane in its native dtype (CFA data stays a mosaic, so
calibration and demosaicing still happen at read time), and returns a frame set
that reads those frames from the cache (entries of kind ``npy-cache``, read by
:class:`~skystack.io.npycache.NpyCacheSource`).

Cache files are named from the source's absolute path, size and mtime and the frame
index, so a rerun on unchanged inputs reuses them and a changed file never matches. Each
file is written under a temporary name and renamed, so an interrupted run leaves no
half-written frame behind. Memory stays at one frame.

After a successful run :func:`remove_cache` measures the cache and removes it, unless the
user asked to keep it (``--keep-cache``); a failed or interrupted run keeps it, so that
``--resume`` does not decode again.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadFrameError, InputChangedError, OutputError
from ..output.write import atomic_path
from .frameset import FrameSet, SourceEntry, fingerprint
from .npycache import cache_file, cache_key, runs


CACHE_DIR_NAME = ".skystack-cache"


def _write_atomic(path: str, frame: np.ndarray) -> None:
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
        ``frames`` itself when nothing needs caching, else a frame set over the same files and
        global indices whose decoded frames read from the cache. A frame that fails to decode is marked unreadable in
        it (see :attr:`FrameSet.problems`), with the reason.

    Raises
    ------
    InputChangedError
        A file to be cached changed on disk since ``frames`` was opened.
    OutputError
        The cache folder cannot be created.
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
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{cache_dir}: cannot create the cache folder ({err.strerror or err})") from err
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
        if fingerprint(e.path) != e.fingerprint:
            raise InputChangedError(f"{e.path}: changed on disk while it was being cached")
        cached = runs(k for k in local if k not in errors)
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
    return FrameSet(new_entries, spec.options, inputs=spec.inputs, raw_steps=spec.raw_steps,
                    max_open=spec.max_open)


def cache_size(cache_dir: str | os.PathLike[str]) -> int:
    """Bytes held by the files under ``cache_dir`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(cache_dir):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed meanwhile
    return total


def remove_cache(cache_dir: str | os.PathLike[str], *, keep: bool = False) -> dict[str, Any]:
    """The end of a successful run: measure the cache and remove it unless ``keep``.

    Only a folder named ``.skystack-cache`` (the default, beside the output) is removed:
    skystack made all of it. A cache folder the caller chose is theirs and is kept. A
    failure to remove it is not a failed run; it is reported as not removed.

    Returns
    -------
    dict
        ``path``, ``bytes`` (its size before removal) and ``removed``: what the report and
        the summary line say.
    """
    path = Path(cache_dir)
    size = cache_size(path)
    removed = False
    if not keep and path.name == CACHE_DIR_NAME and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        removed = not path.exists()
    return {"path": str(path), "bytes": size, "removed": removed}


def cache_summary(info: dict[str, Any] | None) -> str:
    """``"cache 122.0 MB removed"`` / ``"cache 4.1 MB kept in lights/.skystack-cache"`` /
    ``"no cache"``: the summary line's words for :func:`remove_cache`'s result."""
    if not info or not info.get("bytes"):
        return "no cache"
    mb = info["bytes"] / 1e6
    return f"cache {mb:.1f} MB removed" if info["removed"] else f"cache {mb:.1f} MB kept in {info['path']}"
