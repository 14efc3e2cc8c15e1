"""runtime.memory: sizes, budgets and RSS."""
import platform
import resource
import sys

import pytest

from skystack.errors import UsageError
from skystack.runtime import memory
from skystack.runtime.memory import current_rss, default_memory_limit, memory_budget, parse_size, peak_rss_mb


def test_parse_size():
    assert parse_size("256M") == 256 * 2**20
    assert parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size("800k") == 800 * 1024
    assert parse_size("4096") == 4096
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(None) is None and parse_size(1234) == 1234
    for bad in ("lots", "-5M", "5X", ""):
        with pytest.raises(UsageError, match="cannot read"):
            parse_size(bad)


def test_a_limit_above_the_machines_memory_is_bounded_and_said_once(monkeypatch, caplog):
    # --memory-limit 1T planned bands and tiles a 24 GiB machine could only swap or be killed for
    import collections

    import psutil
    machine = collections.namedtuple("machine", "total available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: machine(8 * 2**30, 6 * 2**30))
    monkeypatch.setattr(memory, "_said_too_big", set())
    room = 8 * 2**30 - current_rss()
    with caplog.at_level("WARNING", logger="skystack"):
        assert memory_budget(2**40) == room and memory_budget(2**40) == room
    assert caplog.text.count("--memory-limit 1.0 TiB is more than this machine's memory") == 1
    assert memory_budget(2**30) == 2**30  # within: the user's word
    assert memory_budget(None) == default_memory_limit() == 3 * 2**30  # half of what is available
    assert memory_budget(2**40, this_machine=False) == 2**40  # a cluster's workers: not ours to judge


def test_default_limit_and_rss_are_sane():
    assert 128 * 2**20 <= default_memory_limit() <= 8 * 2**30
    rss = current_rss()
    assert rss > 10 * 2**20  # an interpreter with numpy loaded
    assert peak_rss_mb() * 2**20 >= rss * 0.99


@pytest.mark.skipif(not sys.platform.startswith("linux") or not platform.libc_ver()[0] == "glibc",
                    reason="glibc allocator tuning")
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in_again():
    """Blocks under the mmap threshold (a tile's demosaiced strip, 1-5 MB) freed and
    allocated again by the next task come back from the heap: no fresh pages each time
    (untuned, a fixed mmap threshold left glibc trimming every freed block at the heap's
    top back to the OS, and a 1000-task run faulted ~1 M pages)."""
    import numpy as np

    from skystack.runtime.memory import MMAP_THRESHOLD, tune_allocator

    tune_allocator()
    size = MMAP_THRESHOLD // 2  # 4 MiB: a heap block, 1024 pages
    np.ones(size, np.uint8)  # the heap grown once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        a = np.ones(size, np.uint8)  # touches every page
        del a
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # measured: ~0 against ~19 000 (1024 per block, every other block) with the trim threshold left at 128 KiB
    assert faults < 5 * size // 4096
