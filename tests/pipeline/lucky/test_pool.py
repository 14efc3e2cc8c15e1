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
    total, count = arrays
    assert not total.any() and not count.any()  # handed over zeroed, even when reused
    total[x % 3, :] += x
    count[:, x % 4] = 1.0
    return x, os.getpid()


@pytest.mark.parametrize("workers,processes", [(1, False), (2, False), (2, True)])
def test_buffers_come_back_filled_in_order(workers, processes):
    """Tasks fill zeroed buffers (in forked workers: slots of a shared mapping, reused
    after their result was consumed); each result comes with its own task's arrays."""
    spec = Buffers((((3, 5), np.float32), ((4, 4), np.float64)))
    pool = Workers(workers, processes=processes)
    seen = []
    try:
        for (x, pid), (total, count) in pool.map(_fill, range(11), inflight=3, buffers=spec):
            assert total.dtype == np.float32 and count.shape == (4, 4)
            want = np.zeros((3, 5), np.float32)
            want[x % 3, :] = x
            assert np.array_equal(total, want)
            assert count.sum() == 4.0 and count[:, x % 4].all()
            seen.append((x, pid))
    finally:
        pool.close()
    assert [x for x, _ in seen] == list(range(11))
    if processes and can_fork():
        assert os.getpid() not in {p for _, p in seen}


@pytest.mark.parametrize("processes", [False, True])
def test_a_failing_task_raises_in_the_caller(processes):
    pool = Workers(2, processes=processes)
    try:
        with pytest.raises(ValueError, match="seven"):
            list(pool.map(_square_or_fail, range(12)))
    finally:
        pool.close()


def test_one_worker_is_one_opencv_thread():
    before = cv2.getNumThreads()
    pool = Workers(1, processes=True)
    assert cv2.getNumThreads() == 1 and not pool.processes
    pool.close()
    assert cv2.getNumThreads() == before
