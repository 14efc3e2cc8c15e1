"""`skystack demo` and the CLI's exit codes for the caller's mistakes."""
from __future__ import annotations

import math

from skystack.cli import main
from skystack.pipeline.demo import run_demo
from skystack.testing.synthetic import make_deepsky


def test_demo_checks_itself_against_the_truth(tmp_path, capsys):
    fig = run_demo(tmp_path, n_frames=8, size=(360, 280), method="winsorized")
    out = capsys.readouterr().out
    assert fig["registered"] == 8 and fig["stacked"] == 8
    assert fig["reg_rms_px_max"] < 0.1
    # rejection costs a little efficiency against a plain mean's 1/sqrt(N)
    assert fig["noise_ratio"] < 1.35 / math.sqrt(8)
    assert "registered 8 of 8 frames" in out and str(tmp_path) in out
    assert (tmp_path / "stack.fits").exists() and (tmp_path / "stack.preview.png").exists()


def test_memory_limit_below_one_band_is_a_usage_error(tmp_path, capsys):
    make_deepsky(n_frames=4, shape=(200, 240), seed=2, max_shift=5.0, trail_frame=None,
                 star_density=3e-3).write_fits(tmp_path / "l")
    rc = main(["stack", str(tmp_path / "l"), "-o", str(tmp_path / "o.fits"), "--method", "sigma",
               "--memory-limit", "10k", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--memory-limit" in err and "too small" in err and "needs about" in err
    assert not (tmp_path / "o.fits").exists()


def test_bad_option_values_exit_2(tmp_path, capsys):
    assert main(["stack", str(tmp_path), "-o", str(tmp_path / "o.fits"), "--keep", "lots", "-q"]) == 2
    assert "--keep 'lots'" in capsys.readouterr().err
    rc = main(["stack", str(tmp_path), "-o", str(tmp_path / "o.fits"), "--memory-limit", "plenty", "-q"])
    assert rc == 2 and "cannot read 'plenty' as a size" in capsys.readouterr().err
    for n in ("0", "-3"):  # 0 was a ValueError traceback from the generator
        assert main(["demo", "--frames", n, "--dir", str(tmp_path / "d"), "-q"]) == 2
        err = capsys.readouterr().err
        assert err == f"skystack: --frames {n}: expected a whole number of at least 1\n"
    assert not (tmp_path / "d").exists()
