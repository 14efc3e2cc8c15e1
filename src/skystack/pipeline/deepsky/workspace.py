"""What the tasks of one run share inside one process.

A task receives a :class:`Workspace` (small: the frame set's spec and the backend's
name), never images. Within a process the workspace opens one frame set per thread
(decoders and file handles are not shared between threads, so reads of different frames
of one file run in parallel), or with ``shared`` one for all threads (phase 2, where every
tile reads every frame and the set keeps every file open: one set of open files, not one
per thread); it resolves the backend once. Shipped to a Dask worker it pickles without
those caches and rebuilds them there.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from ...backends.registry import resolve
from ...io import FrameSet, FrameSetSpec

try:
    import resource
except ImportError:  # not Unix: no descriptor limit to read or raise
    resource = None  # type: ignore[assignment]

# Descriptors an open file holds (the file and its memory map) and those kept for the rest
# of the process (logs, the journal, sockets of a cluster client).
_FDS_PER_FILE = 2
_FDS_SPARE = 64


# What an open input file costs while a frame set keeps it open (measured: 20 KB of RSS per
# open FITS source: astropy's HDU list and header; two descriptors).
OPEN_FILE_BYTES = 24 * 1024


class Workspace:
    def __init__(self, spec: FrameSetSpec, backend: str = "cpu", shared: bool = False):
        self.spec = spec
        self.backend_name = backend
        self.shared = shared
        self._local = threading.local()
        self._lock = threading.Lock()
        self._backend: Any = None
        self._frames: FrameSet | None = None

    def frames(self) -> FrameSet:
        """This thread's frame set, or the process's with ``shared`` (reopened from the
        spec: no header is read; a frame set is thread-safe, locking per file only the
        sources that need it)."""
        if self.shared:
            with self._lock:
                if self._frames is None:
                    self._frames = FrameSet.from_spec(self.spec)
                return self._frames
        fs = getattr(self._local, "frames", None)
        if fs is None:
            fs = FrameSet.from_spec(self.spec)
            self._local.frames = fs
        return fs

    def backend(self) -> Any:
        """The run's backend, resolved once per process."""
        with self._lock:
            if self._backend is None:
                self._backend = resolve(self.backend_name)
            return self._backend

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "backend_name": self.backend_name, "shared": self.shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["backend_name"], state.get("shared", False))


def keep_files_open(spec: FrameSetSpec, threads: int = 1) -> FrameSetSpec:
    """``spec`` with room for every input file to stay open in each of ``threads`` frame
    sets, as far as the descriptor limit allows (the soft limit is raised to the hard one
    when needed).

    Every phase-2 tile reads every kept frame: a frame set that must close and reopen its
    files for each tile parses each FITS header again (4.5 ms a file, measured; 5000
    reopens for 100 frames in 50 tiles), while an open file costs :data:`OPEN_FILE_BYTES`
    and two descriptors.
    """
    files = len(spec.entries)
    want = _FDS_PER_FILE * files * max(1, threads) + _FDS_SPARE
    limit = want
    if resource is not None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            target = want if hard == resource.RLIM_INFINITY else min(want, hard)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
        limit = want if soft == resource.RLIM_INFINITY else soft
    room = max(0, limit - _FDS_SPARE) // (_FDS_PER_FILE * max(1, threads))
    return replace(spec, max_open=max(spec.max_open, min(files, room)))
