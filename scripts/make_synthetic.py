#!/usr/bin/env python
"""Write a seeded synthetic deep-sky set as uint16 FITS plus truth.json.

    python scripts/make_synthetic.py OUTDIR --n 30 --size 2000x1500 --seed 0

Frames are rendered and written one at a time (a 100-frame 3000x2000 set never holds two
frames in memory). truth.json holds every frame's exact transform (frame pixel ->
reference pixel), the seeing, the hot pixels and the satellite-trail frame.
"""
from __future__ import annotations

import argparse
import sys
import time


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 2000x1500, not {text!r}") from None
    return w, h


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI, e.g. 2.0,3.5, not {text!r}") from None
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", help="folder to write (created if missing)")
    p.add_argument("--n", type=int, default=30, help="number of frames (default 30)")
    p.add_argument("--size", type=_size, default=(2000, 1500), help="WIDTHxHEIGHT in pixels (default 2000x1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shift", type=float, default=40.0, help="shifts uniform in ±this many px (default 40)")
    p.add_argument("--max-rot", type=float, default=2.0, help="rotations uniform in ±this many degrees (default 2)")
    p.add_argument("--fwhm", type=_pair, default=(2.0, 3.5), help="seeing FWHM range in px (default 2.0,3.5)")
    p.add_argument("--ellipticity", type=float, default=0.0, help="largest PSF ellipticity 1-b/a (default 0)")
    p.add_argument("--trail-frame", type=int, default=7, help="frame with a satellite trail; -1 for none (default 7)")
    p.add_argument("--hot-pixels", type=float, default=1e-4, help="fraction of hot pixels (default 1e-4)")
    p.add_argument("--saturated", type=int, default=0, help="extra saturated stars (default 0)")
    p.add_argument("--no-galaxy", action="store_true", help="leave out the extended object")
    p.add_argument("--no-noise", action="store_true", help="noise-free frames (defects stay)")
    p.add_argument("--prefix", default="synth_", help="file name prefix (default synth_)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    from skystack.testing.synthetic import make_deepsky

    w, h = a.size
    s = make_deepsky(
        n_frames=a.n, shape=(h, w), seed=a.seed, max_shift=a.max_shift, max_rot_deg=a.max_rot,
        fwhm_range=a.fwhm, max_ellipticity=a.ellipticity,
        trail_frame=None if a.trail_frame < 0 else a.trail_frame, hot_pixel_fraction=a.hot_pixels,
        n_saturated=a.saturated, extended=not a.no_galaxy, noise=not a.no_noise,
    )
    t0 = time.perf_counter()
    paths = s.write_fits(a.outdir, prefix=a.prefix, progress=not a.quiet)
    if not a.quiet:
        dt = time.perf_counter() - t0
        print(f"wrote {len(paths)} frames ({w}x{h}) and truth.json to {a.outdir} in {dt:.1f} s "
              f"({dt / max(len(paths), 1):.2f} s/frame); {len(s.stars)} stars, trail in frame {s.trail_frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
