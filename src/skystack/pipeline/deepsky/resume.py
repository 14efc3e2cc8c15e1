"""The run journal that makes ``--resume`` possible.

Next to the output ``OUT`` we keep a folder ``OUT.skystack-journal/`` holding:

- ``run.json``: what the run depends on (inputs with size and mtime, every option that
  changes the result). ``--resume`` refuses a journal made for something else.
- ``phase1.jsonl``: one finished phase-1 :class:`FrameResult` per line, appended and
  flushed as each frame finishes;
- ``plan.json``: how phase 2 was cut (the engine, and the tile plan: tile height and
  strips), written once before the first tile; a resumed run finishes that plan;
- ``tiles.jsonl``: one finished tile per line (its rectangle ``[y0, y1, x0, x1]`` and
  per-frame rejection counts), appended after the tile's pixels were written;
- ``image.npy`` / ``count.npy``: the output accumulators that finished tiles were written
  into (``.npy`` so they are plain, memory-mappable files);
- ``mean.npz``: the streaming-mean accumulator checkpoint.

A kill can leave a half-written last line; readers skip a line that does not parse. The
journal is deleted after the outputs are written.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import OutputError, UsageError
from ...output.write import why_not_written
from ...types import FrameResult

log = logging.getLogger("skystack")


class Journal:
    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.dir = Path(str(output) + ".skystack-journal")
        self._lock_fd: int | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self, manifest: dict[str, Any], resume: bool) -> bool:
        """Open the journal, locked for this run (:meth:`_lock`). Returns True when resuming
        an existing compatible journal.

        Without ``resume`` any old journal is discarded. With ``resume`` and no journal,
        the run simply starts from the beginning.
        """
        existed = self.dir.exists()
        with _writing(self.dir, "the run's journal"):
            self._lock()
        try:
            return self._begin(manifest, resume and existed)
        except BaseException:
            self.release()  # refused or failed: not this run's to hold
            raise

    def _begin(self, manifest: dict[str, Any], resume: bool) -> bool:
        if resume:
            old = self._read_manifest()
            if old is not None and old != _jsonable(manifest):
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != _jsonable(manifest).get(k))
                raise UsageError(
                    f"--resume: the journal in {self.dir} belongs to a run with different "
                    f"{', '.join(diff)}; rerun without --resume to start again")
            if old is not None:
                return True
        with _writing(self.dir, "the run's journal"):
            for child in self.dir.iterdir():  # emptied, not replaced: the lock is on this folder
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        tmp = self.dir / "run.json.part"
        with _writing(tmp, "the run's journal"):
            tmp.write_text(json.dumps(_jsonable(manifest), indent=1))
            os.replace(tmp, self.dir / "run.json")
        return False

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "run.json").read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.release()

    def _lock(self) -> None:
        """Hold an exclusive lock on the journal folder until the run ends (killed
        included: the kernel drops it with the process). A second run on the same output
        would otherwise empty this run's journal under it, or add its records to it; it is
        refused instead. Where ``flock`` does not exist (Windows) the folder is used as it
        is. The inode check covers a folder replaced between our open and our lock."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on the project's platforms
            self.dir.mkdir(parents=True, exist_ok=True)
            return
        while True:
            if self.dir.is_symlink():  # emptied below: only a folder of the journal's own
                raise OutputError(f"{self.dir}: is a symbolic link; the journal must be a folder of its own "
                                  f"(remove the link, or choose another output)")
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_DIRECTORY", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{self.output}: another skystack run is writing this output (its journal "
                                  f"{self.dir} is in use); wait for it to end, or choose another output") from None
            except OSError as e:  # a file system without locks (some network shares): run unlocked
                log.debug("%s: not locked (%s)", self.dir, e.strerror or e)
                self._lock_fd = fd
                return
            held, now = os.fstat(fd), _stat_or_none(self.dir)
            if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                self._lock_fd = fd
                return
            os.close(fd)  # removed or replaced meanwhile: lock the folder that is there now

    def release(self) -> None:
        """Let go of the journal's lock (the run is over)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        self.release()

    # -- phase 1 ------------------------------------------------------------------
    def phase1_done(self) -> dict[int, FrameResult]:
        out: dict[int, FrameResult] = {}
        for d in self._lines("phase1.jsonl"):
            try:
                r = FrameResult.from_json(d)
            except (KeyError, ValueError, TypeError):
                continue
            out[r.index] = r
        return out

    def record_frame(self, result: FrameResult) -> None:
        self._append("phase1.jsonl", result.to_json())

    # -- phase 2 ------------------------------------------------------------------
    def save_plan(self, plan: dict[str, Any]) -> None:
        """Record how phase 2 is cut (once, before its first tile)."""
        tmp = self.dir / "plan.json.part"
        with _writing(tmp, "the run's journal"):
            tmp.write_text(json.dumps(_jsonable(plan)))
            os.replace(tmp, self.dir / "plan.json")

    def load_plan(self) -> dict[str, Any] | None:
        """The recorded phase-2 plan, or None when phase 2 had not started."""
        try:
            d = json.loads((self.dir / "plan.json").read_text())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def tiles_done(self) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """``(rectangle, rejection counts)`` of every finished tile, in the order recorded."""
        out = []
        for d in self._lines("tiles.jsonl"):
            try:
                rect = tuple(int(v) for v in d["tile"])
                if len(rect) != 4:
                    continue
                out.append((rect, np.asarray(d["rejected"], dtype=np.int64).reshape(-1, 2)))
            except (KeyError, ValueError, TypeError):
                continue
        return out

    def record_tile(self, rect: tuple[int, int, int, int], rejected: np.ndarray) -> None:
        self._append("tiles.jsonl", {"tile": [int(v) for v in rect], "rejected": rejected.tolist()})

    def accumulator(self, name: str, shape: tuple[int, ...], dtype: str, fresh: bool) -> tuple[Path, bool]:
        """Create (or, when resuming, keep) a zero-filled ``.npy`` file of that shape.
        Returns its path and whether it was created now (then nothing recorded as written
        into an earlier one is in it)."""
        path = self.dir / f"{name}.npy"
        if fresh or not _npy_complete(path, tuple(shape), np.dtype(dtype)):
            tmp = self.dir / f"{name}.part.npy"
            with _writing(tmp, "the stack's accumulator"):
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                del arr  # zero-filled sparse file; flushed and unmapped here
                os.replace(tmp, path)  # a kill while creating it leaves no half-made accumulator
            return path, True
        return path, False

    # -- streaming mean checkpoints -----------------------------------------------
    def save_mean(self, next_pos: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.dir / "mean.part.npz"
        with _writing(tmp, "the mean's checkpoint"):
            with open(tmp, "wb") as f:
                np.savez(f, next_pos=np.int64(next_pos), **arrays)
            os.replace(tmp, self.dir / "mean.npz")

    def load_mean(self) -> tuple[int, dict[str, np.ndarray]] | None:
        try:
            with np.load(self.dir / "mean.npz") as z:
                return int(z["next_pos"]), {k: z[k] for k in z.files if k != "next_pos"}
        except (OSError, ValueError, KeyError):
            return None

    # -- helpers ------------------------------------------------------------------
    def _append(self, name: str, obj: dict[str, Any]) -> None:
        with _writing(self.dir / name, "the run's journal"), open(self.dir / name, "a") as f:
            f.write(json.dumps(obj, allow_nan=False) + "\n")
            f.flush()

    def _lines(self, name: str) -> Iterator[dict[str, Any]]:
        try:
            text = (self.dir / name).read_text()
        except OSError:
            return
        for line in text.splitlines():
            try:
                yield json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _read_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = reader(f)
    return tuple(shape), np.dtype(dtype)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    try:
        with open(path, "rb") as f:
            return _read_header(f)
    except (OSError, ValueError):
        return None


def _npy_complete(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """The file is an ``.npy`` of this shape and dtype, with all its bytes."""
    try:
        with open(path, "rb") as f:
            if _read_header(f) != (shape, dtype):
                return False
            return os.fstat(f.fileno()).st_size >= f.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError):
        return False


def npy_data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        _read_header(f)
        return f.tell()


def write_rows(path: Path, offset: int, row_bytes: int, y0: int, data: np.ndarray) -> None:
    """Write rows ``y0 : y0 + len(data)`` of a C-ordered ``.npy`` file with ``pwrite``:
    no memory map, so the written pages never count towards this process's RSS, and
    several workers can fill disjoint parts of the same file."""
    _pwrite_runs(path, [(offset + y0 * row_bytes, memoryview(np.ascontiguousarray(data)).cast("B"))])


def write_block(path: Path, offset: int, shape: tuple[int, int, int], itemsize: int, y0: int, x0: int,
                data: np.ndarray) -> None:
    """Write a tile ``data`` (h, w[, C]) at row ``y0``, column ``x0`` of a C-ordered ``.npy``
    file of ``shape`` (H, W, C) with ``pwrite`` (one call per row of the tile; see
    :func:`write_rows`)."""
    _, width, channels = shape
    data = np.ascontiguousarray(data)
    h, w = data.shape[:2]
    row = memoryview(data).cast("B")
    n = w * channels * itemsize
    _pwrite_runs(path, [(offset + ((y0 + r) * width + x0) * channels * itemsize, row[r * n:(r + 1) * n])
                        for r in range(h)])


def _pwrite_runs(path: Path, runs: list[tuple[int, memoryview]]) -> None:
    with _writing(path, "stacked rows"):
        fd = os.open(path, os.O_WRONLY)
        try:
            for pos, view in runs:
                while view:
                    n = os.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
        finally:
            os.close(fd)


@contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """A failed write into the journal (a full disk, a quota, a file size limit, a folder
    that cannot be written) as an :class:`OutputError` naming the file and the reason,
    not a traceback: what the journal already holds stays, for ``--resume``."""
    try:
        yield
    except OSError as e:
        why = why_not_written(e)
        fix = ("write the output on another file system (the run starts over there), or raise the limit "
               "and rerun the same command with --resume" if e.errno == errno.EFBIG else
               "free some space (or fix the folder) and rerun the same command with --resume")
        raise OutputError(f"{path}: could not write {what} ({why}); the output was not written: {fix}") from e


def read_rows(path: Path, offset: int, shape: tuple[int, ...], dtype: str, y0: int, y1: int) -> np.ndarray:
    row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        f.seek(offset + y0 * row)
        a = np.fromfile(f, dtype=dtype, count=(y1 - y0) * row // np.dtype(dtype).itemsize)
    return a.reshape((y1 - y0,) + tuple(shape[1:]))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
