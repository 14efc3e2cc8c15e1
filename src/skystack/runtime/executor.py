"""Run many small tasks on Dask: the local threaded scheduler by default, or an existing
``dask.distributed`` cluster with ``--scheduler tcp://host:port``.

Tasks are plain functions of small, picklable arguments (paths, indices, matrices) that
return small results; ``on_result(i, result)`` is called in the calling thread as each one
finishes (used for the resume journal and progress), so nothing image-sized ever travels
through the scheduler.

Dask is the design's distribution layer for both (one code path from a laptop to a
cluster); its threaded scheduler costs ~0.06 s of import at start-up, measured.
"""
from __future__ import annotations

import functools
import importlib
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import dask.threaded
from dask.callbacks import Callback

from ..errors import ClusterError
from .memory import current_rss

# Threads are the default: OpenCV and Numba kernels (nogil) release the GIL, and threads
# share the decoded-frame caches and compiled kernels instead of each process recompiling.


def run_tasks(fn: Callable[..., Any], args: Sequence[tuple], *, workers: int, scheduler: str | None,
              on_result: Callable[[int, Any], None]) -> None:
    """Run ``fn(*args[i])`` for every i; call ``on_result(i, value)`` as each completes.

    An exception in a task propagates (tasks turn per-frame problems into values
    themselves; what escapes is a real error).
    """
    if not args:
        return
    if scheduler:
        _run_distributed(fn, args, scheduler, on_result)
    else:
        _run_threaded(fn, args, workers, on_result)


def _run_threaded(fn, args, workers, on_result) -> None:
    workers = max(1, min(int(workers), len(args)))
    if workers == 1:  # no scheduler thread between the caller and its one worker
        for i, a in enumerate(args):
            on_result(i, fn(*a))
        return
    keys = [("skystack-task", i) for i in range(len(args))]
    # functools.partial hides the arguments from dask's graph traversal: a tuple argument
    # that happens to start with a callable, or equals a key, must stay plain data.
    dsk = {k: (functools.partial(fn, *a),) for k, a in zip(keys, args)}

    class _Notify(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # runs in this thread
            if isinstance(key, tuple) and key and key[0] == "skystack-task":
                on_result(key[1], result)

    # One final key per task would make dask keep every result until the end; results are
    # small by contract, so that is fine, and each is handed on as soon as it exists.
    with _Notify():
        dask.threaded.get(dsk, keys, num_workers=workers)


# How long the scheduler check waits to connect, then for the scheduler's handshake.
HANDSHAKE_TIMEOUT_S = 10.0
# A Dask handshake is a few dozen bytes (compression, Python and pickle versions); a
# length prefix above this is some other protocol's bytes read as a number.
_MAX_HANDSHAKE_BYTES = 64 * 1024


def check_scheduler(scheduler: str, timeout: float | None = None) -> None:
    """Fail fast, before any work, unless a Dask scheduler answers at ``scheduler``.

    A plain TCP connect answers in milliseconds where the Dask client retries for its whole
    timeout. Then the scheduler must speak: on a new connection a Dask server sends its
    handshake (a length-prefixed msgpack message) at once. A server that says nothing (an
    HTTP server waits for a request) or something else (an SSH banner) is refused here:
    handed to the Dask client it would wait for ever, or take the first bytes of an HTTP
    answer for a frame length and try to allocate exabytes.

    Parameters
    ----------
    scheduler : str
        ``tcp://host:port`` (or ``host:port``); ``tls://`` is connected only.
    timeout : float, optional
        Seconds for the connect and again for the handshake (default
        :data:`HANDSHAKE_TIMEOUT_S`).

    Raises
    ------
    ClusterError
        One line saying what answered, or why nothing did.
    """
    timeout = HANDSHAKE_TIMEOUT_S if timeout is None else float(timeout)
    text = scheduler.strip()
    try:
        u = urlparse(text if "://" in text else f"tcp://{text}")
        port, host = u.port, u.hostname
    except ValueError:  # tcp://host:notaport, tcp://[::1:8786
        u, port, host = None, None, None
    if u is None or u.scheme not in ("tcp", "tls") or not host or not port:
        raise ClusterError(f"--scheduler {scheduler}: expected an address such as tcp://host:8786")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, UnicodeError) as e:  # refused, unreachable, timed out, unknown host
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ClusterError(
            f"--scheduler {scheduler}: cannot reach the Dask scheduler ({why}); "
            "check the address and that `dask scheduler` is running") from None
    with sock:
        if u.scheme == "tls":
            return  # the TLS handshake comes first; the Dask client checks the rest
        _expect_handshake(sock, scheduler, timeout)


