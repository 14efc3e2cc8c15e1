import pytest

from skystack.errors import ClusterError
from skystack.runtime.executor import connect, run_tasks


def _square(x, pair):
    return x * x, pair


@pytest.mark.parametrize("workers", [1, 2])
def test_threaded_tasks_report_every_result(workers):
    got = {}
    # tuples that look like dask tasks or keys must pass through untouched
    args = [(i, (len, "abc")) for i in range(20)]
    run_tasks(_square, args, workers=workers, scheduler=None, on_result=lambda k, r: got.__setitem__(k, r))
    assert got == {i: (i * i, (len, "abc")) for i in range(20)}


def test_unreachable_cluster_is_a_clear_error():
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        connect("tcp://127.0.0.1:9", timeout=1.0)
