"""Master calibration frames (bias, dark, flat, dark-flat), built band by band.

A master is a rejection stack of calibration frames. There is nothing to register, so the
frames are combined pixel for pixel: for each band of rows every frame's raw rows are read
into an ``(N, h, W)`` float32 buffer and the CPU kernel
(:func:`_skystack_kernels.cpu.combine.combine_band`, the one the stacks use) rejects and
reduces along N. The band height comes from the memory budget
(:func:`skystack.stack.plan.plan_bands`), so memory does not grow with the number of
calibration frames. Masters stay raw mosaics (never demosaiced): calibration happens on
the CFA plane, before debayering.

Recipes (as Siril's and DeepSkyStacker's):

* **bias**: the frames as they are.
* **dark** and **dark-flat**: the raw frames, bias included (``CALOFFS = T`` in the
  header); the bias is taken out when the dark is applied, so that the thermal part alone
  can be scaled by exposure.
* **flat**: each frame minus the offset (the master dark-flat if there is one, else the
  master bias), divided by its own median (flats of different brightness combine), then
  the master is normalised **per CFA colour** to a mean of 1 (``FLATNORM``), so dividing
  by it corrects vignetting and dust without tilting the colour balance towards the
  flat panel's colour.

Masters are cached: :func:`get_master` names each one after the inputs' absolute paths,
sizes and modification times, the recipe and the master it depends on, and a second run
with the same calibration inputs reads the cached FITS instead of rebuilding it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from _skystack_kernels import codes
from _skystack_kernels.cpu.combine import combine_band

from ..errors import BadFrameError, CalibrationError, NoFramesError
from ..io import open_frames
from ..io.cache import ensure_sliceable
from ..io.fits import FitsSource
from ..options import MASTER_KINDS, ReadOptions
from ..output.write import write_fits
from ..runtime.memory import memory_budget
from ..stack.blocks import run_blocks
from ..stack.plan import plan_bands
from ..types import shape_text

log = logging.getLogger("skystack")

KINDS = MASTER_KINDS
IMAGETYP = {"bias": "Master Bias", "dark": "Master Dark", "flat": "Master Flat", "dark-flat": "Master Dark Flat"}
# master_method -> (rejection, reduction) of the combine kernel
METHODS = {"median": ("none", "median"), "sigma": ("sigma", "mean"), "winsorized": ("winsorized", "mean")}
# Bump when a recipe changes: masters cached by an older recipe then stop matching.
RECIPE_VERSION = 1
# Exposures closer than this (relative) are "the same exposure".
SAME_EXPOSURE = 0.01


@dataclass(frozen=True)
class Master:
    """A master calibration frame on disk (float32 FITS, one raw plane) and its facts.

    Attributes
    ----------
    path : str
        The FITS file.
    kind : {"bias", "dark", "flat", "dark-flat"}
    shape : (H, W)
    pattern : str or None
        CFA pattern of row 0 (FITS ``BAYERPAT`` convention), None for mono or unknown.
    exposure_s, temperature_c : float or None
        From EXPTIME/EXPOSURE and CCD-TEMP.
    binning : (x, y) or None
    n_frames : int
        Frames combined (NCOMBINE; 1 for a single frame).
    method : str or None
        How they were combined.
    origin : {"built", "cache", "given", "frames"}
        Built in this run, reused from the cache, or a master the user gave ("frames":
        the facts of calibration frames before their master is built, for checks).
    includes_offset : bool
        Darks: the bias is part of the master (raw darks combined).
    cell_means : tuple of 4 floats
        Flats: the divisor of each 2×2 cell position (row parity, column parity) that
        normalises the master per CFA colour (all 1.0 for masters built here).
    key : str
        Cache key ("" for a given master).
    inputs : tuple of str
        Files combined.
    skipped : tuple of (path, reason)
        Calibration frames left out, and why.
    """

    path: str
    kind: str
    shape: tuple[int, int]
    pattern: str | None = None
    exposure_s: float | None = None
    temperature_c: float | None = None
    binning: tuple[int, int] | None = None
    n_frames: int = 1
    method: str | None = None
    origin: str = "given"
    includes_offset: bool = True
    cell_means: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    key: str = ""
    inputs: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return IMAGETYP[self.kind].lower()

    @property
    def label(self) -> str:
        """How messages name this master: the file given, or the frames it came from."""
        if self.origin == "given" or not self.inputs:
            return self.path
        more = f" and {len(self.inputs) - 1} more" if len(self.inputs) > 1 else ""
        if self.origin == "frames":  # facts of the frames, before the master exists
            return f"{self.inputs[0]}{more} ({self.kind} frames)"
        return f"{self.inputs[0]}{more} (master {self.kind} {self.path})"

    def open(self):
        """A :class:`~skystack.io.fits.FitsSource` on the master (rows read by memory map)."""

        return FitsSource(self.path)

    def read(self) -> np.ndarray:
        """The whole master as float32 ``(H, W)``."""
        src = self.open()
        try:
            return np.asarray(src.read(0), dtype=np.float32)
        finally:
            src.close()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for report.json."""
        d = {k: v for k, v in asdict(self).items() if k not in ("inputs", "skipped", "cell_means")}
        d["shape"] = list(self.shape)
        d["binning"] = list(self.binning) if self.binning else None
        d["n_inputs"] = len(self.inputs)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        if self.kind == "flat":
            d["cell_means"] = [float(v) for v in self.cell_means]
        return d


