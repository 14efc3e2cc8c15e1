"""SER reader and writer: colour IDs, byte order conventions, timestamps, short files."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from skystack.errors import BadFrameError
from skystack.io import ser
from skystack.io.ser import SerSource, write_ser




def frames16(rng, n=4, shape=(7, 9)):
    return [rng.integers(0, 65535, shape, endpoint=True).astype(np.uint16) for _ in range(n)]


def test_mono_8bit_round_trip(tmp_path, rng):
    frames = [rng.integers(0, 255, (6, 10), endpoint=True).astype(np.uint8) for _ in range(3)]
    p = tmp_path / "m.ser"
    assert write_ser(p, iter(frames), ser.MONO, observer="me", telescope="C8") == 3
    assert p.stat().st_size == 178 + 3 * 60
    src = SerSource(p)
    assert len(src) == 3 and src.shape == (6, 10) and src.dtype == np.uint8 and src.bayer is None
    assert src.sliceable and not src.sequential and src.problems == []
    for k in range(3):
        assert np.array_equal(src.read(k), frames[k])
    assert np.array_equal(src.read_rows(1, 2, 5), frames[1][2:5])
    m = src.meta(2)
    assert m["observer"] == "me" and m["telescope"] == "C8" and m["bit_depth"] == 8
    assert "timestamp" not in m
    assert src.name(1).endswith("m.ser#1")


def test_16bit_little_and_big_endian_with_the_de_facto_flag(tmp_path, rng):
    frames = frames16(rng)
    write_ser(tmp_path / "le.ser", frames, ser.MONO, byteorder="<")
    write_ser(tmp_path / "be.ser", frames, ser.MONO, byteorder=">")
    raw_le = (tmp_path / "le.ser").read_bytes()
    raw_be = (tmp_path / "be.ser").read_bytes()
    # The LittleEndian field (offset 22) follows Siril/FireCapture: 0 = little-endian data.
    assert int.from_bytes(raw_le[22:26], "little") == 0
    assert int.from_bytes(raw_be[22:26], "little") == 1
    assert raw_le[178:180] == frames[0][:1, 0].astype("<u2").tobytes()
    assert raw_be[178:180] == frames[0][:1, 0].astype(">u2").tobytes()
    for name in ("le.ser", "be.ser"):
        src = SerSource(tmp_path / name)
        assert src.dtype == np.uint16
        for k in range(len(frames)):
            out = src.read(k)
            assert out.dtype.isnative and np.array_equal(out, frames[k])


def test_endianness_override(tmp_path, rng):
    frames = frames16(rng, n=2)
    # A writer that followed the specification's text: flag 1 with little-endian data.
    write_ser(tmp_path / "spec.ser", frames, ser.MONO, byteorder="<", endian_flag=1)
    swapped = SerSource(tmp_path / "spec.ser")  # default convention reads it big-endian
    assert np.array_equal(swapped.read(0), frames[0].byteswap())
    for mode in ("spec", "little"):
        assert np.array_equal(SerSource(tmp_path / "spec.ser", endianness=mode).read(1), frames[1])
    assert np.array_equal(SerSource(tmp_path / "spec.ser", endianness="big").read(1), frames[1].byteswap())
    with pytest.raises(ValueError):
        SerSource(tmp_path / "spec.ser", endianness="middle")  # type: ignore[arg-type]


def test_depth_12_is_uint16(tmp_path, rng):
    frames = [rng.integers(0, 4095, (4, 4)).astype(np.uint16) for _ in range(2)]
    write_ser(tmp_path / "d.ser", frames, ser.MONO, depth=12)
    src = SerSource(tmp_path / "d.ser")
    assert src.depth == 12 and src.dtype == np.uint16 and np.array_equal(src.read(1), frames[1])


@pytest.mark.parametrize("color_id", [ser.RGB, ser.BGR])
def test_rgb_and_bgr_come_back_rgb(tmp_path, rng, color_id):
    frames = [rng.integers(0, 255, (5, 6, 3)).astype(np.uint8) for _ in range(2)]
    frames[0][0, 0] = (200, 100, 10)  # a known colour
    p = tmp_path / "c.ser"
    write_ser(p, frames, color_id)
    on_disk = p.read_bytes()[178:181]
    assert on_disk == (bytes([200, 100, 10]) if color_id == ser.RGB else bytes([10, 100, 200]))
    src = SerSource(p)
    assert src.shape == (5, 6, 3)
    assert tuple(src.read(0)[0, 0]) == (200, 100, 10)
    for k in range(2):
        assert np.array_equal(src.read(k), frames[k])
    assert np.array_equal(src.read_rows(1, 1, 3), frames[1][1:3])


@pytest.mark.parametrize("color_id,pattern", [(ser.BAYER_RGGB, "RGGB"), (ser.BAYER_GRBG, "GRBG"),
                                              (ser.BAYER_GBRG, "GBRG"), (ser.BAYER_BGGR, "BGGR")])
def test_bayer_ids(tmp_path, color_id, pattern):
    write_ser(tmp_path / "b.ser", [np.zeros((4, 4), np.uint16)], color_id)
    src = SerSource(tmp_path / "b.ser")
    assert src.bayer == pattern and src.shape == (4, 4)


def test_cmy_sensor_is_refused(tmp_path):
    write_ser(tmp_path / "cmy.ser", [np.zeros((4, 4), np.uint8)], ser.BAYER_CYYM)
    with pytest.raises(BadFrameError, match="unsupported SER colour BAYER_CYYM"):
        SerSource(tmp_path / "cmy.ser")


def test_timestamps(tmp_path):
    t0 = dt.datetime(2024, 5, 6, 21, 30, 0, 125000, tzinfo=dt.timezone.utc)
    stamps = [t0 + dt.timedelta(milliseconds=20 * k) for k in range(3)]
    frames = [np.full((3, 3), k, np.uint8) for k in range(3)]
    write_ser(tmp_path / "t.ser", frames, ser.MONO, timestamps=stamps, date_utc=t0)
    src = SerSource(tmp_path / "t.ser")
    assert len(src) == 3
    m = src.meta(2)
    assert m["timestamp"] == "2024-05-06T21:30:00.165000+00:00"
    assert m["timestamp_s"] == pytest.approx(stamps[2].timestamp(), abs=1e-6)
    assert m["date"] == "2024-05-06T21:30:00.125000+00:00"
    ticks = src.timestamps()
    assert ticks is not None and list(np.diff(ticks)) == [200_000, 200_000]
    assert ser.ticks_to_datetime(ser.datetime_to_ticks(t0)) == t0


def test_header_promises_more_frames_than_the_file_holds(tmp_path, rng):
    frames = frames16(rng, n=3, shape=(4, 5))
    p = tmp_path / "short.ser"
    write_ser(p, frames, ser.MONO, frame_count=2000)
    with open(p, "ab") as f:
        f.write(b"\0" * 17)  # plus a partial frame
    src = SerSource(p)
    assert len(src) == 3
    assert src.problems == ["header says 2000 frames, file holds 3 complete frames; reading 3"]
    assert np.array_equal(src.read(2), frames[2])
    assert src.timestamps() is None


def test_too_short_for_a_header_or_a_frame(tmp_path):
    (tmp_path / "tiny.ser").write_bytes(b"LUCAM-RECORDER" + b"\0" * 50)
    with pytest.raises(BadFrameError, match="shorter than the 178-byte SER header"):
        SerSource(tmp_path / "tiny.ser")
    write_ser(tmp_path / "one.ser", [np.zeros((10, 10), np.uint8)], ser.MONO)
    data = (tmp_path / "one.ser").read_bytes()
    (tmp_path / "none.ser").write_bytes(data[:178 + 50])
    with pytest.raises(BadFrameError, match="no complete frame"):
        SerSource(tmp_path / "none.ser")


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError):
        write_ser(tmp_path / "x.ser", [], ser.MONO)
    with pytest.raises(ValueError):
        write_ser(tmp_path / "x.ser", [np.zeros((3, 3), np.float32)], ser.MONO)
    with pytest.raises(ValueError):
        write_ser(tmp_path / "x.ser", [np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8)], ser.MONO)
    assert not (tmp_path / "x.ser").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_real_moon_video_into_ser_bit_exact(tmp_path, real_path):
    from skystack.io.video import VideoSource

    video = VideoSource(real_path("pss-moon-avi/short_video.avi"))
    frames = []

    def first_frames():
        for i, frame in video.iter_frames(0, 20):
            frames.append(frame)
            yield frame

    p = tmp_path / "moon.ser"
    assert write_ser(p, first_frames(), ser.MONO, instrument="PSS sample") == 20
    src = SerSource(p)
    assert len(src) == 20 and src.shape == (960, 1280) and src.dtype == np.uint8
    for k in (0, 7, 19):
        assert np.array_equal(src.read(k), frames[k])
    assert np.array_equal(src.read_rows(13, 400, 460), frames[13][400:460])
    video.close()


@pytest.mark.parametrize("order", ["<", ">"])
def test_whole_rows_by_pread_and_blocks_by_the_map_agree(tmp_path, rng, order):
    # whole rows are pread, narrower blocks cut from the memory map: the same pixels
    frames = frames16(rng, n=3, shape=(11, 13))
    write_ser(tmp_path / "v.ser", frames, ser.MONO, byteorder=order)
    src = SerSource(tmp_path / "v.ser")
    for k in range(3):
        rows = src.read_rows(k, 3, 9)
        assert rows.dtype.isnative and np.array_equal(rows, frames[k][3:9])
        assert np.array_equal(src.read_block(k, 3, 9, 2, 11), rows[:, 2:11])
        assert np.array_equal(src.read_block(k, 3, 9, 0, 13), rows)
    src.close()
    assert np.array_equal(src.read(2), frames[2])  # reopened after close


def test_a_file_cut_after_it_was_opened_is_a_bad_frame(tmp_path, rng):
    frames = frames16(rng, n=3)
    p = tmp_path / "v.ser"
    write_ser(p, frames, ser.MONO)
    src = SerSource(p)
    with open(p, "r+b") as f:
        f.truncate(178 + 2 * frames[0].nbytes + 10)  # frame 2 now ends early
    assert np.array_equal(src.read(1), frames[1])
    with pytest.raises(BadFrameError, match="v.ser.*ends early"):
        src.read(2)
