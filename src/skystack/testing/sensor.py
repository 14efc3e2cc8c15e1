"""The synthetic deep-sky generator's parameters and its sensor model (see
:mod:`skystack.testing.synthetic`, which renders the optics and uses these)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..io.bayer import normalize_pattern

# Above this expected count the shot noise is drawn as a Gaussian of variance λ instead of
# Poisson: NumPy's Poisson sampler costs ~80 ns/pixel, too slow for 3000×2000 frames, and
# at λ ≥ 50 the two differ only in skewness (1/√λ ≤ 0.14).
_POISSON_EXACT_BELOW = 50.0


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width α for a given FWHM (pixels) and β."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True, kw_only=True)
class DeepSkyParams:
    """Everything that defines a synthetic set (all recorded in ``truth.json``).

    Units: pixels, degrees, electrons (e-), ADU, seconds.
    """

    n_frames: int = 30
    shape: tuple[int, int] = (1500, 2000)  # (H, W)
    seed: int = 0
    # geometry: frame -> reference similarity, rotation about the frame centre
    max_shift: float = 40.0
    max_rot_deg: float = 2.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    first_identity: bool = True  # frame 0 is the reference grid itself
    # sky content (defined on the reference grid)
    star_density: float = 1e-3  # stars per square reference pixel
    flux_range: tuple[float, float] = (150.0, 4.0e5)  # e- per exposure, faintest..brightest
    flux_slope: float = 0.8  # N(>F) ∝ F^-slope (a power-law luminosity function)
    n_saturated: int = 0  # extra stars bright enough to saturate in every frame
    extended: bool = True  # a smooth galaxy (sum of elliptical Gaussians)
    # seeing (per frame)
    fwhm_range: tuple[float, float] = (2.0, 3.5)
    beta: float = 3.0
    max_ellipticity: float = 0.0  # 1 - b/a of the PSF, drawn per frame in [0, max]
    # sky background (per frame, in frame pixels)
    sky_level: float = 800.0  # e- per pixel
    sky_jitter: float = 0.15  # relative frame-to-frame variation of the level
    sky_gradient: float = 0.1  # largest level change across the frame, relative to sky_level
    trail_frame: int | None = 7  # frame with a satellite trail (ignored if >= n_frames)
    trail_peak: float = 4000.0  # e- per pixel on the trail's axis
    # sensor
    gain: float = 1.0  # e- per ADU
    read_noise: float = 5.0  # e- rms
    pedestal: float = 1000.0  # ADU added to every pixel (bias level)
    saturation_adu: float = 65535.0
    exptime: float = 60.0  # s, written to EXPTIME
    noise: bool = True  # shot + read noise
    hot_pixel_fraction: float = 1e-4
    cold_pixel_fraction: float = 2e-5
    cosmic_rate: float = 5e-6  # cosmic-ray hits per pixel per frame
    # calibration effects (defaults: none, the frames are those of a perfect sensor)
    bias_structure: float = 0.0  # ADU: rms of a fixed column pattern; a 2x ramp across the rows
    dark_current: float = 0.0  # e- per second per pixel, uniform
    amp_glow: float = 0.0  # e- per second at the top-right corner, fading over 15 % of the width (>= 64 px)
    vignetting: float = 0.0  # response lost at the farthest corner (0.35: the corner gets 65 %)
    dust_donuts: int = 0  # dust shadows (out-of-focus rings) in the flat response
    dust_depth: float = 0.15  # largest relative dimming on a donut's ring
    prnu: float = 0.0  # pixel response non-uniformity, relative rms
    flat_level: float = 25000.0  # e- a green photosite at the optical centre records in a flat
    flat_colour: tuple[float, float, float] = (0.75, 1.0, 0.55)  # flat panel, per camera channel
    flat_exptime: float = 2.0  # s
    ccd_temp: float | None = None  # written as CCD-TEMP when set
    # colour: a one-shot-colour sensor and the colours of the sky's objects (camera R, G, B
    # electrons relative to G); ignored when bayer is None
    bayer: str | None = None  # CFA pattern of the sensor (FITS BAYERPAT convention)
    star_colour_spread: float = 0.4  # star R/G from 1-s to 1+s (B/G the other way)
    galaxy_colour: tuple[float, float, float] = (1.3, 1.0, 0.65)  # a yellowish galaxy
    sky_colour: tuple[float, float, float] = (1.15, 1.0, 0.8)  # light-polluted sky
    # observation metadata written into the FITS headers (defaults: none of it, as before)
    wcs_centre: tuple[float, float] | None = None  # (RA, Dec) in degrees of the layout grid's centre:
    #   each frame then gets the TAN WCS its transform implies (SyntheticSet.wcs_header)
    pixel_scale_arcsec: float = 2.4  # of that WCS (a Seestar S50: 2.9 µm pixels at 250 mm)
    sky_pa_deg: float = 0.0  # position angle of the layout grid's +y axis, degrees east of north
    date_obs: str | None = None  # start of frame 0 (ISO, UTC); frame i starts i·(exptime + frame_gap_s) later
    frame_gap_s: float = 2.0
    observation: tuple[tuple[str, object], ...] = ()  # more header cards: (("INSTRUME", "..."), ...)

    def __post_init__(self) -> None:
        h, w = self.shape
        if self.n_frames < 1 or h < 16 or w < 16:
            raise ValueError(f"need at least one frame of at least 16x16 px, got {self.n_frames} x {self.shape}")
        lo, hi = self.fwhm_range
        if not (0.5 < lo <= hi):
            raise ValueError(f"fwhm_range must satisfy 0.5 < lo <= hi, got {self.fwhm_range}")
        if self.beta <= 1.0:
            raise ValueError(f"Moffat beta must be > 1, got {self.beta}")
        if not 0.0 <= self.vignetting < 1.0:
            raise ValueError(f"vignetting must be in [0, 1), got {self.vignetting}")
        if self.bayer is not None:
            object.__setattr__(self, "bayer", normalize_pattern(self.bayer))


@dataclass(frozen=True)
class StarField:
    """The true stars, in reference pixel coordinates; ``flux`` in e- per exposure."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def xy(self) -> np.ndarray:
        return np.column_stack([self.x, self.y])


