"""Demosaicing of colour-filter-array (Bayer) frames.

Patterns are named in the FITS ``BAYERPAT`` convention: the colours of the 2×2 cell at
row 0, column 0 of the array *as it is in memory*, read row-major. ``"RGGB"`` means
``R`` at ``[0, 0]``, ``G`` at ``[0, 1]`` and ``[1, 0]``, ``B`` at ``[1, 1]``.

OpenCV names its Bayer conversions after the 2×2 cell that starts at row 1, column 1
(the second row and column), so every OpenCV name is shifted by one pixel diagonally
from ours: a sensor ``RGGB`` is ``cv2.COLOR_BayerBG2RGB``, ``GRBG`` is ``BayerGB``,
``GBRG`` is ``BayerGR`` and ``BGGR`` is ``BayerRG``. ``tests/io/test_debayer.py`` proves
the mapping on synthetic mosaics of known colour (a red patch comes out red for all
four patterns). Newer OpenCV builds also have aliases such as ``COLOR_BayerRGGB2RGB``
that follow the sensor naming; we use the historical names because they exist in every
OpenCV 4.x.

Methods and data types:

* ``uint8``: OpenCV's bilinear, VNG and edge-aware (EA) demosaicing.
* ``uint16``: OpenCV's bilinear and EA. OpenCV's VNG only accepts 8-bit input and
  scaling 16-bit data to 8 bits would throw away the faint signal stacking is for, so
  ``"vng"`` falls back to EA, the other gradient-aware method OpenCV offers for 16 bit.
* float (calibrated frames, which may be negative or NaN) and other integer types: no
  OpenCV demosaicing accepts them, and quantising to 16 bit would add noise and clip
  negative values, so we demosaic in float32 ourselves: ``"bilinear"`` is the exact
  bilinear interpolation; ``"ea"`` and ``"vng"`` use Hamilton-Adams edge-directed green
  followed by colour-difference (R−G, B−G) bilinear interpolation, a gradient-aware
  method of the same family as OpenCV's EA.

All paths return float32 ``(H, W, 3)`` in **RGB** order. NaN and inf pixels are not
repaired: they spread to their few interpolation neighbours and the pipeline masks them.
"""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

DebayerMethod = Literal["bilinear", "vng", "ea"]

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

# FITS/sensor pattern -> OpenCV's name for it (see the module docstring).
_CV_NAME = {"RGGB": "BG", "GRBG": "GB", "GBRG": "GR", "BGGR": "RG"}
_CV_SUFFIX = {"bilinear": "", "vng": "_VNG", "ea": "_EA"}

# How many rows of context a demosaicing method needs above and below a row for the
# result to equal a full-frame demosaic (``FrameSet.read_rows`` reads this margin).
# OpenCV's VNG looks 2 pixels away and EA 2; our float Hamilton-Adams needs 2 for green
# plus 1 for the colour difference. 6 leaves room and keeps strips even-aligned.
STRIP_MARGIN = 6


def normalize_pattern(pattern: str | None) -> str | None:
    """Return a valid 2×2 Bayer pattern in upper case, or ``None`` for no pattern.

    Raises
    ------
    ValueError
        If ``pattern`` is not one of RGGB, BGGR, GRBG, GBRG (X-Trans and CMY patterns are
        not supported).
    """
    if pattern is None:
        return None
    p = str(pattern).strip().upper()
    if not p:
        return None
    if p not in PATTERNS:
        raise ValueError(
            f"unsupported CFA pattern {pattern!r} (supported: {', '.join(PATTERNS)})"
        )
    return p


def pattern_shift(pattern: str, dx: int, dy: int) -> str:
    """The pattern of the same mosaic after dropping ``dx`` columns and ``dy`` rows.

    Cropping (or a ``XBAYROFF``/``YBAYROFF`` offset, or a strip starting at row ``dy``)
    moves the array origin to pixel ``(dx, dy)`` of the original mosaic; only the parity
    of the offsets matters.

    Parameters
    ----------
    pattern : str
        FITS-convention pattern of the original array, e.g. ``"RGGB"``.
    dx, dy : int
        Columns and rows removed at the left and top (may be negative).

    Returns
    -------
    str
        The pattern at the new origin, e.g. ``pattern_shift("RGGB", 1, 0) == "GRBG"``.
    """
    p = normalize_pattern(pattern)
    assert p is not None
    cells = [p[0:2], p[2:4]]
    return "".join(cells[(r + dy) % 2][(c + dx) % 2] for r in range(2) for c in range(2))


def pattern_flip_rows(pattern: str, height: int) -> str:
    """The pattern after flipping an image of ``height`` rows upside down.

    This is how Siril reconciles ``BAYERPAT`` with ``ROWORDER = 'BOTTOM-UP'``
    (``adjust_Bayer_pattern_orientation``): the new first row is the old last row, whose
    pattern row is ``(height - 1) % 2``. For an even height RGGB becomes GBRG; for an odd
    height the pattern is unchanged.
    """
    p = normalize_pattern(pattern)
    assert p is not None
    cells = [p[0:2], p[2:4]]
    return "".join(cells[(1 - r + height % 2) % 2] for r in range(2))


