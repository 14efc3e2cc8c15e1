"""Applying the masters to the lights, streamed strip by strip before demosaicing.

For a light ``L`` with master bias ``B``, master dark ``D`` (raw, bias included), thermal
signal ``T = D − B`` and master flat ``F`` normalised per CFA colour::

    calibrated = (L − B − k·T) / F        then hot/cold pixels repaired (cosmetic.py)

``k`` is 1 when the dark has the light's exposure, ``t_light / t_dark`` when it does not
(``--dark-scaling auto``, needs the bias to separate offset from thermal signal), or fitted
per light (``optimize``: the ``k`` that minimises the noise of the calibrated light, as
Siril's dark optimisation; here in closed form, see :func:`optimize_dark_factor`). Without
a bias a dark of the lights' exposure is subtracted whole (``L − D``).

:class:`CalibrationStep` is the picklable raw step a :class:`~skystack.io.FrameSet` runs
on every strip it reads (``FrameSet.with_raw_steps``); it holds master *paths* and a few
numbers, and memory-maps the masters' rows lazily in whatever process it runs.

What is refused (:class:`~skystack.errors.CalibrationError`, exit code 2, before any output
is written): masters of another size, binning or CFA pattern than the lights, RGB lights,
a dark whose exposure is unknown (no EXPTIME/EXPOSURE) while the lights' is known, a dark
of another exposure without a bias to scale it, dark optimisation without a bias. The
reason is that a wrong calibration silently applied is worse than none: the user gets one
line naming the file and the reason, and can drop that correction or fix the input.
Only warned about: a dark at another temperature than the lights (its current differs;
``--dark-scaling optimize`` compensates), flats with no bias or dark-flat to remove their
offset, lights with no offset removed before flat division.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import BadFrameError, CalibrationError
from ..io.bayer import pattern_shift
from ..io.fits import FitsSource
from ..output.write import atomic_path
from .cosmetic import find_defects, fix_defects
from .masters import SAME_EXPOSURE, Master, get_master

log = logging.getLogger("skystack")

DarkMode = Literal["none", "whole", "thermal"]

# Temperatures further apart than this (°C) get a warning for darks.
TEMPERATURE_TOLERANCE_C = 2.0
# Rows sampled per light for dark optimisation: this many strips of _OPT_ROWS rows.
_OPT_STRIPS = 8
_OPT_ROWS = 32


class CalibrationStep:
    """The calibration of one set of lights, as a picklable raw step.

    Called as ``step(plane, index=i, y0=y0)`` on a raw strip (rows ``y0 ...`` of light
    ``i``); returns the calibrated float32 strip of the same shape. See the module
    docstring for the formula.

    Parameters
    ----------
    shape : (H, W)
        The lights' (and masters') raw geometry.
    pattern : str or None
        The lights' CFA pattern at row 0 (for same-colour repairs).
    bias, dark, flat : str or None
        Master FITS paths.
    dark_mode : {"none", "whole", "thermal"}
        "whole": subtract the dark as it is (it holds the offset, no bias given);
        "thermal": subtract ``k × thermal``, the thermal part being ``dark − bias`` when
        ``dark_has_offset`` else the dark itself.
    dark_has_offset : bool
    dark_factors : tuple of float
        ``k`` per global light index.
    flat_cells : 4 floats
        Divisors per 2×2 cell position normalising the flat per CFA colour.
    defects : str or None
        ``.npy`` file of ``(n, 2)`` int32 ``(y, x)`` defects sorted by row.
    """

    def __init__(self, *, shape: tuple[int, int], pattern: str | None, bias: str | None = None,
                 dark: str | None = None, flat: str | None = None, dark_mode: DarkMode = "none",
                 dark_has_offset: bool = True, dark_factors: tuple[float, ...] = (),
                 flat_cells: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 defects: str | None = None):
        self.shape = (int(shape[0]), int(shape[1]))
        self.pattern = pattern
        self.bias, self.dark, self.flat = bias, dark, flat
        self.dark_mode = dark_mode
        self.dark_has_offset = bool(dark_has_offset)
        self.dark_factors = tuple(float(k) for k in dark_factors)
        self.flat_cells = tuple(float(v) for v in flat_cells)
        self.defects = defects
        self._lock = threading.Lock()
        self._open: dict[str, Any] | None = None

    # -- pickling: paths and numbers only, never open files or arrays -------------------
    _FIELDS = ("shape", "pattern", "bias", "dark", "flat", "dark_mode", "dark_has_offset", "dark_factors",
               "flat_cells", "defects")

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._FIELDS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._lock = threading.Lock()
        self._open = None

    def __repr__(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in ("bias", "dark", "flat", "dark_mode") if getattr(self, k)]
        return f"CalibrationStep({', '.join(parts)}, defects={self.defects is not None})"

    def _sources(self) -> dict[str, Any]:
        with self._lock:
            if self._open is None:
                opened: dict[str, Any] = {}
                for name in ("bias", "dark", "flat"):
                    path = getattr(self, name)
                    if path is not None:
                        opened[name] = FitsSource(path)
                if self.defects is not None:
                    d = np.load(self.defects)
                    opened["defects"] = (np.ascontiguousarray(d[:, 0]), np.ascontiguousarray(d[:, 1]))
                self._open = opened
            return self._open

    def close(self) -> None:
        with self._lock:
            for v in (self._open or {}).values():
                if hasattr(v, "close"):
                    v.close()
            self._open = None

    def factor(self, index: int) -> float:
        """The dark factor ``k`` of light ``index``."""
        return self.dark_factors[index] if 0 <= index < len(self.dark_factors) else 1.0

    def __call__(self, plane: np.ndarray, *, index: int, y0: int) -> np.ndarray:
        h, w = self.shape
        if plane.ndim != 2 or plane.shape[1] != w or y0 + plane.shape[0] > h:
            raise BadFrameError(
                f"frame {index}", f"is {plane.shape[1] if plane.ndim >= 2 else '?'} px wide"
                f"{' RGB' if plane.ndim == 3 else ''}, the calibration masters are {w}x{h}; not calibrated")
        src = self._sources()
        y1 = y0 + plane.shape[0]
        x = np.array(plane, dtype=np.float32)
        bias = np.asarray(src["bias"].read_rows(0, y0, y1), dtype=np.float32) if "bias" in src else None
        if bias is not None:
            x -= bias
        if self.dark_mode == "whole":
            x -= np.asarray(src["dark"].read_rows(0, y0, y1), dtype=np.float32)
        elif self.dark_mode == "thermal":
            k = np.float32(self.factor(index))
            if k != 0:
                t = np.asarray(src["dark"].read_rows(0, y0, y1), dtype=np.float32)
                if self.dark_has_offset and bias is not None:
                    t -= bias
                t *= k
                x -= t
        if "flat" in src:
            f = np.asarray(src["flat"].read_rows(0, y0, y1), dtype=np.float32)
            cells = np.asarray(self.flat_cells, dtype=np.float32).reshape(2, 2)
            for r in range(2):
                for c in range(2):
                    f[(y0 + r) % 2::2, c::2] /= cells[r, c]
            with np.errstate(divide="ignore", invalid="ignore"):
                # a zero or negative flat value is a dead pixel: in the defect map when
                # the flat was examined, NaN ("no data") otherwise
                np.divide(x, f, out=x, where=f > 0)
                x[~(f > 0)] = np.nan
        if "defects" in src:
            dys, dxs = src["defects"]
            a, b = np.searchsorted(dys, [y0, y1])
            if b > a:
                pattern = pattern_shift(self.pattern, 0, y0) if self.pattern else None
                fix_defects(x, dys[a:b] - y0, dxs[a:b], pattern)
        return x


# -- the lights ---------------------------------------------------------------------------
@dataclass
class LightFacts:
    """What calibration needs to know about the lights (from headers only)."""

    shape: tuple[int, int]
    pattern: str | None
    exposures: dict[int, float | None] = field(default_factory=dict)
    temperature_c: float | None = None
    binning: tuple[int, int] | None = None
    dtype: str = "uint16"
    example: str = ""


def light_facts(frames) -> LightFacts:
    """Geometry, CFA pattern, exposures, temperature and binning of the lights.

    Raises
    ------
    CalibrationError
        The lights are RGB (already demosaiced): calibration works on raw planes.
    """
    geoms: Counter[tuple[int, ...]] = Counter()
    for e in frames.entries:
        if e.readable:
            geoms[tuple(e.shape)] += e.n_frames
    if not geoms:
        raise CalibrationError("no readable light frame to calibrate")
    shape = geoms.most_common(1)[0][0]
    example = next(e.path for e in frames.entries if e.readable and tuple(e.shape) == shape)
    if len(shape) != 2:
        raise CalibrationError(f"{example}: the lights are RGB images; calibration (bias, darks, flats) works "
                               "on raw mono or CFA frames, before demosaicing")
    facts = LightFacts(shape=(int(shape[0]), int(shape[1])), pattern=None, example=example)
    patterns: Counter[str | None] = Counter()
    temps, bins = [], []
    for i in range(len(frames)):
        e, _ = frames.locate(i)
        if not e.readable or tuple(e.shape) != shape:
            continue
        patterns[frames.pattern(i)] += 1
        facts.exposures[i] = e.meta.get("exposure_s")
        if e.meta.get("temperature_c") is not None:
            temps.append(float(e.meta["temperature_c"]))
        if e.meta.get("binning") is not None:
            bins.append(tuple(e.meta["binning"]))
        facts.dtype = e.dtype
    facts.pattern = patterns.most_common(1)[0][0] if patterns else None
    facts.temperature_c = float(np.mean(temps)) if temps else None
    facts.binning = Counter(bins).most_common(1)[0][0] if bins else None
    return facts


def check_master(m: Master, lights: LightFacts, warnings: list[str]) -> None:
    """Refuse a master that does not fit the lights (size, binning, CFA pattern); warn
    about a dark at another temperature.

    Raises
    ------
    CalibrationError
        One line naming the master's file and the reason.
    """
    what = m.label if m.origin != "given" else f"{m.path} (master {m.kind})"
    lh, lw = lights.shape
    if tuple(m.shape) != (lh, lw):
        raise CalibrationError(f"{what} is {m.shape[1]}x{m.shape[0]}, the lights ({lights.example}) are "
                               f"{lw}x{lh}; a {m.kind} of another size cannot be applied")
    if m.binning is not None and lights.binning is not None and tuple(m.binning) != tuple(lights.binning):
        raise CalibrationError(f"{what} is binned {m.binning[0]}x{m.binning[1]}, the lights "
                               f"{lights.binning[0]}x{lights.binning[1]}")
    if m.pattern is not None and lights.pattern is not None and m.pattern != lights.pattern:
        raise CalibrationError(f"{what} has CFA pattern {m.pattern}, the lights ({lights.example}) "
                               f"{lights.pattern}: another camera, crop or flip; it cannot be applied")
    if m.pattern is not None and lights.pattern is None:
        warnings.append(f"{what} has CFA pattern {m.pattern} but the lights are mono (no BAYERPAT)")
    if m.kind == "dark" and m.temperature_c is not None and lights.temperature_c is not None \
            and abs(m.temperature_c - lights.temperature_c) > TEMPERATURE_TOLERANCE_C:
        warnings.append(f"{what} was taken at {m.temperature_c:.1f} °C, the lights at "
                        f"{lights.temperature_c:.1f} °C: its dark current differs "
                        "(--dark-scaling optimize fits it)")


def _same_exposure(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_EXPOSURE * max(abs(a), abs(b), 1e-9)


def dark_plan(dark: Master | None, bias: Master | None, lights: LightFacts, mode: str,
              warnings: list[str]) -> tuple[DarkMode, dict[int, float]]:
    """How the dark is subtracted and each light's factor ``k`` (before optimisation).

    Raises
    ------
    CalibrationError
        Exposures that cannot be known or matched (see the module docstring).
    """
    if dark is None:
        return "none", {}
    thermal_ok = bias is not None or not dark.includes_offset
    if not dark.includes_offset and bias is None:
        warnings.append(f"{dark.label}: the master dark holds no offset and no bias was given: the lights' "
                        "offset stays in them")
    td = dark.exposure_s
    factors: dict[int, float] = {}
    if mode == "optimize":
        if not thermal_ok:
            raise CalibrationError(f"{dark.label}: dark optimisation scales the dark's thermal signal alone, which "
                                   "needs a bias to take the offset out of the dark; give --bias, or use "
                                   "--dark-scaling auto")
        return "thermal", {i: 1.0 for i in lights.exposures}
    if mode == "off":
        differ = sorted({t for t in lights.exposures.values() if t is not None and td is not None
                         and not _same_exposure(t, td)})
        if differ:
            warnings.append(f"{dark.label}: the dark is {td:g} s, lights of {', '.join(f'{t:g}' for t in differ)} s "
                            "get it unscaled (--dark-scaling off)")
        return ("thermal" if thermal_ok else "whole"), {i: 1.0 for i in lights.exposures}
    # auto
    known = {i: t for i, t in lights.exposures.items() if t is not None}
    if td is None:
        if known:
            t = Counter(known.values()).most_common(1)[0][0]
            raise CalibrationError(
                f"{dark.label}: the dark has no EXPTIME/EXPOSURE, so whether it matches the lights' {t:g} s "
                "cannot be checked nor scaled; use --dark-scaling off to subtract it as it is, or "
                "--dark-scaling optimize (with --bias) to fit its scale")
        warnings.append(f"{dark.label}: neither the dark nor the lights record an exposure; the dark is "
                        "subtracted as it is")
        return ("thermal" if thermal_ok else "whole"), {i: 1.0 for i in lights.exposures}
    unknown = [i for i, t in lights.exposures.items() if t is None]
    if unknown:
        raise CalibrationError(f"light frame {unknown[0]} has no EXPTIME/EXPOSURE while the dark is {td:g} s; "
                               "the dark cannot be matched to it (use --dark-scaling off or optimize)")
    for i, t in known.items():
        factors[i] = 1.0 if _same_exposure(t, td) else t / td
    if any(k != 1.0 for k in factors.values()):
        if not thermal_ok:
            t = next(known[i] for i, k in factors.items() if k != 1.0)
            raise CalibrationError(
                f"{dark.label}: the dark is {td:g} s and lights are {t:g} s; scaling a dark by exposure needs a "
                "bias to separate its offset from its thermal signal: give --bias, or darks of the lights' "
                "exposure, or --dark-scaling off")
    return ("thermal" if thermal_ok else "whole"), factors


def optimize_dark_factor(frames, index: int, bias_src, dark_src, *, dark_has_offset: bool) -> float:
    """The dark factor ``k`` that minimises the variance of ``L − B − k·T`` for light
    ``index`` (``T`` the dark's thermal signal), on a sample of rows.

    Siril searches ``k`` by golden section on a noise estimate; the variance of a linear
    residual is a quadratic in ``k``, so its minimum is the least-squares slope
    ``Σ l·t / Σ t²``, computed here in one pass. Both ``l`` and ``t`` are high-passed
    (each pixel minus the mean of its same-colour neighbours two columns away) so that
    smooth light (sky gradient, vignetting, a galaxy) cannot correlate with smooth dark
    structure, and pixels saturated in the light are left out (a hot pixel clipped at
    full scale would pull ``k`` down).
    """
    e, _ = frames.locate(index)
    h = int(e.shape[0])
    n = min(_OPT_STRIPS, max(1, h // _OPT_ROWS))
    starts = sorted({int(round(s)) & ~1 for s in np.linspace(0, max(h - _OPT_ROWS, 0), n)})
    dtype = np.dtype(e.dtype)
    num = den = 0.0
    for y0 in starts:
        y1 = min(h, y0 + _OPT_ROWS)
        raw = frames.read_raw_rows(index, y0, y1)
        light = np.asarray(raw, dtype=np.float64)
        sat = np.iinfo(dtype).max * 0.98 if dtype.kind in "ui" else 0.98 * float(np.nanmax(light))
        t = np.asarray(dark_src.read_rows(0, y0, y1), dtype=np.float64)
        if bias_src is not None:
            b = np.asarray(bias_src.read_rows(0, y0, y1), dtype=np.float64)
            light -= b
            if dark_has_offset:
                t -= b
        if light.shape[1] < 5:
            continue
        hl = light[:, 2:-2] - 0.5 * (light[:, :-4] + light[:, 4:])
        ht = t[:, 2:-2] - 0.5 * (t[:, :-4] + t[:, 4:])
        bad = ~np.isfinite(raw.astype(np.float64)) | (raw >= sat)
        bad = bad[:, 2:-2] | bad[:, :-4] | bad[:, 4:]
        ok = ~bad & np.isfinite(hl) & np.isfinite(ht)
        num += float(np.sum(hl[ok] * ht[ok]))
        den += float(np.sum(ht[ok] * ht[ok]))
    if not den > 0:
        return 1.0
    return float(min(max(num / den, 0.0), 100.0))


def _defect_key(masters: list[Master | None], hot_sigma: float, cold_sigma: float) -> str:
    parts = []
    for m in masters:
        if m is None:
            parts.append(None)
            continue
        st = os.stat(m.path)
        parts.append([os.path.abspath(m.path), st.st_size, st.st_mtime_ns])
    text = json.dumps({"v": 1, "masters": parts, "hot": hot_sigma, "cold": cold_sigma})
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def defect_file(dark: Master | None, bias: Master | None, flat: Master | None, *, hot_sigma: float,
                cold_sigma: float, cache_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The cached defect list (``.npy``) for these masters, found once and reused."""
    if dark is None and flat is None:
        return None, {"total": 0, "source": "none (no master dark or flat to find defects in)"}
    key = _defect_key([dark, bias, flat], hot_sigma, cold_sigma)
    folder = Path(cache_dir) / "masters"
    path = folder / f"defects-{key[:16]}.npy"
    meta_path = folder / f"defects-{key[:16]}.json"
    if path.exists() and meta_path.exists():
        try:
            info = json.loads(meta_path.read_text())
            np.load(path, mmap_mode="r")
            info["cached"] = True
            return os.fspath(path), info
        except (OSError, ValueError):
            pass
    arr, info = find_defects(dark=dark, bias=bias, flat=flat, hot_sigma=hot_sigma, cold_sigma=cold_sigma)
    info["source"] = " + ".join(n for n, m in (("master dark", dark), ("master flat", flat)) if m is not None)
    folder.mkdir(parents=True, exist_ok=True)
    # the outputs' atomic writer: a kill -9 leaves no temporary the next run keeps
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(info))
    info["cached"] = False
    return os.fspath(path), info


