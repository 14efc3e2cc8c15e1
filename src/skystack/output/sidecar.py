"""A FITS writer in a helper process forked at start-up, so that astropy's import runs on
an idle core instead of inside the run.

``import astropy.io.fits`` costs 0.15-0.2 s (astropy 8 imports ``astropy.units`` with it),
measured on the project's 2-core machine. A 1000-frame lucky run lasts 1.3-2 s on two
workers, and there is no idle core inside it to hide the import: on a background thread it
took a fifth of a core from the two workers of the stacking pass (planet video: the pass
0.07 s longer). At start-up, though, while the command still imports its own pipeline
(~0.2 s, one thread), the second core idles: ``skystack lucky`` forks this writer there
(:meth:`FitsSidecar.start`), the writer imports astropy meanwhile, and the finished stack
is handed to it through a pipe, to be written while the run writes its previews. The
write itself is :func:`skystack.output.write.write_fits`, atomic as always.

If the writer cannot be started or has died (killed, out of memory), the stack is written
in the run's own process, as without it; an error the write raised (a full disk, a
refused path) comes back and is raised as if the write had run here. The writer dies with
the process that forked it (:func:`skystack.runtime.children.die_with_parent`) and ends
when that process closes it or exits.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..runtime.children import die_with_parent, interrupts_held, leave_interrupts_to_parent
from . import write

log = logging.getLogger("skystack")

# Images bigger than this are written here: through the pipe an image is pickled whole (a
# copy here, one in the writer), where the writer in this process streams it in chunks; and
# a run with such a stack lasts long enough that astropy's import no longer matters.
MAX_PIPED_BYTES = 64 << 20


class SidecarGone(Exception):
    """The writer process is not there to answer (never started, killed, exited)."""


def _serve(conn: Any, parent: int) -> None:
    """The writer, child of ``parent``: import the FITS writer (the point of starting
    early), then write what comes through ``conn`` until ``None`` or the pipe closes; each
    request is answered ``(True, path, cpu_s)`` or ``(False, error, cpu_s)``."""
    die_with_parent(parent)
    leave_interrupts_to_parent()
    import astropy.io.fits  # noqa: F401

    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        if req is None:
            return
        path, image, header, history, product = req
        c0 = time.process_time()
        try:
            out = write.write_fits(path, image, header=header, history=history, product=product)
            reply: tuple = (True, str(out))
        except BaseException as e:  # noqa: BLE001 - raised in the parent
            reply = (False, e)
        cpu = time.process_time() - c0
        try:
            conn.send(reply + (cpu,))
        except Exception:  # an unpicklable error: its traceback as text
            conn.send((False, RuntimeError("".join(traceback.format_exception(reply[1]))), cpu))


class FitsSidecar:
    """The helper process writing FITS files; :meth:`start` forks it (or returns None),
    :meth:`write` hands it one image and waits for the file, :meth:`close` ends it."""

    def __init__(self, proc: Any, conn: Any):
        self._proc, self._conn = proc, conn
        self._lock = threading.Lock()  # one request on the pipe at a time
        self.cpu_s = 0.0  # CPU seconds its writes took (its imports are start-up's)

    @classmethod
    def start(cls) -> FitsSidecar | None:
        """Fork the writer now (on Linux, while this process has no other thread of its
        own); None where forking is not available or fails."""
        if not sys.platform.startswith("linux") or "fork" not in mp.get_all_start_methods():
            return None
        try:
            ctx = mp.get_context("fork")
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, os.getpid()), daemon=True, name="skystack-fits-writer")
            with interrupts_held():
                proc.start()
            there.close()
        except OSError as e:
            log.debug("FITS writer process not started: %s", e)
            return None
        return cls(proc, here)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def write(self, path: str | os.PathLike, image: np.ndarray, *, header: Any = None,
              history: Iterable[str] = (), product: bool = True) -> Path:
        """Write ``image`` as FITS at ``path`` in the writer (the arguments of
        :func:`skystack.output.write.write_fits`); raises the write's own error, or
        :class:`SidecarGone` when the writer is not there to do it."""
        with self._lock:
            if not self.alive:
                raise SidecarGone("the FITS writer process is not running")
            try:
                self._conn.send((os.fspath(path), np.asarray(image), header, list(history), product))
                while not self._conn.poll(0.5):
                    if not self._proc.is_alive():
                        raise SidecarGone(f"the FITS writer process ended (exit code {self._proc.exitcode})")
                ok, value, cpu = self._conn.recv()
            except (EOFError, OSError) as e:
                raise SidecarGone(f"the FITS writer process is gone ({e})") from None
            self.cpu_s += cpu
        if not ok:
            raise value
        return Path(value)

    def close(self) -> None:
        """End the writer (it finishes a write in progress first)."""
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=5.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = None

    def __enter__(self) -> FitsSidecar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_fits_via(sidecar: FitsSidecar | None, path: str | os.PathLike, image: np.ndarray, **kw: Any) -> Path:
    """``write_fits(path, image, **kw)`` in ``sidecar`` when it is running, else (or when
    it has gone, or the image is over :data:`MAX_PIPED_BYTES`) here."""
    if sidecar is not None and np.asarray(image).nbytes <= MAX_PIPED_BYTES:
        try:
            return sidecar.write(path, image, **kw)
        except SidecarGone as e:
            log.debug("%s; writing %s in this process", e, path)
    return write.write_fits(path, image, **kw)
