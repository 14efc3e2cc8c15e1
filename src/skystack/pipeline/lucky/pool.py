"""Where the per-frame work of a lucky run executes: inline (one worker), a thread pool, or
forked worker processes.

A lucky frame costs about a millisecond, and much of that millisecond is Python holding the
GIL (small NumPy arrays, per-point bookkeeping): threads then share one core for that part,
and two of them gave ~1.0-1.2× over one (measured on the project's 2-core machine). So when
the frames can be read anywhere (a SER video, a FITS set) and the platform forks,
``workers ≥ 2`` runs tasks in forked processes: they inherit the run's state (reference,
alignment points, reader) without pickling, read their own frames, and send back small
results (a chunk's partial sums, per-frame numbers). Forking two workers costs ~5 ms.
Where the window of tasks in flight has room (the ranking pass: many small tasks) the
calling process is one of the workers: it forks one fewer, keeps each forked worker's
queue filled and runs tasks itself between handing back results; a third process that
only fed two workers preempted them on two cores.
A video decoder must be read in order on one thread: then the frames are read by the
calling thread and the tasks run on a thread pool, as do drizzled stacks (whose per-frame
inputs are too big to send between processes).

Tasks are chunks of frames whose boundaries do not depend on the worker count, and their
results are consumed in order, so a run's output is the same for any number of workers.

A task that fills frame-sized arrays (a stacking task's partial sums) names them as
:class:`Buffers`: forked workers then fill slots of one shared anonymous mapping made before
the fork, and only the small rest of the result travels through the pipe: no pickling of a
640×480 task's 2.4 MB of sums, no copies through the pipe, no fresh pages for them in the
parent (19 such tasks in a 1000-frame Moon run).
"""
from __future__ import annotations

import gc
import mmap
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from ...runtime.children import die_with_parent, interrupts_held, leave_interrupts_to_parent
from ...runtime.memory import set_allocator

_BYE = -1  # a forked worker's last message: the CPU seconds it used


