"""Every option of every command, defined once.

One small frozen, keyword-only dataclass per stage; each stage receives its own options
only, and there is no global settings object. A field's default, its choices (the
``Literal`` in its annotation, or ``choices=`` in its :func:`flag` metadata), its help
text and its command-line flag live here and nowhere else: the CLI
(:mod:`skystack.cli`) builds its arguments from these fields and the API
(:mod:`skystack.api`) builds these dataclasses from keyword arguments with
:func:`build`, so a default cannot drift between them (``tests/test_options.py`` pins
that). Values are checked in ``__post_init__``, before any frame is read.

The jobs (:mod:`skystack.jobs`: :class:`~skystack.jobs.StackJob`, ``LuckyJob``, ...) say
which option groups each command takes. The machinery (flag metadata, choice lists, value
parsers, the ``--keep`` rule) is in :mod:`skystack.optionfields`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Literal

from _skystack_kernels import codes

from .errors import UsageError
from .optionfields import (  # noqa: F401  (re-exported: callers import options from here)
    Checked, Flag, KeepRule, MinRegistered, api_only, build, build_job, choices, cli_flag, default_of,
    finite, flag, job_groups, keywords, min_registered_text, parse_drizzle, parse_floats, parse_frame_size,
    parse_keep, parse_memory, parse_min_registered, parse_white_balance, paths, positive_int, public_name)
from .types import Model

# -- choice lists ---------------------------------------------------------------------
# The stacking methods: auto, the two plain reductions, then every rejection method the
# kernels know (kernels/_skystack_kernels/codes.py is the one table of them).
STACK_METHODS: tuple[str, ...] = ("auto", "mean", "median") + tuple(m for m in codes.REJECT if m != "none")
# --method auto by the number of frames stacked: winsorized σ-clipping from this many
# frames, the median from AUTO_MEDIAN_FROM, the plain mean below (benchmarks/default_method.py:
# measurements and reasons in the README's "Stacking" section).
AUTO_WINSORIZED_FROM = 6
AUTO_MEDIAN_FROM = 3
# --quality-weight: beyond this the best frame alone carries a lucky stack
_MAX_QUALITY_WEIGHT = 100.0


def auto_method(n_frames: int) -> str:
    """What ``--method auto`` stacks ``n_frames`` frames with."""
    if n_frames >= AUTO_WINSORIZED_FROM:
        return "winsorized"
    if n_frames >= AUTO_MEDIAN_FROM:
        return "median"
    return "mean"
MASTER_METHODS: tuple[str, ...] = ("median", "sigma", "winsorized")
MASTER_KINDS: tuple[str, ...] = ("bias", "dark", "flat", "dark-flat")
INTERPOLATIONS: tuple[str, ...] = ("cubic", "lanczos", "bilinear")
# What an output image may be (the writers choose by extension).
IMAGE_EXTENSIONS: tuple[str, ...] = (".fits", ".fit", ".fts", ".tif", ".tiff", ".png")

RegisterMethod = Literal["auto", "stars", "orb"]
Normalization = Literal["auto", "none", "add", "mul", "addscale", "mulscale"]
Weighting = Literal["none", "noise", "stars", "fwhm"]
DebayerMethod = Literal["bilinear", "ea", "vng"]
Backend = Literal["auto", "cpu", "cupy", "cv2cuda"]
LuckyBackend = Literal["auto", "cpu", "cupy"]  # cv2.cuda has nothing for lucky imaging
TiffDtype = Literal["float32", "uint16"]
StretchKind = Literal["none", "linear", "midtone", "asinh", "auto"]
BenchBackend = Literal["all", "cpu", "cupy", "cv2cuda"]


# -- stages ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ReadOptions(Checked):
    """How frames are decoded (demosaicing of colour-filter-array frames)."""

    debayer: Literal["auto", "none"] = field(default="auto", metadata=flag(
        "--no-debayer", action="store_const", const="none",
        help="keep CFA (Bayer) mosaics as mono data instead of demosaicing them"))
    debayer_method: DebayerMethod = field(default="bilinear", metadata=flag(
        "--debayer-method",
        help="demosaicing of CFA frames: bilinear (unbiased colours of small stars), ea (edge-aware), vng"))
    bayer_override: str | None = field(default=None, metadata=flag(
        "--bayer", name="bayer", metavar="PATTERN", parse=str,
        help="force a CFA pattern (RGGB, BGGR, GRBG, GBRG) for raw mosaics"))


@dataclass(frozen=True, kw_only=True)
class RegisterOptions(Checked):
    """Detection, matching and transform estimation (phase 1)."""

    method: RegisterMethod = field(default="auto", metadata=flag(
        "--register", name="register",
        help="stars: triangle star matching (deep sky); orb: ORB keypoints (Moon, Sun, landscapes); "
             "auto: stars, falling back to orb frame by frame"))
    model: Model = field(default="similarity", metadata=flag(
        "--model", help="transform model: similarity (shift + rotation + uniform scale), shift or affine"))
    reference: int | None = field(default=None, metadata=flag(
        "--reference", metavar="N", parse=int,
        help="reference frame index, 0-based (default: the best-scored of the first few frames)"))
    reference_candidates: int = 5  # how many leading frames compete to be the reference
    max_stars: int = 100  # brightest stars kept per frame for matching
    detect_sigma: float = 5.0  # detection threshold above the local background, in noise σ
    ransac_px: float = 2.0  # RANSAC inlier tolerance in reference pixels
    min_matches: int = 6  # fewer inliers than this: registration failed
    max_residual_px: float = 1.0  # an inlier RMS above this: registration failed
    faint: bool = field(default=False, metadata=flag(
        "--faint", action="store_true", help="ORB: adaptive-threshold + erosion pre-treatment for faint frames"))
    orb_features: int = 3000
    min_registered: str = field(default="50%", metadata=flag(
        "--min-registered", metavar="N|FRACTION", parse=min_registered_text,
        help="fail (exit 5) when fewer frames than this register: a fraction of all frames (0.5, 50%%) or a "
             "count (3); 0 for no minimum"))

    def check(self) -> None:
        if self.reference is not None and (isinstance(self.reference, bool) or not isinstance(self.reference, int)
                                           or self.reference < 0):
            raise UsageError(f"--reference {self.reference!r}: expected a frame index of at least 0")
        object.__setattr__(self, "min_registered", min_registered_text(self.min_registered))
        positive_int(self.reference_candidates, "reference_candidates", allow_none=False)
        positive_int(self.max_stars, "max_stars", allow_none=False)
        finite(self.detect_sigma, "detect_sigma", lo=0, lo_open=True)
        finite(self.ransac_px, "ransac_px", lo=0, lo_open=True)

    @property
    def min_registered_rule(self) -> MinRegistered:
        return parse_min_registered(self.min_registered)


@dataclass(frozen=True, kw_only=True)
class SelectOptions(Checked):
    """Which registered frames are kept (``--keep`` and quality thresholds)."""

    keep: str | None = field(default=None, metadata=flag(
        "--keep", metavar="RULE", help="keep the best frames: 80%%, best:80%%, 200 or best:200 (default: all)"))
    max_fwhm_px: float | None = field(default=None, metadata=flag(
        "--max-fwhm", name="max_fwhm", metavar="PX", parse=float,
        help="drop frames whose median star FWHM is above this many pixels"))
    max_roundness: float | None = field(default=None, metadata=flag(
        "--max-roundness", metavar="R", parse=float,
        help="drop frames whose stars are more elongated (1 - minor/major; 0 is round)"))
    min_stars: int | None = field(default=None, metadata=flag(
        "--min-stars", metavar="N", parse=int, help="drop frames with fewer detected stars"))

    def check(self) -> None:
        parse_keep(self.keep)
        if self.max_fwhm_px is not None:
            finite(self.max_fwhm_px, "--max-fwhm", lo=0, lo_open=True)
        if self.max_roundness is not None:
            finite(self.max_roundness, "--max-roundness", lo=0, hi=1)
        if self.min_stars is not None and (isinstance(self.min_stars, bool) or self.min_stars < 0):
            raise UsageError(f"--min-stars {self.min_stars!r}: expected a whole number of at least 0")


@dataclass(frozen=True, kw_only=True)
class StackOptions(Checked):
    """Phase 2: warp, normalise, reject, reduce."""

    method: str = field(default="auto", metadata=flag(
        "--method", choices=STACK_METHODS,
        help=f"auto: winsorized σ-clipping (--kappa, default 3 3) from {AUTO_WINSORIZED_FROM} frames, the median "
             f"from {AUTO_MEDIAN_FROM}, the mean below; mean (streamed: fastest, no rejection), median, or a rejection "
             "method followed by the mean of what is left: " + ", ".join(STACK_METHODS[3:])))
    kappa_low: float = field(default=3.0, metadata=flag(
        "--kappa", name="kappa", nargs=2, metavar=("LOW", "HIGH"), pair="kappa_high", parse=float,
        help="rejection parameters: σ multiples (sigma, winsorized, mad, linear-fit), fractions "
             "(percentile), alpha and max outlier fraction (gesd), counts (minmax)"))
    kappa_high: float = 3.0
    max_iter: int = 5
    normalization: Normalization = field(default="auto", metadata=flag(
        "--norm", name="norm",
        help="normalisation to the reference frame: auto is additive for mean and median, additive + "
             "scaling for rejection methods"))
    weights: Weighting = field(default="none", metadata=flag(
        "--weights", help="frame weights: none, noise (1/σ²), stars (star count) or fwhm (1/FWHM²)"))
    interpolation: Literal["cubic", "lanczos", "bilinear"] = field(default="cubic", metadata=flag(
        "--interpolation",
        help="warp interpolation: cubic (bicubic, as Siril's register), lanczos (Lanczos-4: a little sharper, "
             "3.7x the warp cost, slightly higher noise), bilinear (cheapest, smooths noise and stars)"))
    memory_limit: int | None = field(default=None, metadata=flag(
        "--memory-limit", metavar="SIZE", parse=parse_memory,
        help="working memory beyond the interpreter, e.g. 256M or 2G (default: half the available RAM, "
             "at most 8 GiB)"))
    tile_rows: int | None = field(default=None, metadata=flag(
        "--tile-rows", parse=int, hidden=True, help="force the tile height, rows (tests)"))
    strip_cols: int | None = field(default=None, metadata=flag(
        "--strip-cols", parse=int, hidden=True, help="cut the columns into strips of about this width (tests)"))
    drizzle: float | None = field(default=None, metadata=flag(
        "--drizzle", metavar="SCALE", parse=parse_drizzle,
        help="drizzle onto a SCALE times finer grid (e.g. 2) instead of warping: for undersampled, dithered "
             "subs (stars under ~2 px FWHM); colour (CFA) frames are drizzled from their mosaics "
             "(Bayer drizzle)"))
    pixfrac: float = field(default=0.7, metadata=flag(
        "--pixfrac", metavar="F", parse=float,
        help="drizzle drop size, fraction of an input pixel (smaller: sharper, needs more frames; "
             "1 for colour frames with few subs)"))

    def check(self) -> None:
        for v, what in ((self.kappa_low, "--kappa LOW"), (self.kappa_high, "--kappa HIGH")):
            finite(v, what, lo=0)
        positive_int(self.max_iter, "max_iter", allow_none=False)
        if self.drizzle is not None and not (math.isfinite(self.drizzle) and 1.0 <= self.drizzle <= 4.0):
            raise UsageError(f"--drizzle {self.drizzle}: expected a scale in [1, 4], e.g. 1.5, 2 or 3")
        finite(self.pixfrac, "--pixfrac", lo=0, hi=1, lo_open=True)
        if self.memory_limit is not None and (isinstance(self.memory_limit, bool) or self.memory_limit < 1):
            raise UsageError(f"--memory-limit {self.memory_limit!r}: expected a positive size such as 256M")
        positive_int(self.tile_rows, "--tile-rows")
        positive_int(self.strip_cols, "--strip-cols")

    def for_frames(self, n_frames: int) -> StackOptions:
        """These options with ``method="auto"`` resolved for ``n_frames`` frames (the
        other properties need a concrete method). With ``--drizzle``, auto is the classic
        drizzle (the weighted mean of the drops): rejection compares each frame's own drops,
        which on undersampled stars differ with the subpixel phase (measured: star
        half-light radii grew past the plain stack's under winsorized clipping)."""
        if self.method != "auto":
            return self
        return dataclasses.replace(self, method="mean" if self.drizzle else auto_method(n_frames))

    @property
    def reject(self) -> str:
        if self.method == "auto":
            raise ValueError("method 'auto' is resolved by for_frames(n) before stacking")
        return "none" if self.method in ("mean", "median") else self.method

    @property
    def norm(self) -> str:
        """The normalisation actually applied: ``auto`` matches sky levels (additive) for a
        plain mean or median, and levels and spread (additive + scaling, Siril's default) for
        rejection stacks, whose outlier tests assume comparable frames."""
        if self.normalization != "auto":
            return self.normalization
        return "add" if self.reject == "none" else "addscale"

    @property
    def reduction(self) -> str:
        return "median" if self.method == "median" else "mean"


@dataclass(frozen=True, kw_only=True)
class CalibrationOptions(Checked):
    """Calibration of the lights before debayering (``--bias/--darks/--flats``).

    Each of ``bias``/``darks``/``flats``/``dark_flats`` is a list of inputs (frames to build
    a master from: files, folders, globs, list files) or a single master FITS file.
    """

    bias: tuple[str, ...] = field(default=(), metadata=flag(
        "--bias", nargs="+", metavar="B", parse=paths, help="bias/offset frames or a master bias"))
    darks: tuple[str, ...] = field(default=(), metadata=flag(
        "--darks", nargs="+", metavar="D", parse=paths, help="dark frames or a master dark"))
    flats: tuple[str, ...] = field(default=(), metadata=flag(
        "--flats", nargs="+", metavar="F", parse=paths, help="flat frames or a master flat"))
    dark_flats: tuple[str, ...] = field(default=(), metadata=flag(
        "--dark-flats", nargs="+", metavar="DF", parse=paths, help="dark-flat frames or a master dark-flat"))
    dark_scaling: Literal["auto", "off", "optimize"] = field(default="auto", metadata=flag(
        "--dark-scaling",
        help="scale the dark by exposure time (auto; needs --bias when exposures differ), not at all (off), "
             "or fit the factor per light (optimize, needs --bias)"))
    cosmetic: Literal["auto", "off"] = field(default="auto", metadata=flag(
        "--cosmetic", help="repair hot/cold pixels found in the master dark and flat (auto) or not (off)"))
    hot_sigma: float = field(default=5.0, metadata=flag(
        "--hot-sigma", metavar="K", parse=float, help="a dark pixel this many σ above its neighbourhood is hot"))
    cold_sigma: float = field(default=5.0, metadata=flag(
        "--cold-sigma", metavar="K", parse=float, help="a dark pixel this many σ below its neighbourhood is cold"))
    master_method: str = field(default="winsorized", metadata=flag(
        "--master-method", choices=MASTER_METHODS,
        help="how calibration frames are combined into masters: median, or sigma / winsorized-sigma clipping "
             "then mean"))
    cache_dir: str | None = None  # where masters are cached (default: the run's cache dir)
    master_kappa: tuple[float, float] = (3.0, 3.0)  # rejection of sigma/winsorized masters
    memory_limit: int | None = None  # bytes for building masters; None: the run's limit

    def check(self) -> None:
        # above 1000 σ nothing is hot; 1e300 overflowed float32 (NumPy warnings): --cosmetic off
        # is the way to repair nothing
        for value, what in ((self.hot_sigma, "--hot-sigma"), (self.cold_sigma, "--cold-sigma")):
            finite(value, what, lo=0, hi=1000, lo_open=True, hint="--cosmetic off repairs no pixel")

    @property
    def active(self) -> bool:
        return bool(self.bias or self.darks or self.flats or self.dark_flats)


@dataclass(frozen=True, kw_only=True)
class ColourOptions(Checked):
    """Colour balance of a stacked colour image (``--neutralize``, ``--white-balance``).

    ``white_balance``: "none"; "camera" (the camera's multipliers from RAW metadata);
    "auto" (the median star made white); or three factors (R, G, B).
    """

    neutralize: bool = field(default=False, metadata=flag(
        "--neutralize", "--neutralise", action="store_true", help="make the sky background grey in a colour stack"))
    white_balance: str | tuple[float, float, float] = field(default="none", metadata=flag(
        "--white-balance", metavar="WB", parse=parse_white_balance,
        help="none, auto (the median star made white), camera (the RAW file's multipliers) or three "
             "factors R,G,B such as 1.9,1,1.4"))

    def check(self) -> None:
        object.__setattr__(self, "white_balance", parse_white_balance(self.white_balance))

    @property
    def active(self) -> bool:
        return self.neutralize or self.white_balance != "none"


@dataclass(frozen=True, kw_only=True)
class OutputOptions(Checked):
    """What is written and how."""

    output: str | None = None  # the image; None: nothing written (the API returns the image)
    report: str | None = field(default=None, metadata=flag(
        "--report", metavar="R.json", parse=os.fspath, help="report path (default: OUT.report.json)"))
    tiff_dtype: TiffDtype = field(default="float32", metadata=flag(
        "--tiff-dtype", help="TIFF sample type: float32 (the stack's values) or uint16 (scaled to 0-65535)"))
    preview: bool = field(default=True, metadata=flag(
        "--no-preview", action="store_false", help="no stretched PNG preview (nor plots)"))
    coverage: bool = field(default=False, metadata=flag(
        "--coverage", action="store_true", help="also write OUT.coverage.fits (frames per pixel)"))

    def check(self) -> None:
        for value, what in ((self.output, "-o"), (self.report, "--report")):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UsageError(f"{what} {value!r}: expected a file name")
        if self.output is not None and os.path.splitext(self.output)[1].lower() not in IMAGE_EXTENSIONS:
            ext = os.path.splitext(self.output)[1] or "(none)"
            raise UsageError(f"-o {self.output}: unknown output format {ext} (use .fits, .tif or .png)")


@dataclass(frozen=True, kw_only=True)
class RunOptions(Checked):
    """Execution: where and how the work runs."""

    workers: int | None = field(default=None, metadata=flag(
        "--workers", metavar="N", parse=int, help="parallel workers (default: all cores)"))
    scheduler: str | None = field(default=None, metadata=flag(
        "--scheduler", metavar="URL",
        help="run on an existing dask.distributed cluster, e.g. tcp://host:8786 (frames and output on a "
             "path every worker sees)"))
    backend: Backend = field(default="auto", metadata=flag(
        "--backend",
        help="where frames are warped and combined: auto (a CUDA GPU when usable, else the CPU), cpu, "
             "cupy (CuPy + numba.cuda kernels) or cv2cuda (OpenCV built with CUDA)"))
    resume: bool = field(default=False, metadata=flag(
        "--resume", action="store_true", help="continue an interrupted run of the same command from its journal"))
    quiet: bool = field(default=False, metadata=api_only(
        "no progress bars or information; warnings only (the CLI's -q)"))
    cache_dir: str | None = field(default=None, metadata=api_only(
        "where decoded frames and masters are cached (default: .skystack-cache next to the output, removed "
        "after a successful run unless keep_cache; a folder given here is kept)", parse=os.fspath))
    keep_cache: bool = field(default=False, metadata=flag(
        "--keep-cache", action="store_true",
        help="keep .skystack-cache (frames decoded from video/RAW/compressed files, calibration masters) after "
             "a successful run, for the next run on the same inputs"))

    def check(self) -> None:
        positive_int(self.workers, "--workers")
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler.strip()):
            raise UsageError(f"--scheduler {self.scheduler!r}: expected an address such as tcp://host:8786 "
                             "(leave the option out to run locally)")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir.strip()):
            raise UsageError(f"cache_dir {self.cache_dir!r}: expected a folder")


