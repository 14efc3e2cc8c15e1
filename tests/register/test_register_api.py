"""register_frame / Reference / measure_frame against the synthetic generator's truth."""
from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from skystack.errors import UsageError
from skystack.options import RegisterOptions
from skystack.register.deepsky import Reference, Registration, measure_frame, register_frame
from skystack.testing.synthetic import make_deepsky
from skystack.types import Transform

SHAPE = (600, 800)
METRICS = {"n_stars", "fwhm_px", "roundness", "background", "noise"}


@pytest.fixture(scope="module")
def deep():
    """10 frames with hot pixels, cosmic rays, a galaxy and a satellite trail in frame 7."""
    s = make_deepsky(n_frames=10, shape=SHAPE, seed=1, trail_frame=7)
    return s, [s.frame(i).astype(np.float32) for i in range(len(s))]


def _stars_ref(frames, **kw):
    opt = RegisterOptions(method=kw.pop("method", "stars"), **kw)
    return opt, Reference.build(frames[0], opt)


def test_stars_registration_is_accurate_on_every_frame(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames)
    for i, f in enumerate(frames):
        reg = register_frame(f, ref, opt)
        assert isinstance(reg, Registration) and reg.ok, f"frame {i}: {reg.reason}"
        assert reg.method == "stars" and reg.reason == ""
        assert reg.transform.model == "similarity"
        err = reg.transform.rms_error(s.transforms[i], SHAPE)
        assert err <= 0.03, f"frame {i} (trail: {i == s.trail_frame}): {err:.4f} px RMS"
        assert reg.n_matches >= 20 and reg.residual_px < 0.5
        assert set(reg.metrics) >= METRICS and reg.metrics["n_stars"] == reg.n_stars


def test_reference_registers_to_itself_as_identity(deep):
    _, frames = deep
    for method in ("stars", "orb"):
        opt, ref = _stars_ref(frames, method=method)
        reg = register_frame(frames[0], ref, opt)
        assert reg.method == method
        assert reg.transform.max_error(Transform.identity(), SHAPE) < 1e-6


def test_auto_uses_stars_on_star_fields(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames, method="auto")
    reg = register_frame(frames[3], ref, opt)
    assert reg.method == "stars" and reg.transform.rms_error(s.transforms[3], SHAPE) <= 0.03


def test_orb_within_a_pixel_despite_hot_pixels(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames, method="orb")
    errs = []
    for i, f in enumerate(frames):
        reg = register_frame(f, ref, opt)
        errs.append(reg.transform.max_error(s.transforms[i], SHAPE) if reg.ok else np.inf)
        if reg.ok:
            assert reg.method == "orb"
    assert np.mean(np.array(errs) <= 1.0) >= 0.9, errs


def test_shift_model():
    s = make_deepsky(n_frames=4, shape=SHAPE, seed=2, max_rot_deg=0.0)
    frames = [s.frame(i).astype(np.float32) for i in range(4)]
    opt, ref = _stars_ref(frames, model="shift")
    for i in range(1, 4):
        reg = register_frame(frames[i], ref, opt)
        assert reg.ok and reg.transform.model == "shift"
        assert np.array_equal(reg.transform.matrix[:, :2], np.eye(2))
        assert reg.transform.rms_error(s.transforms[i], SHAPE) <= 0.03


def test_shift_model_refuses_rotated_frames(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames, model="shift")
    i = int(np.argmax([abs(t.rotation_deg) for t in s.transforms]))
    reg = register_frame(frames[i], ref, opt)
    assert not reg.ok and "shift model fits only" in reg.reason and "rotated" in reg.reason


def test_affine_model_recovers_an_affine_truth():
    s = make_deepsky(n_frames=2, shape=SHAPE, seed=3)
    truth = Transform(np.array([[1.004, 0.003, 14.0], [-0.002, 0.997, -9.0]]), "affine")
    s.transforms[1] = truth  # the generator renders any frame -> reference affine map
    frames = [s.frame(i).astype(np.float32) for i in range(2)]
    for model, limit in (("affine", 0.03), ("similarity", None)):
        opt, ref = _stars_ref(frames, model=model)
        reg = register_frame(frames[1], ref, opt)
        err = reg.transform.rms_error(truth, SHAPE) if reg.ok else np.inf
        if limit is not None:
            assert reg.transform.model == "affine" and err <= limit
        else:  # a similarity cannot follow the shear
            assert err > 0.3


def test_frame_without_stars_fails_with_a_reason(deep):
    _, frames = deep
    blank = make_deepsky(n_frames=1, shape=SHAPE, seed=4, star_density=0.0, extended=False).frame(0)
    blank = blank.astype(np.float32)
    opt, ref = _stars_ref(frames)
    reg = register_frame(blank, ref, opt)
    assert reg.transform is None and reg.method is None
    assert reg.reason.startswith("only ") and reg.reason.endswith("stars detected (need 6)")
    assert reg.metrics["n_stars"] == reg.n_stars < 6
    opt, ref = _stars_ref(frames, method="auto")
    reg = register_frame(blank, ref, opt)
    assert reg.transform is None and reg.reason.startswith("stars: only ") and "; orb: " in reg.reason


