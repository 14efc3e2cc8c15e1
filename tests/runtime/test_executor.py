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


def test_threaded_tasks_run_at_most_workers_at_once_and_report_in_the_calling_thread():
    import threading
    import time

    lock = threading.Lock()
    state = {"now": 0, "most": 0}
    caller = threading.get_ident()
    seen_in = set()

    def task(i):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.002 * (i % 3))  # uneven lengths: results come back out of order
        with lock:
            state["now"] -= 1
        return i

    got = []
    run_tasks(task, [(i,) for i in range(12)], workers=3, scheduler=None,
              on_result=lambda k, r: (got.append((k, r)), seen_in.add(threading.get_ident())))
    assert sorted(got) == [(i, i) for i in range(12)]
    assert state["most"] == 3 and seen_in == {caller}


def test_a_failing_task_propagates_and_stops_the_rest():
    started = []

    def task(i):
        started.append(i)
        if i == 2:
            raise ValueError("frame 2 is broken")
        return i

    with pytest.raises(ValueError, match="frame 2 is broken"):
        run_tasks(task, [(i,) for i in range(50)], workers=2, scheduler=None, on_result=lambda k, r: None)
    assert len(started) < 50  # the tasks after the failure were never started


def test_unreachable_cluster_is_a_clear_error():
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        connect("tcp://127.0.0.1:9", timeout=1.0)


# -- the scheduler check: connect, then a Dask handshake within a timeout --------------------
import http.server  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import skystack.runtime.executor as executor  # noqa: E402
from skystack.runtime.executor import check_scheduler  # noqa: E402


@contextmanager
def _http_server():
    """An HTTP server on loopback: it accepts connections and waits for a request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _banner_server(banner: bytes):
    """A server that speaks first, as SSH does: its banner, read as a Dask frame length, is
    exabytes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(banner)
                    conn.recv(1024)
                except OSError:  # the checker hung up first
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()


def test_an_http_server_is_not_a_scheduler():
    with _http_server() as url:
        with pytest.raises(ClusterError, match=r"not a Dask scheduler \(no Dask handshake within 0.3 s"):
            check_scheduler(url, timeout=0.3)


@pytest.mark.parametrize("banner", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 400 Bad Request\r\n\r\n",
                                    (40).to_bytes(8, "little") + b"\x00" * 40])
def test_a_server_speaking_another_protocol_is_not_a_scheduler(banner):
    with _banner_server(banner) as url:
        with pytest.raises(ClusterError, match="not a Dask scheduler"):
            check_scheduler(url, timeout=2.0)


@pytest.mark.parametrize("address", ["tcp://host:notaport", "tcp://[::1:8786", "http://host:8786", "tcp://:8786",
                                     "tcp://host", "tcp://no-such-host.invalid:8786"])
def test_malformed_or_unknown_addresses_are_cluster_errors(address):
    with pytest.raises(ClusterError, match=f"--scheduler {re.escape(address)}"):
        check_scheduler(address, timeout=2.0)


def test_the_cli_gives_exit_8_and_one_line_for_a_fake_scheduler(tmp_path, capsys, monkeypatch):
    from skystack.cli import main

    monkeypatch.setattr(executor, "HANDSHAKE_TIMEOUT_S", 0.3)
    (tmp_path / "l").mkdir()
    with _http_server() as url:
        rc = main(["stack", str(tmp_path / "l"), "-o", str(tmp_path / "o.fits"), "-q", "--scheduler", url])
    assert rc == 8
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Dask scheduler" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l"]


def test_a_real_scheduler_passes_the_check():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=":0",
                                  silence_logs=40) as cluster:
        check_scheduler(cluster.scheduler_address, timeout=5.0)
