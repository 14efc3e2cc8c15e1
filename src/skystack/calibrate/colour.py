"""Colour balance of a stacked colour image: background neutralisation and white balance.

A one-shot-colour stack comes out in the camera's raw RGB: the sky is tinted by light
pollution and by the sensor's unequal channel sensitivities, and white stars are not
white. Two independent, optional corrections, both linear (the data stay photometric):

* **background neutralisation** (as Siril's and PixInsight's): each channel's sky level is
  measured (sigma-clipped median) and the channels are offset so that the sky has the same
  level in R, G and B — a neutral grey. Offsets only: colours of objects, measured above
  their local background, do not change.
* **white balance**: each channel is multiplied by a factor (G fixed at 1), applied to the
  signal above the sky. ``"camera"``: the camera's own multipliers (``camera_whitebalance``
  in RAW metadata; FITS files from astro cameras carry none). ``"auto"``: the stars
  themselves — aperture photometry of the detected stars in each channel, and the factors
  that make the median star's colour white (a star-based "grey world", simpler than
  photometric colour calibration against a catalogue, which needs the sky position).
  Three numbers: those factors.

:func:`colour_balance` does both in the right order (white balance on the sky-subtracted
signal, then one common sky level), so a neutralised background stays neutral.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from astropy.stats import sigma_clipped_stats

from ..errors import UsageError
from ..detect.stars import detect_stars
from ..optionfields import parse_white_balance

log = logging.getLogger("skystack")

_SAMPLE = 2_000_000  # pixels per channel used to measure the sky


def background_levels(image: np.ndarray) -> np.ndarray:
    """Sky level per channel of an ``(H, W, C)`` image (sigma-clipped median, 3σ, on a
    subsample of the finite pixels)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    levels = []
    for c in range(img.shape[2]):
        v = img[..., c].ravel()
        if v.size > _SAMPLE:
            v = v[:: v.size // _SAMPLE]
        v = v[np.isfinite(v)]
        if v.size == 0:
            levels.append(0.0)
            continue
        _, med, _ = sigma_clipped_stats(v, sigma=3.0, maxiters=10)
        levels.append(float(med))
    return np.array(levels)


def star_colours(image: np.ndarray, *, max_stars: int = 300, background: np.ndarray | None = None,
                 xy: np.ndarray | None = None, fwhm: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """Aperture photometry of the stars of an RGB image.

    Stars are detected on the luminance of the sky-subtracted image (or given as ``xy``
    with their ``fwhm``); each is measured in every channel within a radius of 2 FWHM (at
    least 3 px), minus the median of an annulus around it. Stars with a non-finite pixel,
    a non-positive flux, or a peak in the top 0.5 % of the image's range (saturated or
    nearly) are left out.

    Returns
    -------
    xy : (n, 2) float array
        Star positions (x, y).
    flux : (n, 3) float array
        Background-subtracted flux per channel.
    fwhm : float
        The FWHM (px) the apertures were sized for.
    """
    img = np.asarray(image, dtype=np.float32)
    finite_max = float(np.nanmax(img)) if np.isfinite(img).any() else 0.0
    if xy is None:
        bg = background_levels(img) if background is None else np.asarray(background)
        lum = (img - bg.astype(np.float32)).mean(axis=2)
        stars = detect_stars(lum, max_stars=max_stars, sigma=5.0)
        if len(stars) == 0:
            return np.empty((0, 2)), np.empty((0, 3)), float(fwhm or 3.0)
        xy = stars.xy
        fwhm = float(np.nanmedian(stars.fwhm)) if np.isfinite(stars.fwhm).any() else 3.0
    r = max(3.0, 2.0 * (fwhm or 3.0))
    r_in, r_out = r + 2.0, r + 6.0
    h, w = img.shape[:2]
    half = int(np.ceil(r_out)) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    xy_out, flux_out = [], []
    for x, y in np.asarray(xy, dtype=np.float64).reshape(-1, 2):
        xi, yi = int(round(x)), int(round(y))
        if xi - half < 0 or yi - half < 0 or xi + half >= w or yi + half >= h:
            continue
        cut = img[yi - half:yi + half + 1, xi - half:xi + half + 1]
        if not np.isfinite(cut).all() or cut.max() >= 0.995 * finite_max:
            continue
        d = np.hypot(xx + xi - x, yy + yi - y)
        ap = d <= r
        ann = (d >= r_in) & (d <= r_out)
        f = np.array([cut[..., c][ap].sum() - ap.sum() * np.median(cut[..., c][ann]) for c in range(3)])
        if np.all(f > 0):
            xy_out.append((x, y))
            flux_out.append(f)
    return np.array(xy_out).reshape(-1, 2), np.array(flux_out).reshape(-1, 3), float(fwhm or 3.0)


def auto_white_balance(image: np.ndarray, *, background: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Factors (R, G, B), G = 1, that make the median star white (the median colour of
    the brighter half of the measured stars, see :func:`star_colours`).

    Raises
    ------
    UsageError
        Fewer than 5 measurable stars.
    """
    xy, flux, fwhm = star_colours(image, background=background)
    if flux.shape[0] >= 10:
        # the brighter half (by G, which white balance leaves alone): a faint star's
        # colour is mostly noise, and noisy ratios skew the median
        keep = np.argsort(-flux[:, 1])[: max(10, flux.shape[0] // 2)]
        xy, flux = xy[keep], flux[keep]
    if flux.shape[0] < 5:
        raise UsageError(f"--white-balance auto: only {flux.shape[0]} measurable star(s) in the image; "
                         "give factors (e.g. --white-balance 1.9,1,1.4) or camera")
    rg = np.median(flux[:, 0] / flux[:, 1])
    bg = np.median(flux[:, 2] / flux[:, 1])
    factors = np.array([1.0 / rg, 1.0, 1.0 / bg])
    return factors, {"stars": int(flux.shape[0]), "median_star_rg": float(rg), "median_star_bg": float(bg),
                     "fwhm_px": fwhm, "xy": [[round(float(a), 2), round(float(b), 2)] for a, b in xy]}


def camera_white_balance(meta: dict[str, Any] | None, source: str = "the reference frame") -> np.ndarray:
    """Factors (R, G, B), G = 1, from the camera's multipliers (``camera_whitebalance`` in
    RAW metadata: R, G, B, G2).

    Raises
    ------
    UsageError
        The metadata has none (FITS and SER files do not record one).
    """
    wb = (meta or {}).get("camera_whitebalance")
    if not wb or len(wb) < 3 or not wb[1]:
        raise UsageError(f"--white-balance camera: {source} records no camera white balance (camera RAW files "
                         "do; FITS and SER do not): use auto or give factors R,G,B")
    return np.array([wb[0] / wb[1], 1.0, wb[2] / wb[1]], dtype=np.float64)


def colour_balance(image: np.ndarray, *, neutralize: bool = False,
                   white_balance: str | Sequence[float] = "none",
                   meta: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Neutralise the background and/or white-balance an ``(H, W, 3)`` linear image.

    Parameters
    ----------
    image : (H, W, 3) array
        A linear RGB stack (not modified).
    neutralize : bool
        Equalise the channels' sky levels (to their mean, after white balance).
    white_balance : "none" | "auto" | "camera" | (r, g, b)
        See the module docstring.
    meta : dict, optional
        Metadata of a frame of the stack (for "camera").

    Returns
    -------
    image : (H, W, 3) float32
    info : dict
        Sky levels before and after, the factors used, and how they were found.

    Raises
    ------
    UsageError
        Not an RGB image, or no white balance can be found (see the helpers).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"colour balance needs an RGB image, got shape {img.shape}")
    bg = background_levels(img)
    info: dict[str, Any] = {"background_before": [float(v) for v in bg], "neutralize": bool(neutralize)}
    if isinstance(white_balance, str) and white_balance == "none":
        factors = np.ones(3)
        info["white_balance"] = "none"
    elif isinstance(white_balance, str) and white_balance == "auto":
        factors, stars = auto_white_balance(img, background=bg)
        info["white_balance"] = "auto"
        info["stars"] = {k: v for k, v in stars.items() if k != "xy"}
    elif isinstance(white_balance, str) and white_balance == "camera":
        factors = camera_white_balance(meta)
        info["white_balance"] = "camera"
    elif isinstance(white_balance, str):
        raise UsageError(f"--white-balance: unknown mode {white_balance!r} (none, auto, camera, or R,G,B)")
    else:
        factors = np.asarray(parse_white_balance(white_balance), dtype=np.float64)
        info["white_balance"] = "factors"
    info["factors"] = [float(v) for v in factors]
    sky = bg * factors  # each channel's sky once balanced
    target = np.full(3, sky.mean()) if neutralize else sky
    out = np.empty_like(img)
    for c in range(3):
        # (x − sky) · f + new sky level: one multiply-add per pixel
        out[..., c] = (img[..., c] - np.float32(bg[c])) * np.float32(factors[c]) + np.float32(target[c])
    info["background_after"] = [float(v) for v in target]
    return out, info
