"""Writing a synthetic deep-sky set to disk: frames and calibration frames as uint16 FITS,
and ``truth.json`` (a mix-in of :class:`skystack.testing.synthetic.SyntheticSet`)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.io import fits
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
