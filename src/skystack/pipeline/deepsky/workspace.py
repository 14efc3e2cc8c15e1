"""What the tasks of one run share inside one process.

A task receives a :class:`Workspace` (small: the frame set's spec and the backend's
name), never images. Within a process the workspace opens one frame set per thread
(decoders and file handles are not shared between threads, so reads of different frames
of one file run in parallel) and resolves the backend once. Shipped to a Dask worker it
pickles without those caches and rebuilds them there.
"""
from __future__ import annotations

import threading
from typing import Any

from ...backends.registry import resolve
from ...io import FrameSet, FrameSetSpec


class Workspace:
    def __init__(self, spec: FrameSetSpec, backend: str = "cpu"):
        self.spec = spec
        self.backend_name = backend
        self._local = threading.local()
        self._lock = threading.Lock()
        self._backend: Any = None

    def frames(self) -> FrameSet:
        """This thread's frame set (reopened from the spec: no header is read)."""
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
        return {"spec": self.spec, "backend_name": self.backend_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["backend_name"])
