"""One small frozen, keyword-only dataclass per stage. Each stage receives its own
options only; there is no global settings object."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RegisterMethod = Literal["auto", "stars", "orb", "planetary", "surface"]
Model = Literal["shift", "similarity", "affine"]
RejectMethod = Literal[
    "none", "sigma", "winsorized", "mad", "linear-fit", "percentile", "gesd", "minmax"
]
Reduction = Literal["mean", "median"]
Normalization = Literal["auto", "none", "add", "mul", "addscale", "mulscale"]
Weighting = Literal["none", "noise", "stars", "fwhm"]


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """How frames are decoded."""

    debayer: Literal["auto", "none"] = "auto"  # "auto": debayer when a CFA pattern is known
    debayer_method: Literal["bilinear", "vng", "ea"] = "ea"  # OpenCV demosaicing variants
    bayer_override: str | None = None  # force a CFA pattern (FITS convention, e.g. "RGGB")


@dataclass(frozen=True, kw_only=True)
class CalibrationOptions:
    """Calibration of the lights before debayering (``--bias/--darks/--flats``).

    Each of ``bias``/``darks``/``flats``/``dark_flats`` is a list of inputs (frames to build
    a master from: files, folders, globs, list files) or a single master FITS file.
    """

    bias: tuple[str, ...] = ()
    darks: tuple[str, ...] = ()
    flats: tuple[str, ...] = ()
    dark_flats: tuple[str, ...] = ()
    dark_scaling: Literal["auto", "off", "optimize"] = "auto"  # by exposure; optimise the factor
    cosmetic: Literal["auto", "off"] = "auto"  # hot/cold pixel map from the master dark
    hot_sigma: float = 5.0
    cold_sigma: float = 5.0
    master_method: Literal["median", "sigma", "winsorized"] = "winsorized"
    cache_dir: str | None = None  # where masters are cached (default: the run's cache dir)
    master_kappa: tuple[float, float] = (3.0, 3.0)  # rejection of sigma/winsorized masters
    memory_limit: int | None = None  # bytes for building masters; None: a safe share of RAM

    @property
    def active(self) -> bool:
        return bool(self.bias or self.darks or self.flats or self.dark_flats)


@dataclass(frozen=True, kw_only=True)
class ColourOptions:
    """Colour balance of a stacked colour image (``--neutralize``, ``--white-balance``).

    ``white_balance``: "none"; "camera" (the camera's multipliers from RAW metadata);
    "auto" (the average star made white); or three factors (R, G, B).
    """

    neutralize: bool = False  # make the sky background grey (equal in R, G and B)
    white_balance: str | tuple[float, float, float] = "none"

    @property
    def active(self) -> bool:
        return self.neutralize or self.white_balance != "none"


@dataclass(frozen=True, kw_only=True)
class RegisterOptions:
    """Detection, matching and transform estimation (phase 1)."""

    method: RegisterMethod = "auto"
    model: Model = "similarity"
    reference: int | None = None  # global frame index; None: best-scored of the first few
    reference_candidates: int = 5  # how many leading frames compete to be the reference
    max_stars: int = 100  # brightest stars kept per frame for matching
    detect_sigma: float = 5.0  # detection threshold above the local background, in noise σ
    ransac_px: float = 2.0  # RANSAC inlier tolerance in reference pixels
    min_matches: int = 6  # fewer inliers than this: registration failed
    max_residual_px: float = 1.0  # an inlier RMS above this: registration failed
    faint: bool = False  # ORB: adaptive threshold + erosion pre-treatment (the seed's trick)
    orb_features: int = 3000


@dataclass(frozen=True, kw_only=True)
class SelectOptions:
    """Which registered frames are kept (``--keep`` and quality thresholds)."""

    keep: str | None = None  # "best:80%", "80%", "200", "best:200"; None keeps all
    max_fwhm_px: float | None = None
    max_roundness: float | None = None  # 1 - minor/major; 0 is perfectly round
    min_stars: int | None = None


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    """Phase 2: warp, normalise, reject, reduce."""

    method: RejectMethod | Literal["mean", "median"] = "mean"
    kappa_low: float = 3.0
    kappa_high: float = 3.0
    max_iter: int = 5
    normalization: Normalization = "auto"  # add for mean/median, addscale for rejection
    weights: Weighting = "none"
    interpolation: Literal["lanczos", "cubic", "bilinear"] = "cubic"
    memory_limit: int | None = None  # bytes; None: a safe fraction of available RAM
    band_rows: int | None = None  # force a band height (tests); None: from the budget

    @property
    def reject(self) -> str:
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
class OutputOptions:
    """What is written and how."""

    output: str
    report: str | None = None  # default: next to the output, OUT.report.json
    tiff_dtype: Literal["uint16", "float32"] = "float32"
    preview: bool = True  # PNG preview next to the output
    coverage: bool = False  # also write the per-pixel frame count
    overwrite: bool = True  # an existing *output* is replaced atomically; inputs never


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Execution: where and how the work runs."""

    workers: int | None = None  # None: all cores
    scheduler: str | None = None  # "tcp://host:8786" for a dask.distributed cluster
    backend: Literal["auto", "cpu", "cupy", "cv2cuda"] = "auto"
    resume: bool = False
    quiet: bool = False
    cache_dir: str | None = None  # default: .skystack-cache next to the output