# -- reading a master's header -----------------------------------------------------------
def load_master(path: str | os.PathLike[str], kind: str, *, origin: str = "given",
                pattern_hint: str | None = None) -> Master:
    """Describe a master FITS (written by skystack or another program).

    A flat that skystack did not normalise gets its per-CFA-colour means measured here
    (one pass over its rows), so that any master flat is applied the same way.

    Raises
    ------
    CalibrationError
        Not a readable single-plane FITS image.
    """

    path = os.fspath(path)
    try:
        src = FitsSource(path)
    except BadFrameError as e:
        raise CalibrationError(f"{path}: cannot be used as a master {kind}: {e.reason}") from e
    try:
        if len(src.shape) != 2 or len(src) != 1:
            raise CalibrationError(
                f"{path}: a master {kind} must be one raw mono or CFA plane; this file holds "
                f"{len(src)} frame(s) of shape {tuple(src.shape)}")
        h = src.header
        meta = src.meta(0)
        pattern = src.bayer
        n = int(h.get("NCOMBINE", 1) or 1)
        method = h.get("CALMETH")
        includes_offset = bool(h.get("CALOFFS", True))
        binning = tuple(meta["binning"]) if "binning" in meta else None
        means = (1.0, 1.0, 1.0, 1.0)
        if kind == "flat" and not h.get("FLATNORM"):
            means = _cell_means(src, pattern or pattern_hint)
        return Master(path=path, kind=kind, shape=(int(src.shape[0]), int(src.shape[1])), pattern=pattern,
                      exposure_s=meta.get("exposure_s"), temperature_c=meta.get("temperature_c"),
                      binning=binning, n_frames=n, method=str(method) if method else None, origin=origin,
                      includes_offset=includes_offset, cell_means=means, key=str(h.get("SKYKEY", "")))
    finally:
        src.close()


def _cell_means(src, pattern: str | None, band: int = 256) -> tuple[float, float, float, float]:
    """Per-2×2-cell divisors normalising a flat to a mean of 1 per CFA colour (one mean
    for all cells of a mono flat), measured strip by strip."""
    h = src.shape[0]
    sums = np.zeros((2, 2))
    counts = np.zeros((2, 2))
    for y0 in range(0, h, band):
        rows = np.asarray(src.read_rows(0, y0, min(h, y0 + band)), dtype=np.float64)
        for r in range(2):
            for c in range(2):
                v = rows[(y0 + r) % 2::2, c::2]
                ok = np.isfinite(v)
                sums[r, c] += v[ok].sum()
                counts[r, c] += ok.sum()
    return _means_from_sums(sums, counts, pattern)


def _means_from_sums(sums: np.ndarray, counts: np.ndarray, pattern: str | None) -> tuple[float, float, float, float]:
    out = np.ones((2, 2))
    if pattern is None:
        m = sums.sum() / max(counts.sum(), 1.0)
        out[:] = m
    else:
        for colour in set(pattern):
            cells = [(r, c) for r in range(2) for c in range(2) if pattern[2 * r + c] == colour]
            m = sum(sums[rc] for rc in cells) / max(sum(counts[rc] for rc in cells), 1.0)
            for rc in cells:
                out[rc] = m
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise CalibrationError(f"the master flat has no positive mean in some CFA colour ({out.ravel().tolist()})")
    return tuple(float(v) for v in out.ravel())  # type: ignore[return-value]


# -- building ---------------------------------------------------------------------------
@dataclass
class _Selection:
    use: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)
    pattern: str | None = None
    exposure_s: float | None = None
    temperature_c: float | None = None
    binning: tuple[int, int] | None = None


