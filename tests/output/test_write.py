import errno
import os

import numpy as np
import pytest
import tifffile
from astropy.io import fits

from skystack.errors import OutputError
from skystack.output import write as w


def test_fits_roundtrip_with_provenance(tmp_path, rng):
    img = rng.normal(size=(20, 30)).astype(np.float32)
    img[0, 0] = np.nan
    p = w.write_fits(tmp_path / "a.fits", img, header={"NCOMBINE": (12, "frames")}, history=["input 1: x.fits"])
    with fits.open(p) as h:
        assert h[0].header["NCOMBINE"] == 12
        assert "input 1: x.fits" in str(h[0].header["HISTORY"])
        assert np.array_equal(h[0].data, img, equal_nan=True)
    rgb = rng.normal(size=(20, 30, 3)).astype(np.float32)
    p = w.write_fits(tmp_path / "c.fits", rgb)
    with fits.open(p) as h:
        assert h[0].data.shape == (3, 20, 30)
        assert np.array_equal(np.moveaxis(h[0].data, 0, 2), rgb)


def test_tiff_uint16_and_float(tmp_path, rng):
    img = rng.uniform(10, 20, size=(8, 9, 3)).astype(np.float32)
    p = w.write_tiff(tmp_path / "a.tif", img, dtype="uint16", scale=(10, 20))
    back = tifffile.imread(p)
    assert back.dtype == np.uint16 and back.shape == (8, 9, 3)
    assert np.allclose(back / 65535 * 10 + 10, img, atol=1e-3)
    p = w.write_tiff(tmp_path / "b.tif", img[..., 0])
    assert np.array_equal(tifffile.imread(p), img[..., 0])


def test_preview_is_a_png_of_sane_brightness(tmp_path, rng):
    import cv2

    img = rng.normal(1000, 10, (200, 300)).astype(np.float32)
    img[100, 100] = 1e6  # one hot pixel must not crush the stretch
    p = w.write_preview(tmp_path / "p.png", img)
    png = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert png.shape == (200, 300) and 30 < np.median(png) < 120


def test_preview_of_a_colour_stack_costs_less_than_the_stack(tmp_path, rng):
    """The preview is written at the end of a run, on top of the stack: its stretch
    parameters come from a subsample and the PNG is written from the encoder's buffer, so
    the temporaries NumPy allocates stay well under the stack's own size (they were 1.4x
    it; 0.78x with an RGB -> BGR copy for the encoder, 0.53x stretched straight into BGR)."""
    import tracemalloc

    import cv2

    from skystack.output.guard import is_product

    img = rng.normal(1000, 30, (1080, 1920, 3)).astype(np.float32)
    img[..., 0] *= 1.2
    tracemalloc.start()
    try:
        p = w.write_preview(tmp_path / "p.png", img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.6 * img.nbytes, peak / img.nbytes
    png = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert png.shape == (1080, 1920, 3) and is_product(p)
    # unlinked stretch: each channel's sky lands near the same grey despite the red scale
    med = np.median(png.reshape(-1, 3), axis=0)
    assert np.ptp(med) <= 3 and 30 < med.mean() < 120, med


def test_colour_preview_keeps_each_channel_in_its_place(tmp_path, rng):
    """A square only in red, a bar only in blue: the PNG has them in red and blue (the
    preview is made in OpenCV's BGR order, so a swap would show here)."""
    import cv2

    img = rng.normal(1000, 10, (120, 160, 3)).astype(np.float32)
    img[20:50, 20:50, 0] += 500  # red square
    img[80:100, :, 2] += 500  # blue bar
    for linked in (False, True):
        rgb = cv2.imread(str(w.write_preview(tmp_path / f"c{linked}.png", img, linked=linked)),
                         cv2.IMREAD_UNCHANGED)[..., ::-1]
        sq, bar, sky = rgb[25:45, 25:45].mean((0, 1)), rgb[85:95, 60:100].mean((0, 1)), rgb[60:75].mean((0, 1))
        assert sq[0] > sky[0] + 50 and abs(sq[1] - sky[1]) < 10 and abs(sq[2] - sky[2]) < 10, (linked, sq, sky)
        assert bar[2] > sky[2] + 50 and abs(bar[0] - sky[0]) < 10 and abs(bar[1] - sky[1]) < 10, (linked, bar, sky)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.fits"
    target.write_bytes(b"old complete output")

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w, "_write_be_float32", disk_full)  # the data unit, after the header
    with pytest.raises(OutputError, match="disk full"):
        w.write_fits(target, np.zeros((4, 4), np.float32))
    assert target.read_bytes() == b"old complete output"
    assert [p.name for p in tmp_path.iterdir()] == ["out.fits"]


def test_a_write_sweeps_the_temporary_files_its_killed_predecessors_left(tmp_path):
    # a write killed with SIGKILL cannot delete its temporary file: each is as big as the
    # output, and re-running the command left them piling up beside it
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = w._owner_tag()
    host = tag.split("-")[0]
    out = tmp_path / "m [1].fits"  # glob characters in the name are taken literally
    stale = tmp_path / f".{out.name}.{host}-{dead.pid}.0badcafe.part.fits"
    alive = tmp_path / f".{out.name}.{host}-{os.getppid()}.0badcafe.part.fits"  # a live writer's
    elsewhere = tmp_path / f".{out.name}.abcdef-{dead.pid}.0badcafe.part.fits"  # another machine's
    other_output = tmp_path / f".other.fits.{host}-{dead.pid}.0badcafe.part.png"  # a dead one's too
    older = tmp_path / f".{out.name}.0badcafe.part.fits"  # the name without an owner
    a_frame = tmp_path / f".{out.name}.{host}-{dead.pid}.notahexx.part.fits"  # not a name we make
    for p in (stale, alive, elsewhere, other_output, older, a_frame):
        p.write_bytes(b"half a file")
    w.write_fits(out, np.zeros((4, 4), np.float32))
    assert not stale.exists() and not other_output.exists()
    assert all(p.exists() for p in (alive, elsewhere, older, a_frame))
    assert fits.getdata(out).shape == (4, 4)


