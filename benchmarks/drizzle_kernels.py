#!/usr/bin/env python
"""Deep-sky drizzle: skystack's Numba kernel against STScI ``drizzle`` (pip); prints a table.

    python benchmarks/drizzle_kernels.py                  # 16 frames 320x240, scale 2, pixfrac 0.7
    python benchmarks/drizzle_kernels.py --n 8 --size 200 150

Both drop the same frames of an undersampled synthetic set (FWHM 1.2–1.6 px, shifts and
rotations of ±2°) through the generator's exact transforms onto a 2× finer grid with the
square kernel, and are compared on:

* CPU time per megapixel of input (time.process_time, one thread, minimum of 3 runs);
* agreement: the largest difference between the two images (relative to the image's
  peak) and between their weight maps, inside the frames' footprints (the two compute the
  same exact overlaps, so it should be float rounding);
* truth: flux-weighted centroid error of the brightest isolated stars against the
  generator's star positions, in input pixels, and their FWHM (second moments) in input
  pixels — the same for both kernels when they agree.

STScI's kernel takes a per-pixel ``pixmap`` (input pixel → output position, float64
H×W×2) and maps the drop's corners by interpolating it; skystack's takes the 2×3 matrix
(the transform is affine) and a block of source rows, which is what a phase-2 block task
has. ``drizzle`` is a benchmark dependency only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
for _p in (_REPO / "src", _REPO / "kernels"):  # run from a checkout without installing
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from _skystack_kernels.cpu.drizzle import drizzle_affine_add  # noqa: E402

from skystack.testing.synthetic import make_deepsky  # noqa: E402


def output_matrix(frame_to_ref: np.ndarray, scale: float) -> np.ndarray:
    """Frame pixel centre → output pixel centre: ``s·(p + 0.5) − 0.5`` of the reference."""
    m = np.asarray(frame_to_ref, dtype=np.float64) * scale
    m[:, 2] += 0.5 * scale - 0.5
    return m


def numba_drizzle(frames, matrices, out_shape, scale, pixfrac):
    ho, wo = out_shape
    out = np.zeros((ho, wo, 1))
    wout = np.zeros((ho, wo, 1))
    none = np.zeros((1, 1, 1), np.int32)
    cfa = np.full((2, 2), -1, np.int64)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    for k, (f, m) in enumerate(zip(frames, matrices)):
        drizzle_affine_add(f[:, :, None], 0, 0, cfa, output_matrix(m, scale), pixfrac, one, zero, 1.0, out, wout,
                           none, none, k, 0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(wout > 0, out / wout, np.nan)[..., 0]
    return img, wout[..., 0]


def stsci_drizzle(frames, matrices, out_shape, scale, pixfrac):
    from drizzle.resample import Drizzle

    d = Drizzle(kernel="square", out_shape=out_shape, fillval="NaN", disable_ctx=True)
    h, w = frames[0].shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    for f, m in zip(frames, matrices):
        om = output_matrix(m, scale)
        pixmap = np.dstack([om[0, 0] * xs + om[0, 1] * ys + om[0, 2], om[1, 0] * xs + om[1, 1] * ys + om[1, 2]])
        d.add_image(f, exptime=1.0, pixmap=pixmap, pixfrac=pixfrac, in_units="cps")
    return d.out_img, d.out_wht


def star_stats(img, synth, scale, n=30, box=3):
    """Centroid error (input px) and FWHM (input px, from second moments) of the
    brightest stars far from the edges and from each other."""
    xy = synth.stars.xy
    flux = synth.stars.flux
    h, w = img.shape
    order = np.argsort(-flux)
    errs, fwhms, taken = [], [], []
    for k in order:
        x, y = xy[k]
        ox, oy = scale * (x + 0.5) - 0.5, scale * (y + 0.5) - 0.5
        r = box * scale
        if not (r + 2 < ox < w - r - 2 and r + 2 < oy < h - r - 2):
            continue
        if any(np.hypot(x - a, y - b) < 3 * box for a, b in taken):
            continue
        y0, x0 = int(round(oy)) - int(r), int(round(ox)) - int(r)
        cut = img[y0:y0 + 2 * int(r) + 1, x0:x0 + 2 * int(r) + 1]
        if not np.isfinite(cut).all():
            continue
        cut = cut - np.median(np.concatenate([cut[0], cut[-1], cut[:, 0], cut[:, -1]]))
        cut = np.clip(cut, 0, None)
        yy, xx = np.mgrid[0:cut.shape[0], 0:cut.shape[1]]
        s = cut.sum()
        cx, cy = (cut * xx).sum() / s + x0, (cut * yy).sum() / s + y0
        var = ((cut * ((xx + x0 - cx) ** 2 + (yy + y0 - cy) ** 2)).sum() / s) / 2
        errs.append(np.hypot((cx + 0.5) / scale - 0.5 - x, (cy + 0.5) / scale - 0.5 - y))
        fwhms.append(2.3548 * np.sqrt(var) / scale)
        taken.append((x, y))
        if len(taken) >= n:
            break
    return float(np.median(errs)), float(np.median(fwhms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--pixfrac", type=float, default=0.7)
    a = ap.parse_args()
    synth = make_deepsky(n_frames=a.n, shape=(a.size[1], a.size[0]), seed=3, max_shift=6.0, max_rot_deg=2.0,
                         fwhm_range=(1.2, 1.6), extended=False, trail_frame=None, hot_pixel_fraction=0.0,
                         cold_pixel_fraction=0.0, cosmic_rate=0.0, star_density=2e-3, noise=False)
    frames = [synth.frame(i).astype(np.float32) - synth.params.pedestal for i in range(a.n)]
    matrices = [t.matrix for t in synth.transforms]
    out_shape = (int(round(a.size[1] * a.scale)), int(round(a.size[0] * a.scale)))
    numba_drizzle(frames[:1], matrices[:1], out_shape, a.scale, a.pixfrac)  # compile (cached)
    mpx = a.n * a.size[0] * a.size[1] / 1e6
    rows = []
    results = {}
    for name, fn in (("skystack (Numba, affine)", numba_drizzle), ("STScI drizzle 'square'", stsci_drizzle)):
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            img, wht = fn(frames, matrices, out_shape, a.scale, a.pixfrac)
            best = min(best, time.process_time() - t0)
        results[name] = (img, wht)
        err, fwhm = star_stats(img, synth, a.scale)
        rows.append((name, best / mpx, err, fwhm))
    (i1, w1), (i2, w2) = results.values()
    # STScI's kernel treats the frames' outermost pixels differently (it interpolates the
    # pixmap at their outer corners): compare away from the footprints' edges
    inner = np.zeros(out_shape, bool)
    m = int(2 * a.scale * 6 + 4)
    inner[m:-m, m:-m] = True
    both = inner & (w1 > 0) & (w2 > 0) & np.isfinite(i1) & np.isfinite(i2)
    peak = np.nanmax(i1)
    diff = float(np.max(np.abs(i1[both] - i2[both])) / peak)
    wdiff = float(np.max(np.abs(w2[both] / w1[both] - 1.0)))
    plain_fwhm = float(np.median(synth.fwhm))
    print(f"{a.n} frames {a.size[0]}x{a.size[1]}, scale {a.scale:g}, pixfrac {a.pixfrac:g}; "
          f"frames' FWHM median {plain_fwhm:.2f} px")
    print(f"{'kernel':28s} {'CPU s/Mpx':>10s} {'ratio':>6s} {'centroid err (px)':>18s} {'FWHM (input px)':>16s}")
    base = rows[0][1]
    for name, t, err, fwhm in rows:
        print(f"{name:28s} {t:10.3f} {t / base:6.2f} {err:18.4f} {fwhm:16.3f}")
    print(f"inside the footprints: largest image difference {diff:.1e} of the peak, "
          f"largest relative weight difference {wdiff:.1e}")


if __name__ == "__main__":
    main()