@dataclass(frozen=True)
class _FrameConditions:
    """Per-frame observing conditions (drawn once, from the layout stream)."""

    fwhm: float
    ellipticity: float
    pa_rad: float
    sky_level: float
    sky_slope: tuple[float, float]  # e- per pixel per pixel along frame x and y


@dataclass(frozen=True)
class _Blob:
    """One Gaussian component of the extended object, in reference coordinates."""

    x: float
    y: float
    flux: float
    cov: np.ndarray  # 2x2 covariance, reference pixels²


# --------------------------------------------------------------------------- the sensor


@dataclass(frozen=True)
class Sensor:
    """The camera: everything applied after the optics, in :meth:`expose`.

    Hot pixels are modelled as dark current (e- per second, so a dark frame of the same
    exposure reproduces them); cold pixels as a low response (signal × ``cold_response``).
    Both sit on fixed sensor pixels, so they move relative to the sky from frame to frame.

    The optional fields model what calibration removes: ``response`` (the flat: vignetting,
    dust, pixel non-uniformity) multiplies the light, ``dark_rate`` (e- per second, uniform
    dark current and amplifier glow) adds charge in proportion to the exposure, and
    ``bias_map`` (ADU) replaces the constant ``pedestal``. ``bayer`` puts a colour filter
    array in front: :meth:`expose` then takes ``(H, W, 3)`` electrons and each photosite
    records its own colour.
    """

    shape: tuple[int, int]
    gain: float
    read_noise: float
    pedestal: float
    saturation_adu: float
    hot_xy: np.ndarray  # (n, 2) int (x, y)
    hot_rate: np.ndarray  # (n,) e- per second
    cold_xy: np.ndarray  # (m, 2) int (x, y)
    cold_response: np.ndarray  # (m,) fraction of the signal a cold pixel records
    response: np.ndarray | None = None  # (H, W) relative response to light (the flat)
    dark_rate: np.ndarray | None = None  # (H, W) e- per second, hot pixels excluded
    bias_map: np.ndarray | None = None  # (H, W) ADU; None: ``pedestal`` everywhere
    bayer: str | None = None  # CFA pattern, FITS BAYERPAT convention

    def mosaic(self, rgb: np.ndarray) -> np.ndarray:
        """What the photosites behind the colour filter array see: ``(H, W, 3)`` → ``(H, W)``
        (each pixel keeps the channel of its filter). Without a CFA, the channel sum."""
        rgb = np.asarray(rgb, dtype=np.float64)
        if self.bayer is None:
            return rgb.sum(axis=2)
        out = np.empty(rgb.shape[:2], dtype=np.float64)
        for r in range(2):
            for c in range(2):
                ch = "RGB".index(self.bayer[2 * r + c])
                out[r::2, c::2] = rgb[r::2, c::2, ch]
        return out

    def expose(self, electrons: np.ndarray, *, exptime: float, rng: np.random.Generator | None,
               cosmics: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
               defects: bool = True) -> np.ndarray:
        """Turn expected photo-electrons into a uint16 raw frame.

        Parameters
        ----------
        electrons : (H, W) float64, or (H, W, 3) for a colour (CFA) sensor
            Expected photo-electrons per pixel reaching the sensor (noise-free); a 2-D array
            is modified in place.
        exptime : float
            Exposure in seconds (scales the dark current: hot pixels, ``dark_rate``).
        rng : Generator or None
            Noise source; ``None`` gives a noise-free frame.
        cosmics : iterable of (ys, xs, e-)
            Charge deposited by cosmic rays (added after the shot noise).
        defects : bool
            Apply hot/cold pixels and cosmic rays.
        """
        e = electrons
        if e.ndim == 3:
            e = self.mosaic(e)
        if self.response is not None:
            e *= self.response
        if defects and len(self.cold_xy):
            e[self.cold_xy[:, 1], self.cold_xy[:, 0]] *= self.cold_response
        if defects and len(self.hot_xy):
            e[self.hot_xy[:, 1], self.hot_xy[:, 0]] += self.hot_rate * exptime
        if self.dark_rate is not None and exptime > 0:
            e += self.dark_rate * exptime
        if rng is not None:
            _shot_noise(e, rng)
        if defects:
            for ys, xs, q in cosmics:
                np.add.at(e, (ys, xs), q)
        if rng is not None and self.read_noise > 0:
            e += rng.standard_normal(e.shape, dtype=np.float64) * self.read_noise
        adu = e
        adu /= self.gain
        adu += self.pedestal if self.bias_map is None else self.bias_map
        np.rint(adu, out=adu)
        np.clip(adu, 0.0, min(self.saturation_adu, 65535.0), out=adu)
        return adu.astype(np.uint16)