def _select(frames, kind: str) -> _Selection:
    """The calibration frames that agree with the majority (size, CFA, and for darks the
    exposure); the others are skipped with their reason."""
    sel = _Selection()
    facts: dict[int, tuple] = {}
    for i in range(len(frames)):
        reason = frames.bad_reason(i)
        if reason is not None:
            sel.skipped.append((frames.name(i), reason))
            continue
        e, _ = frames.locate(i)
        if len(e.shape) != 2:
            sel.skipped.append((frames.name(i), "is an RGB image; calibration frames must be raw mono or CFA planes"))
            continue
        exp = e.meta.get("exposure_s")
        facts[i] = (tuple(e.shape), frames.pattern(i), _round_exposure(exp) if kind in ("dark", "dark-flat") else None)
    if not facts:
        return sel
    common = Counter(facts.values()).most_common(1)[0][0]
    for i, f in facts.items():
        if f == common:
            sel.use.append(i)
            continue
        what = []
        if f[0] != common[0]:
            what.append(f"size {shape_text(f[0])} differs from the others' {shape_text(common[0])}")
        if f[1] != common[1]:
            what.append(f"CFA pattern {f[1]} differs from the others' {common[1]}")
        if f[2] != common[2]:
            what.append(f"exposure {_fmt_exp(f[2])} differs from the others' {_fmt_exp(common[2])}")
        sel.skipped.append((frames.name(i), "; ".join(what)))
    sel.shape, sel.pattern = common[0], common[1]
    metas = [frames.locate(i)[0].meta for i in sel.use]
    exps = [m["exposure_s"] for m in metas if m.get("exposure_s") is not None]
    temps = [m["temperature_c"] for m in metas if m.get("temperature_c") is not None]
    bins = [tuple(m["binning"]) for m in metas if m.get("binning") is not None]
    sel.exposure_s = float(np.median(exps)) if exps and len(exps) == len(metas) else None
    sel.temperature_c = float(np.mean(temps)) if temps else None
    sel.binning = Counter(bins).most_common(1)[0][0] if bins else None
    return sel


def _round_exposure(exp: float | None) -> float | None:
    # 4 significant digits: 1.0001 s and 1 s are one exposure, 30 s and 60 s are not
    return None if exp is None else float(f"{exp:.4g}")


def _fmt_exp(exp: float | None) -> str:
    return "unknown (no EXPTIME)" if exp is None else f"{exp:g} s"


