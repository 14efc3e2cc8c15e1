"""open_frames and FrameSet: input resolution, global index, problems, processing, pickling."""
from __future__ import annotations

import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import av
import cv2
import numpy as np
import pytest
import tifffile
from astropy.io import fits

from skystack.io.bayer import debayer
from skystack.errors import BadFrameError, InputChangedError, NoFramesError, UsageError
from skystack.io import FrameSet, FrameSource, natural_key, open_frames, open_source, ser, write_ser
from skystack.io.registry import kind_from_extension, sniff_kind
from skystack.options import ReadOptions




def fits_file(path, data, **cards):
    hdu = fits.PrimaryHDU(data)
    for k, v in cards.items():
        hdu.header[k] = v
    hdu.writeto(path, overwrite=True)
    return str(path)


def mono(rng, h=12, w=10, dtype=np.uint16):
    return rng.integers(0, 4000, (h, w)).astype(dtype)


def test_natural_order_and_unknown_files_in_a_folder(tmp_path, rng):
    for k in (10, 2, 1):
        fits_file(tmp_path / f"frame_{k}.fits", mono(rng))
    (tmp_path / "notes.md").write_text("observing log")
    (tmp_path / ".hidden.fits").write_bytes(b"whatever")
    (tmp_path / "sub").mkdir()
    fits_file(tmp_path / "sub" / "deeper.fits", mono(rng))
    fs = open_frames(tmp_path)
    assert [os.path.basename(fs.path(i)) for i in range(len(fs))] == ["frame_1.fits", "frame_2.fits", "frame_10.fits"]
    assert fs.problems == []
    assert natural_key("img_2.fits") < natural_key("img_10.fits") < natural_key("IMG_11.fits")


def test_file_with_image_extension_that_fails_is_reported(tmp_path, rng):
    fits_file(tmp_path / "a_1.fits", mono(rng))
    (tmp_path / "a_2.fits").write_bytes(b"not fits at all" * 10)
    fits_file(tmp_path / "a_3.fits", mono(rng))
    fs = open_frames(tmp_path)
    assert len(fs) == 3
    assert not fs.is_readable(1) and fs.is_readable(0)
    (idx, path, reason), = fs.problems
    assert idx == 1 and path.endswith("a_2.fits") and "FITS" in reason
    with pytest.raises(BadFrameError) as ei:
        fs.read(1)
    assert ei.value.reason == reason
    with pytest.raises(BadFrameError):
        fs.info(1)
    assert fs.name(1).endswith("a_2.fits")


def test_explicit_non_image_and_missing_paths(tmp_path, rng):
    good = fits_file(tmp_path / "good.fits", mono(rng))
    (tmp_path / "readme.md").write_text("hi")
    fs = open_frames([good, tmp_path / "readme.md", tmp_path / "nope.fits"])
    assert len(fs) == 3
    reasons = {os.path.basename(p): r for _, p, r in fs.problems}
    assert reasons["readme.md"] == "not an image or video file skystack can read (extension .md)"
    assert reasons["nope.fits"] == "file does not exist"


def test_extensionless_file_is_sniffed(tmp_path, rng):
    data = mono(rng)
    fits_file(tmp_path / "frame.fits", data)
    os.rename(tmp_path / "frame.fits", tmp_path / "frame001")
    fs = open_frames(tmp_path)
    assert len(fs) == 1 and np.array_equal(fs.read_raw(0), data)
    assert sniff_kind(tmp_path / "frame001") == "fits"
    assert kind_from_extension("x.FITS.fz") == "fits" and kind_from_extension("x.Ser") == "ser"


