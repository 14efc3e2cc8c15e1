"""Bad input: clear one-line messages naming the file, nothing lost, the run goes on where it can."""
from __future__ import annotations

import av
import numpy as np
import pytest

import skystack
from skystack.errors import NoFramesError
from skystack.io import open_frames, write_ser
from skystack.testing.planetary import ArrayFrames, bad_frame, make_lunar_video
from skystack.types import Fate

OPTS = dict(keep="25%", multipoint=False, preview=False)


@pytest.fixture(scope="module")
def small_video():
    return make_lunar_video(32, (96, 128), seed=13)


def test_truncated_ser_reports_and_stacks_the_rest(tmp_path, small_video):
    p = tmp_path / "cut.ser"
    write_ser(p, small_video.frames())
    frame_bytes = 96 * 128
    with open(p, "r+b") as f:
        f.truncate(178 + 20 * frame_bytes + frame_bytes // 2)  # 20 whole frames and half of one
    out = tmp_path / "stack.fits"
    r = skystack.lucky([str(p)], out, **OPTS)
    assert r.n_frames == 20 and r.n_used == 5
    msg = [m for m in r.messages if "cut.ser" in m and "32 frames" in m]
    assert msg and "20" in msg[0]  # "header says 32 frames, file holds 20 complete frames"
    assert r.report["input_problems"] and out.exists()


def test_unreadable_frames_inside_a_clip_are_reported(small_video):
    frames = [small_video.frame(i) for i in range(20)]
    frames[3] = bad_frame("clip.ser", "frame 3: checksum mismatch")
    frames[4] = bad_frame("clip.ser", "frame 4: checksum mismatch")
    r = skystack.lucky(ArrayFrames(frames, name="clip.ser"), None, **OPTS)
    bad = [f for f in r.frames if f.fate is Fate.UNREADABLE]
    assert [f.index for f in bad] == [3, 4] and "checksum" in bad[0].reason
    assert any(m.startswith("clip.ser: ") and "unreadable" in m for m in r.messages)
    assert r.n_used == 5  # 25% of the 18 readable frames


def _write_ts(path, frames):
    with av.open(str(path), "w", format="mpegts") as c:
        h, w = frames[0].shape
        s = c.add_stream("mpeg2video", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 8_000_000
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, axis=2), format="rgb24")
            vf.pts = k
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def test_variable_frame_size_video(tmp_path):
    """An MPEG-TS whose second segment changes resolution (concatenated streams): the odd
    frames are reported as unreadable with the reason, the rest is stacked."""
    big = make_lunar_video(24, (96, 128), seed=2)
    small = make_lunar_video(6, (48, 64), seed=3)
    a, b = tmp_path / "a.ts", tmp_path / "b.ts"
    _write_ts(a, [big.frame(i) for i in range(24)])
    _write_ts(b, [small.frame(i) for i in range(6)])
    clip = tmp_path / "var.ts"
    clip.write_bytes(a.read_bytes() + b.read_bytes())
    r = skystack.lucky([str(clip)], None, **OPTS)
    bad = [f for f in r.frames if f.fate is Fate.UNREADABLE]
    odd = [f for f in bad if "is 64x48, the video is 128x96 (variable frame size)" in f.reason]
    assert len(odd) >= 5 and all(f.index >= 20 for f in bad)
    assert r.n_used >= 4 and r.image.shape == (96, 128)
    # one line for all of them, naming the file and the reason
    lines = [m for m in r.messages if "var.ts" in m and "variable frame size" in m]
    assert len(lines) == 1 and f"{len(odd)} frames" in lines[0] and lines[0].endswith("skipped")


def test_all_black_clip(tmp_path):
    p = tmp_path / "black.ser"
    write_ser(p, (np.zeros((64, 80), np.uint8) for _ in range(10)))
    out = tmp_path / "out.tif"
    out.write_bytes(b"previous result")
    with pytest.raises(NoFramesError, match=r"black\.ser: all 10 readable frames are blank"):
        skystack.lucky([str(p)], out, **OPTS)
    assert out.read_bytes() == b"previous result"  # nothing lost
    assert sorted(x.name for x in tmp_path.iterdir()) == ["black.ser", "out.tif"]


def test_black_clip_with_read_noise(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "capped.ser"
    write_ser(p, (rng.integers(0, 3, (64, 80)).astype(np.uint8) for _ in range(10)))
    with pytest.raises(NoFramesError, match=r"capped\.ser: all frames are black"):
        skystack.lucky([str(p)], None, **OPTS)


def test_blank_frames_in_a_clip_are_skipped():
    v = make_lunar_video(20, (96, 128), seed=4, blank_frames=[0, 7])
    r = skystack.lucky(v.as_frameset(), None, **OPTS)
    blank = [f for f in r.frames if "blank" in f.reason]
    assert [f.index for f in blank] == [0, 7] and all(f.fate is Fate.REJECTED for f in blank)
    assert r.report["summary"]["blank"] == 2 and r.n_used == 5


def test_clip_shorter_than_keep(tmp_path, small_video):
    p = tmp_path / "short.ser"
    write_ser(p, (small_video.frame(i) for i in range(12)))
    r = skystack.lucky([str(p)], None, keep="200", multipoint=False)
    assert r.n_used == 12
    assert any("short.ser" in m and "fewer than --keep 200" in m and "stacking all 12" in m for m in r.messages)


def test_no_input_and_unreadable_only(tmp_path):
    with pytest.raises(NoFramesError):
        skystack.lucky(ArrayFrames([bad_frame("x.ser", "truncated")] * 3, name="x.ser"), None, **OPTS)
    junk = tmp_path / "junk.ser"
    junk.write_bytes(b"LUCAM-RECORDER" + b"\0" * 10)
    with pytest.raises(NoFramesError):
        skystack.lucky([str(junk)], None, **OPTS)


def test_open_frames_accepts_the_ser(tmp_path, small_video):
    p = tmp_path / "ok.ser"
    write_ser(p, small_video.frames())
    fs = open_frames([str(p)])
    r = skystack.lucky(fs, None, **OPTS)
    assert r.n_frames == 32 and r.n_used == 8