def build_master(kind: str, frames, out: str | os.PathLike[str], *, method: str = "winsorized",
                 kappa: tuple[float, float] = (3.0, 3.0), max_iter: int = 5, offset: Master | None = None,
                 pattern: str | None = None, memory_limit: int | None = None, workers: int | None = None,
                 key: str = "", quiet: bool = True) -> Master:
    """Combine calibration frames into a master FITS, band by band.

    Parameters
    ----------
    kind : {"bias", "dark", "flat", "dark-flat"}
    frames : FrameSet
        The calibration frames (raw planes are read; nothing is demosaiced).
    out : path
        Where to write the master (atomically).
    method : {"median", "sigma", "winsorized"}
        Median, or kappa-sigma / winsorized-sigma rejection then mean.
    kappa : (low, high)
        Rejection thresholds in σ.
    offset : Master, optional
        Flats only: subtracted from every flat frame before it is normalised (the master
        dark-flat, else the master bias).
    pattern : str, optional
        CFA pattern to normalise a flat by when its frames carry none (the lights').
    memory_limit : int, optional
        Bytes for the band buffers (default :func:`skystack.runtime.memory.default_memory_limit`; bounded by the machine's memory).
    workers : int, optional
        Bands combined in parallel (threads; default: all cores).
    key : str
        Cache key written as SKYKEY.

    Returns
    -------
    Master

    Raises
    ------
    CalibrationError
        No usable frame, or an offset master of another size.
    UsageError
        The memory limit cannot hold one band of rows.
    """

    if kind not in KINDS:
        raise ValueError(f"unknown master kind {kind!r} ({', '.join(KINDS)})")
    if method not in METHODS:
        raise ValueError(f"unknown master method {method!r} ({', '.join(METHODS)})")
    sel = _select(frames, kind)
    for name, reason in sel.skipped:
        log.warning("%s: %s; left out of the master %s", name, reason, kind)
    if not sel.use:
        raise CalibrationError(f"no usable {kind} frame among {len(frames)} "
                               f"({'; '.join(f'{p}: {r}' for p, r in sel.skipped[:3])})")
    h, w = sel.shape
    pattern = sel.pattern or pattern
    if offset is not None and tuple(offset.shape) != (h, w):
        raise CalibrationError(f"{offset.path}: the {offset.name} is {shape_text(offset.shape)}, the {kind} frames "
                               f"are {shape_text((h, w))}; cannot subtract it from them")
    n = len(sel.use)
    workers = max(1, int(workers or os.cpu_count() or 1))
    limit = int(memory_budget(memory_limit))
    plan = plan_bands(height=h, width=w, channels=1, n_frames=n, memory_limit=limit, concurrent=workers)
    off_src = offset.open() if offset is not None else None

    # flats: each frame's level above its offset, so flats of any brightness combine
    scale = np.ones(n, dtype=np.float32)
    if kind == "flat":
        off_full = np.asarray(off_src.read(0), dtype=np.float32) if off_src is not None else None
        for j, i in enumerate(sel.use):
            raw = np.asarray(frames.read_raw(i), dtype=np.float32)
            if off_full is not None:
                raw -= off_full
            # every third row and column samples all four CFA cells
            level = float(np.nanmedian(raw[::3, ::3]))
            if not level > 0:
                raise CalibrationError(f"{frames.name(sel.use[j])}: flat frame has no signal above its offset "
                                       f"(median {level:.1f} ADU)")
            scale[j] = 1.0 / level
            del raw
        del off_full

    reject, reduce = METHODS[method]
    rc, dc = codes.REJECT[reject], codes.REDUCE[reduce]
    weights = np.ones(n, dtype=np.float32)
    result = np.full((h, w), np.nan, dtype=np.float32)

    def band(y0: int, y1: int) -> np.ndarray:
        buf = np.empty((n, y1 - y0, w), dtype=np.float32)
        off = np.asarray(off_src.read_rows(0, y0, y1), dtype=np.float32) if off_src is not None else None
        for j, i in enumerate(sel.use):
            rows = frames.read_raw_rows(i, y0, y1)
            if rows.shape != (y1 - y0, w):
                raise CalibrationError(f"{frames.name(i)}: rows {y0}..{y1} came back as {rows.shape}")
            np.copyto(buf[j], rows, casting="unsafe")
            if off is not None:
                buf[j] -= off
            if scale[j] != 1.0:
                buf[j] *= scale[j]
        count = np.empty((y1 - y0, w), dtype=np.int32)
        rej = np.zeros((n, 2), dtype=np.int64)
        combine_band(buf, weights, rc, dc, float(kappa[0]), float(kappa[1]), int(max_iter),
                     result[y0:y1], count, rej)
        return rej

    try:
        rejected = run_blocks(band, plan.bands, n, workers=workers, scheduler=None, label=f"master {kind}",
                              quiet=quiet)
    finally:
        if off_src is not None:
            off_src.close()

    header: dict[str, Any] = {
        "IMAGETYP": (IMAGETYP[kind], "skystack master calibration frame"),
        "CALKIND": (kind, "master kind"),
        "NCOMBINE": (n, "frames combined"),
        "CALMETH": (method, "how the frames were combined"),
        "KAPPALO": (float(kappa[0]), "low rejection kappa"),
        "KAPPAHI": (float(kappa[1]), "high rejection kappa"),
        "CALOFFS": (kind in ("bias", "dark", "dark-flat"), "bias level included"),
        "SKYKEY": (key, "cache key"),
    }
    if sel.exposure_s is not None:
        header["EXPTIME"] = (sel.exposure_s, "[s] exposure of the frames combined")
    if sel.temperature_c is not None:
        header["CCD-TEMP"] = (round(sel.temperature_c, 2), "[C] mean sensor temperature")
    if pattern is not None:
        header["BAYERPAT"] = (pattern, "CFA pattern of row 0")
    if sel.binning is not None:
        header["XBINNING"], header["YBINNING"] = sel.binning
    if kind == "flat":
        means = _means_from_sums(
            *_sums_by_cell(result), pattern)
        cells = np.asarray(means, dtype=np.float32).reshape(2, 2)
        for r in range(2):
            for c in range(2):
                result[r::2, c::2] /= cells[r, c]
        header["FLATNORM"] = ("CFA colour mean" if pattern else "mean", "normalised to 1 per colour")
    history = [f"skystack master {kind}: {n} frames, {method}"]
    if offset is not None:
        history.append(f"offset subtracted: {offset.path}")
    history += [f"input {frames.name(i)}" for i in sel.use]
    n_rej = rejected.sum(axis=0)
    log.info("master %s: %d frames combined (%s), %.3f%% of values rejected", kind, n, method,
             100.0 * float(n_rej.sum()) / max(n * h * w, 1))
    write_fits(out, result, header=header, history=history)
    return Master(path=os.fspath(out), kind=kind, shape=(h, w), pattern=pattern, exposure_s=sel.exposure_s,
                  temperature_c=sel.temperature_c, binning=sel.binning, n_frames=n, method=method, origin="built",
                  includes_offset=kind != "flat", key=key, inputs=tuple(frames.name(i) for i in sel.use),
                  skipped=tuple(sel.skipped))