def _expect_handshake(sock: socket.socket, scheduler: str, timeout: float) -> None:
    not_dask = f"--scheduler {scheduler}: this is not a Dask scheduler"
    deadline = time.monotonic() + timeout
    try:
        head = _recv_exactly(sock, 8, deadline)
        size = int.from_bytes(head, "little")
        if not 16 <= size <= _MAX_HANDSHAKE_BYTES:
            raise ClusterError(f"{not_dask} (it answered {head!r})")
        body = _recv_exactly(sock, size, deadline)
    except TimeoutError:
        raise ClusterError(f"{not_dask} (no Dask handshake within {timeout:g} s: another kind of server "
                           "listens there)") from None
    except ConnectionError as e:
        raise ClusterError(f"{not_dask} (it closed the connection: {e})") from None
    except OSError as e:
        raise ClusterError(f"--scheduler {scheduler}: the connection failed ({e.strerror or e})") from None
    try:
        from distributed.protocol.core import loads
        from distributed.protocol.utils import unpack_frames

        info = loads(unpack_frames(body), deserialize=False)
    except Exception:  # any decoding failure means the bytes are not Dask's
        info = None
    if not isinstance(info, dict) or "pickle-protocol" not in info:
        raise ClusterError(f"{not_dask} (its first message is not a Dask handshake)")


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("end of stream")
        buf += chunk
    return bytes(buf)


def connect(scheduler: str, timeout: float = 10.0):
    """A ``distributed.Client`` for ``scheduler`` or a :class:`ClusterError` saying why not."""
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover - distributed is a dependency
        raise ClusterError(f"--scheduler {scheduler}: dask.distributed is not installed ({e})") from e
    try:
        return Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ClusterError(
            f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e.__class__.__name__}: {e}); "
            "check the address and that `dask scheduler` is running") from e


@dataclass(frozen=True)
class ClusterShape:
    """What a cluster offers a run: its worker threads, and the memory one task may use on
    the tightest worker (``None`` when the workers set no memory limit)."""

    workers: int
    threads: int
    thread_memory: int | None


# Dask pauses a worker at 80 % of its memory limit (distributed.worker.memory.pause): a
# task's share is what is left below that once the worker holds skystack's code.
_WORKER_USABLE = 0.8


def _worker_facts(modules: Sequence[str]) -> dict[str, Any]:
    """Run on every worker: skystack's version there, and the worker's RSS once
    ``modules`` (the ones its tasks run) are loaded: named by the caller, so this layer
    imports nothing above it."""
    for name in modules:
        importlib.import_module(name)
    return {"version": importlib.import_module("skystack").__version__, "rss": current_rss()}


def cluster_shape(scheduler: str, version: str, modules: Sequence[str] = ()) -> ClusterShape:
    """Ask the cluster at ``scheduler`` for its workers (``Client.scheduler_info()``) and
    check that every one runs skystack ``version`` (``modules``: what its tasks import,
    loaded before each worker's memory is measured).

    Raises
    ------
    ClusterError
        No worker, a worker that cannot import skystack, or one with another version (its
        results could differ: outputs are only bit-identical for one version).
    """
    client = connect(scheduler)
    try:
        info = client.scheduler_info(n_workers=-1)["workers"]
        if not info:
            raise ClusterError(f"--scheduler {scheduler}: the cluster has no worker")
        facts = client.run(_worker_facts, tuple(modules), on_error="return")
    finally:
        client.close()
    odd = []
    for addr, f in sorted(facts.items()):
        if isinstance(f, BaseException):
            odd.append(f"{addr} cannot run skystack ({f.__class__.__name__}: {f})")
        elif f["version"] != version:
            odd.append(f"{addr} runs skystack {f['version']}")
    if odd:
        raise ClusterError(f"--scheduler {scheduler}: this is skystack {version}, but " + "; ".join(odd) +
                           "; install the same version on every worker")
    threads = sum(int(w.get("nthreads", 1)) for w in info.values())
    shares = []
    for addr, w in info.items():
        limit = int(w.get("memory_limit") or 0)
        if limit > 0:
            rss = int(facts.get(addr, {}).get("rss", 0))
            shares.append(max(0, int(limit * _WORKER_USABLE) - rss) // max(1, int(w.get("nthreads", 1))))
    return ClusterShape(workers=len(info), threads=threads, thread_memory=min(shares) if shares else None)


def _run_distributed(fn, args, scheduler, on_result) -> None:
    from distributed import as_completed

    client = connect(scheduler)
    try:
        futures = client.map(fn, *zip(*args), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures, loop=client.loop):
            on_result(index[fut.key], fut.result())
            fut.release()
    finally:
        client.close()
