"""runtime.memory: sizes, budgets and RSS."""
import pytest

from skystack.errors import UsageError
from skystack.runtime.memory import current_rss, default_memory_limit, parse_size, peak_rss_mb


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


def test_default_limit_and_rss_are_sane():
    assert 128 * 2**20 <= default_memory_limit() <= 8 * 2**30
    rss = current_rss()
    assert rss > 10 * 2**20  # an interpreter with numpy loaded
    assert peak_rss_mb() * 2**20 >= rss * 0.99
