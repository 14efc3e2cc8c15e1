"""Keep memory-mapped inputs from counting against the memory budget.

Pages of a file mapping that a process has touched stay in its resident set (RSS) until
the mapping goes away, so copying rows out of a long-lived map of a 2000-frame SER or a
stack of FITS files would grow RSS to the size of everything read. After each copy the
readers call :func:`release` to drop the mapping's pages from this process; the data stays
in the kernel's page cache, so reading them again costs a minor fault, not disk I/O.
"""
from __future__ import annotations

import mmap

import numpy as np


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    base = arr
    for _ in range(16):  # views of views of a memmap: walk down to the mmap object
        if isinstance(base, mmap.mmap):
            return base
        nxt = getattr(base, "base", None)
        if nxt is None:
            nxt = getattr(base, "_mmap", None)
        if nxt is None or nxt is base:
            return None
        base = nxt
    return None


def release(arr: np.ndarray | None) -> None:
    """Drop the resident pages of the file mapping behind ``arr`` (a memmap or a view of
    one). A no-op for ordinary arrays. Safe for read-only maps: a later access faults the
    same bytes back in from the page cache."""
    if arr is None:
        return
    mm = _mapping(arr)
    if mm is None or getattr(mm, "closed", False):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, OSError, ValueError):  # platform without madvise: nothing to gain
        pass
