"""--memory-limit is honoured: peak RSS ≤ limit + 10 % + the interpreter baseline (Python
with skystack's imports and compiled kernels loaded), for frames totalling several times
the limit, and peak RSS does not grow with the number of frames. Measured in subprocesses
(ru_maxrss), so nothing else in the test session counts."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from skystack.testing.synthetic import make_deepsky

LIMIT_MB = 24
SHAPE = (400, 500)  # 0.8 MB per frame as float32

# what "the interpreter" holds before any frame is read: every import and compiled kernel a
# run uses, exercised once on tiny data (Numba loads kernels from its cache on first call)
BASELINE = textwrap.dedent("""
    import resource, numpy as np
    import skystack, skystack.pipeline.deepsky.run, skystack.io, skystack.backends.cpu, skystack.output.write
    import cv2, astropy.io.fits, dask.threaded, tqdm
    from _skystack_kernels.cpu.combine import combine_band
    from skystack.options import RegisterOptions
    from skystack.register.deepsky import Reference, register_frame, measure_frame
    b = np.zeros((3, 8, 8), np.float32)
    combine_band(b, np.ones(3, np.float32), 1, 0, 3.0, 3.0, 3, np.zeros((8, 8), np.float32),
                 np.zeros((8, 8), np.int32), np.zeros((3, 2), np.int64))
    img = np.random.default_rng(0).normal(100, 5, (64, 64)).astype(np.float32)
    o = RegisterOptions()
    measure_frame(img, o); register_frame(img, Reference.build(img, o), o)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
""")

RUN = textwrap.dedent("""
    import resource, sys
    from skystack.cli import main
    rc = main(sys.argv[1:])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sys.exit(rc)
""")


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


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


def test_peak_rss_within_limit_and_flat_in_frame_count(sets, tmp_path):
    base = float(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                                env=_env(), check=True).stdout.strip().splitlines()[-1])
    frames_mb = 90 * SHAPE[0] * SHAPE[1] * 4 / 2**20
    assert frames_mb > 2.5 * LIMIT_MB  # the frames do not fit the budget
    peaks = {}
    for n, lst in sets.items():
        peaks[n] = _peak_mb(["stack", str(lst), "-o", str(tmp_path / f"o{n}.fits"), "--method", "sigma",
                             "--memory-limit", f"{LIMIT_MB}M", "-q", "--no-preview"])
    allowed = base + 1.1 * LIMIT_MB
    assert peaks[90] <= allowed, f"peak {peaks} MB > {allowed:.0f} MB (baseline {base:.0f} MB)"
    assert peaks[90] <= 1.1 * peaks[30] + 2, f"peak RSS grows with the number of frames: {peaks}"
