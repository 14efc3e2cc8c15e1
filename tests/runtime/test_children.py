"""Forked helpers and Ctrl-C: a helper forked under ``interrupts_held`` cannot be
interrupted before it has handed interrupts to its parent."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time

import pytest

from skystack.runtime.children import interrupts_held, leave_interrupts_to_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked helpers are Linux-only")


def _slow_start(ready, go):
    """A helper whose start-up (the interpreter's after-fork hooks, imports) takes a while:
    the Ctrl-C lands in it before it ignores interrupts."""
    ready.set()
    go.wait(30)
    time.sleep(0.1)  # the signal, if it was delivered, interrupts the child here or above
    leave_interrupts_to_parent()
    time.sleep(0.1)


def _run(held: bool) -> int:
    ctx = mp.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_slow_start, args=(ready, go), daemon=True)
    if held:
        with interrupts_held():
            proc.start()
    else:
        proc.start()
    assert ready.wait(30)
    os.kill(proc.pid, signal.SIGINT)  # the part of a terminal's Ctrl-C that reaches the child
    time.sleep(0.05)
    go.set()
    proc.join(30)
    return proc.exitcode


def test_a_ctrl_c_before_the_helper_ignores_interrupts_is_dropped():
    assert _run(held=True) == 0


def test_without_the_hold_the_same_ctrl_c_interrupts_the_helper():
    # the race this guards against, made certain: the helper dies of the KeyboardInterrupt
    assert _run(held=False) == 1


def test_the_parent_still_gets_its_own_ctrl_c_after_the_hold():
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(True))
    try:
        with interrupts_held():
            # to this thread (the one that forks): a process-wide signal may be taken by
            # another thread of the test process, which does not block it
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            time.sleep(0.05)
            assert got == []  # held while forking
        for _ in range(100):  # delivered once the hold ends
            if got:
                break
            time.sleep(0.01)
        assert got == [True]
    finally:
        signal.signal(signal.SIGINT, old)
