"""ORB keypoints on a robustly stretched 8-bit view (the seed's method, done right).

ORB (OpenCV) works on 8-bit images, and *how* linear data becomes 8-bit decides what it
finds. The seed stretched each frame min→max: a single hot pixel at 65535 then sets the
white point, the sky and the stars collapse into a few grey levels, and FAST's corners land
on the hot pixels — which are fixed on the sensor, so the match returns the identity. Here:

1. a 3×3 median first: a hot pixel, a cold pixel or a cosmic-ray hit is one pixel wide
   and disappears, while a star (≥ 2 px FWHM) or lunar detail keeps its shape; then a
   1 px Gaussian, which takes the pixel noise below FAST's contrast threshold;
2. black and white points from robust statistics of the filtered frame, never from its
   min and max. A *sky* frame (a background with point sources: its global spread is
   within a few times the pixel-to-pixel noise) gets its black point just above the sky
   (median + 4σ) and its white point at the 90th percentile of the pixels above that,
   so that faint stars become visible, the noise black, and bright stars keep a
   structured core — ORB's orientation and descriptor of a star then come from its
   neighbours, which is what makes them distinctive. An *extended* scene (Moon, Sun,
   landscape) gets percentile points (0.5 %, 99.9 %);
3. an asinh stretch (Lupton et al. 2004) for sparse frames, which lifts faint stars while
   keeping bright cores from saturating the 8-bit range; linear for extended scenes;
4. keypoint refinement on sky frames: FAST puts a keypoint anywhere on a star's rim (and
   ORB scales coarse pyramid levels back by a whole factor), so raw keypoints scatter by
   ~1 px. Each keypoint is moved to the Gaussian-windowed intensity centroid of the 8-bit
   view, iterated (mean shift) — the star's centre, a property of the image, the same in
   every frame; keypoints that do not converge within 4 px are dropped. On the acceptance
   set this took the inlier RMS from ~1 px to ~0.2 px and the transform error from ~0.45
   to ~0.07 px. On extended scenes the centroid would follow the overall brightness, not
   a feature, so there ``cv2.cornerSubPix`` (11×11 window) moves each keypoint to where
   the image gradients around it meet; level-0 ORB keypoints sit on whole pixels, so
   without this a sub-pixel shift between two Moon frames is estimated as exactly zero.
   On a rotated Moon frame it took the transform error from 0.29 to 0.05 px (keypoints
   that are not corners drift, and RANSAC drops them);
5. optionally (``faint=True``) the seed's treatment for faint frames: a Gaussian-weighted
   adaptive threshold, which makes every local bump a white blob on black, and a slight
   erosion that removes the single-pixel noise blobs.

The settings were tuned jointly on synthetic sets (800×600 and 2000×1500, 2–3.5 px FWHM)
and the real Seestar frames (half resolution, ~1.4 px FWHM): a min–max or 0.5–99.95 % view
gave 2–18 ratio-test matches per synthetic frame and mostly failed; black points of
2.5–3σ registered the synthetic frames but 0–6 of 11 Seestar frames; this view registers
all synthetic frames of those sets to ~0.1 px and 10 of 11 Seestar frames.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from _skystack_kernels.cpu.stars import windowed_centroid

__all__ = ["OrbFeatures", "stretch_u8", "orb_features", "orb_working_bytes"]

_SMOOTH_SIGMA = 1.0  # px
# global robust spread / pixel-to-pixel noise: ~1 for pure sky, ~1.5–2 with a gradient
# or a small galaxy; tens for the Moon or a landscape
_SKY_SPREAD_RATIO = 4.0
_SKY_BLACK_SIGMA = 4.0  # sky frames: black point = median + this many σ
_SKY_WHITE_PCT = 90.0  # of the pixels above the black point
_SKY_ASINH = 10.0  # larger: more of the faint end lifted
_SCENE_PCT = (0.5, 99.9)  # extended scenes: black and white percentiles
_REFINE_SIGMA = 2.0  # px, mean-shift window (on the 1 px-smoothed view)
_REFINE_MAX_MOVE = 4.0  # px
_SUBPIX_HALF_WINDOW = 5  # px, cornerSubPix window half-size (extended scenes)


@dataclass(frozen=True)
class OrbFeatures:
    """ORB keypoints of one frame: positions (x, y) in pixels, responses and 32-byte
    binary descriptors. Plain arrays, so a reference's features pickle small."""

    xy: np.ndarray  # (n, 2) float32
    size: np.ndarray  # (n,) float32 keypoint diameter (px)
    response: np.ndarray  # (n,) float32
    descriptors: np.ndarray  # (n, 32) uint8
    shape: tuple[int, int]

    def __len__(self) -> int:
        return int(self.xy.shape[0])


