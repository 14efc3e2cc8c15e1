"""A CFA (Bayer) set through `skystack stack`: debayered, registered on luminance, stacked
as RGB, and colour-balanced on request."""
from __future__ import annotations

import json

import numpy as np
from astropy.io import fits

from skystack.calibrate.colour import background_levels
from skystack.cli import main
from skystack.testing.synthetic import make_deepsky


def test_bayer_set_stacks_as_rgb_and_balances(tmp_path):
    s = make_deepsky(n_frames=6, shape=(200, 240), seed=3, max_shift=6.0, max_rot_deg=1.0, bayer="RGGB",
                     trail_frame=None, star_density=3e-3, sky_level=600.0)
    s.write_fits(tmp_path / "lights")
    out = tmp_path / "rgb.fits"
    assert main(["stack", str(tmp_path / "lights"), "-o", str(out), "-q", "--method", "winsorized",
                 "--neutralize", "--white-balance", "auto"]) == 0
    cube = fits.getdata(out)
    assert cube.shape == (3, 200, 240)
    rep = json.loads((tmp_path / "rgb.fits.report.json").read_text())
    assert rep["summary"]["stacked"] == 6 and "colour" in rep
    levels = background_levels(np.moveaxis(cube, 0, 2).astype(np.float32))
    assert np.ptp(levels) < 0.01 * np.mean(levels)  # neutralised: a grey sky
