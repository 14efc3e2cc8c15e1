"""The lucky pipeline's workers: order, failures as exceptions, one core per worker."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from skystack.pipeline.lucky.pool import Buffers, Workers, can_fork


def _square_or_fail(x):
    if x == 7:
        raise ValueError("seven")
    return x * x, os.getpid()


@pytest.mark.parametrize("workers,processes", [(1, False), (2, False), (2, True)])
def test_results_come_back_in_order(workers, processes):
    pool = Workers(workers, processes=processes)
    try:
        out = list(pool.map(_square_or_fail, range(7), inflight=3))
    finally:
        pool.close()
    assert [v for v, _ in out] == [x * x for x in range(7)]
    pids = {p for _, p in out}
    if processes and can_fork():
        assert os.getpid() not in pids  # the work ran in the forked workers
    else:
        assert pids == {os.getpid()}


def _fill(x, arrays):
    own = arrays is None  # a task in the calling process makes its own arrays
    total, count = (np.zeros((3, 5), np.float32), np.zeros((4, 4))) if own else arrays
    assert not total.any() and not count.any()  # handed over zeroed, even when reused
    total[x % 3, :] += x
    count[:, x % 4] = 1.0
    return x, os.getpid(), (total, count) if own else None


@pytest.mark.parametrize("workers,processes", [(1, False), (2, False), (2, True)])
def test_buffers_come_back_filled_in_order(workers, processes):
    """Forked workers fill zeroed slots of a shared mapping (reused once their result was
    consumed) and each result comes with its own task's slot; tasks in this process
    get ``None`` and return their own arrays."""
    spec = Buffers((((3, 5), np.float32), ((4, 4), np.float64)))
    pool = Workers(workers, processes=processes)
    forked = processes and can_fork()
    seen = []
    try:
        for (x, pid, own), arrays in pool.map(_fill, range(11), inflight=3, buffers=spec):
            assert (arrays is not None) == forked and (own is None) == forked
            total, count = arrays if forked else own
            assert total.dtype == np.float32 and count.shape == (4, 4)
            want = np.zeros((3, 5), np.float32)
            want[x % 3, :] = x
            assert np.array_equal(total, want)
            assert count.sum() == 4.0 and count[:, x % 4].all()
            seen.append((x, pid))
    finally:
        pool.close()
    assert [x for x, _ in seen] == list(range(11))
    if forked:
        assert os.getpid() not in {p for _, p in seen}


@pytest.mark.parametrize("processes", [False, True])
def test_a_failing_task_raises_in_the_caller(processes):
    pool = Workers(2, processes=processes)
    try:
        with pytest.raises(ValueError, match="seven"):
            list(pool.map(_square_or_fail, range(12)))
    finally:
        pool.close()


def _unpicklable_at(x):
    import threading

    return threading.Lock() if x == 5 else x


@pytest.mark.skipif(not can_fork(), reason="forked workers: Linux")
def test_a_result_that_cannot_travel_back_raises_in_the_caller_instead_of_hanging():
    """A forked worker's result is pickled where it is put: one that cannot be pickled
    comes back as an error naming it (a queue's feeder thread would drop it and leave
    the caller waiting for ever). A window of 3 tasks leaves this process none of its own
    (see ``_forked``): every result travels, the unpicklable one included. (The default
    window of 4 let this process run task 5 itself now and then, ~1 run in 100 under
    load, and its result never had to travel.)"""
    pool = Workers(2, processes=True)
    try:
        got = []
        with pytest.raises(Exception, match="lock"):
            for r in pool.map(_unpicklable_at, range(12), inflight=3):
                got.append(r)
        assert got == [0, 1, 2, 3, 4]  # in order, up to the failure
    finally:
        pool.close()


def test_one_worker_is_one_opencv_thread():
    before = cv2.getNumThreads()
    pool = Workers(1, processes=True)
    assert cv2.getNumThreads() == 1 and not pool.processes
    pool.close()
    assert cv2.getNumThreads() == before


def test_one_worker_runs_background_work_in_its_own_thread():
    # --workers 1 is one core: work meant to overlap (the FITS writer's import) takes its turn
    import threading

    ran_in = []
    pool = Workers(1, processes=False)
    try:
        pool.background(lambda: ran_in.append(threading.current_thread()), "t")
        assert ran_in == [threading.current_thread()]
    finally:
        pool.close()
    pool2 = Workers(2, processes=False)
    try:
        done = threading.Event()
        pool2.background(lambda: (ran_in.append(threading.current_thread()), done.set()), "t2")
        assert done.wait(5) and ran_in[-1] is not threading.current_thread()
    finally:
        pool2.close()


@pytest.mark.skipif(not can_fork(), reason="forked workers need Linux")
def test_with_room_in_the_window_this_process_works_too():
    # inflight 8 for 2 workers: one forked worker with its queue, and this process runs
    # tasks itself between handing back results; order, slots and failures as ever
    spec = Buffers((((3, 5), np.float32), ((4, 4), np.float64)))
    pool = Workers(2, processes=True)
    seen = []
    try:
        for (x, pid, own), arrays in pool.map(_fill, range(40), inflight=8, buffers=spec):
            assert own is None and arrays is not None  # every task fills a slot, here too
            total, count = arrays
            want = np.zeros((3, 5), np.float32)
            want[x % 3, :] = x
            assert np.array_equal(total, want) and count.sum() == 4.0
            seen.append((x, pid))
        assert [x for x, _ in seen] == list(range(40))
        pids = {p for _, p in seen}
        assert os.getpid() in pids and len(pids) == 2  # this process and one forked worker
        out = list(pool.map(_square_or_fail, range(7), inflight=8))
        assert [v for v, _ in out] == [x * x for x in range(7)]
        with pytest.raises(ValueError, match="seven"):
            list(pool.map(_square_or_fail, range(12), inflight=8))
    finally:
        pool.close()


_KILLED_RUN = r"""
import os, sys, time
from skystack.pipeline.lucky.pool import Workers