def can_fork() -> bool:
    """Forked workers are safe here: Linux (macOS forks, but its system libraries do not
    support a fork without exec)."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def _keep_freed_memory() -> None:
    """Let a forked worker's allocator keep and reuse what it frees (glibc; elsewhere
    nothing changes). Frame-sized arrays are otherwise mapped fresh and unmapped again
    every time, a page fault per 4 KiB: on the project's 2-core machine the stacking
    workers spent 0.25 s of system time on that in a 1000-frame run, half as much
    with this. The worker exits at the end of the pass, so nothing is held longer."""
    set_allocator(1 << 28, 1 << 29)


@dataclass(frozen=True)
class Buffers:
    """Arrays a task fills, ``(shape, dtype)`` each, for tasks in forked workers: there
    :meth:`Workers.map` calls ``fn(task, arrays)`` with zeroed arrays in shared memory and
    yields ``(result, arrays)``, the arrays valid until the next result is asked for (a
    later task reuses them: keep a copy). Tasks in this process get ``fn(task, None)``,
    allocate their own arrays and return them in their result (the results come as
    ``(result, None)``): their memory is private anyway, and this process's allocator
    keeps its habits (measured before :func:`.run.run_lucky` tuned this process's
    allocator: reusing per-task arrays here cost the one-worker run 47-80k more page
    faults in its stacking pass, frame-sized temporaries being mapped and unmapped
    afresh)."""

    arrays: tuple[tuple[tuple[int, ...], Any], ...]


class _Slots:
    """``n`` sets of :class:`Buffers` arrays in one anonymous shared mapping, made before
    the fork so that the forked workers write the pages the parent reads; task ``seq``
    uses slot ``seq % n``, and at most ``n`` tasks are in flight, so a slot is reused only
    once its result was consumed."""

    def __init__(self, spec: Buffers, n: int):
        sizes = [(-(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 64)) * 64 for shape, dtype in spec.arrays]
        step = sum(sizes)
        self.n = n
        self._mem = mmap.mmap(-1, max(1, step * n))  # MAP_SHARED | MAP_ANONYMOUS
        self.slots = []
        for k in range(n):
            at, arrays = k * step, []
            for (shape, dtype), size in zip(spec.arrays, sizes):
                count = int(np.prod(shape))
                arrays.append(np.frombuffer(self._mem, dtype, count, at).reshape(shape))
                at += size
            self.slots.append(tuple(arrays))

    def take(self, seq: int) -> tuple[np.ndarray, ...]:
        """Slot of task ``seq``, zeroed (in a worker)."""
        arrays = self.slots[seq % self.n]
        for a in arrays:
            a.fill(0)
        return arrays


class _Channel:
    """A pipe between the processes of a pass: :meth:`put` pickles and writes in the
    calling thread (under a lock, for several writers), :meth:`get` reads (under a lock,
    for several readers), with an optional timeout.

    ``multiprocessing.Queue`` hands every put to a feeder thread of its own: in the
    ranking pass (250 tasks of 4 frames for 1000 frames) the feeder threads of this
    process and of the worker woke for every task and preempted the busy ones (~400
    involuntary context switches each): the pass took 0.49 s and 0.89 CPU-s on two workers,
    0.44 s and 0.82 CPU-s with the writes made in the calling thread (Moon, seed 1; one
    worker: 0.72 CPU-s). The pipe is enlarged where Linux allows, so that a put never
    waits for the reader with the few small messages a pass keeps in flight."""

    _PIPE_BYTES = 1 << 20

    def __init__(self, ctx: Any):
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._rlock, self._wlock = ctx.Lock(), ctx.Lock()
        try:
            import fcntl

            fcntl.fcntl(self._writer.fileno(), fcntl.F_SETPIPE_SZ, self._PIPE_BYTES)
        except (ImportError, AttributeError, OSError):
            pass  # the default pipe: a put may wait until the reader has read

    def put(self, obj: Any) -> None:
        with self._wlock:
            self._writer.send(obj)

    def get(self, timeout: float | None = None) -> Any:
        """The next message; ``queue.Empty`` when none came within ``timeout`` seconds
        (0: none ready now)."""
        with self._rlock:
            if timeout is not None and not self._reader.poll(timeout):
                raise queue.Empty
            return self._reader.recv()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


def _serve(fn: Callable[..., Any], tasks: Any, results: Any, slots: _Slots | None, parent: int) -> None:
    """A forked worker of process ``parent``: run ``fn`` on tasks until the ``None``
    sentinel (with ``slots``, ``fn(task, slot arrays)``), then say goodbye with the CPU
    seconds it used; failures travel back as values (an unpicklable exception as its
    traceback text). It dies with the parent (a killed run leaves no worker behind)."""
    die_with_parent(parent)
    leave_interrupts_to_parent()
    _keep_freed_memory()
    while True:
        item = tasks.get()
        if item is None:
            import resource  # Unix only, as are forked workers

            use = resource.getrusage(resource.RUSAGE_SELF)
            results.put((_BYE, True, use.ru_utime + use.ru_stime))
            return
        seq, task = item
        try:
            results.put((seq, True, fn(task) if slots is None else fn(task, slots.take(seq))))
        except BaseException as e:  # noqa: BLE001 - re-raised in the parent
            try:
                results.put((seq, False, e))
            except Exception:
                results.put((seq, False, RuntimeError(traceback.format_exc())))


class Workers:
    """Runs ``fn`` over tasks, in order, on ``workers`` threads or forked processes (or
    inline for one worker).

    Parameters
    ----------
    workers
        Parallel workers (1: everything on the calling thread).
    processes
        Use forked processes for :meth:`map` calls that allow them.
    """

    def __init__(self, workers: int, processes: bool):
        self.workers = max(1, int(workers))
        self.processes = processes and self.workers > 1 and can_fork()
        self._threads: ThreadPoolExecutor | None = None
        self.worker_cpu_s = 0.0  # CPU seconds of the forked workers that have finished
        self._background: list[threading.Thread] = []  # started, joined before a fork
        self._deferred: list[threading.Thread] = []  # started by release_background()
        self._cv_threads = cv2.getNumThreads()
        # one core per worker: OpenCV's own thread pool on top would make --workers 1 use
        # every core and make forked workers fight over them (restored by close())
        cv2.setNumThreads(1)

    @property
    def threads(self) -> ThreadPoolExecutor | None:
        if self._threads is None and self.workers > 1:
            self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="lucky")
        return self._threads

    def cpu_s(self) -> float:
        """CPU seconds used so far by this process (all its threads) and the finished
        forked workers."""
        return time.process_time() + self.worker_cpu_s

    def background(self, fn: Callable[[], Any], name: str) -> None:
        """Run ``fn`` on a background thread to overlap the work. A process is forked only
        while no other thread runs (a fork copies locks a thread may hold, the import lock
        among them), so with forked workers the thread waits for :meth:`release_background`
        and is joined before any later fork. With one worker it runs at once, in this
        thread: ``--workers 1`` is one core, the imports it overlaps included."""
        if self.workers == 1:
            fn()
            return
        t = threading.Thread(target=fn, name=name, daemon=True)
        if self.processes:
            self._deferred.append(t)
        else:
            t.start()

    def without_processes(self) -> None:
        """Use threads after all (the frames cannot be read in the workers)."""
        self.processes = False
        self.release_background()

    def release_background(self) -> None:
        """Start the background threads held back for the forks (call it once the workers
        of a pass with big tasks run: the ranking pass's small tasks need this process's
        answers, and its GIL, without delay)."""
        for t in self._deferred:
            t.start()
        self._background += self._deferred
        self._deferred.clear()

    def _before_fork(self) -> None:
        for t in self._background:
            t.join()
        self._background.clear()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        # objects that exist now are never collected in the workers: the collector would
        # write to every page it visits and copy the whole heap into each worker
        gc.freeze()

    def _after_fork(self) -> None:
        gc.unfreeze()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        cv2.setNumThreads(self._cv_threads)

    def map(self, fn: Callable[..., Any], tasks: Iterable[Any], *, inflight: int | None = None,
            fork: bool = True, buffers: Buffers | None = None) -> Iterator[Any]:
        """``map(fn, tasks)`` in order with at most ``inflight`` tasks submitted and not yet
        consumed (default: twice the workers); ``tasks`` is consumed lazily on the calling
        thread, a task only after the result ``inflight`` places before it was consumed.
        ``fork=False`` keeps the work in this process (results too big to send). With
        ``buffers``, ``fn(task, arrays)`` fills zeroed arrays and the results are
        ``(fn's result, arrays)`` (see :class:`Buffers`). Forked workers start at this
        call: iterate the result (to its end, or until it raises), which also ends them."""
        inflight = max(1, inflight or 2 * self.workers)
        forked = self.workers > 1 and self.processes and fork
        slots = None
        if buffers is not None:
            if forked:
                slots = _Slots(buffers, inflight)
            else:
                fn = _unfilled(fn)
        if self.workers == 1:
            return (fn(t) for t in tasks)
        if forked:
            return _forked(fn, tasks, self.workers, inflight, self, slots)  # forks now
        return _threaded(fn, tasks, self.threads, inflight)


def _unfilled(fn: Callable[..., Any]) -> Callable[[Any], tuple[Any, None]]:
    """``task -> (fn(task, None), None)``: a :class:`Buffers` task in this process."""
    def call(task):
        return fn(task, None), None
    return call


def _threaded(fn, tasks, pool, inflight) -> Iterator[Any]:
    q: deque = deque()
    for t in tasks:
        q.append(pool.submit(fn, t))
        if len(q) >= inflight:
            yield q.popleft().result()
    while q:
        yield q.popleft().result()


def _forked(fn, tasks, workers, inflight, owner: Workers, slots: _Slots | None) -> Iterator[Any]:
    """Fork the workers now (before the caller starts a progress bar, whose monitor is a
    thread) and return the generator of the results, which the caller must iterate.

    When the window of ``inflight`` tasks leaves room for it, this process is the last of
    the ``workers`` (see :func:`_results`) and ``workers - 1`` are forked; otherwise all of
    them are (a window of ``workers + 1`` big stacking tasks: this process's own task would
    hold the window while the forked ones waited for their next task)."""
    here = inflight >= _QUEUED_PER_WORKER * (workers - 1) + 2
    owner._before_fork()
    ctx = mp.get_context("fork")
    tq, rq = _Channel(ctx), _Channel(ctx)
    procs = [ctx.Process(target=_serve, args=(fn, tq, rq, slots, os.getpid()), daemon=True, name=f"lucky-{k}")
             for k in range(workers - 1 if here else workers)]
    with interrupts_held():
        for p in procs:
            p.start()
    if not here:
        owner._after_fork()
    return _results(fn if here else None, procs, tq, rq, tasks, inflight, owner, slots)


# Tasks kept queued for each forked worker while this process runs one itself: one running,
# one waiting, so a worker never idles while this process is busy with its own task.
_QUEUED_PER_WORKER = 2


def _results(fn, procs, tq, rq, tasks, inflight, owner: Workers, slots: _Slots | None) -> Iterator[Any]:
    """The results in order. The forked workers take tasks from ``tq``; this process keeps
    :data:`_QUEUED_PER_WORKER` tasks queued for each of them, hands back the results that
    are ready, and otherwise runs the next task itself (``fn``; None: never) while the
    window of ``inflight`` tasks allows, or waits for a worker.

    With ``fn`` this process is a worker too: on the project's 2-core machine two forked
    workers and a third process that only fed them gave ~1.5× over one worker in the ranking
    pass, the feeding's wake-ups preempting the workers (~500 involuntary context switches
    each).
    """
    done: dict[int, tuple[bool, Any]] = {}
    sent = received = queued = 0  # queued: sent to the forked workers, result not yet back
    it = iter(tasks)
    exhausted = False

    def take() -> tuple[int, Any] | None:
        nonlocal sent, exhausted
        if exhausted or sent - received >= inflight:
            return None
        try:
            t = next(it)
        except StopIteration:
            exhausted = True
            return None
        sent += 1
        return sent - 1, t

    def arrived(block: bool) -> bool:
        """One result from the workers into ``done`` (False: none ready, not blocking)."""
        nonlocal queued
        while True:
            try:
                seq, ok, value = rq.get(timeout=1.0 if block else 0)
            except queue.Empty:
                if not block:
                    return False
                dead = [p for p in procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"lucky worker process {dead[0].name} died "
                                       f"(exit code {dead[0].exitcode})") from None
                continue
            done[seq] = (ok, value)
            queued -= 1
            return True

    try:
        while True:
            while queued < (_QUEUED_PER_WORKER * len(procs) if fn is not None else inflight):
                item = take()
                if item is None:
                    break
                tq.put(item)
                queued += 1
            while queued and arrived(False):
                pass
            if received in done:
                ok, value = done.pop(received)
                received += 1
                if not ok:
                    raise value
                yield value if slots is None else (value, slots.slots[(received - 1) % slots.n])
                continue
            if exhausted and received == sent:
                break
            item = take() if fn is not None else None
            if item is not None:  # nothing to hand back yet: a task here
                seq, t = item
                try:
                    done[seq] = (True, fn(t) if slots is None else fn(t, slots.take(seq)))
                except Exception as e:  # raised in order, when its turn comes
                    done[seq] = (False, e)
                continue
            arrived(True)  # the next result is a worker's: wait for it
    finally:
        if fn is not None:
            owner._after_fork()  # frozen since the fork: this process's tasks do not walk the old heap either
        for _ in procs:
            tq.put(None)
        # a worker exits only once its queued results are read (after an error in the
        # parent some may be left): read up to every worker's goodbye
        byes = 0
        deadline = time.monotonic() + 10.0
        while byes < len(procs) and time.monotonic() < deadline:
            try:
                seq, _, value = rq.get(timeout=0.2)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if seq == _BYE:
                byes += 1
                owner.worker_cpu_s += value
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        tq.close()
        rq.close()
