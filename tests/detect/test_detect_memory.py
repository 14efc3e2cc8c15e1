"""Detection's working memory against the bounds the phase-1 planner uses
(:func:`skystack.detect.working_bytes`): the peak RSS growth of one call, measured in a
subprocess after a warm-up call (so that loading compiled kernels does not count), with the
kernel's peak-RSS mark reset through /proc/self/clear_refs (Linux)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from skystack.detect import working_bytes
from skystack.detect.orb import orb_working_bytes
from skystack.detect.stars import detection_working_bytes

SHAPE = (1200, 1600)

SCRIPT = textwrap.dedent("""
    import ctypes, gc, json, sys
    import cv2
    import numpy as np
    from skystack.detect.orb import orb_features
    from skystack.detect.stars import detect_stars
    from skystack.options import RegisterOptions
    from skystack.register.deepsky import Reference, register_frame
    from skystack.testing.synthetic import make_deepsky

    cv2.setNumThreads(1)
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        trim = None

    def rss():
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
        return out["VmRSS"], out["VmHWM"]

    def peak_of(fn, frame):
        gc.collect()
        if trim is not None:
            trim(0)  # freed heap memory back to the system: the start is what is live
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak mark (VmHWM) to the current RSS
        start, _ = rss()
        fn(frame)
        return rss()[1] - start

    h, w = (int(v) for v in sys.argv[1:3])
    s = make_deepsky(n_frames=2, shape=(h, w), seed=41, hot_pixel_fraction=3e-4)
    frames = [s.frame(i).astype(np.float32) for i in range(2)]
    frames[1][:, : w // 5] = np.nan  # as after a warp
    opt = RegisterOptions(method="stars")
    ref = Reference.build(frames[0], opt)
    raw = s.frame(0)
    warm = make_deepsky(n_frames=1, shape=(240, 320), seed=42).frame(0)
    detect_stars(warm); detect_stars(warm.astype(np.float32)); orb_features(warm.astype(np.float32))
    register_frame(warm.astype(np.float32), ref, opt)
    print(json.dumps({
        "stars": max(peak_of(detect_stars, f) for f in frames),
        "stars_uint16": peak_of(detect_stars, raw),
        "register": peak_of(lambda f: register_frame(f, ref, opt), frames[1]),
        "orb": peak_of(orb_features, frames[0]),
    }))
""")


@pytest.fixture(scope="module")
def peaks():
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak-RSS mark")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, SHAPE)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# a transparent huge page (2 MiB) more or less is allocator granularity, not detection
SLACK = 2 << 20


def test_star_detection_stays_within_its_bound(peaks):
    bound = detection_working_bytes(SHAPE, np.float32)
    assert 0 <= peaks["stars"] <= bound + SLACK, (peaks, bound)
    assert peaks["stars_uint16"] <= detection_working_bytes(SHAPE, np.uint16) + SLACK, peaks
    # the point of it: far less than one float32 copy of the frame (the full-frame
    # detection it replaced held ~4.3 of them)
    assert bound < SHAPE[0] * SHAPE[1] * 4


def test_registration_stays_within_the_planners_bound(peaks):
    assert peaks["register"] <= working_bytes(SHAPE, np.float32, "stars") + SLACK, peaks


def test_orb_stays_within_its_bound(peaks):
    assert peaks["orb"] <= orb_working_bytes(SHAPE, np.float32) + SLACK, peaks
    assert working_bytes(SHAPE, np.float32, "auto") == max(orb_working_bytes(SHAPE), detection_working_bytes(SHAPE))


def test_a_dtype_read_by_conversion_counts_its_copy():
    h, w = SHAPE
    assert detection_working_bytes(SHAPE, ">u2") - detection_working_bytes(SHAPE, np.uint16) == 4 * h * w
    assert detection_working_bytes(SHAPE, np.uint16) == detection_working_bytes(SHAPE, np.float32)
