"""The lucky pipeline's workers: order, failures as exceptions, one core per worker."""
from __future__ import annotations

import os

import cv2
import pytest

from skystack.pipeline.lucky.pool import Workers, can_fork


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
