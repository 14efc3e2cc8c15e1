import numpy as np
import pytest

from skystack.errors import UsageError
from skystack.pipeline.deepsky.resume import Journal, npy_data_offset, read_rows, write_rows
from skystack.types import Fate, FrameResult, Transform


def test_journal_roundtrip_and_torn_lines(tmp_path):
    j = Journal(tmp_path / "out.fits")
    assert j.start({"a": 1, "inputs": [["x", [1, 2]]]}, resume=False) is False
    r = FrameResult(index=3, path="p", name="p", fate=Fate.USED, method="stars",
                    transform=Transform.from_params(dx=1.5, angle_deg=0.3), residual_px=0.01,
                    metrics={"fwhm_px": 2.5, "bad": float("nan")})
    j.record_frame(r)
    j.record_band(2, np.array([[1, 2], [3, 4]]))
    with open(j.dir / "phase1.jsonl", "a") as f:
        f.write('{"index": 9, "pa')  # a kill in the middle of a line
    done = j.phase1_done()
    assert list(done) == [3]
    assert np.allclose(done[3].transform.matrix, r.transform.matrix)
    assert np.isnan(done[3].metrics["bad"])
    assert j.bands_done()[2].tolist() == [[1, 2], [3, 4]]
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
    p = j.accumulator("image", (10, 4, 3), "float32", fresh=True)
    off = npy_data_offset(p)
    data = np.arange(3 * 4 * 3, dtype=np.float32).reshape(3, 4, 3)
    write_rows(p, off, 4 * 3 * 4, 5, data)
    full = np.load(p)
    assert np.array_equal(full[5:8], data) and not full[:5].any() and not full[8:].any()
    assert np.array_equal(read_rows(p, off, (10, 4, 3), "float32", 5, 8), data)
    # resuming keeps the existing accumulator contents
    p2 = j.accumulator("image", (10, 4, 3), "float32", fresh=False)
    assert np.array_equal(np.load(p2)[5:8], data)


def test_disk_full_while_writing_bands_is_an_output_error(tmp_path, monkeypatch):
    import errno
    import os

    from skystack.errors import OutputError

    j = Journal(tmp_path / "o.fits")
    j.start({}, resume=False)
    p = j.accumulator("image", (10, 4), "float32", fresh=True)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OutputError, match="disk full.*--resume"):
        write_rows(p, npy_data_offset(p), 16, 0, np.ones((2, 4), np.float32))
