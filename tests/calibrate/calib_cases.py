"""Shared synthetic cases and measurements of the calibration tests."""
from __future__ import annotations

import cv2
import numpy as np

from skystack.testing.synthetic import make_deepsky

SHAPE = (256, 320)  # (H, W): 4 x 5 blocks of 64 px
N_LIGHTS = 12

# What calibration must undo: a 35 % vignetting with dust donuts and 1 % PRNU, a bias with
# column structure, dark current with amplifier glow and hot pixels, on an RGGB sensor.
SENSOR = dict(vignetting=0.35, dust_donuts=3, prnu=0.01, bias_structure=3.0, dark_current=0.5,
              amp_glow=20.0, hot_pixel_fraction=5e-4)


def colour_set(**kw):
    """The 12-frame RGGB set with every calibration effect (no trail, no cosmic rays in
    the lights: what is left in the stack is the calibration's doing)."""
    args = dict(n_frames=N_LIGHTS, shape=SHAPE, seed=21, max_shift=10.0, max_rot_deg=1.0, bayer="RGGB",
                trail_frame=None, cosmic_rate=0.0, star_density=1.5e-3, **SENSOR)
    args.update(kw)
    return make_deepsky(**args)


def to_reference(img: np.ndarray, s, ref: int) -> np.ndarray:
    """A generator-grid image (H, W) or (H, W, C) resampled onto frame ``ref``'s grid."""
    t = s.transforms[ref]
    if np.allclose(t.matrix, np.eye(2, 3)):
        return img
    h, w = img.shape[:2]
    planes = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    out = [cv2.warpAffine(p.astype(np.float32), t.inverse().matrix, (w, h), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan")) for p in planes]
    return out[0] if img.ndim == 2 else np.stack(out, axis=2)


def block_flatness(img: np.ndarray, ideal: np.ndarray, sky: np.ndarray, block: int = 64) -> float:
    """Peak-to-peak of the 64-px block medians of ``img / ideal`` over sky pixels, as a
    fraction of their median (i.e. of the sky level)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = img / ideal
    h, w = q.shape
    vals = []
    for y in range(0, h - block + 1, block):
        for x in range(0, w - block + 1, block):
            b = q[y:y + block, x:x + block]
            m = sky[y:y + block, x:x + block] & np.isfinite(b)
            vals.append(np.median(b[m]))
    v = np.array(vals)
    return float((v.max() - v.min()) / np.median(v))


def aperture_flux(img: np.ndarray, x: float, y: float, r: float, r_in: float, r_out: float) -> np.ndarray:
    """Per-channel flux within ``r`` of (x, y) minus the annulus median."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - x, yy - y)
    ap, ann = d <= r, (d >= r_in) & (d <= r_out)
    chans = img[..., None] if img.ndim == 2 else img
    return np.array([np.nansum(chans[..., c][ap]) - ap.sum() * np.nanmedian(chans[..., c][ann])
                     for c in range(chans.shape[2])])


def robust_sigma(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))
