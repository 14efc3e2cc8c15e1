"""Small value types shared by every stage.

Coordinates follow OpenCV: a point is ``(x, y)`` with ``x`` the column and ``y`` the row,
0-based, at pixel centres. A :class:`Transform` maps *frame* pixel coordinates to
*reference* pixel coordinates, so ``cv2.warpAffine(frame, t.matrix, (W, H))`` resamples a
frame onto the reference grid.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Model = Literal["shift", "similarity", "affine"]


class Fate(str, enum.Enum):
    """What happened to one input frame (the ``fate`` field of report.json)."""

    USED = "used"
    REJECTED = "rejected"  # readable and registered, but not kept (quality, size, selection)
    FAILED_REGISTRATION = "failed_registration"
    UNREADABLE = "unreadable"

    def __str__(self) -> str:  # "used", not "Fate.USED", in messages
        return self.value


@dataclass(frozen=True, eq=False)
class Transform:
    """A 2×3 affine matrix mapping frame (x, y) to reference (x, y)."""

    matrix: np.ndarray
    model: Model = "similarity"

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64).reshape(2, 3)
        if not np.all(np.isfinite(m)):
            raise ValueError(f"transform matrix is not finite: {m.tolist()}")
        m = m.copy()
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    # -- constructors -------------------------------------------------------------
    @classmethod
    def identity(cls, model: Model = "similarity") -> Transform:
        return cls(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), model)

    @classmethod
    def from_params(
        cls, *, dx: float = 0.0, dy: float = 0.0, angle_deg: float = 0.0, scale: float = 1.0,
        center: tuple[float, float] = (0.0, 0.0), model: Model = "similarity",
    ) -> Transform:
        """Rotate by ``angle_deg`` (counter-clockwise in x-right/y-down pixel axes is
        clockwise on screen) and scale about ``center``, then shift by (dx, dy)."""
        a = math.radians(angle_deg)
        c, s = scale * math.cos(a), scale * math.sin(a)
        cx, cy = center
        m = np.array([
            [c, -s, cx - c * cx + s * cy + dx],
            [s, c, cy - s * cx - c * cy + dy],
        ])
        return cls(m, model)

    @classmethod
    def from_list(cls, rows: list[list[float]], model: Model = "similarity") -> Transform:
        return cls(np.array(rows, dtype=np.float64), model)

    # -- algebra ------------------------------------------------------------------
    def as3x3(self) -> np.ndarray:
        return np.vstack([self.matrix, [0.0, 0.0, 1.0]])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map an ``(n, 2)`` array of (x, y) points."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def inverse(self) -> Transform:
        return Transform(np.linalg.inv(self.as3x3())[:2], self.model)

    def then(self, other: Transform) -> Transform:
        """The transform that applies ``self`` first, then ``other``."""
        return Transform((other.as3x3() @ self.as3x3())[:2], _wider(self.model, other.model))

    # -- readable parameters (for the report) ------------------------------------
    @property
    def shift(self) -> tuple[float, float]:
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def scale(self) -> float:
        return math.sqrt(abs(np.linalg.det(self.matrix[:, :2])))

    def to_list(self) -> list[list[float]]:
        return [[float(v) for v in row] for row in self.matrix]

    def rms_error(self, truth: Transform, shape: tuple[int, int], step: int = 16) -> float:
        """RMS distance in reference pixels between ``self`` and ``truth`` over a grid of
        frame pixels covering a frame of ``shape`` (H, W)."""
        h, w = shape[:2]
        ys, xs = np.mgrid[0:h:step, 0:w:step]
        p = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
        d = self.apply(p) - truth.apply(p)
        return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))

    def max_error(self, truth: Transform, shape: tuple[int, int]) -> float:
        """Largest distance between ``self`` and ``truth`` at the four frame corners (the
        error of an affine map is largest at a corner of the region)."""
        h, w = shape[:2]
        c = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
        return float(np.max(np.linalg.norm(self.apply(c) - truth.apply(c), axis=1)))


_MODEL_ORDER = {"shift": 0, "similarity": 1, "affine": 2}


def _wider(a: str, b: str) -> Model:
    return a if _MODEL_ORDER.get(a, 2) >= _MODEL_ORDER.get(b, 2) else b  # type: ignore[return-value]


@dataclass(frozen=True)
class FrameInfo:
    """What is known about one frame without decoding its pixels."""

    index: int  # global index in the run, 0-based
    path: str
    name: str  # path, plus "#k" for frame k of a cube or video
    shape: tuple[int, ...]  # raw plane shape: (H, W) for mono/CFA, (H, W, 3) for RGB
    dtype: str
    bayer: str | None = None  # CFA pattern in FITS convention (top-left 2×2, row-major), e.g. "GRBG"
    exposure_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FrameResult:
    """The phase-1 outcome for one frame; lands in report.json as one entry."""

    index: int
    path: str
    name: str
    fate: Fate
    reason: str = ""
    method: str | None = None
    transform: Transform | None = None
    n_stars: int | None = None
    n_matches: int | None = None
    residual_px: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    weight: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "name": self.name,
            "fate": self.fate.value,
            "reason": self.reason,
            "method": self.method,
            "transform": self.transform.to_list() if self.transform is not None else None,
            "model": self.transform.model if self.transform is not None else None,
            "n_stars": self.n_stars,
            "n_matches": self.n_matches,
            "residual_px": _finite_or_none(self.residual_px),
            "weight": _finite_or_none(self.weight),
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FrameResult:
        t = d.get("transform")
        return cls(
            index=int(d["index"]), path=d["path"], name=d.get("name", d["path"]),
            fate=Fate(d["fate"]), reason=d.get("reason", ""), method=d.get("method"),
            transform=Transform.from_list(t, d.get("model") or "similarity") if t else None,
            n_stars=d.get("n_stars"), n_matches=d.get("n_matches"),
            residual_px=d.get("residual_px"), weight=d.get("weight"),
            metrics={k: (float("nan") if v is None else v) for k, v in d.get("metrics", {}).items()},
        )


def _finite_or_none(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def image_to_ccddata(image: np.ndarray, header: Any = None, unit: str = "adu"):
    """An :class:`astropy.nddata.CCDData` of a stacked image, laid out as its FITS file:
    mono ``(H, W)``; colour ``(3, H, W)`` planes R, G, B. ``header`` (an astropy Header)
    becomes its ``meta`` and, where it holds a WCS, its ``wcs`` (for a colour cube a 3-axis
    WCS whose ``.celestial`` is the sky)."""
    import warnings

    from astropy.nddata import CCDData
    from astropy.wcs import WCS, FITSFixedWarning

    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 3:
        data = np.moveaxis(data, 2, 0)
    wcs = None
    if header is not None and "CTYPE1" in header:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
    return CCDData(data, unit=unit, meta=header.copy() if header is not None else None, wcs=wcs)


@dataclass
class StackResult:
    """What ``skystack.stack`` and ``skystack.register`` produced: one
    :class:`FrameResult` per input frame, the reference, what was written and the run's
    figures (``report`` is the report.json content).

    For a stack (not ``register``): ``image`` is the stacked float32 array, ``(H, W)`` or
    ``(H, W, 3)`` (NaN where no frame covered; the same values as the FITS file written,
    whose planes are ``(3, H, W)``); ``coverage`` the int32 ``(H, W)`` count of frame
    values combined at each pixel (after rejection; for colour the largest over the
    channels); ``weight`` the float32 drizzle weight map ``(H, W)`` (drizzle only: the
    summed drop overlaps × frame weights); ``header`` the FITS header of the stack
    (:class:`astropy.io.fits.Header`: observation cards, WCS, DATE-OBS, STACKCNT, LIVETIME,
    method, HISTORY). :meth:`to_ccddata` hands it to astropy.
    """

    output: Path | None
    report_path: Path | None
    results: list[FrameResult]
    reference: int
    n_used: int
    shape: tuple[int, ...]
    timings: dict[str, float]
    peak_rss_mb: float
    backend: str
    report: dict[str, Any]
    extra_outputs: list[Path] = field(default_factory=list)
    image: np.ndarray | None = None
    coverage: np.ndarray | None = None
    weight: np.ndarray | None = None
    header: Any = None  # astropy.io.fits.Header (astropy is imported only where one is built)

    def to_ccddata(self, unit: str = "adu"):
        """The stack as :class:`astropy.nddata.CCDData` (FITS layout, header as ``meta``,
        the WCS as ``wcs``). Raises ``ValueError`` for a result without an image
        (``register``)."""
        if self.image is None:
            raise ValueError("this result holds no image (skystack.register registers only)")
        return image_to_ccddata(self.image, self.header, unit)


@dataclass
class LuckyResult:
    """What :func:`run_lucky` produced.

    ``image`` is the stack (float32, input units; ``(H, W)`` or ``(H, W, 3)``; NaN where no
    frame covered), ``sharpened`` the enhanced copy when wavelet options were given.
    ``weight`` is the per-pixel sum of blending weights (frames covering the pixel, for
    multi-point the per-AP selections blended; drizzle: the drop weights).
    ``frames`` holds one :class:`~skystack.types.FrameResult` per input frame (its
    ``transform`` is the frame → reference translation, ``metrics`` has ``quality`` and
    ``rank``). ``report`` is the report.json content.
    """

    image: np.ndarray
    weight: np.ndarray
    sharpened: np.ndarray | None
    mode: str
    frames: list[FrameResult]
    n_frames: int
    n_used: int
    timings: dict[str, float]
    peak_rss_mb: float
    outputs: list[Path]
    report_path: Path | None
    report: dict[str, Any]
    messages: list[str]
    rgb_shifts: dict[str, list[float]] | None = None
    alignment_points: int = 0
    header: Any = None  # astropy.io.fits.Header of the stack (skystack.output.header.fits_header)

    def to_ccddata(self, unit: str = "adu"):
        """The stack as :class:`astropy.nddata.CCDData` (see :func:`image_to_ccddata`)."""
        return image_to_ccddata(self.image, self.header, unit)


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    """A frame shape as users read it: width × height (× channels), e.g. ``1080×1920×3``."""
    if len(shape) < 2:
        return str(tuple(shape))
    s = f"{shape[1]}×{shape[0]}"
    return s + (f"×{shape[2]}" if len(shape) == 3 else "")