# -- the whole preparation ---------------------------------------------------------------------
def prepare_calibration(frames, options, *, cache_dir: str | os.PathLike[str], run) -> tuple[Any, dict[str, Any]]:
    """Build or reuse the masters, check them against the lights, and return the lights
    with the calibration inserted before demosaicing.

    Parameters
    ----------
    frames : FrameSet
        The lights (raw mono or CFA).
    options : CalibrationOptions
    cache_dir : path
        The run's cache folder; masters go to ``<cache>/masters`` (or
        ``options.cache_dir``/masters).
    run : RunOptions
        Workers and quiet flag for building masters.

    Returns
    -------
    frames : FrameSet
        ``frames.with_raw_steps(CalibrationStep(...))``.
    info : dict
        JSON-ready summary for report.json: masters (origin, frames combined, exposure,
        temperature), dark mode and factors, defects found, warnings.

    Raises
    ------
    CalibrationError
        A master that does not fit the lights, or exposures that cannot be matched.
    """
    t0 = time.perf_counter()
    cache = Path(options.cache_dir) if options.cache_dir else Path(cache_dir)
    lights = light_facts(frames)
    warnings: list[str] = []
    common = dict(cache_dir=cache, method=options.master_method, kappa=tuple(options.master_kappa),
                  memory_limit=options.memory_limit, workers=run.workers, quiet=run.quiet)

    def master(kind: str, inputs, **kw) -> Master | None:
        if not inputs:
            return None
        # checked on the frames' facts before building, so misfits cost no work
        return get_master(kind, inputs, pattern=lights.pattern, check=lambda m: check_master(m, lights, warnings),
                          **common, **kw)

    bias = master("bias", options.bias)

    def check_dark(m: Master) -> None:
        check_master(m, lights, warnings)
        dark_plan(m, bias, lights, options.dark_scaling, [])  # raises on exposures that cannot match

    dark = get_master("dark", options.darks, pattern=lights.pattern, check=check_dark, **common) \
        if options.darks else None
    dark_flat = master("dark-flat", options.dark_flats)
    flat_offset = dark_flat or bias
    if options.flats and flat_offset is None:
        warnings.append("flats without --bias or --dark-flats: their offset is left in them, so the flat "
                        "under-corrects vignetting (unless the flats given are a finished master)")
    flat = master("flat", options.flats, offset=flat_offset)
    if flat is not None and dark_flat is not None and flat.exposure_s is not None \
            and dark_flat.exposure_s is not None and not _same_exposure(flat.exposure_s, dark_flat.exposure_s):
        warnings.append(f"{dark_flat.label}: the dark-flats are {dark_flat.exposure_s:g} s, the flats "
                        f"{flat.exposure_s:g} s; their dark current differs")
    if flat is not None and bias is None and dark is None:
        warnings.append("flat division without --bias or --darks: the lights' offset is divided by the flat too")
    mode, factors = dark_plan(dark, bias, lights, options.dark_scaling, warnings)
    dark_has_offset = bool(dark.includes_offset) if dark is not None else True

    if mode == "thermal" and options.dark_scaling == "optimize":
        bsrc = bias.open() if bias is not None else None
        dsrc = dark.open()
        try:
            for i in list(factors):
                factors[i] = optimize_dark_factor(frames, i, bsrc, dsrc, dark_has_offset=dark_has_offset)
        finally:
            dsrc.close()
            if bsrc is not None:
                bsrc.close()

    defects, cosmetic_info = None, {"total": 0, "source": "off"}
    if options.cosmetic != "off":
        defects, cosmetic_info = defect_file(dark, bias, flat, hot_sigma=options.hot_sigma,
                                             cold_sigma=options.cold_sigma, cache_dir=cache)
        if cosmetic_info.get("total", 0) == 0:
            defects = None

    for w in warnings:
        log.warning("calibration: %s", w)
    n = len(frames)
    step = CalibrationStep(
        shape=lights.shape, pattern=lights.pattern, bias=bias.path if bias else None,
        dark=dark.path if dark else None, flat=flat.path if flat else None, dark_mode=mode,
        dark_has_offset=dark_has_offset, dark_factors=tuple(factors.get(i, 1.0) for i in range(n)),
        flat_cells=flat.cell_means if flat else (1.0, 1.0, 1.0, 1.0), defects=defects)
    ks = np.array([factors[i] for i in sorted(factors)]) if factors else np.array([])
    info: dict[str, Any] = {
        "masters": {k: m.describe() for k, m in (("bias", bias), ("dark", dark), ("dark_flat", dark_flat),
                                                 ("flat", flat)) if m is not None},
        "lights": {"shape": list(lights.shape), "pattern": lights.pattern,
                   "temperature_c": lights.temperature_c},
        "dark": {"mode": mode, "scaling": options.dark_scaling,
                 "factor_min": float(ks.min()) if ks.size else None,
                 "factor_median": float(np.median(ks)) if ks.size else None,
                 "factor_max": float(ks.max()) if ks.size else None},
        "cosmetic": cosmetic_info,
        "warnings": warnings,
        "prepare_s": round(time.perf_counter() - t0, 3),
    }
    if ks.size and ks.size <= 1000:
        info["dark"]["factors"] = [round(float(k), 5) for k in ks]
    log.info("calibration: %s", ", ".join(
        f"{k} ({m['origin']}, {m['n_frames']} frames)" for k, m in info["masters"].items()))
    return frames.with_raw_steps(step), info
