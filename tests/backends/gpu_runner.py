"""Run GPU-backend tasks and return their results, for the parity tests.

Two ways in:

- ``python gpu_runner.py TASKS.pkl RESULTS.pkl`` in a subprocess started with
  ``NUMBA_ENABLE_CUDASIM=1`` (CI, no GPU): the backends' device layer is then NumPy and the
  numba.cuda kernels run in Numba's CUDA simulator. The simulator must be switched on
  before numba is first imported, which is why this is a separate process.
- :func:`run_tasks` in-process on a machine with CuPy and a CUDA device (native run).

A task is a dict: ``backend`` ("cupy" or "cv2cuda": the latter with the stand-in
``cv2.cuda`` of fake_cv2cuda.py), ``call`` ("combine", "combine_warped", "warp" or "threads") and its
arguments. Results are plain arrays, so the caller compares them with the CPU backend's.
"""
from __future__ import annotations

import pickle
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _install_fake_cv2cuda() -> None:
    import cv2

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import fake_cv2cuda

    cv2.cuda = fake_cv2cuda.module()


def _backend(name: str):
    from numba import config

    simulate = bool(config.ENABLE_CUDASIM)  # the simulator run (subprocess), else a native GPU
    if name == "cupy":
        from skystack.backends.cupy import CupyBackend

        return CupyBackend(simulator=simulate)
    if name == "cv2cuda":
        _install_fake_cv2cuda()
        from skystack.backends.cv2cuda import Cv2CudaBackend

        return Cv2CudaBackend(simulator=simulate)
    raise ValueError(name)


def _band(res) -> dict:
    return {"image": res.image, "count": res.count, "rejected": res.rejected}


def _transfer_bytes(backend) -> tuple[int, int]:
    timings = getattr(backend, "timings", None)
    if timings is None:
        return 0, 0
    t = timings()
    return t.bytes_h2d, t.bytes_d2h


def run_task(task: dict, backends: dict) -> dict:
    name = task["backend"]
    if name not in backends:
        backends[name] = _backend(name)
    be = backends[name]
    before = _transfer_bytes(be)
    t0 = time.perf_counter()
    if task["call"] == "combine":
        out = _band(be.combine_band(task["jobs"], task["out_shape"], task["weights"], task["options"]))
    elif task["call"] == "combine_warped":
        out = _band(be.combine_warped(task["band"], task["weights"], task["options"]))
    elif task["call"] == "warp":
        out = {"warped": be.warp(task["rows"], task["matrix"], task["out_shape"], task["interpolation"])}
    elif task["call"] == "threads":
        # several bands at once on one backend instance, as Dask worker threads call it
        results: dict[int, dict] = {}
        errors: list[BaseException] = []

        def work(i: int, args) -> None:
            try:
                results[i] = _band(be.combine_band(*args))
            except BaseException as e:  # re-raised in the main thread below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(task["calls"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        out = {"bands": [results[i] for i in range(len(task["calls"]))]}
    else:
        raise ValueError(task["call"])
    out["seconds"] = time.perf_counter() - t0
    after = _transfer_bytes(be)
    out["bytes_h2d"], out["bytes_d2h"] = after[0] - before[0], after[1] - before[1]
    layer = getattr(be, "layer_name", None) or getattr(be, "stacks_on", None)
    out["layer"] = layer
    return out


def run_tasks(tasks: dict[str, dict]) -> dict[str, dict]:
    backends: dict = {}
    return {key: run_task(task, backends) for key, task in tasks.items()}


def main(argv: list[str]) -> int:
    from numba import config

    if not config.ENABLE_CUDASIM:
        print("gpu_runner.py: set NUMBA_ENABLE_CUDASIM=1 (no GPU: the simulator must run the kernels)",
              file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        tasks = pickle.load(f)
    results = run_tasks(tasks)
    with open(argv[2], "wb") as f:
        pickle.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
