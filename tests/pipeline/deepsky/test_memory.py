"""--memory-limit is honoured: peak RSS ≤ limit + 10 % + the command's baseline, for
frames totalling several times the limit, and peak RSS does not grow with the number of
frames. Measured in subprocesses (ru_maxrss), so nothing else in the test session counts.

The baseline is what the interpreter holds for the same command on negligible data (5
frames of 128×160): every import, compiled kernel, thread and allocator arena the command
uses, with no frame worth counting. (Importing the modules alone, without running the
command, misses ~6 MB of them: threads' arenas, OpenCV's and astropy's lazily loaded parts,
and the preview and plot writers.)
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from skystack.testing.synthetic import make_deepsky

LIMIT_MB = 24
SHAPE = (400, 500)  # 0.8 MB per frame as float32

RUN = textwrap.dedent("""
    import resource, sys
    from skystack.cli import main
    rc = main(sys.argv[1:])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sys.exit(rc)
""")


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_deepsky(n_frames=5, shape=(128, 160), seed=2, max_shift=3.0, max_rot_deg=0.5,
                 star_density=4e-3).write_fits(folder)
    return folder


def _baseline_mb(tiny, tmp_path, *flags):
    """Peak RSS of the same command, with the same flags, on the tiny set."""
    return _peak_mb(["stack", str(tiny), "-o", str(tmp_path / "tiny.fits"), "-q", *flags])


def _peak_mb(args):
    r = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    return float(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    out = {}
    s = make_deepsky(n_frames=90, shape=SHAPE, seed=4, max_shift=8.0, max_rot_deg=1.0, trail_frame=5,
                     extended=False)
    root = tmp_path_factory.mktemp("mem")
    paths = s.write_fits(root / "all")
    for n in (30, 90):
        (root / f"list{n}.txt").write_text("\n".join(str(p) for p in paths[:n]))
        out[n] = root / f"list{n}.txt"
    return out


def test_peak_rss_within_limit_and_flat_in_frame_count(sets, tiny, tmp_path):
    base = _baseline_mb(tiny, tmp_path, "--method", "sigma", "--no-preview")
    frames_mb = 90 * SHAPE[0] * SHAPE[1] * 4 / 2**20
    assert frames_mb > 2.5 * LIMIT_MB  # the frames do not fit the budget
    peaks = {}
    for n, lst in sets.items():
        peaks[n] = _peak_mb(["stack", str(lst), "-o", str(tmp_path / f"o{n}.fits"), "--method", "sigma",
                             "--memory-limit", f"{LIMIT_MB}M", "-q", "--no-preview"])
    allowed = base + 1.1 * LIMIT_MB
    assert peaks[90] <= allowed, f"peak {peaks} MB > {allowed:.0f} MB (baseline {base:.0f} MB)"
    assert peaks[90] <= 1.1 * peaks[30] + 2, f"peak RSS grows with the number of frames: {peaks}"


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    """10 one-shot-colour (RGGB) frames of 800×1200: 11.5 MB each once demosaiced, 115 MB in
    all, about twice a 64 MB budget."""
    s = make_deepsky(n_frames=10, shape=(800, 1200), seed=9, max_shift=10.0, max_rot_deg=1.0, trail_frame=2,
                     bayer="RGGB", star_density=4e-4)
    folder = tmp_path_factory.mktemp("cfa")
    s.write_fits(folder)
    return folder


def test_peak_rss_at_64M_on_colour_frames(colour_set, tiny, tmp_path):
    """--memory-limit 64M with the defaults (rejection stack, preview and quality plot):
    phase 1, phase 2 and the outputs all inside limit + 10 % + the command's baseline."""
    peak = _peak_mb(["stack", str(colour_set), "-o", str(tmp_path / "c.fits"), "--memory-limit", "64M", "-q"])
    allowed = _baseline_mb(tiny, tmp_path) + 1.1 * 64
    assert peak <= allowed, f"peak {peak:.0f} MB > {allowed:.0f} MB"


def test_peak_rss_at_64M_on_the_seestar_subs(shared_data, tiny, tmp_path):
    """The issue's case: 18 real 1080×1920 GRBG subs, sigma, --memory-limit 64M."""
    lights = [shared_data / "seestar-m94" / "session1", shared_data / "seestar-m94" / "session2"]
    if not all(p.is_dir() for p in lights):
        pytest.skip("the Seestar subs are absent")
    peak = _peak_mb(["stack", *map(str, lights), "-o", str(tmp_path / "m94.fits"), "--method", "sigma",
                     "--memory-limit", "64M", "-q"])
    allowed = _baseline_mb(tiny, tmp_path, "--method", "sigma") + 1.1 * 64
    assert peak <= allowed, f"peak {peak:.0f} MB > {allowed:.0f} MB"


COVERAGE = textwrap.dedent("""
    import sys
    from skystack.pipeline.deepsky.phase2 import coverage_of

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: the imports' own peak goes
    before = status("VmRSS")
    cov = coverage_of(sys.argv[1])
    assert cov.shape == (2000, 4000) and cov[5, 6] == 9 and cov[0, 0] == 7, cov
    print(status("VmHWM") - before)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_coverage_of_a_colour_count_is_read_without_holding_the_file(tmp_path):
    """The colour count accumulator (H, W, 3) is read through a map, strip by strip: the
    strips' pages must leave the resident set as it goes (they counted until the map closed,
    and made the peak of small colour runs). Here 92 MB of counts give a 31 MB map; the peak
    may grow by that map and a strip, not by the file (measured in a process that never
    held the file: this one wrote it)."""
    import numpy as np

    path = tmp_path / "count.npy"
    counts = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(2000, 4000, 3))
    counts[:] = 7
    counts[5, 6, 2] = 9
    counts.flush()
    del counts
    r = subprocess.run([sys.executable, "-c", COVERAGE, str(path)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    grew = float(r.stdout.strip().splitlines()[-1])
    assert grew < 31 + 30, f"peak RSS grew by {grew:.0f} MB reading a 92 MB count file"
