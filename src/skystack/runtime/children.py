"""Forked helper processes: they must not outlive the process that forked them.

A forked child blocked on a queue whose other end belonged to its parent waits for ever
when the parent is killed (``kill -9``, the OOM killer): the pipe stays open, since the
child inherited both of its ends. Measured on the lucky pipeline before this module: each
``kill -9`` of a two-worker run left its workers behind, asleep and holding their memory.
Linux can signal a child when its parent dies (``prctl(PR_SET_PDEATHSIG)``); there is no
portable equivalent, and the children of this project are forked only on Linux.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Around forking helpers: SIGINT blocked in this thread, so each child is born with
    it blocked and a Ctrl-C cannot reach it before it calls
    :func:`leave_interrupts_to_parent` (it did: one run in about fifteen interrupted at
    80 % printed the child's ``KeyboardInterrupt`` inside ``threading._after_fork``). A
    Ctrl-C that came meanwhile reaches this process when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # no POSIX signal masks: nothing to hold
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def leave_interrupts_to_parent() -> None:
    """In a forked helper: ignore Ctrl-C. SIGINT reaches the whole foreground process
    group; the parent stops its helpers itself (or they die with it), and an interrupted
    run then says so in one line instead of a traceback from every helper. A child forked
    under :func:`interrupts_held` is unblocked here, after the Ctrl-C it may have been
    sent meanwhile has been discarded with the new disposition."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def die_with_parent(parent: int) -> None:
    """In a freshly forked child of process ``parent``: be killed (SIGKILL) when the thread
    that forked it ends, which for this project's forks is the parent's life; exit at once
    if the parent is already gone (it died between the fork and this call). No-op off
    Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        # the symbols the interpreter is linked with, libc's among them (find_library
        # would run ldconfig in a subprocess: 1.6 ms in every worker)
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: nothing to ask for
        return
    if os.getppid() != parent:
        os._exit(1)