def _landscape(shape, seed):
    """A scene of flat patches and edges: corners for ORB, no point sources."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.full(shape, 500.0, np.float32)
    for _ in range(120):
        x0, y0 = rng.integers(-50, w), rng.integers(-50, h)
        ww, hh = rng.integers(20, 160, 2)
        img[max(y0, 0):y0 + hh, max(x0, 0):x0 + ww] = rng.uniform(200, 3000)
    return cv2.GaussianBlur(img, (0, 0), 1.2)


def _warp(img, truth):
    """The frame that ``truth`` (frame -> reference) maps onto ``img``."""
    h, w = img.shape
    return cv2.warpAffine(img, truth.matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def test_auto_falls_back_to_orb_without_stars():
    ref_img = _landscape((400, 600), 1)
    truth = Transform.from_params(dx=9.4, dy=-6.2, angle_deg=2.0, center=(299.5, 199.5))
    rng = np.random.default_rng(5)
    frame = _warp(ref_img, truth) + rng.normal(0, 10, ref_img.shape).astype(np.float32)
    ref_img = ref_img + rng.normal(0, 10, ref_img.shape).astype(np.float32)
    opt = RegisterOptions(method="auto")
    reg = register_frame(frame, Reference.build(ref_img, opt), opt)
    assert reg.ok and reg.method == "orb"
    assert reg.transform.max_error(truth, (400, 600)) < 0.5


def test_nan_border_frame_registers(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames)
    f = frames[5].copy()
    f[:, :120] = np.nan
    f[-80:, :] = np.nan
    reg = register_frame(f, ref, opt)
    # a third of the frame (and of its stars) is gone: a little less precise
    assert reg.ok and reg.transform.rms_error(s.transforms[5], SHAPE) <= 0.05


def test_reference_is_small_and_picklable(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames, method="auto")
    blob = pickle.dumps(ref)
    assert len(blob) < 400_000
    ref2 = pickle.loads(blob)
    a = register_frame(frames[2], ref, opt)
    b = register_frame(frames[2], ref2, opt)
    assert np.array_equal(a.transform.matrix, b.transform.matrix)


def test_results_are_deterministic(deep):
    _, frames = deep
    for method in ("stars", "orb"):
        opt, ref = _stars_ref(frames, method=method)
        a = register_frame(frames[4], ref, opt)
        b = register_frame(frames[4], Reference.build(frames[0], opt), opt)
        assert np.array_equal(a.transform.matrix, b.transform.matrix)


def test_measure_frame_matches_registration_metrics(deep):
    s, frames = deep
    opt, ref = _stars_ref(frames)
    m = measure_frame(frames[6], opt)
    assert m == register_frame(frames[6], ref, opt).metrics
    assert set(m) == METRICS
    assert m["fwhm_px"] == pytest.approx(s.fwhm[6], rel=0.25)


def test_unknown_method_is_a_usage_error(deep):
    _, frames = deep
    with pytest.raises(UsageError):
        Reference.build(frames[0], RegisterOptions(method="planetary"))
    opt, ref = _stars_ref(frames)
    with pytest.raises(UsageError):
        register_frame(frames[1], ref, RegisterOptions(method="surface"))
    with pytest.raises(ValueError):
        register_frame(np.zeros((4, 4, 3), np.float32), ref, opt)


# -- real textured scenes (skipped without the data folder) -----------------------------


def _moon(real_path):
    cap = cv2.VideoCapture(str(real_path("pss-moon-avi/short_video.avi")))
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        pytest.skip("cannot decode the Moon video with this OpenCV build")
    return bgr[:, :, 1].astype(np.float32)


@pytest.mark.parametrize("scene", ["moon", "hdf"])
@pytest.mark.parametrize("method", ["orb", "auto"])
def test_textured_real_scenes(scene, method, real_path):
    if scene == "moon":
        img = _moon(real_path)
    else:
        img = cv2.imread(str(real_path("hubble-deep-field/hubble_deep_field.jpg")), cv2.IMREAD_GRAYSCALE)
        img = img.astype(np.float32)
    h, w = img.shape
    truth = Transform.from_params(dx=12.3, dy=-7.8, angle_deg=1.5, center=((w - 1) / 2, (h - 1) / 2))
    opt = RegisterOptions(method=method)
    reg = register_frame(_warp(img, truth), Reference.build(img, opt), opt)
    assert reg.ok, reg.reason
    assert reg.transform.max_error(truth, (h, w)) < 0.25
