"""Bad input: each problem gets a one-line message naming the file and the reason, the run
goes on where it can, the report records it, and inputs are never modified."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import tifffile
from astropy.io import fits

import skystack
from skystack.cli import main
from skystack.errors import NoFramesError, OutputError
from skystack.io import write_ser
from skystack.testing.synthetic import make_deepsky


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    s = make_deepsky(n_frames=6, shape=(200, 260), seed=5, max_shift=8.0, max_rot_deg=1.0, trail_frame=None,
                     star_density=2.5e-3)
    folder = tmp_path_factory.mktemp("good")
    s.write_fits(folder)
    return s, folder


def _retype_tiff_tag(path, tag, new_type):
    """Give one tag of a little-endian TIFF's first IFD another field type."""
    b = bytearray(path.read_bytes())
    ifd = int.from_bytes(b[4:8], "little")
    for k in range(int.from_bytes(b[ifd:ifd + 2], "little")):
        e = ifd + 2 + 12 * k
        if int.from_bytes(b[e:e + 2], "little") == tag:
            b[e + 2:e + 4] = new_type.to_bytes(2, "little")
            path.write_bytes(bytes(b))
            return
    raise AssertionError(f"no tag {tag} in {path}")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_empty_folder(tmp_path, capsys):
    with pytest.raises(NoFramesError, match=str(tmp_path)):
        skystack.stack(tmp_path, tmp_path / "o.fits")
    assert main(["stack", str(tmp_path), "-o", str(tmp_path / "o.fits"), "-q"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err
    assert not (tmp_path / "o.fits").exists()


def test_a_bad_set_stacks_what_it_can_and_reports_the_rest(good, tmp_path, capsys):
    synth, src = good
    lights = tmp_path / "lights"
    shutil.copytree(src, lights)
    (lights / "truth.json").unlink()
    frames = sorted(lights.glob("*.fits"))
    # truncated FITS: cut in the middle of the data
    data = frames[1].read_bytes()
    frames[1].write_bytes(data[: len(data) // 2])
    # a "FITS" that is not one
    (lights / "synth_0100.fits").write_bytes(b"SIMPLE = nonsense, this is a text file" * 20)
    # a frame of another size
    fits.PrimaryHDU(np.full((100, 120), 1000, np.uint16)).writeto(lights / "synth_0101.fits")
    # NaN and inf pixels in an otherwise good float frame
    f = fits.getdata(frames[2]).astype(np.float32)
    f[10:14, 20:30] = np.nan
    f[50, 50] = np.inf
    fits.PrimaryHDU(f).writeto(lights / "synth_0102.fits")
    # a frame with nothing to register on (flat noise), and one with no finite pixel
    rng = np.random.default_rng(1)
    fits.PrimaryHDU(rng.normal(1000, 5, (200, 260)).astype(np.float32)).writeto(lights / "synth_0103.fits")
    fits.PrimaryHDU(np.full((200, 260), np.nan, np.float32)).writeto(lights / "synth_0104.fits")
    # a header whose BITPIX is no pixel type (astropy's KeyError crashed the run), and a TIFF
    # whose SamplesPerPixel tag has a type tifffile cannot compare (its TypeError, raised
    # while checking whether the file was one of skystack's products, crashed the run too)
    raw = bytearray(frames[3].read_bytes())
    at = raw.index(b"BITPIX  =")
    raw[at:at + 80] = f"{'BITPIX':8}= {14:>20}".ljust(80).encode()
    (lights / "synth_0105.fits").write_bytes(bytes(raw))
    tifffile.imwrite(lights / "synth_0106.tif", fits.getdata(frames[3]))
    _retype_tiff_tag(lights / "synth_0106.tif", 277, 7)
    before = _digest(lights)

    out = tmp_path / "out.fits"
    rc = main(["stack", str(lights), "-o", str(out), "-q", "--method", "winsorized", "--min-registered", "6"])
    assert rc == 0
    assert _digest(lights) == before
    err = capsys.readouterr().err
    rep = json.loads((tmp_path / "out.fits.report.json").read_text())
    by_name = {f["path"].rsplit("/", 1)[-1]: f for f in rep["frames"]}

    def check(name, fate, words):
        f = by_name[name]
        assert f["fate"] == fate, f
        assert words in f["reason"], f["reason"]
        line = next(x for x in err.splitlines() if name in x)  # one line naming file and reason
        assert words in line

    check("synth_0001.fits", "unreadable", "truncated FITS")
    check("synth_0100.fits", "unreadable", "")
    check("synth_0101.fits", "rejected", "size 120×100 differs")
    check("synth_0103.fits", "failed_registration", "")
    check("synth_0104.fits", "unreadable", "no finite pixel")
    check("synth_0105.fits", "unreadable", "BITPIX = 14 is not a FITS pixel type")
    check("synth_0106.tif", "unreadable", "not a readable TIFF file")
    assert by_name["synth_0102.fits"]["fate"] == "used"
    assert by_name["synth_0102.fits"]["metrics"]["nonfinite_px"] == 41
    assert rep["summary"]["stacked"] == 6  # frames 0, 2-5 of the synthetic set and the NaN copy of 2
    img = fits.getdata(out)
    assert np.isfinite(img).mean() > 0.8


def test_single_frame_stack_is_the_frame(good, tmp_path):
    synth, src = good
    one = sorted(src.glob("*.fits"))[0]
    r = skystack.stack(one, tmp_path / "one.fits")
    img = fits.getdata(r.output)
    assert r.n_used == 1
    assert np.allclose(img, fits.getdata(one).astype(np.float32), atol=1e-3)


def test_output_may_not_overwrite_an_input(good, tmp_path):
    synth, src = good
    lights = tmp_path / "l"
    shutil.copytree(src, lights)
    target = sorted(lights.glob("*.fits"))[0]
    before = target.read_bytes()
    with pytest.raises(OutputError, match="is one of the inputs"):
        skystack.stack(lights, target)
    assert target.read_bytes() == before


def test_ser_whose_header_promises_more_frames(good, tmp_path, capsys):
    synth, _ = good
    frames = [synth.frame(i) for i in range(4)]
    ser = tmp_path / "clip.ser"
    write_ser(ser, frames, depth=16, frame_count=6)  # header says 6, file holds 4
    out = tmp_path / "ser.fits"
    assert main(["stack", str(ser), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "clip.ser" in err and "6" in err and "4" in err
    rep = json.loads((tmp_path / "ser.fits.report.json").read_text())
    assert rep["summary"]["frames"] == 4 and rep["summary"]["used"] == 4
