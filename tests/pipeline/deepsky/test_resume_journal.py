import numpy as np
import pytest

from skystack.errors import UsageError
from skystack.pipeline.deepsky.phase2 import first_cell_apart, reuse_done
from skystack.pipeline.deepsky.resume import Journal, npy_data_offset, read_rows, write_block, write_rows
from skystack.stack.plan import TilePlan
from skystack.types import Fate, FrameResult, Transform


def test_journal_roundtrip_and_torn_lines(tmp_path):
    j = Journal(tmp_path / "out.fits")
    assert j.start({"a": 1, "inputs": [["x", [1, 2]]]}, resume=False) is False
    r = FrameResult(index=3, path="p", name="p", fate=Fate.USED, method="stars",
                    transform=Transform.from_params(dx=1.5, angle_deg=0.3), residual_px=0.01,
                    metrics={"fwhm_px": 2.5, "bad": float("nan")})
    j.record_frame(r)
    j.record_tile((0, 8, 16, 32), np.array([[1, 2], [3, 4]]))
    j.save_plan({"engine": "tiles", "tiles": {"tile_rows": 8}})
    with open(j.dir / "phase1.jsonl", "a") as f:
        f.write('{"index": 9, "pa')  # a kill in the middle of a line
    done = j.phase1_done()
    assert list(done) == [3]
    assert np.allclose(done[3].transform.matrix, r.transform.matrix)
    assert np.isnan(done[3].metrics["bad"])
    (rect, counts), = j.tiles_done()
    assert rect == (0, 8, 16, 32) and counts.tolist() == [[1, 2], [3, 4]]
    assert j.load_plan()["tiles"]["tile_rows"] == 8
    j.release()  # the run ends (a process that ends lets go of it too)
    # resuming with the same manifest keeps it; a different one is refused
    assert Journal(tmp_path / "out.fits").start({"a": 1, "inputs": [["x", [1, 2]]]}, resume=True) is True
    with pytest.raises(UsageError, match="different a"):
        Journal(tmp_path / "out.fits").start({"a": 2, "inputs": [["x", [1, 2]]]}, resume=True)
    # without --resume an old journal is discarded
    assert Journal(tmp_path / "out.fits").start({"a": 2}, resume=False) is False
    assert Journal(tmp_path / "out.fits").phase1_done() == {}


def test_rows_written_with_pwrite(tmp_path):
    j = Journal(tmp_path / "o.fits")
    j.start({}, resume=False)
    p, new = j.accumulator("image", (10, 4, 3), "float32", fresh=True)
    assert new
    off = npy_data_offset(p)
    data = np.arange(3 * 4 * 3, dtype=np.float32).reshape(3, 4, 3)
    write_rows(p, off, 4 * 3 * 4, 5, data)
    full = np.load(p)
    assert np.array_equal(full[5:8], data) and not full[:5].any() and not full[8:].any()
    assert np.array_equal(read_rows(p, off, (10, 4, 3), "float32", 5, 8), data)
    # resuming keeps the existing accumulator contents
    p2, new = j.accumulator("image", (10, 4, 3), "float32", fresh=False)
    assert not new and np.array_equal(np.load(p2)[5:8], data)
    with open(p, "r+b") as f:  # cut short by a kill while it was created: made again
        f.truncate(100)
    assert j.accumulator("image", (10, 4, 3), "float32", fresh=False)[1]


def test_disk_full_while_writing_bands_is_an_output_error(tmp_path, monkeypatch):
    import errno
    import os

    from skystack.errors import OutputError

    j = Journal(tmp_path / "o.fits")
    j.start({}, resume=False)
    p, _ = j.accumulator("image", (10, 4), "float32", fresh=True)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OutputError, match="disk full.*--resume"):
        write_rows(p, npy_data_offset(p), 16, 0, np.ones((2, 4), np.float32))


def test_tiles_written_into_their_rectangle(tmp_path):
    j = Journal(tmp_path / "o.fits")
    j.start({}, resume=False)
    p, _ = j.accumulator("image", (10, 6, 3), "float32", fresh=True)
    data = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3) + 1
    write_block(p, npy_data_offset(p), (10, 6, 3), 4, 3, 4, data)
    full = np.load(p)
    assert np.array_equal(full[3:7, 4:6], data)
    full[3:7, 4:6] = 0
    assert not full.any()