MAX_WAVELET_GAIN = 100.0
MIN_AP_SPACING = 2.0
MIN_ASINH_BETA, MAX_ASINH_BETA = 1e-3, 1000.0


@dataclass(frozen=True, kw_only=True)
class EnhanceOptions(Checked):
    """Wavelet sharpening and tone curve for a stacked image.

    ``gains`` (finest scale first) sets the number of scales; ``thresholds`` are noise
    thresholds in layer σ (see :func:`skystack.enhance.wavelets.sharpen`). The stretch
    maps ``black``/``white`` (image units; ``None``: the 0.1th and 99.99th percentiles)
    to 0/1: ``"linear"``, ``"midtone"`` (then ``midtone`` is the MTF balance, 0.5 =
    linear), ``"asinh"`` (with ``asinh_beta``), ``"auto"`` (Siril autostretch) or
    ``"none"`` (keep image units).
    """

    gains: tuple[float, ...] = field(default=(1.8, 1.4, 1.0, 1.0, 1.0), metadata=flag(
        "--wavelets", name="wavelets", metavar="G1,G2,...", parse=parse_floats,
        help="à-trous wavelet gains per scale (0 to 100), finest first; the count sets the number of scales"))
    thresholds: tuple[float, ...] = field(default=(3.0, 2.0, 1.0, 0.0, 0.0), metadata=flag(
        "--wavelet-noise", name="wavelet_noise", metavar="K1,K2,...", parse=parse_floats,
        help="noise thresholds per scale in that scale's noise σ; only detail above them is amplified"))
    stretch: StretchKind = field(default="none", metadata=flag(
        "--stretch", help="tone curve after sharpening (none keeps the image's units)"))
    black: float | None = field(default=None, metadata=flag(
        "--black", parse=float, help="black point, image units (default: the 0.1th percentile)"))
    white: float | None = field(default=None, metadata=flag(
        "--white", parse=float, help="white point, image units (default: the 99.99th percentile)"))
    midtone: float = field(default=0.5, metadata=flag(
        "--midtone", parse=float, help="midtone balance for --stretch midtone (0.5 = linear)"))
    asinh_beta: float = field(default=10.0, metadata=flag(
        "--asinh-beta", parse=float, help="softening for --stretch asinh (0.001 to 1000)"))

    def check(self) -> None:
        object.__setattr__(self, "gains", parse_floats(self.gains))
        object.__setattr__(self, "thresholds", parse_floats(self.thresholds))
        # A gain multiplies a float32 layer: 1e30 overflowed the stack to ±inf (or to values
        # no display can show) and still "succeeded". RegiStax's sliders stop far below 100.
        if any(not math.isfinite(g) or g < 0 or g > MAX_WAVELET_GAIN for g in self.gains):
            raise UsageError(f"--wavelets {','.join(f'{g:g}' for g in self.gains)}: "
                             f"gains must be between 0 and {MAX_WAVELET_GAIN:g}")
        if any(not math.isfinite(t) or t < 0 for t in self.thresholds):
            raise UsageError(f"--wavelet-noise {self.thresholds}: thresholds must be finite and >= 0")
        # --black nan made every pixel NaN and --white inf every pixel 0, and both "succeeded"
        for value, what in ((self.black, "--black"), (self.white, "--white")):
            if value is not None:
                finite(value, what)
        if self.black is not None and self.white is not None and float(self.white) <= float(self.black):
            raise UsageError(f"--black {float(self.black):g} --white {float(self.white):g}: "
                             "the white point must be above the black point")
        finite(self.midtone, "--midtone", lo=0, hi=1, lo_open=True)
        if self.midtone == 1:
            raise UsageError(f"--midtone {self.midtone}: must be in (0, 1)")
        # asinh(β·x)/asinh(β) in float32: β = 1e300 overflowed to inf, β = 1e-300 gave 0
        # everywhere; 1000 is where PixInsight's and Siril's stretch factors end
        finite(self.asinh_beta, "--asinh-beta", lo=MIN_ASINH_BETA, hi=MAX_ASINH_BETA)


