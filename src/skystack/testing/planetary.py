"""Synthetic lucky-imaging videos with exact truth (Moon surface, planets).

A real image (scikit-image's bundled Moon, no download) or a rendered planet is the *scene*.
Every frame looks at the scene through simulated seeing:

* a global jitter (tip-tilt) plus an optional steady drift, known exactly per frame;
* a smooth, zero-mean local distortion field (anisoplanatic seeing: different parts of the
  field move differently), known exactly per frame;
* a Gaussian blur whose width varies from frame to frame (the "lucky" moments are sharp);
* read and shot noise, then quantisation to the camera's bit depth.

Displacement convention (the one the lucky pipeline reports): a frame ``f`` shows the
scene point that sits at reference pixel ``p`` at frame pixel ``p + s(p)``, so
``f(p + s(p)) ≈ truth(p)``; ``s = shift + distortion(p)``.

Frames are rendered on demand from a per-frame seed (``frame(i)`` gives the same pixels in
any order), so a 2000-frame benchmark video never has to sit in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import cv2
import numpy as np

from ..errors import BadFrameError
from ..types import FrameInfo

SceneKind = Literal["moon", "planet"]

# CFA pattern (FITS convention, top-left 2x2 read row-major) -> channel index per cell
_CFA = {"RGGB": (0, 1, 1, 2), "BGGR": (2, 1, 1, 0), "GRBG": (1, 0, 2, 1), "GBRG": (1, 2, 0, 1)}


@dataclass(frozen=True, kw_only=True)
class Seeing:
    """How bad the simulated atmosphere is, in frame pixels.

    ``blur_sigma`` is the range of the per-frame Gaussian blur (drawn so that about one
    frame in ten is near the sharp end, as in real lucky imaging); ``distortion_px`` the RMS
    of the local displacement field; ``distortion_cell_px`` its correlation length.
    """

    jitter_px: float = 2.0
    drift_px_per_frame: tuple[float, float] = (0.0, 0.0)
    distortion_px: float = 1.0
    distortion_cell_px: float = 40.0
    blur_sigma: tuple[float, float] = (0.6, 2.6)
    noise_adu: float = 2.0  # read noise, in output ADU
    shot_gain: float = 0.0  # electrons per ADU for shot noise; 0 disables it
    # blur varying across the field (isoplanatic patches): the frame's blur times
    # exp(patchy * g(p)), g a smooth unit-variance field of correlation ~patchy_cell_px
    patchy: float = 0.0
    patchy_cell_px: float = 64.0


def _moon_scene(height: int, width: int) -> np.ndarray:
    from skimage import data

    moon = data.moon().astype(np.float32) / 255.0
    # scale the whole bundled 512x512 image to cover the scene, then crop the centre: small
    # test frames get the most craters per pixel, big benchmark frames stay smooth
    f = max(height / moon.shape[0], width / moon.shape[1])
    moon = cv2.resize(moon, (max(width, round(moon.shape[1] * f)), max(height, round(moon.shape[0] * f))),
                      interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    y0 = (moon.shape[0] - height) // 2
    x0 = (moon.shape[1] - width) // 2
    return np.clip(moon[y0:y0 + height, x0:x0 + width], 0.0, 1.0)


def planet_scene(height: int, width: int, radius_px: float, *, color: bool = False,
                 supersample: int = 4) -> np.ndarray:
    """A Jupiter-like disk (oblate, banded, limb-darkened, with a red spot) centred on a
    black ``height x width`` scene; values in [0, 1], ``(H, W)`` or ``(H, W, 3)``.

    Rendered ``supersample`` times finer and area-averaged, so the limb is anti-aliased
    like a real (optically band-limited) image.
    """
    s = supersample
    ys, xs = np.mgrid[0:height * s, 0:width * s].astype(np.float32)
    cy, cx = (height * s - 1) / 2.0, (width * s - 1) / 2.0
    r = radius_px * s
    u = (xs - cx) / r
    v = (ys - cy) / (r * 0.935)  # Jupiter's flattening
    rho2 = u * u + v * v
    inside = rho2 < 1.0
    mu = np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    limb = 0.35 + 0.65 * mu ** 0.6
    lat = v
    bands = (1.0 - 0.22 * np.cos(lat * 9.0) ** 2 - 0.10 * np.sin(lat * 23.0 + 0.7)
             - 0.06 * np.sin(u * 5.0 + lat * 31.0))
    spot = np.exp(-(((u - 0.25) / 0.14) ** 2 + ((v - 0.38) / 0.07) ** 2))
    base = np.where(inside, limb * bands, 0.0).astype(np.float32)
    if color:
        rgb = np.stack([base * (1.0 + 0.20 * spot), base * (0.93 - 0.25 * spot),
                        base * (0.78 - 0.30 * spot)], axis=-1)
        rgb = np.where(inside[..., None], rgb, 0.0)
        out = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    else:
        out = cv2.resize(np.where(inside, base * (1.0 - 0.25 * spot), 0.0).astype(np.float32),
                         (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(out / max(float(out.max()), 1e-6), 0.0, 1.0).astype(np.float32)


@dataclass
class LuckyVideo:
    """A seeded synthetic lucky-imaging video with its exact truth.

    Build one with :func:`make_lunar_video` or :func:`make_planet_video`. ``truth`` is the
    noise-free, undistorted, unblurred scene on the reference grid, in output ADU
    (``(H, W)`` or ``(H, W, 3)`` RGB). ``shifts[i]`` is the global displacement of frame
    ``i`` (see the module docstring), ``blur[i]`` its Gaussian blur sigma in pixels.
    """

    scene: np.ndarray  # (H + 2m, W + 2m[, 3]) in [0, 1]
    margin: int
    shape: tuple[int, int]
    shifts: np.ndarray  # (N, 2) float64: (sx, sy)
    blur: np.ndarray  # (N,)
    seeing: Seeing
    seed: int
    black_adu: float = 10.0
    white_adu: float = 220.0
    dtype: str = "uint8"
    bayer: str | None = None
    dispersion_px: tuple[tuple[float, float], ...] | None = None  # per RGB channel (sx, sy)
    blank_frames: frozenset[int] = frozenset()
    name_prefix: str = "synthetic"
    _truth: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.shifts.shape[0])

    @property
    def color(self) -> bool:
        return self.scene.ndim == 3

    @property
    def truth(self) -> np.ndarray:
        if self._truth is None:
            h, w = self.shape
            m = self.margin
            t = self.black_adu + (self.white_adu - self.black_adu) * self.scene[m:m + h, m:m + w]
            self._truth = t.astype(np.float32)
        return self._truth

    @property
    def truth_luminance(self) -> np.ndarray:
        t = self.truth
        return t.mean(axis=2) if t.ndim == 3 else t

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 7919, int(i)])

    def distortion(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The zero-mean local displacement field ``(dx, dy)`` of frame ``i``, each
        ``(H, W)`` float32 in pixels, scaled to the seeing's RMS exactly."""
        h, w = self.shape
        amp = self.seeing.distortion_px
        if amp <= 0:
            z = np.zeros((h, w), np.float32)
            return z, z.copy()
        rng = self._rng(i)
        cell = self.seeing.distortion_cell_px
        gh, gw = max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)
        fields = []
        for _ in range(2):
            g = rng.standard_normal((gh, gw)).astype(np.float32)
            f = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
            f -= f.mean()
            fields.append(f)
        rms = math.sqrt(float(np.mean(fields[0] ** 2 + fields[1] ** 2)))
        k = amp / max(rms, 1e-6)
        return fields[0] * k, fields[1] * k

    def local_blur(self, i: int) -> np.ndarray:
        """Frame ``i``'s Gaussian blur sigma at every frame pixel ``(H, W)`` float32 (its
        global ``blur[i]`` everywhere unless the seeing is patchy)."""
        h, w = self.shape
        sig = np.full((h, w), np.float32(self.blur[i]), np.float32)
        if self.seeing.patchy <= 0:
            return sig
        rng = np.random.default_rng([self.seed, 104729, int(i)])
        cell = self.seeing.patchy_cell_px
        g = rng.standard_normal((max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)))
        g = cv2.resize(g.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        g = (g - g.mean()) / max(float(g.std()), 1e-6)
        return np.clip(sig * np.exp(np.float32(self.seeing.patchy) * g), 0.3, 4.0).astype(np.float32)

    def _blur(self, img: np.ndarray, i: int) -> np.ndarray:
        if self.seeing.patchy <= 0:
            sig = float(self.blur[i])
            return cv2.GaussianBlur(img, (0, 0), sig, borderType=cv2.BORDER_REFLECT) if sig > 0.05 else img
        # blend between a ladder of blurs at each pixel's own sigma
        sig = self.local_blur(i)
        ladder = np.array([0.3, 0.6, 1.0, 1.5, 2.1, 2.9, 4.0], np.float32)
        k = np.clip(np.searchsorted(ladder, sig) - 1, 0, ladder.size - 2)
        t = (sig - ladder[k]) / (ladder[k + 1] - ladder[k])
        stack = np.stack([cv2.GaussianBlur(img, (0, 0), float(s), borderType=cv2.BORDER_REFLECT) for s in ladder])
        lo = np.take_along_axis(stack, k[None], 0)[0]
        hi = np.take_along_axis(stack, k[None] + 1, 0)[0]
        return lo * (1 - t) + hi * t

    def displacement(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Total displacement ``s(p) = shift + distortion(p)`` of frame ``i``."""
        dx, dy = self.distortion(i)
        return dx + np.float32(self.shifts[i, 0]), dy + np.float32(self.shifts[i, 1])

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as the camera records it: ``(H, W)`` (mono or Bayer mosaic) or
        ``(H, W, 3)`` RGB, in :attr:`dtype`."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        h, w = self.shape
        if i in self.blank_frames:
            shape = (h, w, 3) if self.color and self.bayer is None else (h, w)
            return np.zeros(shape, dtype=self.dtype)
        rng = self._rng(i)
        rng.standard_normal(1)  # decouple from the distortion draws of the same seed
        dx, dy = self.distortion(i)
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        # frame pixel q shows the truth at p where q = p + s(p); invert the smooth field by
        # one fixed-point step (|grad s| << 1, the error is second order)
        sx = float(self.shifts[i, 0])
        sy = float(self.shifts[i, 1])
        px = gx - sx - dx
        py = gy - sy - dy
        ddx = cv2.remap(dx, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ddy = cv2.remap(dy, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        m = float(self.margin)
        planes = [self.scene] if not self.color else [self.scene[..., c] for c in range(3)]
        out = []
        for c, plane in enumerate(planes):
            ox, oy = 0.0, 0.0
            if self.color and self.dispersion_px is not None:
                ox, oy = self.dispersion_px[c]
            mx = gx - sx - ddx - ox + m
            my = gy - sy - ddy - oy + m
            img = cv2.remap(plane, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            out.append(self._blur(img, i))
        img = out[0] if len(out) == 1 else np.stack(out, axis=-1)
        adu = self.black_adu + (self.white_adu - self.black_adu) * img
        noise = rng.standard_normal(adu.shape, dtype=np.float32) * np.float32(self.seeing.noise_adu)
        if self.seeing.shot_gain > 0:
            noise += rng.standard_normal(adu.shape, dtype=np.float32) * np.sqrt(
                np.clip(adu, 0, None) / np.float32(self.seeing.shot_gain))
        adu = adu + noise
        if self.bayer is not None and adu.ndim == 3:
            adu = mosaic(adu, self.bayer)
        if self.dtype == "float32":
            return adu.astype(np.float32)
        top = np.iinfo(self.dtype).max
        return np.clip(np.rint(adu), 0, top).astype(self.dtype)

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.frame(i)

    def as_frameset(self) -> ArrayFrames:
        """An in-memory frame set over this video (for tests; renders every frame)."""
        return ArrayFrames([self.frame(i) for i in range(len(self))], name=self.name_prefix,
                           bayer=self.bayer)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an ``(H, W, 3)`` RGB image through a CFA (FITS-convention ``pattern``)."""
    idx = _CFA[pattern.upper()]
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, idx[k]]
    return out


def _draw_shifts(n: int, seeing: Seeing, rng: np.random.Generator) -> np.ndarray:
    # tip-tilt is correlated in time: a smoothed random walk around the drift line
    raw = rng.standard_normal((n + 8, 2))
    k = np.ones(5) / 5.0
    sm = np.stack([np.convolve(raw[:, j], k, mode="same") for j in range(2)], axis=1)[4:n + 4]
    sm /= max(float(sm.std()), 1e-9)
    t = np.arange(n, dtype=np.float64)[:, None]
    return sm * seeing.jitter_px + t * np.asarray(seeing.drift_px_per_frame, dtype=np.float64)[None, :]


def _draw_blur(n: int, seeing: Seeing, rng: np.random.Generator) -> np.ndarray:
    lo, hi = seeing.blur_sigma
    # a skewed draw: most frames are soft, a few are sharp (Beta(2, 1.3) on [lo, hi])
    return lo + (hi - lo) * rng.beta(2.0, 1.3, size=n)


def make_lunar_video(n_frames: int = 120, shape: tuple[int, int] = (256, 256), *, seed: int = 0,
                     seeing: Seeing | None = None, dtype: str = "uint8",
                     black_adu: float = 10.0, white_adu: float = 220.0,
                     blank_frames: Sequence[int] = ()) -> LuckyVideo:
    """A lunar-surface video: scikit-image's Moon (bundled, public domain) under seeing.

    Parameters
    ----------
    n_frames, shape
        Frame count and ``(H, W)`` in pixels.
    seed
        Everything (shifts, blur, distortion, noise) follows from it.
    seeing
        The atmosphere; :class:`Seeing` defaults when omitted.
    dtype
        ``"uint8"``, ``"uint16"`` or ``"float32"``; ADU span ``black_adu``–``white_adu``.
    blank_frames
        Indices of frames replaced by all-zero frames (dropped frames in a capture).
    """
    seeing = seeing or Seeing()
    rng = np.random.default_rng([seed, 1])
    shifts = _draw_shifts(n_frames, seeing, rng)
    blur = _draw_blur(n_frames, seeing, rng)
    drift = np.abs(shifts).max() if n_frames else 0.0
    margin = int(math.ceil(drift + 4 * seeing.distortion_px + 8))
    h, w = shape
    scene = _moon_scene(h + 2 * margin, w + 2 * margin)
    return LuckyVideo(scene=scene, margin=margin, shape=(h, w), shifts=shifts, blur=blur,
                      seeing=seeing, seed=seed, dtype=dtype, black_adu=black_adu,
                      white_adu=white_adu, blank_frames=frozenset(blank_frames),
                      name_prefix="synthetic-moon")


def make_planet_video(n_frames: int = 120, shape: tuple[int, int] = (200, 240), *, seed: int = 0,
                      radius_px: float = 45.0, seeing: Seeing | None = None, dtype: str = "uint8",
                      color: bool = False, bayer: str | None = None,
                      dispersion_px: tuple[tuple[float, float], ...] | None = None,
                      black_adu: float = 6.0, white_adu: float = 200.0,
                      blank_frames: Sequence[int] = ()) -> LuckyVideo:
    """A planet video: a banded, limb-darkened disk on black sky under seeing.

    ``color`` renders RGB frames; ``bayer`` (e.g. ``"RGGB"``) samples them through a CFA
    as a one-shot-colour camera records them; ``dispersion_px`` adds a fixed per-channel
    offset ``((sxR, syR), (sxG, syG), (sxB, syB))`` (atmospheric dispersion).
    """
    seeing = seeing or Seeing(jitter_px=4.0, distortion_px=0.6, distortion_cell_px=30.0)
    rng = np.random.default_rng([seed, 2])
    shifts = _draw_shifts(n_frames, seeing, rng)
    blur = _draw_blur(n_frames, seeing, rng)
    drift = np.abs(shifts).max() if n_frames else 0.0
    margin = int(math.ceil(drift + 4 * seeing.distortion_px + 8))
    h, w = shape
    scene = planet_scene(h + 2 * margin, w + 2 * margin, radius_px, color=color or bayer is not None)
    return LuckyVideo(scene=scene, margin=margin, shape=(h, w), shifts=shifts, blur=blur,
                      seeing=seeing, seed=seed, dtype=dtype, black_adu=black_adu,
                      white_adu=white_adu, bayer=bayer, dispersion_px=dispersion_px,
                      blank_frames=frozenset(blank_frames), name_prefix="synthetic-planet")


class ArrayFrames:
    """An in-memory frame set with the interface the lucky pipeline reads through
    (``len``, ``read``, ``luminance``, ``read_raw``, ``name``, ``info``).

    For tests and small demos only: it holds every frame. ``frames`` items may be arrays
    or exceptions (a :class:`~skystack.errors.BadFrameError` instance is raised when that
    frame is read, to simulate unreadable frames). A Bayer ``(H, W)`` mosaic is debayered
    bilinearly by :meth:`read` when ``bayer`` is set.
    """

    def __init__(self, frames: Sequence[Any], *, name: str = "memory", bayer: str | None = None):
        self._frames = list(frames)
        self.path = name
        self.bayer = bayer

    def __len__(self) -> int:
        return len(self._frames)

    def read_raw(self, i: int) -> np.ndarray:
        f = self._frames[i]
        if isinstance(f, BaseException):
            raise f
        return f

    def read(self, i: int) -> np.ndarray:
        raw = self.read_raw(i)
        if self.bayer is not None and raw.ndim == 2:
            return debayer_bilinear(raw, self.bayer)
        return raw.astype(np.float32)

    def luminance(self, i: int) -> np.ndarray:
        img = self.read(i)
        return img.mean(axis=2, dtype=np.float32) if img.ndim == 3 else img

    def name(self, i: int) -> str:
        return f"{self.path}#{i}"

    def info(self, i: int) -> FrameInfo:
        f = self._frames[i]
        shape = tuple(f.shape) if isinstance(f, np.ndarray) else ()
        dtype = str(f.dtype) if isinstance(f, np.ndarray) else "unknown"
        return FrameInfo(index=i, path=self.path, name=self.name(i), shape=shape, dtype=dtype,
                         bayer=self.bayer)


def debayer_bilinear(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic (OpenCV) of a FITS-convention CFA mosaic to float32 RGB."""
    # OpenCV names a Bayer code after the 2x2 cell at row 0, columns 1-2 (second and third
    # pixels); for a FITS pattern "ABCD" that is the cell starting at column 1: "BA DC",
    # and OpenCV's *2RGB codes then give RGB order.
    codes = {"RGGB": cv2.COLOR_BayerBG2RGB, "BGGR": cv2.COLOR_BayerRG2RGB,
             "GRBG": cv2.COLOR_BayerGB2RGB, "GBRG": cv2.COLOR_BayerGR2RGB}
    src = raw if raw.dtype in (np.uint8, np.uint16) else raw.astype(np.float32)
    return cv2.cvtColor(src, codes[pattern.upper()]).astype(np.float32)


def bad_frame(path: str, reason: str) -> BadFrameError:
    """A :class:`BadFrameError` to place in :class:`ArrayFrames` (simulated bad frame)."""
    return BadFrameError(path, reason)
