"""Video reader: frame counts, mono detection, sequential and random access, real AVI."""
from __future__ import annotations

from types import SimpleNamespace

import av
import numpy as np
import pytest

from skystack.errors import BadFrameError
from skystack.io.video import VideoSource

W, H = 64, 48




def scene(k: int, colour: bool) -> np.ndarray:
    """Frame k: a flat level that encodes k, plus a moving bright square (RGB uint8)."""
    img = np.full((H, W, 3), 20 + 6 * k, np.uint8)
    x = 4 + 2 * k
    img[10:22, x:x + 12] = 230
    if colour:
        img[..., 0] = np.clip(img[..., 0].astype(int) + 60, 0, 255)
        img[..., 2] //= 2
    return img


def write_video(path, n, *, codec, pix_fmt, colour=False, gop=None, options=None):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if gop:
            s.codec_context.gop_size = gop
        if options:
            s.options = options
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(scene(k, colour), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    # H.264 with B-frames and a short GOP: display order differs from decode order, and
    # random access needs real keyframe seeks.
    p = tmp_path_factory.mktemp("v") / "grey.mp4"
    return write_video(p, 30, codec="libx264", pix_fmt="yuv420p", gop=6,
                       options={"bf": "2", "preset": "ultrafast"})


@pytest.fixture(scope="module")
def avi(tmp_path_factory):
    p = tmp_path_factory.mktemp("v") / "colour.avi"
    return write_video(p, 20, codec="mpeg4", pix_fmt="yuv420p", colour=True, gop=5)


def test_mp4_count_mono_detection_and_content(mp4):
    v = VideoSource(mp4)
    assert len(v) == 30 and v.is_mono and v.shape == (H, W) and v.dtype == np.uint8
    assert v.sequential and not v.sliceable
    frames = [f for _, f in v.iter_frames()]
    assert len(frames) == 30
    for k in (0, 9, 29):
        # the background level identifies the frame (lossy codec: a few DN of error)
        assert abs(float(np.median(frames[k][30:, :])) - (20 + 6 * k)) <= 3
    v.close()


def test_random_access_after_a_sequential_pass(mp4):
    v = VideoSource(mp4)
    seq = {i: f for i, f in v.iter_frames()}
    for i in (17, 3, 29, 0, 18, 19, 12, 11, 5, 28):
        assert np.array_equal(v.read(i), seq[i]), i
    assert np.array_equal(v.read_rows(21, 10, 20), seq[21][10:20])
    assert v.meta(10)["time_s"] == pytest.approx(10 / 25)
    v.close()


def test_avi_colour_detection_and_count(avi):
    v = VideoSource(avi)
    assert len(v) == 20 and not v.is_mono and v.shape == (H, W, 3)
    a = v.read(7)
    truth = scene(7, colour=True).astype(int)
    assert np.abs(a[30:, 40:].astype(int) - truth[30:, 40:]).max() <= 8  # away from edges
    b = v.read(2)
    assert np.array_equal(v.read(7), a) and b.shape == (H, W, 3)
    assert VideoSource(avi, mono=True).shape == (H, W)  # forcing mono


def test_lossless_grey_avi_is_exact(tmp_path):
    p = tmp_path / "ffv1.avi"
    with av.open(str(p), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "gray"
        truth = []
        for k in range(8):
            g = scene(k, False)[..., 1]
            truth.append(g)
            for pkt in s.encode(av.VideoFrame.from_ndarray(g, format="gray")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    v = VideoSource(p)
    assert len(v) == 8 and v.is_mono
    for k in (5, 0, 7, 1):
        assert np.array_equal(v.read(k), truth[k])


def test_hints_skip_counting(mp4):
    v = VideoSource(mp4, frame_count=30, mono=True, bits=8)
    assert len(v) == 30 and np.array_equal(v.read(13), VideoSource(mp4).read(13))


def test_variable_frame_size_is_a_bad_frame(mp4):
    v = VideoSource(mp4)
    other = SimpleNamespace(width=32, height=24)
    with pytest.raises(BadFrameError) as ei:
        v._convert(other, 12)
    assert ei.value.reason == "frame 12 is 32x24, the video is 64x48 (variable frame size)"


def test_not_a_video(tmp_path):
    (tmp_path / "x.avi").write_bytes(b"RIFF1234AVI " + b"junk" * 100)
    with pytest.raises(BadFrameError):
        VideoSource(tmp_path / "x.avi")
    (tmp_path / "y.mp4").write_bytes(b"")
    with pytest.raises(BadFrameError):
        VideoSource(tmp_path / "y.mp4")


def test_real_moon_avi(real_path):
    v = VideoSource(real_path("pss-moon-avi/short_video.avi"))
    assert len(v) == 101 and v.shape == (960, 1280) and v.is_mono and v.dtype == np.uint8
    sequential = None
    for i, frame in v.iter_frames():
        if i == 50:
            sequential = frame.copy()
    assert sequential is not None
    fresh = VideoSource(real_path("pss-moon-avi/short_video.avi"))
    assert np.array_equal(fresh.read(50), sequential)  # a cold seek to the middle
    assert np.array_equal(v.read(50), sequential)  # after a full pass
    assert 70 < sequential.mean() < 100 and sequential.max() <= 255
    assert v.meta(0)["fps"] == pytest.approx(59.0)