def _sums_by_cell(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sums = np.zeros((2, 2))
    counts = np.zeros((2, 2))
    for r in range(2):
        for c in range(2):
            v = img[r::2, c::2]
            ok = np.isfinite(v)
            sums[r, c] = float(v[ok].sum(dtype=np.float64))
            counts[r, c] = float(ok.sum())
    return sums, counts


# -- the cache ----------------------------------------------------------------------------
def master_key(kind: str, frames, *, method: str, kappa: tuple[float, float], offset: Master | None,
               pattern: str | None) -> str:
    """Cache key of a master: the recipe and every input file's absolute path, size and
    modification time (a file touched or replaced gives another key)."""
    files = [(os.path.abspath(e.path), list(e.fingerprint or (-1, -1))) for e in frames.entries]
    text = json.dumps({
        "recipe": RECIPE_VERSION, "kind": kind, "method": method, "kappa": [float(k) for k in kappa],
        "files": files, "offset": offset.key or offset.path if offset is not None else None,
        "pattern": pattern if kind == "flat" else None,
    }, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def get_master(kind: str, inputs: Sequence[str], *, cache_dir: str | os.PathLike[str], method: str = "winsorized",
               kappa: tuple[float, float] = (3.0, 3.0), offset: Master | None = None, pattern: str | None = None,
               memory_limit: int | None = None, workers: int | None = None, quiet: bool = True,
               check: Callable[[Master], None] | None = None) -> Master:
    """The master for ``inputs``: a given master, the cached one, or a newly built one.

    ``inputs`` naming one FITS file of floating-point data is taken as a finished master
    (used as it is; a flat is normalised per CFA colour when applied). Anything else —
    several frames, or one integer (raw) frame — is combined with :func:`build_master`
    into ``cache_dir/masters/``, unless a master with the same key is there already.

    ``check`` is called with the master's facts (size, CFA pattern, exposure, ...) before
    anything is built, so that frames which cannot fit the lights cost no work; it raises
    to refuse them.

    Raises
    ------
    CalibrationError
        Nothing readable, or no usable frame.
    """

    try:
        frames = open_frames(list(inputs), options=ReadOptions(debayer="none"))
    except NoFramesError as e:
        raise CalibrationError(f"{kind}: {e}") from e
    if len(frames) == 1 and frames.entries[0].kind == "fits" and frames.entries[0].readable \
            and np.dtype(frames.entries[0].dtype).kind == "f":
        m = load_master(frames.entries[0].path, kind, origin="given", pattern_hint=pattern)
        if check is not None:
            check(m)
        log.info("using %s as the master %s", m.path, kind)
        return m
    sel = _select(frames, kind)
    names = tuple(frames.name(i) for i in sel.use)
    if check is not None and sel.use:
        check(Master(path=names[0], kind=kind, shape=sel.shape, pattern=sel.pattern or pattern,
                     exposure_s=sel.exposure_s, temperature_c=sel.temperature_c, binning=sel.binning,
                     n_frames=len(sel.use), origin="frames", inputs=names))
    key = master_key(kind, frames, method=method, kappa=kappa, offset=offset, pattern=pattern)
    folder = Path(cache_dir) / "masters"
    path = folder / f"master-{kind}-{key[:16]}.fits"
    if path.exists():
        try:
            m = load_master(path, kind, origin="cache", pattern_hint=pattern)
        except CalibrationError:
            m = None
        if m is not None and m.key == key:
            log.info("master %s: reusing %s (%d frames)", kind, path, m.n_frames)
            return replace(m, inputs=names, skipped=tuple(sel.skipped))
    frames = ensure_sliceable(frames, folder / "decoded")
    return build_master(kind, frames, path, method=method, kappa=kappa, offset=offset, pattern=pattern,
                        memory_limit=memory_limit, workers=workers, key=key, quiet=quiet)