@dataclass(frozen=True, kw_only=True)
class LuckyOptions(Checked):
    """Everything ``skystack lucky`` decides about selection, alignment and stacking.

    keep
        The best frames to stack: ``"10%"`` or a count ``"200"`` (also ``"best:10%"``).
    mode
        ``"planet"`` (disk on dark sky: centroid, then phase correlation), ``"surface"``
        (Moon/Sun filling the field: phase correlation), or ``"auto"``.
    multipoint, ap_size, ap_spacing, ap_min_structure
        Local alignment: AP box side and node spacing in pixels (default ``ap_size / 3``)
        and the structure an AP needs (fraction of the median). Each AP takes the ``keep``
        frames of best local quality among all usable frames.
    local_weight
        How much a frame's local quality counts against its global quality when frames
        are selected per AP (0: the globally best frames everywhere); ``None`` estimates
        it from how much the sharpness varies across the field (see
        :func:`skystack.pipeline.lucky.points.choose_points`).
    quality_weight
        How much more a sharper stacked frame counts: each frame (per AP in multi-point
        stacks, by its local quality there) is weighted ``exp(G · (quality − best quality))``,
        qualities being log band energies (see :mod:`skystack.pipeline.lucky.rank`);
        ``0`` weights the kept frames equally; ``None`` takes the measured default of the
        mode (planet 25, surface 7).
    reference_frames
        How many of the best frames build the reference (default: half the kept count,
        5 to 50).
    drizzle, pixfrac
        Output scale (1.5, 2 or 3) and drop size for drizzle; ``None`` for no drizzle.
    color
        ``"auto"`` (RGB when the frames are colour and not a mono video in a colour
        container), ``"rgb"`` or ``"mono"`` (stack luminance).
    rgb_align
        Shift R and B onto G after stacking (atmospheric dispersion).
    min_overlap
        Surface mode: a frame whose displacement leaves less than this fraction of the
        reference field covered has drifted out of the field and is not used.
    min_response
        A global correlation response below this is a failed registration.
    quality_downsample
        The area-average factor of the view the quality is measured on.
    workers
        Workers for the ranking and stacking tasks (default: all cores): forked processes
        for memory-mapped videos (SER, FITS) on Linux, threads otherwise (always threads
        with a GPU); 1 = one core.
    backend
        Where the ranking pass and the global shifts of the stacked frames are measured:
        ``"auto"`` (a CUDA GPU through CuPy when usable, else the CPU), ``"cpu"`` or
        ``"cupy"`` (see :mod:`skystack.backends.lucky_gpu`).
    """

    keep: str = field(default="10%", metadata=flag(
        "--keep", metavar="RULE", help="best frames to stack: a percentage (10%%) or a count (200)"))
    mode: Literal["auto", "planet", "surface"] = field(default="auto", metadata=flag(
        "--mode", help="planet: disk on dark sky; surface: Moon/Sun filling the field; auto decides per video"))
    multipoint: bool = field(default=True, metadata=flag(
        "--no-multipoint", action="store_false",
        help="global alignment only (faster; fine for a small planet in good seeing)"))
    ap_size: int = field(default=96, metadata=flag(
        "--ap-size", metavar="PX", parse=int, help="alignment-point box side in pixels"))
    ap_spacing: float | None = field(default=None, metadata=flag(
        "--ap-spacing", metavar="PX", parse=float, help="alignment-point spacing (default: a third of the box; at least an eighth)"))
    ap_min_structure: float = 0.1
    local_weight: float | None = None
    quality_weight: float | None = field(default=None, metadata=flag(
        "--quality-weight", metavar="G", parse=float,
        help="how much more sharper frames count: weight exp(G x quality difference); 0 = equal weights "
             "(default: planet 25, surface 7)"))
    reference_frames: int | None = None
    drizzle: float | None = field(default=None, metadata=flag(
        "--drizzle", metavar="SCALE", parse=parse_drizzle,
        help="drizzle onto a 1.5, 2 or 3 times finer grid (undersampled captures)"))
    pixfrac: float = field(default=0.7, metadata=flag(
        "--pixfrac", parse=float, help="drizzle drop size, fraction of a pixel"))
    color: Literal["auto", "rgb", "mono"] = field(default="auto", metadata=flag(
        "--color", help="colour handling: auto (RGB unless the channels are identical), rgb or mono"))
    rgb_align: bool = field(default=False, metadata=flag(
        "--rgb-align", action="store_true", help="shift R and B onto G after stacking (atmospheric dispersion)"))
    min_overlap: float = 0.5
    min_response: float = 0.05
    quality_downsample: int = 2
    workers: int | None = field(default=None, metadata=flag(
        "--workers", metavar="N", parse=int,
        help="workers (default: all cores): processes for SER/FITS videos, threads for decoded ones "
             "or with a GPU; 1 = one core"))
    backend: LuckyBackend = field(default="auto", metadata=flag(
        "--backend",
        help="where frames are ranked and aligned: auto (a CUDA GPU through CuPy when usable, else the CPU), "
             "cpu or cupy"))

    def check(self) -> None:
        parse_keep(self.keep)
        if isinstance(self.ap_size, bool) or not isinstance(self.ap_size, int) or self.ap_size < 8:
            raise UsageError(f"--ap-size {self.ap_size!r}: at least 8 pixels")
        if self.ap_spacing is not None:
            # each point holds a box (its reference, spectrum and the frame's patch): points
            # closer than an eighth of a box measure the same patch and only cost memory;
            # --ap-spacing 1 had the kernel kill a worker (210 000 boxes), 0.001 asked 1.35 TiB
            finite(self.ap_spacing, "--ap-spacing", lo=max(MIN_AP_SPACING, self.ap_size / 8),
                   hint=f"an eighth of --ap-size {self.ap_size} at least: closer points measure the same patch")
        if self.local_weight is not None:
            finite(self.local_weight, "local_weight", lo=0)
        if self.quality_weight is not None:
            finite(self.quality_weight, "--quality-weight", lo=0, hi=_MAX_QUALITY_WEIGHT)
        if self.drizzle is not None and not (math.isfinite(self.drizzle) and 1.0 < self.drizzle <= 4.0):
            raise UsageError(f"--drizzle {self.drizzle}: expected a scale in (1, 4], e.g. 1.5, 2 or 3")
        finite(self.pixfrac, "--pixfrac", lo=0, hi=1, lo_open=True)
        finite(self.min_overlap, "min_overlap", lo=0, hi=1, lo_open=True)
        positive_int(self.quality_downsample, "quality_downsample", allow_none=False)
        positive_int(self.workers, "--workers")


