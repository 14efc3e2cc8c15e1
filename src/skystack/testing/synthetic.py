"""Seeded synthetic deep-sky frames with exact truth.

The sky (stars, an optional galaxy) is defined once in *reference* pixel coordinates. Each
frame ``i`` sees it through a known similarity transform ``transforms[i]`` (frame pixel →
reference pixel, the convention of :class:`skystack.types.Transform`), with its own seeing
(elliptical Moffat PSF, integrated over the pixel), its own sky level and gradient, and then
through one sensor (gain, read noise, pedestal, saturation, hot and cold pixels fixed on the
sensor) plus cosmic rays and, in one frame, a satellite trail.

Rendering is analytic, star by star in small stamps (Numba), so the truth is exact: a star's
centre in frame ``i`` is ``transforms[i].inverse().apply(star_xy)`` to float precision, and
the noise-free *ideal stack* is rendered directly on the reference grid with every frame's PSF
(:meth:`SyntheticSet.ideal`).

Frames are rendered lazily and deterministically: ``frame(i)`` depends only on the seed and
``i`` (not on which frames were rendered before), so a 100-frame 3000×2000 set streams to
disk without ever holding two frames.

Where things happen, for whoever extends this (bias/dark/flat/CFA):

* :meth:`SyntheticSet.electrons` — the optics: photo-electrons per pixel expected in one
  exposure (stars, galaxy, sky, trail), noise-free.
* :class:`Sensor` ``.expose`` — the sensor: colour filter array (``Sensor.mosaic``), flat
  response (vignetting, dust donuts, pixel response non-uniformity), shot noise, dark current
  (uniform, amplifier glow and hot pixels, all proportional to the exposure), cosmic rays,
  read noise, gain, bias (pedestal plus a fixed pattern), saturation, quantisation to uint16.

Calibration (all off by default, so the frames above are unchanged by it): set
``bias_structure``, ``dark_current``/``amp_glow``, ``vignetting``/``dust_donuts``/``prnu`` and
``bayer`` in :class:`DeepSkyParams`; then :meth:`SyntheticSet.bias_frame`,
:meth:`~SyntheticSet.dark_frame`, :meth:`~SyntheticSet.flat_frame` and
:meth:`~SyntheticSet.dark_flat_frame` render calibration frames through the same sensor, and
:meth:`~SyntheticSet.write_calibration` writes them as FITS. The truth stays available:
:meth:`~SyntheticSet.flat_response`, :meth:`~SyntheticSet.bias_level`,
:meth:`~SyntheticSet.dark_rate`, and for a colour (CFA) set :meth:`~SyntheticSet.ideal_rgb`
(the ideal stack per colour channel) with the objects' colours in
:attr:`~SyntheticSet.star_colours`, ``params.galaxy_colour`` and ``params.sky_colour``.

Example::

    from skystack.testing.synthetic import make_deepsky
    s = make_deepsky(n_frames=30, shape=(1500, 2000), seed=0)
    lum = s.frame(3).astype("float32")           # uint16 frame 3
    err = estimated.rms_error(s.transforms[3], s.shape)
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable

import numpy as np

from _skystack_kernels.cpu.stars import render_gaussians, render_moffat

from ..types import Transform
from .sensor import (DeepSkyParams, Sensor, StarField, _Blob, _FrameConditions, _shot_noise,  # noqa: F401
                     draw_cosmics, moffat_alpha)
from .setfiles import CalibrationFrames, Observation, SetFiles

__all__ = ["DeepSkyParams", "SEESTAR_CARDS", "Sensor", "StarField", "SyntheticSet", "make_deepsky",
           "make_seestar_like", "moffat_alpha", "with_params"]

# A star is rendered out to where its profile falls below this many electrons per pixel:
# far below any read noise, so the truncation is invisible, and it bounds the stamps.
_RENDER_FLOOR_E = 0.01
# Inside this many (d^T A d) units, i.e. 2.5 Moffat alphas on the major axis, pixels are
# integrated by quadrature; beyond it the profile is smooth enough to sample at the centre.
_QCORE = 6.25


# --------------------------------------------------------------------------- the set


class SyntheticSet(SetFiles, Observation, CalibrationFrames):
    """A lazily rendered synthetic deep-sky set with its exact truth.

    Attributes
    ----------
    params : DeepSkyParams
    shape : (H, W)
    transforms : list[Transform]
        Frame pixel → reference pixel, one per frame (similarity).
    stars : StarField
        True stars on the reference grid (flux in e- per exposure).
    fwhm : ndarray
        Per-frame PSF FWHM (pixels, geometric mean of the axes).
    ellipticity : ndarray
        Per-frame PSF ellipticity 1 − b/a.
    sky_level : ndarray
        Per-frame sky level at the frame centre (e- per pixel).
    trail_frame : int or None
        The frame that has a satellite trail.
    hot_pixels, cold_pixels : (n, 2) int arrays of sensor (x, y).
    sensor : Sensor
    star_colours : (n_stars, 3) ndarray
        Each star's camera R, G, B electrons relative to G (used when ``params.bayer`` is set).
    """

    def __init__(self, params: DeepSkyParams):
        self.params = p = params
        self.shape: tuple[int, int] = (int(p.shape[0]), int(p.shape[1]))
        h, w = self.shape
        self._centre = ((w - 1) / 2.0, (h - 1) / 2.0)
        lay = np.random.default_rng([p.seed, 0])
        self.transforms: list[Transform] = [self._draw_transform(lay, i) for i in range(p.n_frames)]
        self._conditions = [self._draw_conditions(lay) for _ in range(p.n_frames)]
        self.fwhm = np.array([c.fwhm for c in self._conditions])
        self.ellipticity = np.array([c.ellipticity for c in self._conditions])
        self.sky_level = np.array([c.sky_level for c in self._conditions])
        self.stars = self._draw_stars(lay)
        self._blobs = self._draw_blobs(lay) if p.extended else []
        self._trail = self._draw_trail(lay)
        has_trail = p.trail_frame is not None and 0 <= p.trail_frame < p.n_frames
        self.trail_frame: int | None = p.trail_frame if has_trail else None
        self.sensor = self._draw_sensor(np.random.default_rng([p.seed, 2]))
        # colours and calibration maps come from streams of their own, so that a set with
        # them has the very same layout, seeing and noise as the set without
        self.star_colours = self._draw_colours(np.random.default_rng([p.seed, 4]))
        self.sensor = self._draw_calibration(np.random.default_rng([p.seed, 5]), self.sensor)
        self.hot_pixels = self.sensor.hot_xy
        self.cold_pixels = self.sensor.cold_xy

    def __len__(self) -> int:
        return self.params.n_frames

    def __repr__(self) -> str:
        p = self.params
        return (f"SyntheticSet(n_frames={p.n_frames}, shape={self.shape}, seed={p.seed}, "
                f"stars={len(self.stars)}, trail_frame={self.trail_frame})")

    # -- layout (drawn once) -----------------------------------------------------------
    def _draw_transform(self, rng: np.random.Generator, i: int) -> Transform:
        p = self.params
        dx, dy = rng.uniform(-p.max_shift, p.max_shift, 2)
        ang = rng.uniform(-p.max_rot_deg, p.max_rot_deg)
        sc = rng.uniform(*p.scale_range)
        if i == 0 and p.first_identity:
            return Transform.identity("similarity")
        return Transform.from_params(dx=dx, dy=dy, angle_deg=ang, scale=sc, center=self._centre,
                                     model="similarity")

    def _draw_conditions(self, rng: np.random.Generator) -> _FrameConditions:
        p = self.params
        h, w = self.shape
        fwhm = rng.uniform(*p.fwhm_range)
        ell = rng.uniform(0.0, p.max_ellipticity)
        pa = rng.uniform(0.0, math.pi)
        level = p.sky_level * (1.0 + p.sky_jitter * rng.uniform(-1.0, 1.0))
        # a linear gradient whose total change across the frame is up to sky_gradient·level
        ang = rng.uniform(0.0, 2.0 * math.pi)
        amp = p.sky_gradient * level * rng.uniform(0.3, 1.0) / math.hypot(w, h)
        return _FrameConditions(fwhm, ell, pa, level, (amp * math.cos(ang), amp * math.sin(ang)))

    def _reference_extent(self) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) of every frame's footprint on the reference grid."""
        h, w = self.shape
        corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
        pts = np.vstack([t.apply(corners) for t in self.transforms])
        margin = 10.0
        return (pts[:, 0].min() - margin, pts[:, 1].min() - margin,
                pts[:, 0].max() + margin, pts[:, 1].max() + margin)

    def _draw_stars(self, rng: np.random.Generator) -> StarField:
        p = self.params
        x0, y0, x1, y1 = self._reference_extent()
        n = int(round(p.star_density * (x1 - x0) * (y1 - y0)))
        x = rng.uniform(x0, x1, n)
        y = rng.uniform(y0, y1, n)
        fmin, fmax = p.flux_range
        s = p.flux_slope
        u = rng.uniform(0.0, 1.0, n)
        # inverse CDF of a power law truncated to [fmin, fmax]
        flux = fmin * (1.0 - u * (1.0 - (fmin / fmax) ** s)) ** (-1.0 / s)
        if p.n_saturated:
            h, w = self.shape
            fw = p.fwhm_range[1]
            a = moffat_alpha(fw, p.beta)
            peak_per_flux = (p.beta - 1.0) / (math.pi * a * a)
            full = (p.saturation_adu - p.pedestal) * p.gain
            xs = rng.uniform(0.1 * w, 0.9 * w, p.n_saturated)
            ys = rng.uniform(0.1 * h, 0.9 * h, p.n_saturated)
            fs = 3.0 * full / peak_per_flux * rng.uniform(1.0, 2.0, p.n_saturated)
            x, y, flux = np.concatenate([x, xs]), np.concatenate([y, ys]), np.concatenate([flux, fs])
        return StarField(x, y, flux)

    def _draw_blobs(self, rng: np.random.Generator) -> list[_Blob]:
        """A galaxy: a core, a bulge and a disk sharing a centre and position angle."""
        h, w = self.shape
        size = min(h, w) / 1500.0
        cx = w * rng.uniform(0.35, 0.65)
        cy = h * rng.uniform(0.35, 0.65)
        pa = rng.uniform(0.0, math.pi)
        blobs = []
        # (flux e-, σ of the major axis in px for a 1500 px frame, smallest σ, axis ratio);
        # the smallest σ keeps the core resolved (not star-like) in small test frames
        for flux, sig, sig_min, q in ((1.5e6, 5.0, 4.0, 0.75), (6e6, 18.0, 8.0, 0.6), (2.5e7, 65.0, 20.0, 0.4)):
            sa = max(sig * size, sig_min)
            sb = sa * q
            r = np.array([[math.cos(pa), -math.sin(pa)], [math.sin(pa), math.cos(pa)]])
            cov = r @ np.diag([sa * sa, sb * sb]) @ r.T
            blobs.append(_Blob(cx, cy, flux * (sa / sig) ** 2, cov))  # same peak brightness
        return blobs

    def _draw_trail(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """A line through a random point of the frame: (x, y, angle in rad), frame pixels."""
        h, w = self.shape
        return (rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.0, math.pi))

    def _draw_sensor(self, rng: np.random.Generator) -> Sensor:
        p = self.params
        h, w = self.shape
        npx = h * w
        n_hot = int(round(p.hot_pixel_fraction * npx))
        n_cold = int(round(p.cold_pixel_fraction * npx))
        idx = rng.choice(npx, size=n_hot + n_cold, replace=False)
        hot = np.column_stack([idx[:n_hot] % w, idx[:n_hot] // w]).astype(np.int64)
        cold = np.column_stack([idx[n_hot:] % w, idx[n_hot:] // w]).astype(np.int64)
        # hot pixels from warm (a few hundred e-) to saturated, log-uniform, per exposure
        full = (p.saturation_adu - p.pedestal) * p.gain
        hot_e = np.exp(rng.uniform(math.log(300.0), math.log(1.5 * full), n_hot))
        return Sensor(
            shape=self.shape, gain=p.gain, read_noise=p.read_noise, pedestal=p.pedestal,
            saturation_adu=p.saturation_adu, hot_xy=hot, hot_rate=hot_e / p.exptime,
            cold_xy=cold, cold_response=rng.uniform(0.0, 0.3, n_cold),
        )

    def _draw_colours(self, rng: np.random.Generator) -> np.ndarray:
        """Star colours from blue to red: R/G = 1 + s·u, B/G = 1 − s·u, u uniform in ±1."""
        u = rng.uniform(-1.0, 1.0, len(self.stars))
        s = self.params.star_colour_spread
        return np.column_stack([1.0 + s * u, np.ones_like(u), 1.0 - s * u])

    def _draw_calibration(self, rng: np.random.Generator, sensor: Sensor) -> Sensor:
        """The sensor's bias pattern, dark current map, flat response and CFA."""
        p = self.params
        h, w = self.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        bias_map = dark_rate = response = None
        cols = rng.standard_normal(w)
        if p.bias_structure > 0:
            # a fixed column pattern plus a slow ramp down the rows, as CMOS read-outs show
            bias_map = (p.pedestal + p.bias_structure * cols[None, :]
                        + 2.0 * p.bias_structure * (yy / max(h - 1, 1) - 0.5))
        if p.dark_current > 0 or p.amp_glow > 0:
            d = np.hypot(xx - (w - 1), yy)  # distance to the top-right corner
            # glow fades over 15 % of the width, and never faster than over 64 px (real glow
            # changes by a fraction of a percent per pixel, even on small sensors)
            dark_rate = p.dark_current + p.amp_glow * np.exp(-d / max(0.15 * w, 64.0))
        donut_x = rng.uniform(0.1 * w, 0.9 * w, p.dust_donuts)
        donut_y = rng.uniform(0.1 * h, 0.9 * h, p.dust_donuts)
        donut_r = rng.uniform(0.04, 0.09, p.dust_donuts) * min(h, w)
        donut_d = p.dust_depth * rng.uniform(0.4, 1.0, p.dust_donuts)
        prnu = rng.standard_normal((h, w))
        if p.vignetting > 0 or p.dust_donuts > 0 or p.prnu > 0:
            # vignetting: quadratic fall-off from an optical centre a little off the
            # frame centre, reaching 1 - vignetting at the farthest corner
            cx, cy = 0.53 * (w - 1), 0.46 * (h - 1)
            r2 = (xx - cx) ** 2 + (yy - cy) ** 2
            r2max = max((x - cx) ** 2 + (y - cy) ** 2 for x in (0, w - 1) for y in (0, h - 1))
            response = 1.0 - p.vignetting * r2 / r2max
            for x0, y0, r0, dep in zip(donut_x, donut_y, donut_r, donut_d):
                # an out-of-focus dust shadow: a dark ring (the annular pupil) with a
                # lighter centre
                rho = np.hypot(xx - x0, yy - y0)
                ring = np.exp(-0.5 * ((rho - r0) / (0.25 * r0)) ** 2)
                inner = 0.4 * (rho < r0)
                response *= 1.0 - dep * np.maximum(ring, inner)
            if p.prnu > 0:
                response *= 1.0 + p.prnu * prnu
        return replace(sensor, response=response, dark_rate=dark_rate, bias_map=bias_map, bayer=p.bayer)

    # -- PSF in a given coordinate system ---------------------------------------------
    def _psf_matrix(self, i: int) -> np.ndarray:
        """Frame i's Moffat shape matrix A (frame pixels): q = d^T A d."""
        c = self._conditions[i]
        alpha = moffat_alpha(c.fwhm, self.params.beta)
        ratio = 1.0 - c.ellipticity
        a = alpha / math.sqrt(ratio)  # major and minor alphas, a·b = alpha²
        b = alpha * math.sqrt(ratio)
        r = np.array([[math.cos(c.pa_rad), -math.sin(c.pa_rad)], [math.sin(c.pa_rad), math.cos(c.pa_rad)]])
        return r @ np.diag([1.0 / (a * a), 1.0 / (b * b)]) @ r.T

    def _components(self, frames: list[int], on_reference: bool) -> np.ndarray:
        """(m, 6) component table for render_moffat: one row per frame PSF."""
        beta = self.params.beta
        rows = []
        for i in frames:
            a_f = self._psf_matrix(i)
            norm = (beta - 1.0) * math.sqrt(np.linalg.det(a_f)) / math.pi
            if on_reference:
                # the same surface-brightness function seen on the reference grid:
                # q = d_f^T A d_f with d_f = M^-1 d_r
                minv = np.linalg.inv(self.transforms[i].matrix[:, :2])
                a = minv.T @ a_f @ minv
            else:
                a = a_f
            rows.append([a[0, 0], a[0, 1], a[1, 1], beta, norm, 1.0 / len(frames)])
        return np.array(rows, dtype=np.float64)

    # -- the optics: expected electrons ----------------------------------------------
    def stars_in_frame(self, i: int, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """True star centres in frame ``i`` (frame pixels) and their fluxes (e-), for the
        stars whose centre is inside the frame shrunk by ``margin`` pixels."""
        xy = self.transforms[i].inverse().apply(self.stars.xy)
        h, w = self.shape
        m = ((xy[:, 0] >= margin - 0.5) & (xy[:, 0] <= w - 0.5 - margin)
             & (xy[:, 1] >= margin - 0.5) & (xy[:, 1] <= h - 0.5 - margin))
        return xy[m], self.stars.flux[m]

    @property
    def galaxy_xy(self) -> tuple[float, float] | None:
        """Centre of the galaxy on the generator's reference grid, or None without one."""
        return (self._blobs[0].x, self._blobs[0].y) if self._blobs else None

    @property
    def is_colour(self) -> bool:
        """True when the sensor has a colour filter array (``params.bayer``)."""
        return self.params.bayer is not None

    def electrons(self, i: int, *, sky: bool = True) -> np.ndarray:
        """Expected photo-electrons per pixel of frame ``i`` (float64, noise- and
        defect-free): stars, galaxy, sky gradient and, in the trail frame, the trail.
        ``sky=False`` leaves out the sky (level and gradient). For a colour set, what each
        photosite receives through its filter (:meth:`electrons_rgb` through the CFA); the
        flat response is the sensor's and is not included."""
        self._check(i)
        if self.is_colour:
            return self.sensor.mosaic(self.electrons_rgb(i, sky=sky))
        return self._render_frame(i, sky, None)

    def electrons_rgb(self, i: int, *, sky: bool = True) -> np.ndarray:
        """``(H, W, 3)`` expected electrons of frame ``i`` in the camera's R, G and B
        channels (objects coloured by :attr:`star_colours`, ``params.galaxy_colour`` and
        ``params.sky_colour``; the trail is white)."""
        self._check(i)
        return np.stack([self._render_frame(i, sky, c) for c in range(3)], axis=2)

    def _render_frame(self, i: int, sky: bool, channel: int | None) -> np.ndarray:
        p = self.params
        h, w = self.shape
        img = self._sky_e(i) if sky else np.zeros((h, w), dtype=np.float64)
        flux = self.stars.flux
        if channel is not None:
            img *= p.sky_colour[channel]
            flux = flux * self.star_colours[:, channel]
        inv = self.transforms[i].inverse()
        # stars whose stamp can touch the frame
        xy = inv.apply(self.stars.xy)
        comp = self._components([i], on_reference=False)
        qmax = self._qmax(comp)
        reach = self._reach(comp, qmax)
        keep = ((xy[:, 0] > -reach) & (xy[:, 0] < w - 1 + reach)
                & (xy[:, 1] > -reach) & (xy[:, 1] < h - 1 + reach))
        render_moffat(img, np.ascontiguousarray(xy[keep, 0]), np.ascontiguousarray(xy[keep, 1]),
                      np.ascontiguousarray(flux[keep]), comp, np.ascontiguousarray(qmax[keep]),
                      np.full(1, _QCORE))
        if self._blobs:
            weights = None if channel is None else np.full(len(self._blobs), p.galaxy_colour[channel])
            self._render_blobs(img, self.transforms[i].matrix, weights)
        if i == self.trail_frame:
            self._render_trail(img)
        return img

    def sky(self, i: int) -> np.ndarray:
        """Frame ``i``'s sky (level + linear gradient about the frame centre) in ADU."""
        self._check(i)
        return self._sky_e(i) / self.params.gain

    def _sky_e(self, i: int) -> np.ndarray:
        h, w = self.shape
        c = self._conditions[i]
        gx = (np.arange(w, dtype=np.float64) - self._centre[0]) * c.sky_slope[0]
        gy = (np.arange(h, dtype=np.float64) - self._centre[1]) * c.sky_slope[1] + c.sky_level
        return gy[:, None] + gx[None, :]

    def _qmax(self, comp: np.ndarray) -> np.ndarray:
        """(n_stars, m): truncation of each star/component where it drops below the floor
        (the component's own peak, not weighted: a frame and the ideal truncate alike)."""
        peak = self.stars.flux[:, None] * comp[None, :, 4]
        beta = comp[None, :, 3]
        return np.maximum((np.maximum(peak, _RENDER_FLOOR_E) / _RENDER_FLOOR_E) ** (1.0 / beta) - 1.0, 0.0)

    @staticmethod
    def _reach(comp: np.ndarray, qmax: np.ndarray) -> np.ndarray:
        """Per-star pixel radius that bounds its rendered stamp."""
        a11, a22, a12 = comp[:, 0], comp[:, 2], comp[:, 1]
        lam_min = 0.5 * (a11 + a22) - np.sqrt(0.25 * (a11 - a22) ** 2 + a12 ** 2)
        return np.max(np.sqrt(qmax / lam_min[None, :]), axis=1) + 2.0

    def _render_blobs(self, img: np.ndarray, frame_to_ref: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Render the galaxy onto the grid of a frame whose pixels map to the reference
        by ``frame_to_ref`` (2x3); ``weights`` (per blob) scale the fluxes (the ideal stack
        renders on the reference grid itself, with weights |det M_i| / N)."""
        m = frame_to_ref[:, :2]
        minv = np.linalg.inv(m)
        t = frame_to_ref[:, 2]
        xs, ys, fl, inv, qm = [], [], [], [], []
        for k, b in enumerate(self._blobs):
            c_frame = minv @ b.cov @ minv.T  # covariance seen in the target grid
            ci = np.linalg.inv(c_frame)
            centre = minv @ (np.array([b.x, b.y]) - t)
            f = b.flux * (1.0 if weights is None else weights[k])
            # truncate where the blob *as one frame sees it* falls below the floor, so that
            # the ideal (a weighted sum) truncates exactly like the frames
            peak = b.flux * math.sqrt(np.linalg.det(ci)) / (2.0 * math.pi)
            xs.append(centre[0])
            ys.append(centre[1])
            fl.append(f)
            inv.append([ci[0, 0], ci[0, 1], ci[1, 1]])
            qm.append(2.0 * math.log(max(peak / _RENDER_FLOOR_E, 1.0)))
        render_gaussians(img, np.array(xs), np.array(ys), np.array(fl), np.array(inv), np.array(qm))

    def _render_trail(self, img: np.ndarray) -> None:
        """A satellite trail: a Gaussian cross-section (σ 0.9 px) along an infinite line."""
        h, w = self.shape
        x0, y0, ang = self._trail
        nx, ny = -math.sin(ang), math.cos(ang)  # unit normal
        sig = 0.9
        half = 5.0 * sig
        # only the pixels near the line: for each row (or column) the line crosses
        if abs(ny) >= abs(nx):  # mostly horizontal: iterate columns
            xs = np.arange(w, dtype=np.float64)
            yc = y0 - (xs - x0) * nx / ny
            dys = np.arange(-int(half / abs(ny)) - 2, int(half / abs(ny)) + 3)
            yy = np.rint(yc)[None, :] + dys[:, None]
            xx = np.broadcast_to(xs[None, :], yy.shape)
        else:
            ys = np.arange(h, dtype=np.float64)
            xc = x0 - (ys - y0) * ny / nx
            dxs = np.arange(-int(half / abs(nx)) - 2, int(half / abs(nx)) + 3)
            xx = np.rint(xc)[None, :] + dxs[:, None]
            yy = np.broadcast_to(ys[None, :], xx.shape)
        d = (xx - x0) * nx + (yy - y0) * ny
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h) & (np.abs(d) <= half)
        profile = self.params.trail_peak * np.exp(-0.5 * (d[ok] / sig) ** 2)
        img[yy[ok].astype(np.int64), xx[ok].astype(np.int64)] += profile

    # -- the sensor: raw frames ----------------------------------------------------------
    def cosmic_rays(self, i: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Cosmic-ray hits of frame ``i``: a list of (ys, xs, e-) — single pixels (60 %)
        and short straight tracks of 2–8 pixels."""
        self._check(i)
        return self._draw_cosmics(np.random.default_rng([self.params.seed, 3, i]))

    def _draw_cosmics(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return draw_cosmics(rng, self.shape, self.params.cosmic_rate)

    def frame(self, i: int, *, noise: bool | None = None, defects: bool = True) -> np.ndarray:
        """The raw uint16 frame ``i`` (depends only on the seed and ``i``).

        ``noise`` defaults to ``params.noise``; ``defects=False`` leaves out hot and cold
        pixels and cosmic rays (the satellite trail is sky, and stays).
        """
        p = self.params
        noise = p.noise if noise is None else noise
        e = self.electrons(i)
        rng = np.random.default_rng([p.seed, 1, i]) if noise else None
        cos = self.cosmic_rays(i) if defects else ()
        return self.sensor.expose(e, exptime=p.exptime, rng=rng, cosmics=cos, defects=defects)

    def signal(self, i: int, *, sky: bool = True) -> np.ndarray:
        """Frame ``i`` noise- and defect-free, in ADU above the pedestal (float64);
        ``sky=False``: stars, galaxy (and trail) only."""
        return self.electrons(i, sky=sky) / self.params.gain

    def frames(self) -> Iterable[np.ndarray]:
        """Every raw frame in order, one at a time."""
        for i in range(len(self)):
            yield self.frame(i)

    # -- the ideal stack --------------------------------------------------------------
    def ideal(self, *, background: bool = False, frames: list[int] | None = None) -> np.ndarray:
        """The noise-free ideal stack on the reference grid (float64, ADU).

        The mean over ``frames`` (default: all) of each frame's noise-free, defect-free
        signal (``signal(i)``, no trail) resampled exactly onto the reference grid: every
        star is rendered at its reference position with frame ``i``'s PSF mapped through
        the transform, pixel-integrated on the reference grid; the galaxy likewise.

        ``background=False`` gives stars + galaxy only (what a perfectly background-
        subtracted stack holds); ``background=True`` adds the pedestal and the mean of the
        frames' sky planes mapped to the reference grid — what a mean stack without
        normalisation converges to where every frame covers the pixel.

        For a colour set this is the colourless scene (every object with the colour
        (1, 1, 1)); :meth:`ideal_rgb` gives the ideal per camera channel.
        """
        return self._ideal(background, frames, None)

    def ideal_rgb(self, *, background: bool = False, frames: list[int] | None = None) -> np.ndarray:
        """``(H, W, 3)`` ideal stack per camera channel (float64, ADU): what a perfectly
        calibrated, demosaiced colour stack holds, objects with their true colours
        (``background=True`` adds the coloured sky and the pedestal, as :meth:`ideal`)."""
        return np.stack([self._ideal(background, frames, c) for c in range(3)], axis=2)

    def _ideal(self, background: bool, frames: list[int] | None, channel: int | None) -> np.ndarray:
        p = self.params
        frames = list(range(len(self))) if frames is None else list(frames)
        h, w = self.shape
        img = np.zeros((h, w), dtype=np.float64)
        n = len(frames)
        if background:
            # sky_i(p_f) = L + g·(p_f - c) with p_f = B p_r + b: linear in p_r
            const, gxr, gyr = 0.0, 0.0, 0.0
            for i in frames:
                c = self._conditions[i]
                inv = self.transforms[i].inverse().matrix
                g = np.array(c.sky_slope)
                const += c.sky_level + g @ (inv[:, 2] - np.array(self._centre))
                gr = inv[:, :2].T @ g
                gxr += gr[0]
                gyr += gr[1]
            xs = np.arange(w, dtype=np.float64) * (gxr / n)
            ys = np.arange(h, dtype=np.float64) * (gyr / n) + const / n
            np.add(ys[:, None], xs[None, :], out=img)
            if channel is not None:
                img *= p.sky_colour[channel]
        flux = self.stars.flux if channel is None else self.stars.flux * self.star_colours[:, channel]
        blob_colour = 1.0 if channel is None else p.galaxy_colour[channel]
        comp = self._components(frames, on_reference=True)
        qmax = self._qmax(comp)
        reach = self._reach(comp, qmax)
        xy = self.stars.xy
        keep = ((xy[:, 0] > -reach) & (xy[:, 0] < w - 1 + reach)
                & (xy[:, 1] > -reach) & (xy[:, 1] < h - 1 + reach))
        render_moffat(img, np.ascontiguousarray(xy[keep, 0]), np.ascontiguousarray(xy[keep, 1]),
                      np.ascontiguousarray(flux[keep]), comp, np.ascontiguousarray(qmax[keep]),
                      np.full(len(frames), _QCORE))
        if self._blobs:
            # the galaxy seen on the reference grid has the frames' surface brightness:
            # flux density per frame pixel = per reference pixel × |det M|
            ident = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            for i in frames:
                det = abs(np.linalg.det(self.transforms[i].matrix[:, :2]))
                self._render_blobs(img, ident, np.full(len(self._blobs), det / n * blob_colour))
        img /= p.gain
        if background:
            img += p.pedestal
        return img

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range 0..{len(self) - 1}")


def make_deepsky(n_frames: int = 30, shape: tuple[int, int] = (1500, 2000), seed: int = 0,
                 max_shift: float = 40.0, max_rot_deg: float = 2.0, **kwargs) -> SyntheticSet:
    """A seeded synthetic deep-sky set; see :class:`DeepSkyParams` for every option.

    Parameters
    ----------
    n_frames : int
    shape : (H, W)
        Frame shape in pixels.
    seed : int
        Same seed and options → byte-identical frames.
    max_shift : float
        Shifts are uniform in ±max_shift pixels (x and y).
    max_rot_deg : float
        Rotations about the frame centre are uniform in ±max_rot_deg degrees.
    **kwargs
        Any other :class:`DeepSkyParams` field (``fwhm_range``, ``hot_pixel_fraction``,
        ``trail_frame``, ``noise``, ``extended``, ...).

    Returns
    -------
    SyntheticSet
    """
    return SyntheticSet(DeepSkyParams(n_frames=n_frames, shape=tuple(shape), seed=seed,
                                      max_shift=max_shift, max_rot_deg=max_rot_deg, **kwargs))


# Header cards of a ZWO Seestar S50 sub (seestar-m94 in ../shared/data, SOURCES.md), for
# Seestar-like synthetic sets.
SEESTAR_CARDS: tuple[tuple[str, object], ...] = (
    ("OBJECT", "M 94"), ("TELESCOP", "S50_synthetic"), ("INSTRUME", "Seestar S50"), ("FILTER", "IRCUT"),
    ("FOCALLEN", 250), ("APERTURE", 5.0), ("XPIXSZ", 2.9), ("YPIXSZ", 2.9), ("XBINNING", 1), ("YBINNING", 1),
    ("GAIN", 80), ("SITELAT", 32.8965), ("SITELONG", -79.7625), ("RA", 193.04166), ("DEC", 40.970556),
    ("CREATOR", "ZWO Seestar S50"),
)


def make_seestar_like(n_frames: int = 8, shape: tuple[int, int] = (192, 108), seed: int = 0, **kwargs) -> SyntheticSet:
    """A small Seestar-like set: portrait GRBG mosaics, 10 s subs a few seconds apart,
    Seestar header cards (:data:`SEESTAR_CARDS`) and, unlike the real Seestar files (which
    have none), a plate-solved-style TAN/PC WCS per frame consistent with the transforms
    (2.4″/px centred on M 94). ``kwargs`` override any :class:`DeepSkyParams` field."""
    params = dict(max_shift=6.0, max_rot_deg=1.5, bayer="GRBG", exptime=10.0, frame_gap_s=1.5,
                  wcs_centre=(193.0994, 41.1203), pixel_scale_arcsec=2.4, sky_pa_deg=12.0,
                  date_obs="2025-03-27T01:20:32.955368", observation=SEESTAR_CARDS, extended=False,
                  star_density=2.5e-3, trail_frame=None)
    params.update(kwargs)
    return make_deepsky(n_frames=n_frames, shape=shape, seed=seed, **params)


def with_params(s: SyntheticSet, **changes) -> SyntheticSet:
    """A copy of ``s`` with some parameters changed (same seed: same layout streams)."""
    return SyntheticSet(replace(s.params, **changes))