def cfa_masks(pattern: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Boolean masks ``{"R", "G", "B"}`` of the photosites of each colour."""
    p = normalize_pattern(pattern)
    assert p is not None
    h, w = shape
    masks = {c: np.zeros((h, w), dtype=bool) for c in "RGB"}
    for r in range(2):
        for c in range(2):
            masks[p[2 * r + c]][r::2, c::2] = True
    return masks


def debayer(
    raw: np.ndarray, pattern: str, method: DebayerMethod = "ea",
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Demosaic a CFA plane into an RGB image.

    Parameters
    ----------
    raw : ndarray, shape (H, W)
        The mosaic, any real dtype. ``H`` and ``W`` should be at least 2.
    pattern : str
        FITS-convention pattern of ``raw[0:2, 0:2]`` (``"RGGB"``, ``"GRBG"``, ...).
    method : {"bilinear", "vng", "ea"}
        Interpolation; see the module docstring for what each dtype gets.
    crop : (y0, y1, x0, x1), optional
        Return only these rows and columns of the result (a strip or block read with a
        margin for the interpolation): the same values as cropping afterwards, with one
        frame-sized float32 copy fewer for 8- and 16-bit mosaics.

    Returns
    -------
    ndarray, float32, shape (H, W, 3) (or the crop's), C-contiguous
        R, G, B planes in ADU of the input (no white balance, no scaling).

    Raises
    ------
    ValueError
        Unknown pattern or method, or ``raw`` not 2-D.
    """
    p = normalize_pattern(pattern)
    if p is None:
        raise ValueError("debayer needs a CFA pattern")
    if method not in _CV_SUFFIX:
        raise ValueError(f"unknown debayer method {method!r} (bilinear, vng, ea)")
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"debayer expects a 2-D mosaic, got shape {raw.shape}")
    if raw.shape[0] < 2 or raw.shape[1] < 2:
        raise ValueError(f"mosaic {raw.shape} is too small to demosaic")

    if raw.dtype == np.uint8 or raw.dtype == np.uint16:
        m = method
        if raw.dtype == np.uint16 and m == "vng":
            m = "ea"  # OpenCV VNG is 8-bit only (see module docstring)
        code = getattr(cv2, f"COLOR_Bayer{_CV_NAME[p]}2RGB{_CV_SUFFIX[m]}")
        out = cv2.cvtColor(np.ascontiguousarray(raw), code)
        # cropped in the mosaic's dtype, converted once: a strip's or block's margin is
        # never converted, and no float32 copy of the whole result is made to be cut
        return np.array(_cropped(out, crop), dtype=np.float32, order="C")

    mosaic = np.ascontiguousarray(raw, dtype=np.float32)
    if method == "bilinear":
        return np.ascontiguousarray(_cropped(_bilinear_float(mosaic, p), crop))
    return np.ascontiguousarray(_cropped(_hamilton_adams_float(mosaic, p), crop))


def _cropped(image: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    if crop is None:
        return image
    y0, y1, x0, x1 = crop
    return image[y0:y1, x0:x1]


# -- float32 demosaicing ---------------------------------------------------------------
# REFLECT_101 mirrors about the edge pixel (row -k <- row k), which keeps the parity of
# the mirrored row and column, so the mirrored border pixels have the right CFA colour.
_BORDER = cv2.BORDER_REFLECT_101

_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0
_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0


def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(img, cv2.CV_32F, kernel, borderType=_BORDER)


def _sparse(mosaic: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mosaic)
    out[mask] = mosaic[mask]
    return out


def _bilinear_float(mosaic: np.ndarray, pattern: str) -> np.ndarray:
    masks = cfa_masks(pattern, mosaic.shape)
    out = np.empty(mosaic.shape + (3,), dtype=np.float32)
    for ch, (name, kernel) in enumerate((("R", _K_RB), ("G", _K_G), ("B", _K_RB))):
        out[..., ch] = _filter(_sparse(mosaic, masks[name]), kernel)
    return out


def _hamilton_adams_float(mosaic: np.ndarray, pattern: str) -> np.ndarray:
    masks = cfa_masks(pattern, mosaic.shape)
    d1 = np.array([[-1, 0, 1]], dtype=np.float32)
    avg1 = np.array([[0.5, 0, 0.5]], dtype=np.float32)
    lap2 = np.array([[-1, 0, 2, 0, -1]], dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        # Green at R and B sites: interpolate along the direction of smaller gradient,
        # corrected by the second derivative of the site's own colour (Hamilton-Adams).
        grad_h = np.abs(_filter(mosaic, d1)) + np.abs(_filter(mosaic, lap2))
        grad_v = np.abs(_filter(mosaic, d1.T)) + np.abs(_filter(mosaic, lap2.T))
        g_h = _filter(mosaic, avg1) + 0.25 * _filter(mosaic, lap2)
        g_v = _filter(mosaic, avg1.T) + 0.25 * _filter(mosaic, lap2.T)
        g_est = np.where(grad_h < grad_v, g_h, np.where(grad_v < grad_h, g_v, 0.5 * (g_h + g_v)))
        green = np.where(masks["G"], mosaic, g_est).astype(np.float32)

        out = np.empty(mosaic.shape + (3,), dtype=np.float32)
        out[..., 1] = green
        # R and B: bilinear interpolation of the colour difference to green, which
        # follows the edges already resolved in the green plane.
        for ch, name in ((0, "R"), (2, "B")):
            diff = _sparse(mosaic - green, masks[name])
            out[..., ch] = green + _filter(diff, _K_RB)
    return out