@dataclass(frozen=True, kw_only=True)
class MasterOptions(Checked):
    """How ``skystack master`` combines calibration frames."""

    method: str = field(default="winsorized", metadata=flag(
        "--method", choices=MASTER_METHODS,
        help="median, or sigma / winsorized-sigma clipping then mean"))
    kappa: tuple[float, float] = field(default=(3.0, 3.0), metadata=flag(
        "--kappa", nargs=2, metavar=("LOW", "HIGH"), parse=lambda v: tuple(float(x) for x in v),
        help="rejection thresholds in σ"))

    def check(self) -> None:
        if len(self.kappa) != 2:
            raise UsageError(f"--kappa {self.kappa!r}: expected two numbers LOW HIGH")
        for k in self.kappa:
            finite(k, "--kappa", lo=0)


@dataclass(frozen=True, kw_only=True)
class BenchOptions(Checked):
    """``skystack bench``: which backends are measured, on which frames.

    Without INPUT a synthetic set of ``frames`` frames of ``size`` (width × height) in
    ``dtype`` is generated (:func:`skystack.testing.synthetic.make_deepsky`), in ``dir``
    when given (and reused from there next time), else in a temporary folder removed
    afterwards. With INPUT every frame of it is used and ``frames``, ``size``, ``dtype``
    do not apply.
    """

    backend: BenchBackend = field(default="all", metadata=flag(
        "--backend",
        help="backends to measure: all (every usable one; the unusable are listed with the reason), cpu, "
             "cupy or cv2cuda; a GPU backend is always measured beside the CPU backend, whose result it "
             "must match"))
    frames: int = field(default=16, metadata=flag(
        "--frames", metavar="N", parse=int, help="synthetic frames to generate (not with INPUT)"))
    size: str = field(default="3840x2160", metadata=flag(
        "--size", metavar="WxH", parse=parse_frame_size, help="synthetic frame size in pixels (not with INPUT)"))
    dtype: Literal["uint16", "float32"] = field(default="uint16", metadata=flag(
        "--dtype", help="sample type of the synthetic FITS frames (not with INPUT)"))
    data_dir: str | None = field(default=None, metadata=flag(
        "--dir", name="dir", metavar="DIR", parse=os.fspath,
        help="write the synthetic set into DIR and reuse it on the next run with the same --frames/--size/"
             "--dtype (default: a temporary folder, removed afterwards)"))
    workers: int | None = field(default=None, metadata=flag(
        "--workers", metavar="N", parse=int,
        help="threads of the register and combine stages, as skystack stack runs them (default: all cores)"))
    json: str | None = field(default=None, metadata=flag(
        "--json", metavar="PATH", parse=os.fspath,
        help="also write the device, the figures and the parity checks as JSON"))
    seed: int = 0  # of the synthetic set: same seed, same frames

    def check(self) -> None:
        positive_int(self.frames, "--frames", allow_none=False)
        object.__setattr__(self, "size", parse_frame_size(self.size))
        w, h = self.width_height
        if w < 96 or h < 96:
            raise UsageError(f"--size {self.size}: at least 96x96 pixels (a smaller synthetic frame has too few "
                             "stars to register)")
        positive_int(self.workers, "--workers")

    @property
    def width_height(self) -> tuple[int, int]:
        w, h = (int(v) for v in self.size.split("x"))
        return w, h
