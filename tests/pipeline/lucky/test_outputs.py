"""What a lucky run writes: DATE-OBS from the SER timestamps, previews stretched for the
object, no NaN at the edges."""
from __future__ import annotations

import datetime as dt

import cv2
import numpy as np
import pytest
from astropy.io import fits

import skystack
from skystack.io import write_ser
from skystack.io.ser import BAYER_RGGB
from skystack.pipeline.lucky.stack import fill_uncovered
from skystack.register.planetary import valid_rect
from skystack.testing.planetary import Seeing, make_lunar_video, make_planet_video
from skystack.types import Fate


@pytest.fixture(scope="module")
def timed_ser(tmp_path_factory):
    """A 30-frame SER at 50 frames/s starting 2024-08-01T02:03:04Z, with its timestamps."""
    p = tmp_path_factory.mktemp("timed") / "jupiter.ser"
    v = make_lunar_video(30, (96, 128), seed=3)
    t0 = dt.datetime(2024, 8, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    times = [t0 + dt.timedelta(milliseconds=20 * i) for i in range(30)]
    write_ser(p, v.frames(), timestamps=times, date_utc=t0)
    return p, times


def test_date_obs_is_the_mid_time_of_the_stacked_frames(tmp_path, timed_ser):
    p, times = timed_ser
    out = tmp_path / "s.fits"
    r = skystack.lucky([str(p)], out, keep="5", multipoint=False, preview=False)
    used = sorted(f.index for f in r.frames if f.fate is Fate.USED)
    assert len(used) == 5
    first, last = times[used[0]], times[used[-1]]
    h = fits.getheader(out)
    mid = dt.datetime.fromisoformat(h["DATE-OBS"]).replace(tzinfo=dt.timezone.utc)
    assert abs((mid - (first + (last - first) / 2)).total_seconds()) < 1e-3
    mjd = lambda t: (t - dt.datetime(1858, 11, 17, tzinfo=dt.timezone.utc)).total_seconds() / 86400  # noqa: E731
    assert h["EXPSTART"] == pytest.approx(mjd(first), abs=1e-7)
    assert h["EXPEND"] == pytest.approx(mjd(last), abs=1e-7)
    assert h["TIMESYS"] == "UTC" and h["STACKCNT"] == 5 == h["NCOMBINE"]
    assert r.report["capture"]["mid_utc"].startswith("2024-08-01T02:03:04")


def test_no_timestamps_no_date_obs(tmp_path):
    p = tmp_path / "plain.ser"
    write_ser(p, make_lunar_video(12, (96, 128), seed=4).frames())
    out = tmp_path / "s.fits"
    r = skystack.lucky([str(p)], out, keep="4", multipoint=False, preview=False)
    assert "DATE-OBS" not in fits.getheader(out) and r.report["capture"] is None


def test_planet_preview_shows_the_disk_unclipped(tmp_path):
    """The preview runs linearly from the sky to the disk's brightest pixel: the disk is
    never white-clipped and its belts keep their contrast (a deep-sky stretch put the
    disk at pure white over coloured noise)."""
    v = make_planet_video(30, (120, 150), seed=8, radius_px=28.0, bayer="RGGB")
    p = tmp_path / "jupiter.ser"
    write_ser(p, v.frames(), BAYER_RGGB)
    out = tmp_path / "j.fits"
    r = skystack.lucky([str(p)], out, keep="30%")
    assert r.mode == "planet"
    prev = cv2.imread(str(tmp_path / "j.preview.png"), cv2.IMREAD_UNCHANGED)
    lum = prev.astype(np.float32).mean(axis=2)
    disk = r.image.mean(axis=2) > 0.5 * np.percentile(r.image.mean(axis=2), 99.5)
    assert prev[disk].max() <= 255 and (prev[disk] == 255).mean() < 0.001  # the brightest pixel only
    assert np.median(lum[~disk]) < 10  # the sky is dark, not mid-grey
    # belts and zones span a good part of the range on the disk
    assert np.percentile(lum[disk], 95) - np.percentile(lum[disk], 5) > 60
    comp = cv2.imread(str(tmp_path / "j.compare.png"), cv2.IMREAD_UNCHANGED)
    assert comp.shape[1] == 2 * 150 + 4


def test_uncovered_edges_are_filled_not_nan():
    """Pixels no frame covered (a frame edge every kept frame drifted away from) take the
    value of the nearest covered pixel: no NaN, no black notch in the preview."""
    rng = np.random.default_rng(3)
    image = rng.normal(100, 10, (40, 60)).astype(np.float32)
    weight = np.ones((40, 60), np.float32)
    weight[:, :3] = 0.0  # the left edge: no frame
    weight[30:, 58:] = 0.0  # a corner
    image[weight == 0] = np.nan
    filled, n = fill_uncovered(image, weight)
    assert n == 40 * 3 + 10 * 2 and not np.isnan(filled).any()
    assert np.array_equal(filled[:, 3:58], image[:, 3:58])  # covered pixels untouched
    assert np.array_equal(filled[:, 0], image[:, 3]) and filled[35, 59] == image[35, 57]
    colour = np.repeat(image[..., None], 3, axis=2)
    filled3, _ = fill_uncovered(colour, weight)
    assert np.array_equal(filled3[..., 1], filled)


def test_a_drifting_video_has_no_nan():
    v = make_lunar_video(40, (96, 128), seed=9, seeing=Seeing(jitter_px=0.5, distortion_px=0.2,
                                                                 drift_px_per_frame=(0.6, 0.0)))
    for mp in (False, True):
        r = skystack.lucky(v.as_frameset(), None, keep="50%", multipoint=mp, ap_size=32)
        assert not np.isnan(r.image).any() and r.report["edges"]["policy"] == "fill"


@pytest.mark.parametrize("multipoint", [False, True])
def test_compare_shows_the_best_frame_black_where_it_does_not_reach(tmp_path, multipoint):
    """The comparison's left half is the best frame on the reference grid: where a drift
    left it short of the reference, black margins, not the replicated edge's streaks."""
    v = make_lunar_video(40, (96, 128), seed=9, seeing=Seeing(jitter_px=0.5, distortion_px=0.2,
                                                                 drift_px_per_frame=(0.6, 0.3)))
    p = tmp_path / "m.ser"
    write_ser(p, v.frames())
    r = skystack.lucky([str(p)], tmp_path / "m.fits", keep="25%", multipoint=multipoint, ap_size=32)
    best = next(f for f in r.frames if f.fate is Fate.USED and f.metrics["rank"] == 1)
    sx, sy = -best.transform.matrix[0, 2], -best.transform.matrix[1, 2]
    y0, y1, x0, x1 = valid_rect((96, 128), sx, sy)
    assert x0 >= 5 and y0 >= 3  # this video's best frame sits well off the reference
    left = cv2.imread(str(tmp_path / "m.compare.png"), cv2.IMREAD_UNCHANGED)[:, :128]
    inside = np.zeros(left.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert (left[~inside] == 0).all()
    assert (left[inside] == 0).mean() < 0.01  # the lunar surface itself is not black


@pytest.mark.parametrize("n_frames", [0, 1, 20_000])
def test_report_json_is_written_row_by_row(tmp_path, n_frames):
    """report.json holds the report exactly (indented, one line per frame) and is written
    a frame line at a time: writing a 20 000-frame report allocates a small part of its
    size, where joining the text had held it two or three times over (a 100 000-frame
    small-ROI video peaked at 496 MB instead of 269)."""
    import json
    import tracemalloc

    from skystack.output.write import write_json

    rows = [{"index": i, "path": "/data/jupiter.ser", "name": f"jupiter.ser#{i}", "fate": "rejected",
             "reason": "not selected", "transform": [[1.0, 0.0, 0.25 * i], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]],
             "metrics": {"quality": 0.001 * i, "rank": float(i)}} for i in range(n_frames)]
    report = {"kind": "lucky", "summary": {"frames": n_frames}, "frames": rows, "outputs": ["a.fits"]}
    path = tmp_path / "r.json"
    tracemalloc.start()
    try:
        write_json(path, report)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = path.read_text()
    assert json.loads(text) == report
    assert text.count("\n    {\"index\"") == n_frames and text.endswith("}\n")
    if n_frames > 1:
        assert peak < 0.1 * len(text), (peak, len(text))