def stretch_u8(lum: np.ndarray, *, faint: bool = False) -> np.ndarray:
    """The 8-bit view ORB sees (see the module docstring).

    Parameters
    ----------
    lum : (H, W) array
        Linear data, any real dtype; NaN pixels become the black point.
    faint : bool
        Apply the adaptive-threshold + erosion pre-treatment.
    """
    return _stretch(lum, faint)[0]


def _stretch(lum: np.ndarray, faint: bool) -> tuple[np.ndarray, bool]:
    # one float32 working buffer, filtered and stretched in place, then the 8-bit view:
    # ~5 bytes per pixel besides the input (a copy of the input only for another dtype or
    # NaNs), where a chain of NumPy expressions held four float32 frames at once
    img = np.asarray(lum)
    owned = img.dtype != np.float32 or not img.flags.c_contiguous
    if owned:
        img = np.ascontiguousarray(img, dtype=np.float32)
    nan = np.isnan(img)
    if nan.any():
        # NaN (no data) becomes the median level; a strided subsample gives it without the
        # frame-sized copies np.nanmedian makes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN subsample
            fill = np.nanmedian(img[::4, ::4])
            if not np.isfinite(fill):
                fill = np.nanmedian(img) if not nan.all() else 0.0
        if not owned:
            img = img.copy()
        img[nan] = np.float32(fill)
    del nan
    sparse = _is_sky(img)
    work = cv2.medianBlur(img, 3)
    del img  # the caller's frame, or our copy of it
    cv2.GaussianBlur(work, (0, 0), _SMOOTH_SIGMA, dst=work, borderType=cv2.BORDER_REFLECT)
    sub = work[::4, ::4] if min(work.shape) >= 64 else work
    med = float(np.median(sub))
    sig = 1.4826 * float(np.median(np.abs(sub - med)))
    if sparse:
        lo = med + _SKY_BLACK_SIGMA * sig
        above = sub[sub > lo]
        hi = float(np.percentile(above, _SKY_WHITE_PCT)) if above.size >= 16 else lo + 1.0
    else:
        lo, hi = (float(v) for v in np.percentile(sub, _SCENE_PCT))
    del sub
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    t = work
    np.subtract(t, np.float32(lo), out=t)
    np.multiply(t, np.float32(1.0 / (hi - lo)), out=t)
    np.clip(t, 0.0, 1.0, out=t)
    if sparse:
        a = _SKY_ASINH
        np.multiply(t, np.float32(a), out=t)
        np.arcsinh(t, out=t)
        np.multiply(t, np.float32(1.0 / np.arcsinh(a)), out=t)
    np.multiply(t, np.float32(255.0), out=t)
    np.rint(t, out=t)
    u8 = t.astype(np.uint8)
    del t, work
    if faint:
        # a neighbourhood of ~4 star FWHMs; C < 0 keeps only pixels clearly above it
        u8 = cv2.adaptiveThreshold(u8, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 15, -4)
        u8 = cv2.erode(u8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2, 2)))
    return u8, sparse


