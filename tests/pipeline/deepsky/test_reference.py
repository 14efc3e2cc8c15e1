"""The reference passes the acceptance any frame must pass, and a run that registers too
few of its frames fails loudly (exit 5) instead of writing the noise it could stack."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits

import skystack
import skystack.pipeline.deepsky.phase1 as phase1
from skystack.cli import main
from skystack.errors import RegistrationError
from skystack.testing.synthetic import make_deepsky
from skystack.types import Fate


@pytest.fixture(scope="module")
def lights(tmp_path_factory):
    s = make_deepsky(n_frames=5, shape=(200, 260), seed=5, max_shift=8.0, max_rot_deg=1.0, trail_frame=None,
                     star_density=2.5e-3)
    folder = tmp_path_factory.mktemp("lights")
    s.write_fits(folder, prefix="f_")
    (folder / "truth.json").unlink()
    return s, folder


def _noise_like(path, like: np.ndarray, seed: int) -> None:
    """A star-less frame with the sky level and noise of ``like``: clouds, a capped scope."""
    d = like.astype(np.float64)
    med = np.median(d)
    sigma = 1.4826 * np.median(np.abs(d - med))
    rng = np.random.default_rng(seed)
    fits.PrimaryHDU(np.clip(rng.normal(med, sigma, d.shape), 0, 65535).astype(np.uint16)).writeto(path)


@pytest.mark.parametrize("score", ["pipeline's", "noise first"])
def test_a_noise_frame_sorted_first_does_not_become_the_reference(score, lights, tmp_path, monkeypatch):
    s, src = lights
    folder = tmp_path / "l"
    shutil.copytree(src, folder)
    _noise_like(folder / "a_noise.fits", s.frame(0), seed=1)  # sorts before f_*
    if score == "noise first":
        # on the real M13 frames (broad stars) the noise frame's one sharp noise peak scored
        # best; here the score is made to rank the star-less frame first, as it did there
        monkeypatch.setattr(phase1, "quality_score", lambda m: -m.get("n_stars", 0.0))
    r = skystack.stack(folder, tmp_path / "o.fits", quiet=True)
    assert r.results[0].name.endswith("a_noise.fits") and r.reference != 0
    assert r.results[0].fate is Fate.FAILED_REGISTRATION
    assert [f.fate for f in r.results[1:]] == [Fate.USED] * 5
    if score == "noise first":
        assert "passed over: frame(s) 0" in r.report["reference"]["why"]
    assert r.report["summary"]["stacked"] == 5  # the real frames, not the noise


def test_the_reference_check_on_real_m13_frames(real_path, tmp_path, monkeypatch):
    first = real_path("m13-ssdsi/M13_blue_0001.fits")
    folder = tmp_path / "m13"
    shutil.copytree(first.parent, folder)
    _noise_like(folder / "M13_blue_0000.fits", fits.getdata(first), seed=3)
    # the noise frame scored best here with the first star detector (one sharp noise peak
    # against broad real stars); the current one no longer ranks it first, so the score is
    # made to, and the noise frame must be passed over because no real frame registers onto it
    monkeypatch.setattr(phase1, "quality_score", lambda m: -m.get("n_stars", 0.0))
    r = skystack.register(folder, quiet=True)
    assert r.reference != 0 and "passed over: frame(s) 0" in r.report["reference"]["why"]
    assert r.results[0].fate is Fate.FAILED_REGISTRATION
    assert sum(f.transform is not None for f in r.results) == 5


def test_too_few_registered_frames_is_exit_5_unless_min_registered_allows_it(lights, tmp_path, capsys):
    s, src = lights
    folder = tmp_path / "l"
    folder.mkdir()
    for i in (0, 1):
        shutil.copy(src / f"f_{i:04d}.fits", folder)
    for k in range(3):
        _noise_like(folder / f"z_noise{k}.fits", s.frame(0), seed=10 + k)
    out = tmp_path / "o.fits"
    assert main(["stack", str(folder), "-o", str(out), "-q"]) == 5
    err = capsys.readouterr().err
    assert "only 2 of 5 frames registered (at least 3 needed: --min-registered 50%)" in err
    assert not out.exists()
    assert main(["register", str(folder), "--report", str(tmp_path / "r.json"), "-q"]) == 5
    capsys.readouterr()
    for allowed in ("2", "0.4", "40%", "0"):
        assert main(["stack", str(folder), "-o", str(out), "-q", "--min-registered", allowed]) == 0, allowed
        rep = json.loads((tmp_path / "o.fits.report.json").read_text())
        assert rep["summary"]["registered"] == 2 and rep["reference"]["index"] in (0, 1)
    with pytest.raises(RegistrationError, match="only 2 of 5"):
        skystack.stack(folder, out, min_registered=3, quiet=True)
    # the stopped run's phase 1 is kept: accepting fewer frames resumes it instead of redoing it
    r = skystack.stack(folder, out, min_registered=2, resume=True, quiet=True)
    assert r.report["resumed"]["phase1_frames_reused"] == 5 and r.report["summary"]["registered"] == 2


def test_no_candidate_that_another_registers_onto_is_a_loud_failure(lights, tmp_path, capsys):
    s, _ = lights
    folder = tmp_path / "noise"
    folder.mkdir()
    for k in range(3):
        _noise_like(folder / f"n{k}.fits", s.frame(0), seed=20 + k)
    assert main(["stack", str(folder), "-o", str(tmp_path / "o.fits"), "-q"]) == 5
    err = capsys.readouterr().err.splitlines()
    assert "none of the first 3 readable frames registers onto another" in err[-1]
    assert "--reference N" in err[-1]


@pytest.mark.parametrize("command", ["stack", "register"])
@pytest.mark.parametrize("size", [(1, 1), (1, 40), (8, 8)])
def test_frames_too_small_to_register_are_a_clear_failure(command, size, tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(3):
        fits.PrimaryHDU(np.full(size, 100 + i, np.uint16)).writeto(folder / f"t{i}.fits")
    argv = [command, str(folder), "-q"] + (["-o", str(tmp_path / "t.fits")] if command == "stack"
                                           else ["--report", str(tmp_path / "t.json")])
    assert main(argv) == 5
    err = capsys.readouterr().err
    h, w = size
    assert err.count("\n") == 1 and f"frames of {w}×{h} cannot be registered" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", [1, 2])
def test_the_reference_is_built_from_the_luminance_it_was_measured_on(lights, workers):
    """The chosen candidate's luminance, kept from measuring it, builds the same reference
    as reading the frame again; no other candidate's luminance is left behind."""
    from skystack.io import open_frames
    from skystack.options import RegisterOptions, RunOptions
    from skystack.register.deepsky import Reference

    _, folder = lights
    frames = open_frames([folder])
    options = RegisterOptions()
    ref, _, seen, reference = phase1.choose_reference(frames, options, RunOptions(workers=workers), workers)
    assert all(getattr(m, "lum", None) is None for m in seen.values())
    again = Reference.build(phase1.read_luminance(frames, ref)[0], options, stars=seen[ref].stars)
    assert np.array_equal(reference.stars.xy, again.stars.xy)
    assert np.array_equal(reference.orb.descriptors, again.orb.descriptors)
    assert np.array_equal(reference.orb.xy, again.orb.xy)