def _shot_noise(e: np.ndarray, rng: np.random.Generator) -> None:
    """Replace expected counts by a shot-noise draw, in place (see _POISSON_EXACT_BELOW)."""
    np.maximum(e, 0.0, out=e)
    low = e < _POISSON_EXACT_BELOW
    z = rng.standard_normal(e.shape, dtype=np.float64)
    z *= np.sqrt(e)
    e += z
    if low.any():
        e[low] = rng.poisson(e[low] - z[low]).astype(np.float64)


def draw_cosmics(rng: np.random.Generator, shape: tuple[int, int],
                 rate: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cosmic-ray hits on a sensor of ``shape`` at ``rate`` hits per pixel: a list of
    (ys, xs, e-), single pixels (60 %) and short straight tracks of 2–8 pixels."""
    h, w = shape
    n = rng.poisson(rate * h * w)
    hits = []
    for _ in range(n):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        q = float(np.exp(rng.uniform(math.log(2000.0), math.log(40000.0))))
        if rng.uniform() < 0.6:
            hits.append((np.array([y]), np.array([x]), np.array([q])))
        else:
            length = int(rng.integers(2, 9))
            ang = rng.uniform(0.0, 2.0 * math.pi)
            t = np.arange(length)
            xs = np.clip(np.rint(x + t * math.cos(ang)), 0, w - 1).astype(np.int64)
            ys = np.clip(np.rint(y + t * math.sin(ang)), 0, h - 1).astype(np.int64)
            hits.append((ys, xs, np.full(length, q / 2.0)))
    return hits