pids = sys.argv[1]

def task(x):
    with open(os.path.join(pids, str(os.getpid())), "w"):
        pass
    time.sleep(60)
    return x

pool = Workers(2, processes=True)
for _ in pool.map(task, range(8), inflight=3):  # three forked workers' worth of window
    pass
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not can_fork(), reason="forked workers need Linux")
def test_forked_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of a run leaves no worker behind: before, each forked worker slept for ever
    on its task queue, whose write end it had inherited, holding its memory."""
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    run = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(pids)])
    try:
        deadline = time.monotonic() + 60
        while len([p for p in pids.iterdir() if int(p.name) != run.pid]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.name) for p in pids.iterdir() if int(p.name) != run.pid]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"


@pytest.mark.parametrize("n, size", [(0, 9), (5, 9), (9, 9), (10, 9), (19, 9), (154, 9), (500, 27), (7, 1), (100, 32)])
def test_tasks_cover_the_frames_once_in_order_and_a_tapered_pass_ends_on_small_tasks(n, size):
    """Chunks depend on the frames and the size alone (never on the worker count); a
    tapered pass keeps full chunks for the bulk and ends with chunks of a third."""
    from skystack.pipeline.lucky.frames import chunked

    idx = np.arange(100, 100 + n)
    for taper in (False, True):
        chunks = chunked(idx, size, taper=taper)
        joined = np.concatenate(chunks) if chunks else np.arange(0)
        assert np.array_equal(joined, idx) and all(c.size for c in chunks)
        assert max((c.size for c in chunks), default=0) <= size
    plain, tapered = chunked(idx, size), chunked(idx, size, taper=True)
    if n <= size:
        assert [c.tolist() for c in tapered] == [c.tolist() for c in plain]
    else:
        small = -(-size // 3)
        tail = [c.size for c in tapered if c.size <= small]
        assert sum(tail) >= min(n, 2 * size) and all(c.size in (size, small) for c in tapered[:-1])
        assert sum(tail) < 3 * size or small == size  # the bulk stays in full chunks


@pytest.mark.parametrize("n, shape, channels, want", [
    (107, (480, 640), 1, 9),     # a uniform-seeing Moon's frames: not one task of 27 and nine of 9
    (500, (480, 640), 1, 27),    # enough frames: the memory bound (~32 MB of frames a task)
    (148, (480, 640), 3, 9),     # RGB: the memory bound
    (2000, (64, 64), 1, 32),     # small frames: at most 32
    (5, (480, 640), 1, 1),
    (0, (480, 640), 1, 1),
])
def test_a_stacking_pass_has_a_dozen_tasks_or_tasks_at_their_memory_bound(n, shape, channels, want):
    """Stacking tasks are consumed in order with workers + 1 in flight: a pass of one
    big task and small ones kept a worker waiting behind it. The size depends on the
    frames alone, never on the worker count."""
    from skystack.pipeline.lucky.frames import chunked
    from skystack.pipeline.lucky.stack import chunk_frames

    size = chunk_frames(shape, channels, n)
    assert size == want
    chunks = chunked(np.arange(n), size, taper=True)
    assert len(chunks) >= min(n, 12)
