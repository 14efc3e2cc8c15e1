"""Bad input: clear one-line messages naming the file, nothing lost, the run goes on where it can."""
from __future__ import annotations

import warnings

import av
import numpy as np
import pytest

import skystack
from skystack.errors import NoFramesError
from skystack.io import open_frames, write_ser
from skystack.register.planetary import shift_image
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


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("multipoint", [True, False])
def test_a_video_of_one_or_two_frames_stacks_its_frame(tmp_path, small_video, n, multipoint):
    # the quality model needs three frames: with fewer it made every frame's quality NaN,
    # and a one-frame video "succeeded" with an all-zero stack and NumPy warnings
    p = tmp_path / "few.ser"
    write_ser(p, (small_video.frame(i) for i in range(n)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = skystack.lucky([str(p)], None, keep="1", multipoint=multipoint)
    assert r.n_used == 1 and np.isfinite(r.image).all()
    if n == 1:  # aligned onto itself (a shift of 1e-7 px): nothing to fill at the edges
        assert np.abs(r.image - small_video.frame(0)).max() < 0.01 and r.report["edges"]["filled_px"] == 0
    else:
        (used,) = [f for f in r.frames if f.fate is Fate.USED]  # shifted onto the 2-frame reference
        m = used.transform.matrix
        moved = shift_image(small_video.frame(used.index).astype(np.float32), -m[0, 2], -m[1, 2])
        inner = (slice(2, -2), slice(2, -2))
        if multipoint:  # and locally dewarped
            assert np.corrcoef(r.image[inner].ravel(), moved[inner].ravel())[0, 1] > 0.99
        else:
            assert np.abs(r.image - moved)[inner].max() < 1e-3


@pytest.mark.parametrize("multipoint", [True, False])
def test_identical_frames_stack_to_the_frame_with_nothing_filled(tmp_path, small_video, multipoint):
    # the measured shifts are 1e-7 px, not 0: a column or row of sources a hair outside the
    # frame counted as uncovered and was filled from its neighbours
    p = tmp_path / "same.ser"
    write_ser(p, [small_video.frame(3)] * 12)
    r = skystack.lucky([str(p)], None, keep="4", multipoint=multipoint)
    assert r.report["edges"]["filled_px"] == 0
    assert np.abs(r.image - small_video.frame(3)).max() < 0.01


def test_an_odd_sized_first_file_does_not_set_the_clips_geometry(tmp_path, small_video):
    # the first readable frame set the clip's size: a folder of FITS whose first file was
    # another size rejected every frame after it
    from astropy.io import fits

    fits.PrimaryHDU(small_video.frame(0)[:48, :4]).writeto(tmp_path / "f00.fits")
    for i in range(1, 6):
        fits.PrimaryHDU(small_video.frame(i)).writeto(tmp_path / f"f{i:02d}.fits")
    r = skystack.lucky([str(tmp_path)], None, keep="3", multipoint=False)
    assert r.image.shape == (96, 128) and r.n_used == 3
    first = r.frames[0]
    assert first.fate is Fate.UNREADABLE and "frame 0 is 4x48, the clip's frames are 128x96" in first.reason


@pytest.mark.parametrize("shape", [(48, 4), (12, 200)])
def test_frames_too_small_for_alignment_points_are_aligned_globally(tmp_path, shape):
    # the alignment-point lattice raised a ValueError (a traceback from the command)
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, shape).astype(np.uint8)
    p = tmp_path / "tiny.ser"
    write_ser(p, (np.roll(base, i % 2, 1) for i in range(10)))
    r = skystack.lucky([str(p)], None, keep="3")
    assert r.n_used == 3 and r.alignment_points == 0 and r.image.shape == shape
    h, w = shape
    assert f"frames of {w}x{h} are too small for alignment points" in " ".join(r.messages)


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


def _float_fits_frames(folder, small_video, n=24):
    """Float FITS frames: frame 5 NaN everywhere, frame 9 a NaN patch of 20x10, frame 11 one
    infinite pixel (what a calibration or a derotation leaves in float frames)."""
    from astropy.io import fits

    folder.mkdir()
    for i in range(n):
        f = small_video.frame(i).astype(np.float32)
        if i == 5:
            f[:] = np.nan
        if i == 9:
            f[40:50, 30:50] = np.nan
        if i == 11:
            f[3, 3] = np.inf
        fits.writeto(folder / f"f{i:03d}.fits", f)


def test_nan_and_infinite_pixels_are_replaced_and_said_once_per_frame(tmp_path, small_video):
    """A frame with a few NaN or infinite pixels is stacked like the others, those pixels
    replaced by the frame's median (they had poisoned the correlation: "no match with the
    neighbouring frames (coarse correlation nan)", with NumPy warnings); one with no finite
    pixel is unreadable, said so. Two forked workers: the bad frame's error travels back."""
    import json
    import subprocess
    import sys

    _float_fits_frames(tmp_path / "f", small_video)
    out = tmp_path / "stack.fits"
    r = subprocess.run([sys.executable, "-m", "skystack.cli", "lucky", str(tmp_path / "f"), "-o", str(out), "-q",
                        "--keep", "50%", "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"skystack: {tmp_path / 'f' / 'f009.fits'}: frame 9 has 200 NaN or infinite pixels: replaced by the frame's median",
        f"skystack: {tmp_path / 'f' / 'f011.fits'}: frame 11 has 1 NaN or infinite pixel: replaced by the frame's median",
        f"skystack: {tmp_path / 'f' / 'f005.fits'}: frame 5 unreadable: frame 5 has no finite pixel "
        "(NaN or infinite everywhere); skipped"]
    frames = {f["index"]: f for f in json.loads((tmp_path / "stack.fits.report.json").read_text())["frames"]}
    assert frames[5]["fate"] == "unreadable"
    assert frames[9]["fate"] != "failed_registration" and frames[9]["metrics"]["nonfinite_px"] == 200
    assert frames[11]["fate"] != "failed_registration" and frames[11]["metrics"]["nonfinite_px"] == 1
    from astropy.io import fits

    assert np.isfinite(fits.getdata(out)).all()


def test_integer_frames_skip_the_finite_check(tmp_path, small_video, monkeypatch):
    """The check costs 0.07-0.2 ms a 640x480 frame: frames whose file cannot hold NaN (SER,
    8/16-bit images) never pay it; float files do."""
    from skystack.pipeline.lucky import frames as F

    calls = []
    real = F.finite_frame
    monkeypatch.setattr(F, "finite_frame", lambda img: calls.append(1) or real(img))
    p = tmp_path / "v.ser"
    write_ser(p, small_video.frames())
    ser = F.Reader(open_frames([str(p)]), (96, 128))
    assert all(isinstance(ser.read(i, False), np.ndarray) for i in range(4)) and calls == []
    _float_fits_frames(tmp_path / "f", small_video, n=4)
    fl = F.Reader(open_frames([str(tmp_path / "f")]), (96, 128))
    assert all(isinstance(fl.read(i, False), np.ndarray) for i in range(4)) and len(calls) == 4


def test_a_bad_frame_error_survives_the_trip_from_a_worker():
    import pickle

    from skystack.errors import BadFrameError

    e = pickle.loads(pickle.dumps(BadFrameError("/d/f005.fits", "frame 5 has no finite pixel")))
    assert (type(e), e.path, e.reason, str(e)) == (BadFrameError, "/d/f005.fits", "frame 5 has no finite pixel",
                                                    "/d/f005.fits: frame 5 has no finite pixel")