def _plan(rows):
    return TilePlan(height=40, width=30, channels=1, n_frames=3, tile_rows=rows, strips=(0, 15, 30))


def test_done_tiles_are_reused_when_the_new_plan_nests_in_them():
    done = [((0, 16, 0, 15), np.full((3, 2), 1)), ((0, 16, 15, 30), np.full((3, 2), 10)),
            ((16, 32, 15, 30), np.full((3, 2), 100))]
    same = _plan(16).tiles
    skip: set[int] = set()
    taken = reuse_done(done, same, skip, 3)
    assert sorted(skip) == [0, 1, 3] and taken[0, 0] == 111
    finer = _plan(8).tiles  # a smaller budget on resume: each recorded tile is two of these
    skip = set()
    taken = reuse_done(done, finer, skip, 3)
    assert {finer[t] for t in skip} == {(0, 8, 0, 15), (8, 16, 0, 15), (0, 8, 15, 30), (8, 16, 15, 30),
                                        (16, 24, 15, 30), (24, 32, 15, 30)}
    assert taken[0, 0] == 111
    coarser = _plan(32).tiles  # a recorded tile cut across by the new plan is recomputed, not counted
    skip = set()
    taken = reuse_done(done, coarser, skip, 3)
    assert skip == set() and not taken.any()
    skip = set()  # a rectangle recorded twice (two resumed runs) counts once
    taken = reuse_done(done + [done[0]], same, skip, 3)
    assert taken[0, 0] == 111


def test_the_first_tile_s_top_cells_run_apart_and_a_resume_redoes_that_tile():
    tiles = [(0, 240, 0, 540), (0, 240, 540, 1080), (240, 480, 0, 540)]
    blocks = first_cell_apart(tiles)
    assert blocks[:2] == [(0, 8, 0, 540), (8, 240, 0, 540)] and blocks[2:] == tiles[1:]
    assert first_cell_apart([(0, 8, 0, 10)]) == [(0, 8, 0, 10)] and first_cell_apart([]) == []
    # an interrupted run recorded the split rectangles: the plan's tile 0 lies in neither,
    # so it is redone and their counts are not taken; the others are reused
    counts = {b: np.full((3, 2), k + 1) for k, b in enumerate(blocks)}
    skip: set[int] = set()
    taken = reuse_done(list(counts.items()), tiles, skip, 3)
    assert skip == {1, 2}
    assert np.array_equal(taken, counts[tiles[1]] + counts[tiles[2]])


def test_a_journal_path_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    """The journal folder is emptied at the start of a run: a symbolic link in its place
    (to a folder of the user's) is refused, and what it points to stays as it was."""
    from skystack.errors import OutputError

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.fits").write_bytes(b"data")
    (tmp_path / "out.fits.skystack-journal").symlink_to(precious, target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link"):
        Journal(tmp_path / "out.fits").start({"a": 1}, resume=False)
    assert [p.name for p in precious.iterdir()] == ["keep.fits"]


def test_a_file_system_without_locks_runs_unlocked(tmp_path, monkeypatch):
    """Some network shares refuse locks (ENOLCK): the run goes on without one rather than
    fail; a second journal on the same output is then not refused (nothing can tell)."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    j = Journal(tmp_path / "out.fits")
    assert j.start({"a": 1}, resume=False) is False
    assert (j.dir / "run.json").exists()
    j.remove()
    assert not j.dir.exists()


def test_the_journal_is_refused_to_a_second_holder_and_free_once_released(tmp_path):
    from skystack.errors import OutputError

    first = Journal(tmp_path / "out.fits")
    first.start({"a": 1}, resume=False)
    with pytest.raises(OutputError, match="another skystack run is writing this output"):
        Journal(tmp_path / "out.fits").start({"a": 1}, resume=True)
    assert (first.dir / "run.json").exists()  # the refusal touched nothing
    first.release()
    assert Journal(tmp_path / "out.fits").start({"a": 1}, resume=True) is True
