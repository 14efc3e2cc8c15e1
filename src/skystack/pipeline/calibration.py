"""What ``skystack master``, ``skystack calibrate`` and ``skystack colour`` do.

:mod:`skystack.api` calls these (``master``, ``calibrate``, ``colour``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..calibrate.apply import CalibrationStep, prepare_calibration
from ..calibrate.colour import colour_balance
from ..calibrate.masters import KINDS, Master, build_master, get_master, master_key
from ..errors import BadFrameError, OutputError, UsageError
from ..io import ensure_sliceable, input_files, open_frames, remove_cache
from ..io.cache import cache_summary
from ..jobs import CalibrateJob
from ..options import IMAGE_EXTENSIONS, ReadOptions
from ..output.guard import guard_outputs
from ..output.products import preview_path
from ..output.write import FITS_SUFFIXES, write_fits, write_image, write_json, write_preview
from ..runtime.executor import run_tasks
from ..runtime.progress import Progress

log = logging.getLogger("skystack")

PathLike = str | os.PathLike[str]


def _paths(x: PathLike | Sequence[PathLike] | None) -> tuple[str, ...]:
    if not x:
        return ()
    if isinstance(x, (str, os.PathLike)):
        return (os.fspath(x),)
    return tuple(os.fspath(p) for p in x)


def make_master(kind: str, inputs: PathLike | Sequence[PathLike], output: PathLike, *,
                method: str = "winsorized", kappa: tuple[float, float] = (3.0, 3.0),
                bias: PathLike | Sequence[PathLike] = (), dark_flats: PathLike | Sequence[PathLike] = (),
                memory_limit: int | None = None, workers: int | None = None, cache_dir: PathLike | None = None,
                quiet: bool = True, keep_cache: bool = False) -> Master:
    """Combine calibration frames into one master FITS at ``output``.

    Parameters
    ----------
    kind : {"bias", "dark", "flat", "dark-flat"}
    inputs : frames (files, folders, globs, list files)
    output : path of the master FITS (replaced atomically; never one of the inputs)
    method, kappa : the combination (see :func:`~skystack.calibrate.masters.build_master`)
    bias, dark_flats : flats only: frames or a master to take the flats' offset from
        (the dark-flats if given, else the bias)
    cache_dir : where the offset's master is built or cached (default: ``.skystack-cache``
        beside the output, removed after a successful run unless ``keep_cache``)

    Raises
    ------
    CalibrationError, OutputError, UsageError
    """
    if kind not in KINDS:
        raise UsageError(f"unknown master kind {kind!r} ({', '.join(KINDS)})")
    out = Path(output)
    if out.suffix.lower() not in FITS_SUFFIXES:
        raise UsageError(f"{out}: a master is written as FITS (.fits, .fit or .fts)")
    cache = Path(cache_dir) if cache_dir else (out.parent / ".skystack-cache")
    guard_outputs([("master", out)], input_files(list(_paths(inputs)) + list(_paths(bias)) + list(_paths(dark_flats))),
                  folders=[("cache", cache)])
    frames = open_frames(list(_paths(inputs)), options=ReadOptions(debayer="none"))
    offset = None
    if kind == "flat":
        off_inputs, off_kind = (_paths(dark_flats), "dark-flat") if dark_flats else (_paths(bias), "bias")
        if off_inputs:
            offset = get_master(off_kind, off_inputs, cache_dir=cache, method=method, kappa=kappa,
                                memory_limit=memory_limit, workers=workers, quiet=quiet)
        else:
            log.warning("master flat without --bias or --dark-flats: the flats' offset stays in the master")
    elif bias or dark_flats:
        raise UsageError(f"--bias/--dark-flats only apply to a master flat, not a master {kind}")
    frames = ensure_sliceable(frames, cache / "masters" / "decoded")
    pattern = next((frames.pattern(i) for i in range(len(frames)) if frames.is_readable(i)), None)
    key = master_key(kind, frames, method=method, kappa=kappa, offset=offset, pattern=pattern)
    master = build_master(kind, frames, out, method=method, kappa=kappa, offset=offset, pattern=pattern,
                          memory_limit=memory_limit, workers=workers, key=key, quiet=quiet)
    log.info("master %s: %s", kind, cache_summary(remove_cache(cache, keep=keep_cache or cache_dir is not None)))
    return master


def _out_name(frames, i: int) -> str:
    e, k = frames.locate(i)
    stem = Path(e.path).name
    for ext in sorted((".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz"), key=len, reverse=True):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        stem = Path(stem).stem
    return f"{stem}_cal.fits" if e.n_frames == 1 else f"{stem}_{k:05d}_cal.fits"


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def calibrate_frames(lights: PathLike | Sequence[PathLike], out_folder: PathLike, job: CalibrateJob
                     ) -> tuple[list[Path], dict[str, Any]]:
    """Calibrate every light and write it as float32 FITS into ``out_folder``.

    Each output is ``<name>_cal.fits`` (a CFA mosaic keeping BAYERPAT, or with
    ``job.read.debayer == "auto"`` a 3-plane RGB image); the inputs are never written. A
    ``calibration.json`` beside them records the masters and factors used, and the cache
    (``OUTFOLDER/.skystack-cache``, removed at the end unless ``job.run.keep_cache``).
    The calibrated lights are frames, not products: a later ``skystack stack OUTFOLDER``
    reads them.

    Returns
    -------
    (paths written, calibration info)

    Raises
    ------
    CalibrationError, NoFramesError, OutputError
    """
    calibration = job.calibration
    if job.memory_limit is not None:
        calibration = replace(calibration, memory_limit=job.memory_limit)
    if not calibration.active:
        raise UsageError("nothing to calibrate with: give --bias, --darks, --flats and/or --dark-flats")
    folder = Path(out_folder)
    cache = Path(job.run.cache_dir) if job.run.cache_dir else folder / ".skystack-cache"
    inputs = input_files(list(_paths(lights))) + input_files(
        [*calibration.bias, *calibration.darks, *calibration.flats, *calibration.dark_flats])
    # calibrated frames among the lights (or darks, flats) would be read as more of them by
    # the next run over that folder: `calibrate lights -o lights` made a second run calibrate
    # ten frames, five of them twice, and a stack of the folder would mix both
    if any(_same_folder(Path(f).parent, folder) for f in inputs):
        raise UsageError(f"-o {out_folder}: holds input frames; the calibrated frames would be read as "
                         "inputs by the next run over it: choose another folder (e.g. a 'calibrated' subfolder)")
    # the folder itself first (a file in its place, no permission), then, once the frames'
    # headers tell their output names, every file written into it
    guard_outputs([("report", folder / "calibration.json")], inputs, folders=[("cache", cache)])
    frames = open_frames(list(_paths(lights)), options=job.read)
    for idx, path, reason in frames.problems:
        log.warning("%s: %s", path, reason)
    names = [_out_name(frames, i) for i in range(len(frames))]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise OutputError(f"{folder / dup}: two inputs would be written under this name; calibrate them separately")
    guard_outputs([("calibrated frame", folder / n) for n in names], inputs)
    folder.mkdir(parents=True, exist_ok=True)
    frames = ensure_sliceable(frames, cache)
    run = job.run
    frames, info = prepare_calibration(frames, calibration, cache_dir=cache, run=run)
    masters = info["masters"]
    written: dict[int, Path] = {}
    skipped: list[dict[str, str]] = []

    def one(i: int) -> tuple[Path | None, str | None]:
        if not frames.is_readable(i):
            return None, frames.bad_reason(i)
        try:
            img = frames.read(i)
        except BadFrameError as e:
            return None, e.reason
        meta = frames.meta(i)
        header: dict[str, Any] = {"IMAGETYP": ("Light Frame", "calibrated by skystack")}
        if meta.get("exposure_s") is not None:
            header["EXPTIME"] = (float(meta["exposure_s"]), "[s] exposure time")
        if meta.get("temperature_c") is not None:
            header["CCD-TEMP"] = (float(meta["temperature_c"]), "[C] sensor temperature")
        pattern = frames.pattern(i)
        if img.ndim == 2 and pattern is not None:
            header["BAYERPAT"] = (pattern, "CFA pattern of row 0")
        header["CALSTAT"] = ("".join(c for k, c in (("bias", "B"), ("dark", "D"), ("flat", "F")) if k in masters),
                             "calibrations applied")
        k = frames_step_factor(frames, i)
        if k is not None:
            header["DARKFACT"] = (round(k, 5), "dark scaling factor")
        history = [f"skystack calibrate: {frames.name(i)}"]
        history += [f"{kind}: {m['path']}" for kind, m in masters.items()]
        out = folder / names[i]
        write_fits(out, img, header=header, history=history, product=False)  # a frame, for the next stack
        return out, None

    bar = Progress(len(frames), "calibrate", run.quiet)

    def on_result(i: int, res: tuple[Path | None, str | None]) -> None:
        path, reason = res
        if path is not None:
            written[i] = path
        else:
            skipped.append({"frame": frames.name(i), "reason": reason or "unreadable"})
            log.warning("%s: %s; skipped", frames.name(i), reason)
        bar.update()

    try:
        run_tasks(one, [(i,) for i in range(len(frames))], workers=max(1, run.workers or os.cpu_count() or 1),
                  scheduler=None, on_result=on_result)
    finally:
        bar.close()
    info["written"] = len(written)
    info["skipped"] = skipped
    info["cache"] = remove_cache(cache, keep=run.keep_cache or run.cache_dir is not None)
    write_json(folder / "calibration.json", info)
    return [written[i] for i in sorted(written)], info


def frames_step_factor(frames, i: int) -> float | None:
    """The dark factor the calibration step of ``frames`` applies to light ``i``."""
    for step in frames.spec.raw_steps:
        if isinstance(step, CalibrationStep) and step.dark_mode == "thermal":
            return step.factor(i)
    return None


def colour_balance_file(image: PathLike, output: PathLike, *, neutralize: bool = False,
                        white_balance: str | Sequence[float] = "none", camera_from: PathLike | None = None,
                        preview: bool = True) -> tuple[list[Path], dict[str, Any]]:
    """Colour-balance a stacked RGB image file (FITS 3-plane or TIFF) into ``output``.

    ``camera_from``: a camera RAW file whose white balance ``"camera"`` uses.

    Returns
    -------
    (paths written, info)
    """
    out = Path(output)
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UsageError(f"-o {out}: unknown output format {out.suffix or '(none)'} (use .fits, .tif or .png)")
    files = [("image", out)] + ([("preview", preview_path(out))] if preview and out.suffix.lower() != ".png" else [])
    guard_outputs(files, [os.fspath(image)] + ([os.fspath(camera_from)] if camera_from else []))
    src = open_frames([os.fspath(image)], options=ReadOptions(debayer="auto"))
    if len(src) != 1 or not src.is_readable(0):
        raise UsageError(f"{image}: expected one readable image")
    img = src.read(0)
    if img.ndim != 3:
        raise UsageError(f"{image}: is not an RGB image (shape {img.shape})")
    meta = None
    if camera_from is not None:
        cam = open_frames([os.fspath(camera_from)])
        meta = cam.meta(0)
    elif isinstance(white_balance, str) and white_balance == "camera":
        meta = src.meta(0)
    balanced, info = colour_balance(img, neutralize=neutralize, white_balance=white_balance, meta=meta)
    header = {"COLORBAL": ("neutralized" if neutralize else "none", "background neutralisation"),
              "WBMODE": (info["white_balance"], "white balance")}
    for c, f in zip("RGB", info["factors"]):
        header[f"WB_{c}"] = (round(float(f), 6), f"white balance factor {c}")
    written = [write_image(out, balanced, header=header, history=[f"skystack colour of {image}"])]
    if preview and out.suffix.lower() != ".png":
        written.append(write_preview(preview_path(out), balanced))
    return written, info


__all__ = ["calibrate_frames", "colour_balance_file", "frames_step_factor", "make_master"]
