"""Decode-once cache: same pixels, sliceable, reused across runs, atomic, picklable."""
from __future__ import annotations

import os
import pickle

import av
import cv2
import numpy as np
import pytest
from astropy.io import fits

from skystack.errors import InputChangedError
from skystack.io import FrameSet, ensure_sliceable, open_frames
from skystack.io.npycache import cache_file, cache_key
from skystack.io.video import VideoSource


def make_inputs(folder, rng):
    folder.mkdir()
    fits.PrimaryHDU(rng.integers(0, 60000, (24, 32)).astype(np.uint16)).writeto(folder / "a.fits")
    cfa = fits.PrimaryHDU(rng.integers(0, 60000, (24, 32)).astype(np.uint16))
    cfa.header["BAYERPAT"] = "GRBG"
    fits.CompImageHDU(cfa.data, header=cfa.header).writeto(folder / "b_cfa.fits")
    cv2.imwrite(str(folder / "c.png"), rng.integers(0, 255, (24, 32, 3)).astype(np.uint8))
    with av.open(str(folder / "d.avi"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.codec_context.gop_size = 3
        for k in range(7):
            g = np.full((24, 32, 3), 30 + 20 * k, np.uint8)
            g[5:10, 3 * k:3 * k + 6] = 250
            for pkt in s.encode(av.VideoFrame.from_ndarray(g, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return folder


def test_cached_frames_equal_the_originals_and_are_sliceable(tmp_path, rng, monkeypatch):
    src = make_inputs(tmp_path / "in", rng)
    fs = open_frames(src)
    assert len(fs) == 1 + 1 + 1 + 7
    assert [fs.frame_sliceable(i) for i in range(4)] == [True, False, False, False]
    seen = []
    opened = []
    real_open = VideoSource._open
    monkeypatch.setattr(VideoSource, "_open", lambda self: opened.append(1) or real_open(self))
    cached = ensure_sliceable(fs, tmp_path / "cache", progress=seen.append)
    assert len(opened) == 1  # one straight decode of the video: no seek, no restart
    monkeypatch.undo()
    assert isinstance(cached, FrameSet) and cached is not fs and len(cached) == len(fs)
    assert {e.kind for e in cached.entries if e.path.endswith(".avi")} == {"npy-cache"}
    assert seen == list(range(1, 10))  # the 9 non-sliceable frames
    for i in range(len(fs)):
        assert cached.frame_sliceable(i) and not cached.frame_sequential(i)
        assert cached.name(i) == fs.name(i) and cached.path(i) == fs.path(i)
        raw = cached.read_raw(i)
        assert raw.dtype == fs.read_raw(i).dtype and np.array_equal(raw, fs.read_raw(i))
        assert np.array_equal(cached.read(i), fs.read(i))
        assert np.array_equal(cached.read_rows(i, 3, 17), fs.read(i)[3:17])
    # the CFA frame is cached raw (a mosaic), and still demosaiced at read time
    assert cached.read_raw(1).shape == (24, 32) and cached.read(1).shape == (24, 32, 3)
    files = sorted(os.listdir(tmp_path / "cache"))
    assert len(files) == 9 and all(f.endswith(".npy") and not f.startswith(".tmp") for f in files)
    assert np.load(tmp_path / "cache" / files[0], mmap_mode="r").dtype in (np.uint8, np.uint16)


def test_rerun_reuses_the_cache_and_a_changed_file_does_not_match(tmp_path, rng):
    src = make_inputs(tmp_path / "in", rng)
    fs = open_frames(src)
    ensure_sliceable(fs, tmp_path / "cache")
    before = {f: os.stat(tmp_path / "cache" / f).st_mtime_ns for f in os.listdir(tmp_path / "cache")}
    again = ensure_sliceable(open_frames(src), tmp_path / "cache")
    after = {f: os.stat(tmp_path / "cache" / f).st_mtime_ns for f in os.listdir(tmp_path / "cache")}
    assert before == after  # nothing rewritten
    assert np.array_equal(again.read(5), fs.read(5))
    png = src / "c.png"
    e = next(e for e in fs.entries if e.path.endswith("c.png"))
    cv2.imwrite(str(png), rng.integers(0, 255, (24, 32, 3)).astype(np.uint8))
    os.utime(png, ns=(e.fingerprint[1] + 10**9, e.fingerprint[1] + 10**9))
    with pytest.raises(InputChangedError):
        ensure_sliceable(fs, tmp_path / "cache")  # the set opened before the change
    fresh = open_frames(src)
    new_entry = next(e for e in fresh.entries if e.path.endswith("c.png"))
    assert cache_key(new_entry.path, new_entry.fingerprint) != cache_key(e.path, e.fingerprint)
    cached = ensure_sliceable(fresh, tmp_path / "cache")
    i = next(i for i in range(len(fresh)) if fresh.path(i).endswith("c.png"))
    assert np.array_equal(cached.read_raw(i), cv2.imread(str(png))[..., ::-1])


def test_cached_set_pickles_and_caches_only_what_is_asked(tmp_path, rng):
    src = make_inputs(tmp_path / "in", rng)
    fs = open_frames(src)
    video = [i for i in range(len(fs)) if fs.path(i).endswith("d.avi")]
    keep = video[1::3]  # frames 1 and 4 of the video
    cached = ensure_sliceable(fs, tmp_path / "cache", indices=keep)
    assert len(os.listdir(tmp_path / "cache")) == 2
    assert [cached.frame_sliceable(i) for i in video] == [k in keep for k in video]
    again = pickle.loads(pickle.dumps(cached))
    assert isinstance(again, FrameSet) and again.entries == cached.entries
    for i in video:  # cached frames from the cache, the rest decoded from the video
        assert np.array_equal(again.read(i), fs.read(i))
    e = next(e for e in cached.entries if e.path.endswith("d.avi"))
    assert os.path.exists(cache_file(str(tmp_path / "cache"), e.hints["key"], 4))


def test_nothing_to_cache_returns_the_same_set(tmp_path, rng):
    (tmp_path / "in").mkdir()
    fits.PrimaryHDU(rng.integers(0, 9, (4, 4)).astype(np.int16)).writeto(tmp_path / "in" / "a.fits")
    fs = open_frames(tmp_path / "in")
    assert ensure_sliceable(fs, tmp_path / "cache") is fs
    assert not (tmp_path / "cache").exists()


def test_a_frame_that_fails_to_decode_is_marked_unreadable(tmp_path, rng):
    (tmp_path / "in").mkdir()
    good = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "in" / "a.png"), good)
    cv2.imwrite(str(tmp_path / "in" / "b.png"), good)
    data = (tmp_path / "in" / "b.png").read_bytes()
    (tmp_path / "in" / "b.png").write_bytes(data[:70])  # header fine, pixels gone
    fs = open_frames(tmp_path / "in")
    assert fs.problems == []  # opening reads headers only
    cached = ensure_sliceable(fs, tmp_path / "cache")
    assert cached.is_readable(0) and not cached.is_readable(1)
    (idx, path, reason), = cached.problems
    assert idx == 1 and path.endswith("b.png") and "cannot decode picture" in reason
    assert np.array_equal(cached.read_raw(0), good[..., ::-1])


def test_remove_cache_measures_and_removes_only_skystacks_own_folder(tmp_path, rng):
    from skystack.io.cache import cache_summary, remove_cache

    make_inputs(tmp_path / "in", rng)
    frames = open_frames([tmp_path / "in"])
    cache = tmp_path / ".skystack-cache"
    ensure_sliceable(frames, cache)
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert size > 0
    kept = remove_cache(cache, keep=True)
    assert kept == {"path": str(cache), "bytes": size, "removed": False} and cache.is_dir()
    assert cache_summary(kept) == f"cache {size / 1e6:.1f} MB kept in {cache}"
    gone = remove_cache(cache)
    assert gone["removed"] and gone["bytes"] == size and not cache.exists()
    assert cache_summary(gone) == f"cache {size / 1e6:.1f} MB removed"
    assert remove_cache(cache) == {"path": str(cache), "bytes": 0, "removed": False}
    assert cache_summary(remove_cache(cache)) == "no cache"
    # a folder the caller chose, and a link named like the cache, are not skystack's to remove
    mine = tmp_path / "my-cache"
    ensure_sliceable(frames, mine)
    assert not remove_cache(mine)["removed"] and any(mine.iterdir())
    os.symlink(mine, cache)
    assert not remove_cache(cache)["removed"] and any(mine.iterdir())
