"""The real Moon video (PlanetarySystemStacker's example AVI) through the lucky pipeline and the real reader."""
from __future__ import annotations

import json

import numpy as np
import pytest

from skystack.enhance.wavelets import noise_sigma
from skystack.io import open_frames
from skystack.jobs import LuckyJob
from skystack.options import LuckyOptions, OutputOptions
from skystack.pipeline.lucky.run import run_lucky
from skystack.quality.metrics import local_quality
from skystack.types import Fate


@pytest.fixture(scope="module")
def moon_avi(shared_data):
    p = shared_data / "pss-moon-avi" / "short_video.avi"
    if not p.exists():
        pytest.skip(f"real data {p} is absent")
    return p


def test_real_moon_video_stacks(tmp_path, moon_avi):
    out = tmp_path / "moon.tif"
    # big APs keep the test short
    job = LuckyJob(lucky=LuckyOptions(keep="10%", ap_size=128), output=OutputOptions(output=str(out)))
    r = run_lucky([str(moon_avi)], job)
    assert r.mode == "surface" and r.n_frames == 101
    assert r.report["summary"]["kept"] == 11 and r.n_used >= 11
    assert r.image.shape == (960, 1280)  # a grey video in a colour container: read as mono
    assert r.alignment_points > 100
    # the capture's seeing moves it by about a pixel or two (SOURCES.md: sub-pixel to ~1 px
    # against frame 0; the reference is the mean of the best frames)
    s = r.report["summary"]["shift_px"]
    assert max(abs(v) for v in s["min"] + s["max"]) < 5
    assert not [f for f in r.frames if f.fate in (Fate.UNREADABLE, Fate.FAILED_REGISTRATION)]
    # the stack is far less noisy than the best single frame and keeps its detail
    frames = open_frames([str(moon_avi)])
    best = min((f for f in r.frames if f.fate is Fate.USED), key=lambda f: f.metrics["rank"])
    single = frames.luminance(best.index)
    stack = np.nan_to_num(r.image, nan=float(np.nanmedian(r.image)))
    assert noise_sigma(stack[32:-32, 32:-32]) < 0.6 * noise_sigma(single[32:-32, 32:-32])
    # and is sharper than the plain mean of all frames (as noise-free, but smeared by the
    # seeing): more fine-scale energy in boxes all over the field
    ys, xs = np.mgrid[96:960 - 96:128, 96:1280 - 96:128]
    boxes = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    plain = np.mean([frames.luminance(i) for i in range(len(frames))], axis=0)
    gain = local_quality(stack, boxes, 96) - local_quality(plain, boxes, 96)
    assert np.mean(gain) > 0.3 and np.mean(gain > 0) > 0.9
    assert not np.isnan(r.image).any()  # the edges no frame covered are filled (issue: 54 NaN at x = 0)
    rep = json.loads(out.with_name("moon.tif.report.json").read_text())
    assert rep["summary"]["frames"] == 101 and len(rep["frames"]) == 101
    assert (tmp_path / "moon.compare.png").exists() and (tmp_path / "moon.quality.png").exists()
