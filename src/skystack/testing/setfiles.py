"""Mix-ins of :class:`skystack.testing.synthetic.SyntheticSet`: writing a set to disk
(frames and calibration frames as uint16 FITS, ``truth.json``), the frames' sky
coordinates and times, and the calibration frames with their truth."""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from tqdm import tqdm


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


class SetFiles:
    """``truth``, ``write_fits`` and ``write_calibration`` of a synthetic set."""

    # -- output --------------------------------------------------------------------------
    def truth(self) -> dict:
        """Everything needed to check a result, as JSON-ready data."""
        p = self.params
        return {
            "generator": "skystack.testing.synthetic.make_deepsky",
            "params": _jsonable(asdict(p)),
            "shape": list(self.shape),
            "convention": "transforms map frame pixel (x, y) to reference pixel (x, y), 0-based pixel centres",
            "transforms": [t.to_list() for t in self.transforms],
            "fwhm_px": [float(v) for v in self.fwhm],
            "sky_level_e": [float(c.sky_level) for c in self._conditions],
            "trail_frame": self.trail_frame,
            "hot_pixels": self.hot_pixels.tolist(),
            "cold_pixels": self.cold_pixels.tolist(),
            "n_stars": len(self.stars),
            "calibration": {
                "hot_rate_e_per_s": [float(v) for v in self.sensor.hot_rate],
                "cold_response": [float(v) for v in self.sensor.cold_response],
                "flat_response_mean": float(self.flat_response().mean()),
                "flat_response_min": float(self.flat_response().min()),
                "bias_mean_adu": float(self.bias_level().mean()),
                "note": "maps: SyntheticSet.flat_response(), bias_level(), dark_rate()",
            },
        }

    def write_fits(self, folder: str | Path, *, prefix: str = "synth_", frames: Iterable[int] | None = None,
                   progress: bool = False) -> list[Path]:
        """Write frames as uint16 FITS (BZERO 32768, EXPTIME), one at a time, and
        ``truth.json``; returns the frame paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        idx = range(len(self)) if frames is None else list(frames)
        paths = []
        it: Iterable[int] = idx
        if progress:
            it = tqdm(idx, desc="rendering", unit="frame")
        p = self.params
        for i in it:
            path = folder / f"{prefix}{i:04d}.fits"
            extra: list[tuple[str, object]] = [("OBJECT", "skystack synthetic")]
            extra += list(p.observation)
            if p.date_obs is not None:
                extra.append(("DATE-OBS", self.date_obs(i)))
            extra += list(self.wcs_header(i).items())
            self._write_frame(path, self.frame(i), exptime=p.exptime, imagetyp="Light Frame", index=i,
                              extra=extra)
            paths.append(path)
        truth = self.truth()
        truth["files"] = [q.name for q in paths]
        (folder / "truth.json").write_text(json.dumps(truth, indent=1))
        return paths

    def _write_frame(self, path: Path, data: np.ndarray, *, exptime: float | None, imagetyp: str, index: int,
                     extra: list[tuple[str, object]] = (), ccd_temp: float | None = None) -> None:
        p = self.params
        hdu = fits.PrimaryHDU(data)  # astropy stores uint16 as BITPIX 16 + BZERO 32768
        hd = hdu.header
        if exptime is not None:
            hd["EXPTIME"] = (exptime, "[s] exposure time")
            hd["EXPOSURE"] = (exptime, "[s] exposure time")
        hd["GAIN"] = (p.gain, "[e-/ADU]")
        hd["PEDESTAL"] = (p.pedestal, "[ADU] offset added to every pixel")
        hd["IMAGETYP"] = imagetyp
        for key, val in extra:
            hd[key] = val
        hd["SYNSEED"] = (p.seed, "skystack synthetic set seed")
        hd["SYNFRAME"] = (index, "frame index in the synthetic set")
        hd["HISTORY"] = "skystack.testing.synthetic: truth in truth.json"
        if p.bayer is not None:
            hd["BAYERPAT"] = (p.bayer, "CFA pattern of the first row")
        temp = p.ccd_temp if ccd_temp is None else ccd_temp
        if temp is not None:
            hd["CCD-TEMP"] = (float(temp), "[C] sensor temperature")
        hdu.writeto(path, overwrite=True)

    def write_calibration(self, folder: str | Path, *, bias: int = 0, darks: int = 0, flats: int = 0,
                          dark_flats: int = 0, dark_exptime: float | None = None, write_exptime: bool = True,
                          ccd_temp: float | None = None) -> dict[str, list[Path]]:
        """Write calibration frames as uint16 FITS, one folder per kind.

        Parameters
        ----------
        folder : path
            Gets ``bias/``, ``darks/``, ``flats/`` and ``dark_flats/`` (those asked for).
        bias, darks, flats, dark_flats : int
            How many frames of each kind.
        dark_exptime : float, optional
            Exposure of the darks (default: the lights').
        write_exptime : bool
            ``False`` leaves EXPTIME/EXPOSURE out of the headers (a bad-input case).
        ccd_temp : float, optional
            CCD-TEMP written in these frames (default ``params.ccd_temp``).

        Returns
        -------
        dict
            ``{"bias": [paths], "darks": [...], "flats": [...], "dark_flats": [...]}``.
        """
        p = self.params
        folder = Path(folder)
        t_dark = p.exptime if dark_exptime is None else float(dark_exptime)
        kinds = (
            ("bias", bias, "Bias Frame", 0.0, self.bias_frame),
            ("darks", darks, "Dark Frame", t_dark, lambda k: self.dark_frame(k, exptime=t_dark)),
            ("flats", flats, "Flat Field", p.flat_exptime, self.flat_frame),
            ("dark_flats", dark_flats, "Dark Flat", p.flat_exptime, self.dark_flat_frame),
        )
        out: dict[str, list[Path]] = {}
        for name, n, imagetyp, t, render in kinds:
            if n <= 0:
                continue
            sub = folder / name
            sub.mkdir(parents=True, exist_ok=True)
            out[name] = []
            for k in range(n):
                path = sub / f"{name}_{k:04d}.fits"
                self._write_frame(path, render(k), exptime=t if write_exptime else None, imagetyp=imagetyp,
                                  index=k, ccd_temp=ccd_temp)
                out[name].append(path)
        return out


class Observation:
    """Sky coordinates (a TAN WCS exact for each frame's transform) and times of a
    synthetic set's frames (``params.wcs_centre``, ``params.date_obs``)."""

    def _layout_wcs(self):
        """The TAN WCS of the layout grid (frame 0's grid when ``first_identity``)."""
        p = self.params
        h, w = self.shape
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = list(p.wcs_centre)
        wcs.wcs.crpix = [(w - 1) / 2.0 + 1.0, (h - 1) / 2.0 + 1.0]  # 1-based
        deg = p.pixel_scale_arcsec / 3600.0
        wcs.wcs.cdelt = [-deg, deg]  # east to the left, north up, before the rotation
        pa = math.radians(p.sky_pa_deg)
        wcs.wcs.pc = [[math.cos(pa), -math.sin(pa)], [math.sin(pa), math.cos(pa)]]
        return wcs

    def wcs_header(self, i: int) -> dict[str, object]:
        """FITS WCS cards (TAN projection, PC matrix) of frame ``i``, exact for its
        transform: pixel ``p`` of the frame shows the sky the layout grid shows at
        ``transforms[i].apply(p)``. Empty without ``params.wcs_centre``."""
        self._check(i)
        if self.params.wcs_centre is None:
            return {}
        lw = self._layout_wcs()
        m = self.transforms[i].matrix
        a, t = m[:, :2], m[:, 2]
        # layout offsets from CRPIX: p_r - c_r = A p_f + t - c_r = A (p_f - c_f)
        c_r = np.asarray(lw.wcs.crpix) - 1.0
        c_f = np.linalg.solve(a, c_r - t)
        pc = np.asarray(lw.wcs.get_pc()) @ a
        cards: dict[str, object] = {"WCSAXES": 2, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                                    "CUNIT1": "deg", "CUNIT2": "deg",
                                    "CRVAL1": float(lw.wcs.crval[0]), "CRVAL2": float(lw.wcs.crval[1]),
                                    "CRPIX1": float(c_f[0] + 1.0), "CRPIX2": float(c_f[1] + 1.0),
                                    "CDELT1": float(lw.wcs.cdelt[0]), "CDELT2": float(lw.wcs.cdelt[1]),
                                    "PC1_1": float(pc[0, 0]), "PC1_2": float(pc[0, 1]),
                                    "PC2_1": float(pc[1, 0]), "PC2_2": float(pc[1, 1]),
                                    "RADESYS": "ICRS", "EQUINOX": 2000.0}
        return cards

    def sky_of_layout(self, xy: np.ndarray) -> np.ndarray:
        """(RA, Dec) in degrees of layout-grid pixels ``xy`` (n, 2), 0-based: the truth a
        stack's WCS is checked against (``stars.xy`` are layout pixels)."""
        if self.params.wcs_centre is None:
            raise ValueError("this set has no WCS (params.wcs_centre is None)")
        return np.asarray(self._layout_wcs().wcs_pix2world(np.asarray(xy, dtype=np.float64), 0))

    def start_mjd(self, i: int) -> float | None:
        """Start of frame ``i``'s exposure (MJD, UTC), or None without ``params.date_obs``."""
        self._check(i)
        p = self.params
        if p.date_obs is None:
            return None
        t0 = datetime.fromisoformat(p.date_obs).replace(tzinfo=timezone.utc)
        mjd0 = (t0 - datetime(1858, 11, 17, tzinfo=timezone.utc)).total_seconds() / 86400.0
        return mjd0 + i * (p.exptime + p.frame_gap_s) / 86400.0

    def date_obs(self, i: int) -> str | None:
        """Frame ``i``'s DATE-OBS (ISO, UTC, microseconds), or None without ``params.date_obs``."""
        self._check(i)
        p = self.params
        if p.date_obs is None:
            return None
        t = datetime.fromisoformat(p.date_obs) + timedelta(seconds=i * (p.exptime + p.frame_gap_s))
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f")


class CalibrationFrames:
    """Bias, dark, flat and dark-flat frames rendered through the set's sensor, and the
    sensor's truth (flat response, bias level, dark rate)."""

    # Each kind has its own noise stream, [seed, 10 + kind, k]: calibration frames never
    # change the lights, and frame k of a kind is the same whatever else was rendered.
    def bias_frame(self, k: int = 0) -> np.ndarray:
        """Bias (offset) frame ``k``: no light, zero exposure (uint16)."""
        rng = np.random.default_rng([self.params.seed, 10, k]) if self.params.noise else None
        return self.sensor.expose(np.zeros(self.shape), exptime=0.0, rng=rng)

    def dark_frame(self, k: int = 0, *, exptime: float | None = None) -> np.ndarray:
        """Dark frame ``k`` of ``exptime`` seconds (default: the lights'): no light; bias,
        dark current, amplifier glow and hot pixels, read noise and cosmic rays (uint16)."""
        p = self.params
        t = p.exptime if exptime is None else float(exptime)
        ms = int(round(t * 1000))
        rng = np.random.default_rng([p.seed, 11, k, ms]) if p.noise else None
        cos = self._draw_cosmics(np.random.default_rng([p.seed, 15, k, ms]))
        return self.sensor.expose(np.zeros(self.shape), exptime=t, rng=rng, cosmics=cos)

    def flat_frame(self, k: int = 0, *, level: float | None = None) -> np.ndarray:
        """Flat frame ``k``: a uniform panel of ``params.flat_colour`` through the optics
        (vignetting, dust) and the sensor, ``params.flat_exptime`` seconds (uint16).
        ``level``: e- of a green photosite at full response (default ``params.flat_level``)."""
        p = self.params
        lvl = p.flat_level if level is None else float(level)
        rng = np.random.default_rng([p.seed, 12, k]) if p.noise else None
        h, w = self.shape
        if self.is_colour:
            light = np.broadcast_to(np.asarray(p.flat_colour, dtype=np.float64) * lvl, (h, w, 3))
        else:
            light = np.full((h, w), lvl)
        return self.sensor.expose(np.array(light), exptime=p.flat_exptime, rng=rng)

    def dark_flat_frame(self, k: int = 0) -> np.ndarray:
        """Dark frame ``k`` of the flats' exposure (``params.flat_exptime``), uint16."""
        p = self.params
        rng = np.random.default_rng([p.seed, 13, k]) if p.noise else None
        return self.sensor.expose(np.zeros(self.shape), exptime=p.flat_exptime, rng=rng)

    def flat_response(self) -> np.ndarray:
        """The true relative response to light (H, W), float64: vignetting × dust × PRNU
        (ones when none is set). Cold pixels are defects, not part of it."""
        r = self.sensor.response
        return np.ones(self.shape) if r is None else r.copy()

    def bias_level(self) -> np.ndarray:
        """The true noise-free bias (H, W) in ADU."""
        b = self.sensor.bias_map
        return np.full(self.shape, float(self.params.pedestal)) if b is None else b.copy()

    def dark_rate(self, *, hot: bool = True) -> np.ndarray:
        """The true dark current (H, W) in e- per second: uniform + glow, and with
        ``hot=True`` the hot pixels."""
        d = np.zeros(self.shape) if self.sensor.dark_rate is None else self.sensor.dark_rate.copy()
        if hot and len(self.hot_pixels):
            d[self.hot_pixels[:, 1], self.hot_pixels[:, 0]] += self.sensor.hot_rate
        return d
