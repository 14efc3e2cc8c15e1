"""`skystack lucky` and `skystack enhance` from the command line."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from skystack.cli import lucky as cli_lucky
from skystack.io import write_ser
from skystack.testing.planetary import make_lunar_video


@pytest.fixture(scope="module")
def ser(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "moon.ser"
    write_ser(p, make_lunar_video(30, (128, 160), seed=17).frames())
    return p


def _parser():
    parser = argparse.ArgumentParser(prog="skystack")
    cli_lucky.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parsers_and_defaults():
    a = _parser().parse_args(["lucky", "in.ser", "-o", "out.tif"])
    assert a.func is cli_lucky.cmd_lucky
    # argparse keeps no defaults: the API's (skystack.options) apply to what is not given
    assert not {"keep", "mode", "ap_size", "ap_spacing", "multipoint", "drizzle", "wavelets"} & set(vars(a))
    a = _parser().parse_args(["lucky", "a.ser", "b.ser", "-o", "o.fits", "--keep", "200", "--mode", "planet",
                              "--ap-size", "48", "--ap-spacing", "20", "--no-multipoint", "--drizzle", "1.5",
                              "--wavelets", "1.8,1.4,1.0,1,1", "--report", "r.json", "-q"])
    assert a.inputs == ["a.ser", "b.ser"] and a.keep == "200" and a.drizzle == "1.5"
    assert a.wavelets == "1.8,1.4,1.0,1,1" and not a.multipoint and a.quiet
    e = _parser().parse_args(["enhance", "in.fits", "-o", "out.fits"])
    assert e.func is cli_lucky.cmd_enhance and "wavelets" not in vars(e)
    with pytest.raises(SystemExit):
        _parser().parse_args(["lucky", "x"])


def test_lucky_from_the_main_cli(tmp_path, ser, capsys):
    from skystack.cli import main

    out = tmp_path / "stack.tif"
    rc = main(["lucky", str(ser), "-o", str(out), "--keep", "20%", "--ap-size", "48", "--drizzle", "1.5",
               "--wavelets", "1.6,1.2", "--report", str(tmp_path / "r.json"), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    rep = json.loads((tmp_path / "r.json").read_text())
    kept, used = rep["summary"]["kept"], rep["summary"]["used"]
    assert f"kept {kept} of 30 frames (--keep 20%)" in printed and "frames/s" in printed
    assert ("blended per point" in printed) == (used != kept) and "alignment points" in printed
    main(["lucky", str(ser), "-o", str(tmp_path / "global.tif"), "--keep", "5", "--no-multipoint"])
    printed = capsys.readouterr().out
    assert "kept 5 of 30 frames (--keep 5); " in printed and "global alignment" in printed
    assert "blended" not in printed
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["options"]["keep"] == "20%" and rep["options"]["drizzle"] == 1.5
    assert rep["options"]["ap_size"] == 48 and rep["enhance"]["gains"] == [1.6, 1.2]
    import tifffile

    assert tifffile.imread(out).shape == (192, 240)  # drizzled 1.5x
    assert (tmp_path / "stack_sharpened.tif").exists() and (tmp_path / "stack.quality.png").exists()


def test_bad_keep_and_missing_input_give_exit_codes(tmp_path, ser, capsys):
    from skystack.cli import main

    assert main(["lucky", str(ser), "-o", str(tmp_path / "o.tif"), "--keep", "lots", "-q"]) == 2
    assert "--keep 'lots'" in capsys.readouterr().err
    for bad in (["--drizzle", "5"], ["--wavelets", "a,b"], ["--ap-size", "4"], ["--pixfrac", "nan"]):
        assert main(["lucky", str(ser), "-o", str(tmp_path / "o.tif"), *bad, "-q"]) == 2, bad
        assert bad[0] in capsys.readouterr().err or bad == ["--wavelets", "a,b"]
    assert main(["lucky", str(tmp_path / "nope.ser"), "-o", str(tmp_path / "o.tif"), "-q"]) == 3
    assert not (tmp_path / "o.tif").exists()


def test_enhance_command(tmp_path):
    from astropy.io import fits

    from skystack.cli import main
    from skystack.output.write import write_fits

    img = make_lunar_video(1, (64, 80), seed=1).truth
    src = tmp_path / "stack.fits"
    write_fits(src, img)
    dst = tmp_path / "sharp.fits"
    assert main(["enhance", str(src), "-o", str(dst), "--wavelets", "2,1.5", "--stretch", "asinh", "-q"]) == 0
    out = fits.getdata(dst)
    assert out.shape == (64, 80) and 0.0 <= out.min() and out.max() <= 1.0
    assert (tmp_path / "sharp.before-after.png").exists()
    # enhance refuses to write over its input
    assert main(["enhance", str(src), "-o", str(src), "-q"]) == 6
    assert np.allclose(fits.getdata(src), img)


def test_the_summary_says_kept_and_blended_apart(capsys):
    """Multi-point blends more frames than --keep keeps (each alignment point takes its own
    best): "stacked 20 of 101 frames (keep 10%)" read as a broken --keep."""
    from types import SimpleNamespace

    r = SimpleNamespace(report={"summary": {"kept": 11, "used": 20, "rejected": 81}, "options": {"keep": "10%"}},
                        n_used=20, n_frames=101, mode="surface", alignment_points=959,
                        timings={"total_s": 2.0}, peak_rss_mb=470.0, outputs=[], report_path=None)
    cli_lucky._summary(r)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("kept 11 of 101 frames (--keep 10%), blended per point from 20; surface mode, "
                            "959 alignment points; 2.0 s (50 frames/s)"), first