def test_globs_lists_and_duplicates(tmp_path, rng):
    d = tmp_path / "lights"
    d.mkdir()
    for k in (3, 1, 12):
        fits_file(d / f"L_{k}.fit", mono(rng))
    fits_file(d / "dark_1.fit", mono(rng))
    fs = open_frames([str(d / "L_*.fit")])
    assert [os.path.basename(fs.path(i)) for i in range(len(fs))] == ["L_1.fit", "L_3.fit", "L_12.fit"]
    lst = tmp_path / "frames.lst"
    lst.write_text("# my best frames\nlights/L_12.fit\n\n  lights/L_3.fit   # a comment\nlights/L_12.fit\n")
    fs = open_frames([lst, d / "L_3.fit"])
    names = [os.path.basename(fs.path(i)) for i in range(len(fs))]
    assert names == ["L_12.fit", "L_3.fit"]  # list order kept, duplicates once
    (tmp_path / "bad.txt").write_text("lights/missing.fit\n")
    fs = open_frames([tmp_path / "bad.txt", d / "L_1.fit"])
    assert fs.problems[0][2] == "file does not exist"


def test_nothing_found_names_what_was_searched(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoFramesError, match="empty"):
        open_frames(tmp_path / "empty")
    with pytest.raises(NoFramesError, match=r"\*\.fits"):
        open_frames(str(tmp_path / "*.fits"))
    (tmp_path / "junk.fits").write_bytes(b"junk")
    with pytest.raises(NoFramesError, match="no readable frame among 1 files"):
        open_frames(tmp_path / "junk.fits")
    with pytest.raises(NoFramesError):
        open_frames([])


def test_mixed_sizes_and_multi_frame_files(tmp_path, rng):
    fits_file(tmp_path / "a.fits", mono(rng, 12, 10))
    fits_file(tmp_path / "b.fits", mono(rng, 16, 20))
    cube = rng.integers(0, 100, (4, 12, 10)).astype(np.int16)
    fits_file(tmp_path / "c.fits", cube)
    frames = [rng.integers(0, 255, (12, 10)).astype(np.uint8) for _ in range(2)]
    write_ser(tmp_path / "d.ser", frames, ser.MONO)
    fs = open_frames(tmp_path)
    assert len(fs) == 8
    assert [fs.info(i).shape for i in range(8)] == [(12, 10), (16, 20)] + [(12, 10)] * 6
    assert fs.info(3).name.endswith("c.fits#1") and fs.info(3).dtype == "int16"
    assert fs.shape == (12, 10) and not fs.is_colour
    assert np.array_equal(fs.read_raw(4), cube[2])
    assert np.array_equal(fs.read(7), frames[1].astype(np.float32))
    assert fs.read(7).dtype == np.float32
    assert fs.info(7).meta["ser_color"] == "MONO"


def _cfa_fits(tmp_path, rng, pattern="GRBG", h=20, w=16):
    raw = rng.integers(100, 60000, (h, w)).astype(np.uint16)
    return fits_file(tmp_path / f"cfa_{pattern}.fits", raw, BAYERPAT=pattern, EXPTIME=30.0), raw


def test_cfa_frames_are_debayered(tmp_path, rng):
    path, raw = _cfa_fits(tmp_path, rng)
    fs = open_frames(path)
    assert fs.shape == (20, 16, 3) and fs.is_colour
    info = fs.info(0)
    assert info.shape == (20, 16) and info.bayer == "GRBG" and info.exposure_s == 30.0
    assert np.array_equal(fs.read(0), debayer(raw, "GRBG", "bilinear"))  # the one default (ReadOptions)
    assert np.array_equal(fs.read_raw(0), raw)
    lum = fs.luminance(0)
    rgb = fs.read(0)
    np.testing.assert_allclose(lum, rgb.astype(np.float64).mean(axis=2), rtol=1e-6)  # the plain mean of R, G, B
    none = open_frames(path, options=ReadOptions(debayer="none"))
    assert none.shape == (20, 16) and np.array_equal(none.read(0), raw.astype(np.float32))
    forced = open_frames(path, options=ReadOptions(bayer_override="RGGB", debayer_method="bilinear"))
    assert forced.info(0).bayer == "RGGB"
    assert np.array_equal(forced.read(0), debayer(raw, "RGGB", "bilinear"))
    with pytest.raises(UsageError):
        open_frames(path, options=ReadOptions(bayer_override="XYZ"))


