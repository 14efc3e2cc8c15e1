"""Shared helpers for the benchmark scripts: cached synthetic sets, timed subprocesses."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "src", REPO / "kernels"):  # run from a checkout without installing
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

DATA = Path(os.environ.get("SKYSTACK_BENCH_DATA", REPO / "bench-data"))


def compile_bytecode(src: Path = REPO) -> None:
    """Compile ``src``'s Python files to bytecode before timing its commands, as an installed
    package has them: where PYTHONDONTWRITEBYTECODE is set (e.g. a CI image) or the sources
    were edited since, every timed run would compile the modules again (0.1-0.4 s of a
    1000-frame lucky run's start-up, measured on the project's 2-core machine)."""
    import compileall

    for part in ("src", "kernels"):
        if (src / part).is_dir():
            compileall.compile_dir(str(src / part), quiet=1)


def synthetic_set(name: str, **params) -> tuple[Path, "object"]:
    """Write (once) and return a synthetic deep-sky set in bench-data/<name>/, with the
    generator object for the truth. Reused when truth.json records the same parameters."""
    from skystack.testing.synthetic import make_deepsky

    folder = DATA / name
    synth = make_deepsky(**params)
    truth = folder / "truth.json"
    if truth.exists():
        old = json.loads(truth.read_text())
        if old.get("params") == synth.truth()["params"] and len(list(folder.glob("*.fits"))) == len(synth):
            return folder, synth
    print(f"writing {len(synth)} synthetic frames to {folder} ...", file=sys.stderr)
    synth.write_fits(folder, progress=True)
    return folder, synth


@dataclass
class Measured:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> Measured:
    """Run ``cmd`` under ``/usr/bin/time -v`` (peak RSS of the whole process); wall time
    from this side. Falls back to ru_maxrss of the child when /usr/bin/time is absent."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "kernels"),
                                                            os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    p = subprocess.run(timer + cmd, capture_output=True, text=True, env=full_env, cwd=cwd)
    wall = time.perf_counter() - t0
    peak = float("nan")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if m:
        peak = int(m.group(1)) / 1024
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return Measured(wall, peak, p.returncode, p.stdout, p.stderr)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = " | ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "-+-".join("-" * w for w in widths)]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(lines)
