"""À-trous wavelet sharpening and the final tone curve (``skystack enhance``).

The *à trous* ("with holes") algorithm with the B3-spline kernel ``[1, 4, 6, 4, 1] / 16``
(Starck & Murtagh, *Astronomical Image and Data Analysis*, §2.3.3) splits an image into
``N`` detail layers ``w_1 … w_N`` and a smooth residual ``c_N``:

    c_0 = image,  c_j = h_j * c_{j-1},  w_j = c_{j-1} − c_j,  image = c_N + Σ w_j

where ``h_j`` is the kernel with ``2^(j-1) − 1`` zeros between its taps. Layer ``j`` holds
structures about ``2^j`` pixels across: layer 1 is pixel-scale detail (and most of the
noise), layer 5 structures of ~32 px. This is the decomposition RegiStax, AstroSurface and
the GIMP "wavelet decompose" plug-in (5 scales) expose for planetary sharpening.

Sharpening multiplies each layer by a gain. A gain on noise amplifies noise, so each layer
has a threshold in units of that layer's noise: coefficients below ``k·σ_j`` keep gain 1 and
only the part above the threshold is amplified (a soft-threshold split),

    w'_j = w_j + (g_j − 1) · sign(w_j) · max(|w_j| − k_j σ_j, 0).

``σ_j`` is the image noise (MAD of layer 1 divided by that layer's response to white noise)
times the B3 layer's response to unit white noise (Starck's table: 0.889, 0.200, 0.086,
0.041, 0.020, …).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import cv2
import numpy as np

from ..options import EnhanceOptions
from .stretch import asinh_stretch, autostretch_params, levels, to_uint8

log = logging.getLogger("skystack")

_B3 = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
# standard deviation of B3 à-trous detail layers j = 1.. for unit Gaussian white noise
# (Starck & Murtagh 2006, table 2.2)
NOISE_RATIO = (0.889, 0.200, 0.086, 0.041, 0.020, 0.010, 0.005, 0.0025)


def _kernel(scale: int) -> np.ndarray:
    step = 2 ** scale
    k = np.zeros(4 * step + 1, dtype=np.float32)
    k[::step] = _B3
    return k


def _smooth(plane: np.ndarray, scale: int) -> np.ndarray:
    k = _kernel(scale)
    # reflect without repeating the edge pixel: the standard boundary for à trous
    return cv2.sepFilter2D(plane, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT_101)


def atrous(image: np.ndarray, n_scales: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
    """B3-spline à-trous decomposition.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` float image (NaN not allowed).
    n_scales
        Number of detail layers.

    Returns
    -------
    layers, residual
        ``n_scales`` float32 detail layers (finest first) and the smooth residual; their
        sum is the input (to float32 rounding).
    """
    if n_scales < 1:
        raise ValueError(f"n_scales must be at least 1, not {n_scales}")
    c = np.ascontiguousarray(image, dtype=np.float32)
    layers = []
    for j in range(n_scales):
        nxt = _smooth(c, j)
        layers.append(c - nxt)
        c = nxt
    return layers, c


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise σ of an image from the MAD of its first à-trous layer."""
    layers, _ = atrous(image, 1)
    w = layers[0]
    v = w[np.isfinite(w)].ravel()
    if v.size == 0:
        return 0.0
    if v.size > 2_000_000:
        v = v[:: v.size // 2_000_000]
    mad = float(np.median(np.abs(v - np.median(v))))
    return 1.4826 * mad / NOISE_RATIO[0]


def sharpen(image: np.ndarray, gains: tuple[float, ...], thresholds: tuple[float, ...] | None = None,
            *, noise: float | None = None) -> np.ndarray:
    """Per-scale wavelet sharpening (see the module docstring).

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` float image; NaN pixels are filled with the image median
        for the filtering and stay NaN in the result.
    gains
        One gain per layer, finest first; ``len(gains)`` is the number of scales. 1 leaves
        a layer unchanged, > 1 sharpens, < 1 softens.
    thresholds
        Noise thresholds ``k_j`` in units of each layer's noise σ (default 0: amplify
        everything). Shorter tuples are padded with 0.
    noise
        Image noise σ; estimated with :func:`noise_sigma` when omitted.
    """
    gains = tuple(float(g) for g in gains)
    n = len(gains)
    th = tuple(thresholds or ())
    th = th + (0.0,) * (n - len(th))
    img = np.asarray(image, dtype=np.float32)
    bad = ~np.isfinite(img)
    if bad.any():
        img = np.where(bad, np.float32(np.nanmedian(img)), img)
    if all(g == 1.0 for g in gains):
        out = img.copy()
    else:
        layers, res = atrous(img, n)
        sig = noise_sigma(img) if noise is None and any(t > 0 for t in th) else float(noise or 0.0)
        out = res
        for j, (w, g, k) in enumerate(zip(layers, gains, th)):
            if g == 1.0:
                out = out + w
                continue
            t = k * sig * (NOISE_RATIO[j] if j < len(NOISE_RATIO) else NOISE_RATIO[-1])
            if t > 0:
                excess = np.sign(w) * np.maximum(np.abs(w) - np.float32(t), 0.0)
                out = out + w + np.float32(g - 1.0) * excess
            else:
                out = out + np.float32(g) * w
    if bad.any():
        out = np.where(bad, np.float32(np.nan), out)
    return out.astype(np.float32)


def _black_white(image: np.ndarray, opts: EnhanceOptions) -> tuple[float, float]:
    v = image[np.isfinite(image)]
    if v.size > 2_000_000:
        v = v[:: v.size // 2_000_000]
    lo, hi = (np.percentile(v, [0.1, 99.99]) if v.size else (0.0, 1.0))
    black = float(lo) if opts.black is None else float(opts.black)
    white = float(hi) if opts.white is None else float(opts.white)
    if white <= black:
        # only one point was given (both given are checked by EnhanceOptions) and it is past
        # the image's other end: say so rather than hand back a silently blank image
        if opts.black is not None:
            log.warning("stretch: --black %g is past the image's white point %g (its 99.99th percentile); "
                        "nearly every pixel comes out black", black, white)
        else:
            log.warning("stretch: --white %g is past the image's black point %g (its 0.1th percentile); "
                        "nearly every pixel comes out white", white, black)
        white = black + 1e-6
    return black, white


def apply_stretch(image: np.ndarray, opts: EnhanceOptions) -> np.ndarray:
    """The tone curve of ``opts`` (see :class:`EnhanceOptions`); [0, 1] unless ``"none"``."""
    if opts.stretch == "none":
        return image.astype(np.float32)
    if opts.stretch == "auto":
        b, w, m = autostretch_params(image)
        return levels(image, b, w, m)
    black, white = _black_white(image, opts)
    if opts.stretch == "linear":
        return levels(image, black, white, 0.5)
    if opts.stretch == "midtone":
        return levels(image, black, white, opts.midtone)
    if opts.stretch == "asinh":
        return asinh_stretch(image, black, white, opts.asinh_beta)
    raise ValueError(f"unknown stretch {opts.stretch!r}")


def enhance(image: np.ndarray, options: EnhanceOptions | None = None, *, noise: float | None = None,
            **fields) -> np.ndarray:
    """Sharpen with wavelets, then apply the tone curve.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` float image (a stack, in its own units).
    options
        Gains, thresholds and stretch; defaults to :class:`EnhanceOptions` ``()``.
    noise
        The image's noise σ if known (else estimated from the finest layer).
    **fields
        :class:`EnhanceOptions` fields overriding ``options`` (``gains=(2, 1.5)``, ...).

    Returns
    -------
    ndarray
        float32, same shape; image units for ``stretch="none"``, else [0, 1].
    """
    opts = options or EnhanceOptions()
    if fields:
        opts = replace(opts, **fields)
    sharp = sharpen(image, opts.gains, opts.thresholds, noise=noise)
    return apply_stretch(sharp, opts)


def before_after(before: np.ndarray, after: np.ndarray, *, gap: int = 4) -> np.ndarray:
    """A side-by-side 8-bit preview, before on the left: each half autostretched with the
    *before* image's parameters (so the comparison shows sharpening, not a new stretch),
    unless ``after`` is already a [0, 1] display image."""
    b, w, m = autostretch_params(before)
    left = to_uint8(levels(before, b, w, m))
    if after.dtype == np.float32 and np.nanmax(after) <= 1.0 + 1e-6 and np.nanmin(after) >= -1e-6 \
            and np.nanmax(before) > 1.0 + 1e-6:
        right = to_uint8(after)
    else:
        right = to_uint8(levels(after, b, w, m))
    h = left.shape[0]
    shape = (h, gap) + left.shape[2:]
    return np.concatenate([left, np.zeros(shape, np.uint8), right], axis=1)