def _is_sky(img: np.ndarray) -> bool:
    """True for a sky frame: its global robust spread is within a few times the noise
    between neighbouring pixels (a textured scene's spread is many times larger)."""
    rows = img[::4] if img.shape[0] >= 64 else img
    diff = rows[:, 1::2][:, : rows.shape[1] // 2] - rows[:, 0::2][:, : rows.shape[1] // 2]
    pix = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / np.sqrt(2.0)
    sub = rows[:, ::4]
    glob = 1.4826 * float(np.median(np.abs(sub - np.median(sub))))
    if not pix > 0:
        return not glob > 0
    return glob <= _SKY_SPREAD_RATIO * pix


def orb_features(lum: np.ndarray, *, n_features: int = 3000, faint: bool = False) -> OrbFeatures:
    """ORB keypoints and descriptors of a luminance frame.

    Parameters
    ----------
    lum : (H, W) array
        Linear luminance.
    n_features : int
        At most this many keypoints (the strongest by Harris response).
    faint : bool
        Use the adaptive-threshold + erosion view (for faint, noisy frames).
    """
    u8, sky = _stretch(lum, faint)
    orb = cv2.ORB_create(nfeatures=int(n_features), scaleFactor=1.2, nlevels=8, edgeThreshold=31,
                         patchSize=31, fastThreshold=20)
    kps, des = orb.detectAndCompute(u8, None)
    h, w = u8.shape
    if des is None or not kps:
        return OrbFeatures(np.empty((0, 2), np.float32), np.empty(0, np.float32), np.empty(0, np.float32),
                           np.empty((0, 32), np.uint8), (h, w))
    xy = np.array([k.pt for k in kps], dtype=np.float64)
    out = np.empty((xy.shape[0], 3))
    if sky:
        windowed_centroid(u8, xy[:, 0].copy(), xy[:, 1].copy(), _REFINE_SIGMA, _REFINE_MAX_MOVE, out)
    else:
        pts = xy.astype(np.float32).reshape(-1, 1, 2)
        cv2.cornerSubPix(u8, pts, (_SUBPIX_HALF_WINDOW, _SUBPIX_HALF_WINDOW), (-1, -1),
                         (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 40, 0.001))
        out[:, :2] = pts.reshape(-1, 2)
        # a keypoint that is not a corner can drift; it is kept (RANSAC rejects it if its
        # partner drifted elsewhere) — dropping drifters cost accuracy on the Moon tests
        out[:, 2] = ((out[:, 0] >= 0) & (out[:, 0] <= w - 1) & (out[:, 1] >= 0) & (out[:, 1] <= h - 1))
    ok = out[:, 2] > 0
    size = np.array([k.size for k in kps], dtype=np.float32)[ok]
    resp = np.array([k.response for k in kps], dtype=np.float32)[ok]
    return OrbFeatures(out[ok, :2].astype(np.float32), size, resp,
                       np.ascontiguousarray(des[ok], dtype=np.uint8), (h, w))


# Peak RSS growth of one orb_features call (after a warm-up call, /proc/self/clear_refs
# reset), per pixel: 9.0–11.5 B at 1200×1600 and 2000×3000 float32, with or without a NaN
# third or faint=True; 8.1 B for uint16 input. The 8-bit view and OpenCV's ORB (two image
# pyramids, keypoint buffers) dominate: live, they are ~5.7 B per pixel, the rest is
# glibc's heap keeping OpenCV's freed buffers. The float32 working copy is freed before ORB
# runs, so a conversion from another dtype does not raise the peak.
_ORB_BYTES_PER_PX = 12
_ORB_FIXED = 1 << 20


def orb_working_bytes(shape: tuple[int, ...], dtype=np.float32) -> int:
    """An upper bound of the memory :func:`orb_features` needs besides the frame (bytes),
    measured on synthetic and noise frames (see the comment above); for sizing how many
    frames may be registered at once within a memory limit."""
    return int(_ORB_FIXED + _ORB_BYTES_PER_PX * int(shape[0]) * int(shape[1]))
