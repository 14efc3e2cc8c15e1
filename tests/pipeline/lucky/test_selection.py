"""Per-point selection: with patchy seeing each alignment point takes its own best frames,
also frames outside the global pool; with uniform seeing it takes the globally best."""
from __future__ import annotations

import pytest

import skystack
from skystack.errors import UsageError
from skystack.jobs import LuckyJob
from skystack.options import LuckyOptions, OutputOptions
from skystack.pipeline.lucky.run import run_lucky
from skystack.testing.planetary import Seeing, make_lunar_video
from skystack.types import Fate

# sharpness varies by exp(±1) across the field, in patches of ~64 px: each region's best
# frames differ (the shared benchmark's lunar videos use the same model)
PATCHY = Seeing(jitter_px=1.5, distortion_px=0.5, distortion_cell_px=64.0, blur_sigma=(0.6, 2.2),
                noise_adu=2.0, patchy=1.0, patchy_cell_px=72.0)


@pytest.fixture(scope="module")
def patchy_video():
    return make_lunar_video(100, (256, 256), seed=8, seeing=PATCHY)


@pytest.fixture(scope="module")
def patchy_frames(patchy_video):
    return patchy_video.as_frameset()


def _run(frames, **kw):
    job = LuckyJob(lucky=LuckyOptions(keep="10%", ap_size=48, **kw), output=OutputOptions(output=None), quiet=True)
    return run_lucky(frames, job)


def test_patchy_seeing_is_detected_and_points_reach_beyond_the_global_pool(patchy_frames):
    r = _run(patchy_frames)
    sel = r.report["selection"]
    assert sel["local_weight"] > 0.2  # the local residuals correlate between neighbouring cells
    # frames ranked outside the best 2 x 10 globally are the best somewhere
    assert sel["beyond_pool"] > 0 and sel["frames_read"] > 20
    ranks = [f.metrics["rank"] for f in r.frames if f.fate is Fate.USED]
    assert max(ranks) > 20
    # a frame used at a few points only is not used elsewhere: its ap_used says where
    partial = [f for f in r.frames if f.fate is Fate.USED and f.metrics["ap_used"] < r.alignment_points / 2]
    assert partial


def test_per_point_selection_is_closer_to_the_truth(patchy_video, patchy_frames, rmse_to):
    """The stack with each point's own best frames is closer to the truth than the same
    multi-point stack of the globally best frames, and than global alignment only."""
    local = _run(patchy_frames)
    glob = _run(patchy_frames, local_weight=0.0)
    assert glob.report["selection"]["frames_read"] == 10  # the global choice everywhere
    plain = _run(patchy_frames, multipoint=False)
    e_local, e_glob, e_plain = (rmse_to(r.image, patchy_video.truth) for r in (local, glob, plain))
    # measured: 1.25, 1.71, 1.75 ADU
    assert e_local < 0.85 * e_glob and e_glob <= e_plain


def test_uniform_seeing_takes_the_global_choice(moon_frames):
    r = skystack.lucky(moon_frames, None, keep="10%", ap_size=48)
    assert r.report["selection"]["local_weight"] < 0.1
    assert r.report["selection"]["beyond_pool"] == 0


def test_quality_weights_bring_the_stack_closer_to_the_truth(moon_video, moon_frames, rmse_to):
    """Sharper frames counting more (the default) beats the kept frames counted alike, in
    multi-point and global stacks, and makes the kept count matter far less: every frame,
    weighted by its quality, comes close to the best 10 %."""
    truth = moon_video.truth

    def err(**kw):
        r = skystack.lucky(moon_frames, None, ap_size=48, quiet=True, **kw)
        return rmse_to(r.image, truth), r

    e_multi, r = err(keep="10%")
    e_multi_equal, _ = err(keep="10%", quality_weight=0)
    e_glob, _ = err(keep="10%", multipoint=False)
    e_glob_equal, _ = err(keep="10%", multipoint=False, quality_weight=0)
    e_all, _ = err(keep="100%", multipoint=False)
    e_all_equal, _ = err(keep="100%", multipoint=False, quality_weight=0)
    # measured: 1.887 against 1.937, 2.123 against 2.176, 2.193 against 2.963 ADU
    assert e_multi < 0.985 * e_multi_equal
    assert e_glob < 0.985 * e_glob_equal
    assert e_all < 0.8 * e_all_equal and e_all < 1.05 * e_glob
    # the surface default, in the report; each used frame's weight there (1: the best frame)
    assert r.report["selection"]["quality_weight"] == 7.0
    used = sorted((f for f in r.frames if f.fate is Fate.USED), key=lambda f: f.metrics["rank"])
    assert used[0].weight == pytest.approx(1.0)
    w = [f.weight for f in used]
    assert all(0 < x <= 1 for x in w) and w == sorted(w, reverse=True) and w[-1] < 0.9


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 101, "x"])
def test_quality_weight_refuses_hostile_values(moon_frames, bad):
    with pytest.raises(UsageError, match="quality-weight"):
        skystack.lucky(moon_frames, None, quality_weight=bad)
