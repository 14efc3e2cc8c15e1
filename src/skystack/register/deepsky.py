"""Deep-sky registration: find each frame's transform onto the reference frame.

The pipeline calls exactly this API::

    ref = Reference.build(ref_lum, options)          # once; small and picklable
    reg = register_frame(lum, ref, options)          # per frame, in a worker
    if reg.transform is None: ...                    # reg.reason says why
    metrics = measure_frame(lum, options)            # quality only (reference choice)

Methods (``options.method``):

* ``stars`` — star detection (:mod:`skystack.detect.stars`) and triangle matching
  (:mod:`.triangles`), then RANSAC and a weighted least-squares refinement
  (:mod:`.estimate`). The default for deep-sky frames.
* ``orb`` — ORB keypoints on a robust 8-bit view, FLANN/LSH + ratio test, RANSAC
  (:mod:`.orb_match`). For the Moon, the Sun, landscapes.
* ``auto`` — ``stars``, and ``orb`` when the star match fails; ``Registration.method``
  records which one produced the transform.

A frame that does not register is a value (``transform=None`` and a ``reason``), never an
exception. Transforms map FRAME pixel (x, y) to REFERENCE pixel (x, y), 0-based pixel
centres (:class:`skystack.types.Transform`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..detect.orb import OrbFeatures, orb_features
from ..detect.stars import Stars, detect_stars, native_frame
from ..errors import UsageError
from ..options import RegisterOptions
from ..types import Transform
from .estimate import Fit
from .orb_match import match_orb
from .triangles import Triangles, build_triangles, match_stars

__all__ = ["Reference", "Registration", "register_frame", "measure_frame", "detect_frame"]

_METHODS = ("auto", "stars", "orb")


def _as_lum(lum: np.ndarray) -> np.ndarray:
    """The frame as detection reads it: in place in its own dtype where possible (a uint16
    sub is not converted; see :func:`skystack.detect.stars.native_frame`)."""
    a = np.asarray(lum)
    if a.ndim != 2:
        raise ValueError(f"registration needs a 2-D luminance frame, got shape {a.shape}")
    return native_frame(a)


def _check_method(options: RegisterOptions) -> None:
    if options.method not in _METHODS:
        raise UsageError(f"register_frame handles methods {', '.join(_METHODS)}, not {options.method!r}")


def _detect(lum: np.ndarray, options: RegisterOptions) -> Stars:
    return detect_stars(lum, max_stars=options.max_stars, sigma=options.detect_sigma)


@dataclass(frozen=True, eq=False)
class Reference:
    """What a frame is registered against, built once from the reference frame.

    Holds only small arrays (the brightest stars and their triangles, the ORB keypoints and
    descriptors), so it pickles cheaply to Dask workers.
    """

    shape: tuple[int, int]
    stars: Triangles | None  # None unless the method can use stars
    orb: OrbFeatures | None  # None unless the method can use ORB
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, lum: np.ndarray, options: RegisterOptions, stars: Stars | None = None) -> Reference:
        """Detect the reference frame's stars (and ORB features for ``orb``/``auto``);
        ``stars`` is :func:`detect_frame` of ``lum`` when already known.

        Raises ``UsageError`` for a method this module does not handle; a reference without
        stars is not an error here (every frame will then fail with a reason saying so).
        """
        _check_method(options)
        img = _as_lum(lum)
        st = stars if stars is not None else _detect(img, options)
        tri = build_triangles(st.xy, st.err) if options.method in ("auto", "stars") else None
        orb = (orb_features(img, n_features=options.orb_features, faint=options.faint)
               if options.method in ("auto", "orb") else None)
        return cls(shape=(int(img.shape[0]), int(img.shape[1])), stars=tri, orb=orb, metrics=st.metrics())


@dataclass
class Registration:
    """The outcome of registering one frame."""

    transform: Transform | None
    method: str | None  # "stars" | "orb"; None when it failed
    n_stars: int  # stars detected in the frame (all that passed the tests)
    n_matches: int  # inliers of the final fit (or the best attempt)
    residual_px: float | None  # RMS of the inlier residuals, reference pixels
    reason: str  # "" when it registered
    metrics: dict[str, float] = field(default_factory=dict)  # n_stars, fwhm_px, roundness, background, noise

    @property
    def ok(self) -> bool:
        return self.transform is not None


def detect_frame(lum: np.ndarray, options: RegisterOptions) -> Stars:
    """The stars :func:`register_frame` and :meth:`Reference.build` detect in ``lum`` (pass
    them back to either to detect once when a frame is looked at twice)."""
    return _detect(_as_lum(lum), options)


def measure_frame(lum: np.ndarray, options: RegisterOptions) -> dict[str, float]:
    """Quality metrics of a frame (n_stars, fwhm_px, roundness, background, noise) without
    registering it: used to choose the reference."""
    return _detect(_as_lum(lum), options).metrics()


# A fit is accepted when its inlier residual is below max_residual_px, or, for faint and
# broad stars whose centroids are measured less precisely, below three times what those
# stars' own centroid errors predict (the real M13 frames: ~10 px FWHM stars a few σ above
# the noise register correctly at 1.1-1.3 px residual). Chance matches are refused earlier,
# by the Poisson significance test in match_stars.
_RESIDUAL_VS_EXPECTED = 3.0
# Many matches with a wider scatter pin the transform as well as few tight ones: in a lunar
# video seeing bends the surface locally, so ORB keypoints scatter by ~1.1 px about the
# global fit, but 100+ of them fix it to ~0.1 px. Such a fit is accepted while the standard
# error of the fit (residual / √matches) stays under a fifth of max_residual_px and the
# scatter itself under three times it.
_STANDARD_ERROR_FRACTION = 0.2
_SCATTER_CAP = 3.0


def _accept(fit: Fit, options: RegisterOptions) -> Fit:
    if not fit.ok or fit.residual_px is None:
        return fit
    limit = options.max_residual_px
    if fit.expected_px is not None and np.isfinite(fit.expected_px):
        limit = max(limit, _RESIDUAL_VS_EXPECTED * fit.expected_px)
    if fit.residual_px > limit and fit.n_matches > 0:
        se = fit.residual_px / np.sqrt(fit.n_matches)
        if se <= _STANDARD_ERROR_FRACTION * options.max_residual_px and \
                fit.residual_px <= _SCATTER_CAP * options.max_residual_px:
            return fit
    if fit.residual_px > limit:
        return Fit(None, n_matches=fit.n_matches, residual_px=fit.residual_px,
                   reason=f"residual {fit.residual_px:.2f} px exceeds {limit:.2g} px "
                          f"({fit.n_matches} matches)")
    return fit


def register_frame(lum: np.ndarray | None, reference: Reference, options: RegisterOptions,
                   stars: Stars | None = None) -> Registration:
    """Register one frame onto ``reference``.

    Parameters
    ----------
    lum : (H, W) array, or None
        Linear luminance of the frame (NaN = no data, treated as background), any real
        dtype; read in place, never modified. None only with ``stars`` and
        ``options.method == "stars"`` (nothing else looks at pixels).
    reference : Reference
        From :meth:`Reference.build` with the same ``options.method``.
    options : RegisterOptions
        ``method``, ``model``, ``max_stars``, ``detect_sigma``, ``ransac_px``,
        ``min_matches``, ``max_residual_px``, ``faint``, ``orb_features``.
    stars : Stars, optional
        :func:`detect_frame` of ``lum``, when already known.

    Returns
    -------
    Registration
        ``transform`` maps frame pixels to reference pixels; ``None`` with a ``reason`` when
        the frame did not register.
    """
    _check_method(options)
    if lum is None and (stars is None or options.method != "stars"):
        raise ValueError("register_frame needs the frame's pixels unless given its stars with method 'stars'")
    img = _as_lum(lum) if lum is not None else None
    st = stars if stars is not None else _detect(img, options)
    metrics = st.metrics()
    reasons: list[str] = []
    best_matches = 0
    if options.method in ("stars", "auto"):
        if reference.stars is None:
            fit = Fit(None, reason="the reference was built without stars")
        else:
            fit = match_stars(st.xy, reference.stars, model=options.model, tol=options.ransac_px,
                              min_matches=options.min_matches, frame_err=st.err)
            fit = _accept(fit, options)
        if fit.ok:
            return Registration(fit.transform, "stars", st.n_detected, fit.n_matches, fit.residual_px, "", metrics)
        reasons.append(fit.reason)
        best_matches = max(best_matches, fit.n_matches)
    if options.method in ("orb", "auto"):
        if reference.orb is None:
            fit = Fit(None, reason="the reference was built without ORB features")
        else:
            feats = orb_features(img, n_features=options.orb_features, faint=options.faint)
            fit = match_orb(feats, reference.orb, model=options.model, tol=options.ransac_px,
                            min_matches=options.min_matches)
            fit = _accept(fit, options)
        if fit.ok:
            return Registration(fit.transform, "orb", st.n_detected, fit.n_matches, fit.residual_px, "", metrics)
        reasons.append(fit.reason)
        best_matches = max(best_matches, fit.n_matches)
    if options.method == "auto":
        reason = f"stars: {reasons[0]}; orb: {reasons[1]}"
    else:
        reason = reasons[0]
    return Registration(None, None, st.n_detected, best_matches, None, reason, metrics)


def load_kernels(options: RegisterOptions) -> bool:
    """Register a small synthetic star field onto a shifted copy of itself with
    ``options``: every Numba kernel detection and registration call is then loaded (from
    Numba's on-disk cache, ~0.22 s on the 2-core project machine, the first time each is
    called in a process). Returns whether the field registered (whether every path ran)."""
    rng = np.random.default_rng(7)
    side = 192
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    base = np.full((side, side), 100.0, np.float32) + rng.normal(0.0, 2.0, (side, side)).astype(np.float32)
    frames = [base.copy(), base.copy()]
    for (y, x), flux in zip(rng.uniform(14, side - 14, (40, 2)), rng.uniform(300, 3000, 40)):
        for img, (dy, dx) in zip(frames, [(0.0, 0.0), (1.3, -2.1)]):
            img += np.float32(flux) * np.exp(-((yy - y - dy) ** 2 + (xx - x - dx) ** 2) / np.float32(2 * 1.6 ** 2))
    reference = Reference.build(frames[0], options)
    return register_frame(frames[1], reference, options).ok