def _every_format(tmp_path, rng):
    """One small file of every kind; returns the folder."""
    d = tmp_path / "all"
    d.mkdir()
    fits_file(d / "01_mono.fits", rng.normal(100, 10, (21, 14)).astype(np.float32))
    fits_file(d / "02_cfa.fits", rng.integers(0, 60000, (21, 14)).astype(np.uint16), BAYERPAT="BGGR")
    fits_file(d / "03_cfa_odd.fits", rng.integers(0, 60000, (23, 14)).astype(np.uint16),
              BAYERPAT="RGGB", ROWORDER="BOTTOM-UP")
    tifffile.imwrite(d / "04_rgb.tif", rng.integers(0, 65535, (21, 14, 3)).astype(np.uint16), photometric="rgb")
    tifffile.imwrite(d / "05_z.tif", rng.integers(0, 255, (21, 14)).astype(np.uint8), compression="zlib")
    cv2.imwrite(str(d / "06_c.png"), rng.integers(0, 255, (21, 14, 3)).astype(np.uint8))
    write_ser(d / "07_bayer.ser", [rng.integers(0, 4095, (22, 14)).astype(np.uint16) for _ in range(2)],
              ser.BAYER_GBRG, depth=12)
    write_ser(d / "08_bgr.ser", [rng.integers(0, 255, (21, 14, 3)).astype(np.uint8)], ser.BGR)
    with av.open(str(d / "09_v.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for k in range(4):
            img = rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return d


def test_read_rows_equals_read_for_every_format(tmp_path, rng):
    d = _every_format(tmp_path, rng)
    fs = open_frames(d)
    assert fs.problems == []
    assert len(fs) == 1 + 1 + 1 + 1 + 1 + 1 + 2 + 1 + 4
    kinds = {os.path.basename(e.path): e.kind for e in fs.entries}
    assert kinds["09_v.mp4"] == "video" and kinds["07_bayer.ser"] == "ser"
    assert fs.info(2).bayer == "RGGB"  # bottom-up with an odd height: the flip keeps RGGB
    assert fs.info(1).bayer == "BGGR" and fs.info(6).bayer == "GBRG"
    for i in range(len(fs)):
        full = fs.read(i)
        assert full.dtype == np.float32
        h = full.shape[0]
        for y0, y1 in ((0, 1), (0, h), (1, 4), (3, 10), (7, 8), (h - 5, h), (h - 1, h + 3)):
            part = fs.read_rows(i, y0, y1)
            assert np.array_equal(part, full[y0:y1]), (fs.name(i), y0, y1)
        assert np.array_equal(fs.luminance_rows(i, 2, 9), fs.luminance(i)[2:9])
    assert fs.frame_sliceable(0) and not fs.frame_sliceable(4) and fs.frame_sequential(len(fs) - 1)
    for e in fs.entries:  # every reader satisfies the shared protocol
        with_src = open_source(e.path, e.kind, e.hints)
        assert isinstance(with_src, FrameSource), e.kind
        assert with_src.shape == e.shape and len(with_src) == e.n_frames
        with_src.close()


@pytest.mark.parametrize("method", ["bilinear", "ea", "vng"])
def test_read_block_equals_read_for_every_format(tmp_path, rng, method):
    d = _every_format(tmp_path, rng)
    fs = open_frames(d, options=ReadOptions(debayer_method=method))
    for i in range(len(fs)):
        full = fs.read(i)
        h, w = full.shape[:2]
        for y0, y1, x0, x1 in ((0, h, 0, w), (0, 1, 0, 1), (1, 4, 3, 9), (3, 10, 7, w), (h - 5, h + 2, -3, 5),
                               (7, 8, w - 1, w + 4), (2, 2, 0, w)):
            part = fs.read_block(i, y0, y1, x0, x1)
            assert part.dtype == np.float32
            assert np.array_equal(part, full[max(0, y0):y1, max(0, x0):x1]), (fs.name(i), y0, y1, x0, x1)
    steps = fs.with_raw_steps(AddOffset(7.0))  # raw steps see whole rows: the block is cut after
    assert np.array_equal(steps.read_block(1, 3, 12, 5, 11), steps.read(1)[3:12, 5:11])


def test_pickle_and_from_spec(tmp_path, rng):
    d = _every_format(tmp_path, rng)
    fs = open_frames(d, options=ReadOptions(debayer_method="bilinear"))
    blob = pickle.dumps(fs)
    assert len(blob) < 20000
    again = pickle.loads(blob)
    assert isinstance(again, FrameSet) and len(again) == len(fs)
    assert again.options.debayer_method == "bilinear"
    for i in range(len(fs)):
        assert np.array_equal(again.read(i), fs.read(i))
        assert again.name(i) == fs.name(i)
    other = FrameSet.from_spec(fs.spec)
    assert np.array_equal(other.read_raw(3), fs.read_raw(3))
    spec = fs.spec
    assert spec.token == pickle.loads(pickle.dumps(spec)).token == other.spec.token
    assert spec.token != open_frames(d, options=ReadOptions(debayer="none")).spec.token


def test_fits_header_cards_stay_out_of_the_spec(tmp_path, rng):
    p = fits_file(tmp_path / "h.fits", mono(rng), EXPTIME=12.5, OBSERVER="someone")
    fs = open_frames(p)
    assert "header" not in fs.entries[0].meta and fs.entries[0].meta["exposure_s"] == 12.5
    m = fs.meta(0)
    assert m["header"]["OBSERVER"] == "someone" and m["exposure_s"] == 12.5
    assert fs.info(0).meta["header"]["EXPTIME"] == 12.5


class AddOffset:
    """A picklable raw step: what a calibration step looks like to the FrameSet."""

    def __init__(self, offset):
        self.offset = offset
        self.calls: list[tuple[int, int, tuple]] = []

    def __call__(self, plane, *, index, y0):
        self.calls.append((index, y0, plane.shape))
        return plane.astype(np.float32) - self.offset


def test_raw_steps_run_before_debayer(tmp_path, rng):
    path, raw = _cfa_fits(tmp_path, rng, "RGGB")
    fs = open_frames(path).with_raw_steps(AddOffset(100.0))
    out = fs.read(0)
    assert np.allclose(out, debayer(raw.astype(np.float32) - 100.0, "RGGB", "bilinear"))
    assert np.array_equal(fs.read_rows(0, 5, 9), out[5:9])
    assert np.array_equal(pickle.loads(pickle.dumps(fs)).read(0), out)
    step = fs.spec.raw_steps[0]
    assert step.calls[-1][1] % 2 == 0  # strips start on an even row


def test_lru_bounds_open_files_and_threads_agree(tmp_path, rng):
    datas = []
    for k in range(30):
        datas.append(mono(rng, 8, 6))
        fits_file(tmp_path / f"f{k}.fits", datas[-1])
    fs = open_frames(tmp_path, max_open=4)
    assert fs.open_files <= 4
    for i in range(30):
        assert np.array_equal(fs.read_raw(i), datas[i])
        assert fs.open_files <= 4
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda i: fs.read_raw(i % 30), range(120)))
    assert all(np.array_equal(r, datas[i % 30]) for i, r in enumerate(results))
    assert fs.open_files <= 4
    fs.close()
    assert fs.open_files == 0
    assert np.array_equal(fs.read_raw(7), datas[7])  # reopens on demand


