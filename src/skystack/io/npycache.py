"""The reader of frames decoded once into the cache (``.npy`` files, memory-mapped).

:func:`skystack.io.cache.ensure_sliceable` writes the files; this reader serves them, and
decodes frames that are not in the cache from the original file (``reopen``).
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import BadFrameError


def cache_key(path: str, fingerprint: tuple[int, int] | None) -> str:
    """Stable key of one source file version: absolute path, size, mtime."""
    size, mtime = fingerprint or (-1, -1)
    text = f"{os.path.abspath(path)}\0{size}\0{mtime}"
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def cache_file(cache_dir: str, key: str, k: int) -> str:
    """Path of the cached frame ``k`` of the source with ``key``."""
    return os.path.join(cache_dir, f"{key}-{k:07d}.npy")


def runs(indices: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted indices as half-open ``(start, stop)`` runs (compact in a pickled spec)."""
    out: list[list[int]] = []
    for k in sorted(set(indices)):
        if out and out[-1][1] == k:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1])
    return tuple((a, b) for a, b in out)


def in_runs(runs: Sequence[tuple[int, int]], k: int) -> bool:
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
        reopen: Callable[[], Any],
        meta: dict[str, Any] | None = None,
    ):
        self.path = path
        self.problems: list[str] = []
        self._dir, self._key, self._cached = cache_dir, key, tuple(cached)
        self._n, self._shape, self._dtype, self._bayer = n_frames, tuple(shape), np.dtype(dtype), bayer
        self._reopen = reopen  # opens the original file (orig_kind, orig_hints) on demand
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
        return self.read_block(i, y0, y1, 0, self._shape[1])

    def read_block(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if not 0 <= i < self._n:
            raise IndexError(f"frame {i} out of range for {self.path} ({self._n} frames)")
        y0, y1 = max(0, int(y0)), min(self._shape[0], int(y1))
        x0, x1 = max(0, int(x0)), min(self._shape[1], int(x1))
        if in_runs(self._cached, i):
            f = cache_file(self._dir, self._key, i)
            try:
                # A fresh map per read: a descriptor is held only while rows are copied.
                arr = np.load(f, mmap_mode="r")
                if arr.shape != self._shape or arr.dtype != self._dtype:
                    raise ValueError(f"cached array is {arr.shape} {arr.dtype}")
                return np.array(arr[y0:y1, x0:x1])
            except (OSError, ValueError) as e:
                raise BadFrameError(self.path, f"decode cache {f} is unreadable ({e}); "
                                               "delete the cache folder and rerun") from e
        with self._orig_lock:
            if self._orig is None:
                self._orig = self._reopen()
            return self._orig.read_block(i, y0, y1, x0, x1)

    def close(self) -> None:
        with self._orig_lock:
            if self._orig is not None:
                self._orig.close()
                self._orig = None
