"""Memory: budgets, the allocator and resident-set measurements.

One home for what every pipeline needs to stay inside ``--memory-limit``: reading a size
the user typed, the default budget, glibc allocator tuning and trimming, and the current
and peak resident set size reported to the user.
"""
from __future__ import annotations

import ctypes
import re
import resource

from ..errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int | None, option: str = "--memory-limit") -> int | None:
    """'256M', '1.5G', '800k', '1073741824' → bytes (binary multiples, as `free -h`)."""
    if text is None or isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"{option}: cannot read {text!r} as a size (e.g. 256M, 2G)")
    value, unit = float(m.group(1)), m.group(2).lower()
    return int(value * 1024 ** " kmgt".index(unit or " "))


def size_text(nbytes: float) -> str:
    """``1536`` → ``"1.5 KiB"``: a byte count as the messages about --memory-limit say it."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)


_said_too_big: set[int] = set()


def memory_budget(given: int | None, *, this_machine: bool = True) -> int:
    """The working memory a stage may plan for: ``--memory-limit`` when given, bounded by
    what the machine has (a limit above its RAM planned bands and tiles the machine could
    only swap or be killed for: `--memory-limit 1T` on a 24 GiB machine; said once), else
    :func:`default_memory_limit`. ``this_machine=False``: the work runs elsewhere (a Dask
    cluster's workers), whose memory is not this machine's to judge."""
    if not given:
        return default_memory_limit()
    if not this_machine:
        return int(given)
    import psutil

    try:
        room = psutil.virtual_memory().total - current_rss()
    except Exception:  # an unsupported platform: the user's word
        return int(given)
    room = max(int(room), 128 * 1024**2)
    if given <= room:
        return int(given)
    if given not in _said_too_big:
        _said_too_big.add(given)
        import logging

        logging.getLogger("skystack").warning(
            "--memory-limit %s is more than this machine's memory (%s beyond this process); planning for that",
            size_text(given), size_text(room))
    return room


def default_memory_limit() -> int:
    """A safe share of the RAM available now: half of it, at most 8 GiB, at least 128 MiB."""
    import psutil  # here: 15 ms of every command's start-up, and `skystack lucky` never asks

    try:
        avail = psutil.virtual_memory().available
    except Exception:  # unsupported platform: assume a small machine
        avail = 2 * 1024**3
    return int(min(max(avail // 2, 128 * 1024**2), 8 * 1024**3))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters (malloc.h)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl, Windows): nothing to tune
        return None


# Allocations of this size or more get their own mmap (tune_allocator). 8 MiB: a
# 3000×2000 float32 plane (24 MB) and a tile's band are mapped and go back to the OS when
# freed; a demosaiced block or strip (1-5 MB), allocated and freed hundreds of times a run,
# is reused from the heap instead of being mapped, faulted in and zeroed each time. At
# 1 MiB those page faults were a quarter of an 18-sub Seestar stack's CPU time (1.2 s of
# system time of 4.8; 0.9 s at 8 MiB, for 4 MB more peak; measured on the 2-core project
# machine).
MMAP_THRESHOLD = 8 << 20
# Freed heap memory kept for reuse before glibc hands it back (tune_allocator). A fixed mmap
# threshold also freezes glibc's trim threshold at its 128 KiB default, so the blocks under
# MMAP_THRESHOLD went back to the OS as soon as they were freed at the heap's top and were
# faulted in and zeroed again by the next task: ~1 M page faults and 4.7 s of system time in
# the 100-frame 3000×2000 sigma stack at --memory-limit 256M. With 64 MiB kept and one heap
# for all threads: 0.24 M faults, 2.1 s, the run 11.4 → 8.2 s, peak RSS 504 → 509 MB (the
# 18 Seestar subs: 2.9-3.2 → 2.5 s, 322 → 319 MB; measured on the 2-core project machine).
TRIM_THRESHOLD = 64 << 20
# Heap arenas: one, shared by all threads. glibc gives busy threads arenas of their own, and
# each keeps its own freed memory (with TRIM_THRESHOLD alone the peak grew 13-40 MB).
ARENA_MAX = 1


def tune_allocator() -> None:
    """Set glibc's allocator for frame-sized work: every allocation of
    :data:`MMAP_THRESHOLD` or more gets its own mmap, smaller freed blocks are kept for
    reuse up to :data:`TRIM_THRESHOLD`, in :data:`ARENA_MAX` heap arena(s).

    By default glibc raises its mmap threshold after the first large free, so frame-sized
    temporaries then come from per-thread heap arenas and stay resident after they are
    freed: with two phase-1 workers on 3000×2000 frames that held ~50 MB more than the
    frames in flight (564 vs 514 MB peak). A fixed threshold returns each frame-sized
    buffer to the OS when it is freed. The arena limit applies to threads that allocate
    for the first time afterwards (call it before starting workers). Process-wide and
    idempotent (mallopt only sets values); no-op off glibc.
    """
    set_allocator(MMAP_THRESHOLD, TRIM_THRESHOLD, ARENA_MAX)


def set_allocator(mmap_threshold: int, trim_threshold: int, arena_max: int | None = None) -> None:
    """glibc's mallopt: allocations of ``mmap_threshold`` bytes or more get their own mmap,
    up to ``trim_threshold`` bytes of freed heap are kept for reuse, and at most
    ``arena_max`` heap arenas are made from now on (``None``: unchanged). Process-wide;
    no-op off glibc."""
    libc = _libc()
    if libc is not None:
        try:
            libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
            libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
            if arena_max is not None:
                libc.mallopt(_M_ARENA_MAX, int(arena_max))
        except AttributeError:
            pass


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``) between phases.

    Per-frame temporaries are freed, but glibc keeps freed chunks in per-thread arenas,
    where they would still count in RSS on top of the next phase. No-op elsewhere.
    """
    libc = _libc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass


def current_rss() -> int:
    """Resident set size now, in bytes (0 where it cannot be told)."""
    import psutil

    try:
        return int(psutil.Process().memory_info().rss)
    except Exception:  # no /proc: budgets then ignore what is already held
        return 0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