def test_threads_share_a_video(tmp_path, rng):
    d = _every_format(tmp_path, rng)
    fs = open_frames(d / "09_v.mp4")
    truth = [fs.read(i) for i in range(4)]
    errors = []

    def worker(order):
        for i in order:
            if not np.array_equal(fs.read(i), truth[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=([3, 0, 2, 1] * 3,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_fingerprints_detect_a_changed_file(tmp_path, rng):
    p = fits_file(tmp_path / "a.fits", mono(rng))
    fs = open_frames(p)
    fp = fs.fingerprint(0)
    assert fp == (os.path.getsize(p), os.stat(p).st_mtime_ns) == fs.opened_fingerprint(0)
    fs.check_unchanged(0)
    fits_file(p, mono(rng, 14, 10))
    os.utime(p, ns=(fp[1] + 5_000_000_000, fp[1] + 5_000_000_000))
    assert fs.fingerprint(0) != fp
    with pytest.raises(InputChangedError):
        fs.check_unchanged(0)
    fs.close()  # a file reopened after it changed is refused, not silently reread
    with pytest.raises(InputChangedError, match="changed on disk"):
        fs.read(0)


def test_ser_with_short_data_is_a_warning_with_index_minus_one(tmp_path, rng):
    write_ser(tmp_path / "s.ser", [mono(rng, 4, 4) for _ in range(3)], ser.MONO, frame_count=10)
    fs = open_frames(tmp_path)
    assert len(fs) == 3
    assert fs.problems == [(-1, str(tmp_path / "s.ser"),
                            "header says 10 frames, file holds 3 complete frames; reading 3")]


def test_real_data_folder(real_path):
    fs = open_frames([real_path("seestar-m94/session1"), real_path("m13-ssdsi"),
                      real_path("pss-moon-avi/short_video.avi")])
    assert len(fs) == 12 + 5 + 101 and fs.problems == []
    assert fs.info(0).bayer == "GRBG" and fs.info(0).shape == (1920, 1080)
    assert fs.info(12).shape == (1040, 1392) and fs.info(12).bayer is None
    assert fs.info(17).shape == (960, 1280) and fs.info(17).name.endswith("short_video.avi#0")
    assert fs.shape == (960, 1280)  # 101 video frames outnumber the rest
    a = fs.read(3)
    assert a.shape == (1920, 1080, 3)
    assert np.array_equal(fs.read_rows(3, 777, 801), a[777:801])
    assert np.array_equal(fs.read_rows(12 + 2, 10, 20), fs.read(14)[10:20])


def test_a_folder_of_folders_names_them(tmp_path):
    from skystack.errors import NoFramesError
    from skystack.io import open_frames

    (tmp_path / "night1").mkdir()
    (tmp_path / "night2").mkdir()
    with pytest.raises(NoFramesError, match="night1.*night2.*not searched recursively"):
        open_frames([tmp_path])


def test_read_block_into_equals_read_block(tmp_path, rng, monkeypatch):
    """The one-pass conversion into a caller's array (phase 2's tiles) gives read_block's
    values exactly, for every FITS pixel type, with the fallback for those it does not
    convert itself (scaled, 32-bit, CFA, calibration steps) and into strided views."""
    from skystack.io.fits import FitsSource

    h, w = 14, 11
    base = rng.integers(0, 60000, (h, w))
    files = {
        "u16.fits": (base.astype(np.uint16), {}),  # astropy writes BZERO 32768
        "i16.fits": ((base - 30000).astype(np.int16), {}),
        "u8.fits": ((base % 256).astype(np.uint8), {}),
        "f32.fits": (np.where(base % 17 == 0, np.nan, base / 7.0).astype(np.float32), {}),
        "i32.fits": ((base * 40000).astype(np.int32), {}),  # not exact in float32: fallback
        "cube.fits": (np.stack([base, base + 5, base % 999, base // 3]).astype(np.int16), {}),  # 4 frames
        "cfa.fits": (base.astype(np.uint16), {"BAYERPAT": "RGGB"}),
    }
    for name, (data, cards) in files.items():
        fits_file(tmp_path / name, data, **cards)
    scaled = fits.PrimaryHDU(base.astype(np.int16))
    scaled.header["BSCALE"], scaled.header["BZERO"] = 0.5, 100.0
    scaled.writeto(tmp_path / "scaled.fits")
    calls = []
    real = FitsSource.read_block_into
    monkeypatch.setattr(FitsSource, "read_block_into",
                        lambda self, *a: calls.append(os.path.basename(self.path)) or real(self, *a))
    fs = open_frames(tmp_path)
    for i in range(len(fs)):
        chans = fs.processed_shape(i)[2:]
        for y0, y1, x0, x1 in ((0, h, 0, w), (3, 9, 2, 7), (h - 1, h, w - 1, w)):
            want = fs.read_block(i, y0, y1, x0, x1)
            canvas = np.full((y1 - y0, w + 6) + tuple(chans), -1.0, dtype=np.float32)
            fs.read_block_into(i, y0, y1, x0, x1, canvas[:, 2:2 + x1 - x0])
            got = canvas[:, 2:2 + x1 - x0]
            assert np.array_equal(got, want, equal_nan=True), (fs.name(i), y0, y1, x0, x1)
            assert (canvas[:, :2] == -1).all() and (canvas[:, 2 + x1 - x0:] == -1).all()  # nothing else written
    # the direct path ran for the types it converts exactly; the CFA frame never asks it
    assert {"u16.fits", "i16.fits", "u8.fits", "f32.fits", "cube.fits"} <= set(calls) and "cfa.fits" not in calls
    steps = fs.with_raw_steps(AddOffset(7.0))  # raw steps: the usual read, then copied
    out = np.empty((6, 4), np.float32)
    k = [os.path.basename(steps.path(i)) for i in range(len(steps))].index("u16.fits")
    steps.read_block_into(k, 3, 9, 2, 6, out)
    assert np.array_equal(out, steps.read_block(k, 3, 9, 2, 6))


def test_read_block_into_a_truncated_file_names_it(tmp_path, rng):
    p = fits_file(tmp_path / "t.fits", rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    fs = open_frames(p)
    os.truncate(p, 2880 + 64 * 64)  # half the data unit gone after opening
    with pytest.raises(BadFrameError, match="t.fits"):
        fs.read_block_into(0, 40, 64, 0, 64, np.empty((24, 64), np.float32))
    with pytest.raises(BadFrameError, match="t.fits"):  # and read_block (it raised TypeError)
        fs.read_block(0, 40, 64, 0, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16])
def test_luminance_is_the_plain_mean_of_rgb_exactly(rng, dtype):
    """luminance() gives the float32 values of (R + G + B) / 3 summed in that order, bit
    for bit, NaN and inf included, for any input dtype and strided views."""
    from skystack.io import luminance

    if np.issubdtype(dtype, np.integer):
        rgb = rng.integers(0, np.iinfo(dtype).max, (37, 53, 3)).astype(dtype)
    else:
        rgb = (rng.standard_normal((37, 53, 3)) * 10.0 ** rng.integers(-12, 12, (37, 53, 3))).astype(dtype)
        rgb[0, 0, 0], rgb[1, 1, 1], rgb[2, 2, 2] = np.nan, np.inf, -np.inf
        rgb[3, 3, 0], rgb[3, 3, 1] = np.inf, -np.inf
    for view in (rgb, rgb[::2, 1::3], rgb[:, ::-1]):
        f = view.astype(np.float32)
        with np.errstate(invalid="ignore"):
            expected = (f[..., 0] + f[..., 1] + f[..., 2]) / np.float32(3)
        got = luminance(view)
        assert got.dtype == np.float32 and got.shape == view.shape[:2]
        np.testing.assert_array_equal(got, expected)
    assert luminance(rgb[..., 0]).dtype == np.float32  # mono: as it is, float32