@pytest.mark.parametrize("name", ["stack.fits", "m" * 235 + ".fits", "é" * 118 + ".fits"],
                         ids=["short", "240 bytes", "241 bytes of UTF-8"])
def test_a_write_killed_mid_file_leaves_a_temporary_that_the_next_write_removes(tmp_path, name):
    # (a name that is legal itself but leaves no room for the temporary's additions once
    # failed with "File name too long")
    import subprocess
    import sys

    out = tmp_path / name
    killed = ("import os, signal, sys\n"
              "from skystack.output.write import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    open(tmp, 'wb').write(b'half a stack')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", killed, str(out)])
    assert r.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".") and left[0].endswith(".part.fits")
    assert len(left[0].encode()) <= 255
    w.write_fits(out, np.ones((3, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_refused_write_says_why_in_words(tmp_path):
    """Each way a disk refuses a file, as the one-line error gives it: the kernel's errors
    for a full disk, a quota and a file too large (FAT32, or a file size limit), and
    NumPy's short write, which has no errno, as what it means."""
    assert w.why_not_written(OSError(errno.ENOSPC, "No space left on device")) == "disk full"
    assert w.why_not_written(OSError(errno.EDQUOT, "Disk quota exceeded")) == "disk quota exceeded"
    assert "FAT32" in w.why_not_written(OSError(errno.EFBIG, "File too large"))
    short = w.why_not_written(OSError("1228800 requested and 1872 written"))
    assert short.startswith("the disk took only part of it") and "1872 written" in short
    assert w.why_not_written(OSError(errno.EACCES, "Permission denied")) == "Permission denied"

    target = tmp_path / "cache.npy"  # the short write through atomic_path: the error, no file
    with pytest.raises(OutputError, match="took only part of it"):
        with w.atomic_path(target):
            raise OSError("1228800 requested and 1872 written")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_an_input(tmp_path):
    src = tmp_path / "frame.fits"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="is one of the inputs"):
        w.check_not_input(src, [str(src)])
    link = tmp_path / "alias.fits"
    os.symlink(src, link)
    with pytest.raises(OutputError):
        w.check_not_input(link, [str(src)])
    w.check_not_input(tmp_path / "new.fits", [str(src)])


@pytest.mark.parametrize("shape", [(37, 53), (29, 41, 3)])
def test_fits_data_as_astropy_writes_them_and_the_image_left_alone(tmp_path, monkeypatch, shape):
    # the data unit is written chunk by chunk (w._write_be_float32): the same bytes as
    # astropy's own writer, a valid file, and the caller's array never touched
    rng = np.random.default_rng(len(shape))
    img = rng.normal(100, 30, shape).astype(np.float32)
    img[3, 4] = np.nan
    keep = img.copy()
    monkeypatch.setattr(w, "_FITS_CHUNK_VALUES", 7 * shape[1])  # several chunks a plane, the last short
    p = w.write_fits(tmp_path / "ours.fits", img, header={"OBJECT": "M94"}, history=["x"])
    assert np.array_equal(img, keep, equal_nan=True)
    assert p.stat().st_size % 2880 == 0
    with fits.open(p) as h:
        h.verify("exception")
        data = h[0].data
        want = np.moveaxis(keep, 2, 0) if keep.ndim == 3 else keep
        assert np.array_equal(data, want, equal_nan=True)
        assert h[0].header["OBJECT"] == "M94"
    ref = tmp_path / "astropy.fits"
    fits.PrimaryHDU(np.ascontiguousarray(want)).writeto(ref)
    with fits.open(ref) as a, fits.open(p) as b:
        assert a[0].header["BITPIX"] == b[0].header["BITPIX"] == -32
        assert a[0].data.tobytes() == b[0].data.tobytes()


def test_layout_cards_of_a_given_header_are_not_written(tmp_path):
    # a header copied from a 16-bit frame carries BITPIX/NAXISn/BZERO: the float32 stack
    # must come back as written, whatever such cards said
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    h = fits.Header()
    for k, v in [("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", 9), ("BZERO", 32768), ("BSCALE", 1), ("OBJECT", "M13")]:
        h[k] = v
    for hdr in (h, {k: h[k] for k in h}):
        p = w.write_fits(tmp_path / "s.fits", img, header=hdr)
        with fits.open(p) as f:
            f.verify("exception")
            assert np.array_equal(f[0].data, img)
            assert f[0].header["BITPIX"] == -32 and f[0].header["OBJECT"] == "M13"
            assert "BZERO" not in f[0].header and list(f[0].header.keys()).count("NAXIS1") == 1


def test_a_write_into_a_stream_that_fails_is_an_output_error(tmp_path):
    # the writer's own OSError (its temporary folder's disk full) came out raw: a traceback
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="pipe: could not write \\(disk full\\)"):
        with w.atomic_path(fifo):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["pipe"]
