"""Drizzle kernel: exact against a plain reference, and it really recovers resolution."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _skystack_kernels.cpu.drizzle import drizzle_add
from skystack.stack.drizzle import Drizzle, output_shape


def reference_drizzle(frame, sx, sy, weight, dx, dy, scale, pixfrac, ho, wo):
    """Straightforward per-pixel drizzle with explicit interval overlaps (no shortcuts)."""
    h, w, nc = frame.shape
    out = np.zeros((ho, wo, nc))
    wout = np.zeros((ho, wo))
    half = 0.5 * pixfrac * scale
    for y in range(h):
        for x in range(w):
            wt = float(weight[y, x])  # Python floats: NumPy 2 keeps float32 * float in float32
            if wt <= 0:
                continue
            cx = (x - dx - float(sx[y, x]) + 0.5) * scale
            cy = (y - dy - float(sy[y, x]) + 0.5) * scale
            for oy in range(ho):
                ovy = min(cy + half, oy + 1) - max(cy - half, oy)
                if ovy <= 0:
                    continue
                for ox in range(wo):
                    ovx = min(cx + half, ox + 1) - max(cx - half, ox)
                    if ovx <= 0:
                        continue
                    a = ovx * ovy * wt / (pixfrac * scale) ** 2
                    out[oy, ox] += frame[y, x].astype(np.float64) * a
                    wout[oy, ox] += a
    return out, wout


@settings(max_examples=25, deadline=None)
@given(scale=st.sampled_from([1.5, 2.0, 3.0]), pixfrac=st.floats(0.3, 1.0),
       dx=st.floats(-2.5, 2.5), dy=st.floats(-2.5, 2.5), seed=st.integers(0, 10_000),
       field=st.booleans())
def test_kernel_matches_reference(scale, pixfrac, dx, dy, seed, field):
    rng = np.random.default_rng(seed)
    h, w = 5, 6
    frame = rng.uniform(0, 100, (h, w, 2)).astype(np.float32)
    if field:
        sx = rng.uniform(-0.7, 0.7, (h, w)).astype(np.float32)
        sy = rng.uniform(-0.7, 0.7, (h, w)).astype(np.float32)
        wt = rng.uniform(-0.2, 1.0, (h, w)).astype(np.float32)
    else:
        sx = sy = np.zeros((1, 1), np.float32)
        wt = np.full((1, 1), 0.8, np.float32)
    ho, wo = output_shape((h, w), scale)
    out = np.zeros((ho, wo, 2))
    wout = np.zeros((ho, wo))
    drizzle_add(frame, sx, sy, wt, dx, dy, scale, pixfrac, out, wout)
    full = lambda a: np.broadcast_to(a, (h, w)) if a.shape == (1, 1) else a  # noqa: E731
    ref_out, ref_w = reference_drizzle(frame, full(sx), full(sy), full(wt), dx, dy, scale, pixfrac, ho, wo)
    assert np.allclose(out, ref_out, rtol=1e-9, atol=1e-9)
    assert np.allclose(wout, ref_w, rtol=1e-9, atol=1e-12)


def test_integer_grid_scale_two_replicates_pixels():
    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = Drizzle((3, 4), scale=2.0, pixfrac=1.0)
    d.add(frame, (0.0, 0.0))
    img, wmap = d.result()
    assert img.shape == (6, 8)
    assert np.array_equal(img, np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1))
    assert np.allclose(wmap, 0.25)  # each output pixel holds a quarter of one drop


def test_constant_stays_constant_and_weights_add_up(rng):
    d = Drizzle((20, 24), channels=3, scale=1.5, pixfrac=0.6)
    for _ in range(12):
        d.add(np.full((20, 24, 3), 7.0, np.float32), tuple(rng.uniform(-1, 1, 2)))
    img, wmap = d.result()
    inner = img[4:-4, 4:-4]
    assert np.all(np.isfinite(inner)) and np.allclose(inner, 7.0, atol=1e-5)
    # a drop's total weight is its frame weight: 12 frames x 20 x 24 drops, minus what fell off
    assert wmap.sum() <= 12 * 20 * 24 + 1e-6 and wmap.sum() > 0.9 * 12 * 20 * 24


def test_zero_weight_and_validation():
    d = Drizzle((4, 4), scale=2.0)
    d.add(np.ones((4, 4), np.float32), (0, 0), weight=0.0)
    assert d.n_frames == 0
    w = np.zeros((4, 4), np.float32)
    w[1, 1] = 1.0
    d.add(np.ones((4, 4), np.float32), (0, 0), weight=w)
    img, wmap = d.result()
    assert np.isfinite(img).sum() == 4 and np.nanmax(img) == 1.0  # one drop of 2x2 output pixels x 0.7^2
    with pytest.raises(ValueError):
        Drizzle((4, 4), pixfrac=1.5)
    with pytest.raises(ValueError):
        d.add(np.ones((5, 4), np.float32), (0, 0))


def test_drizzle_recovers_detail_from_undersampled_frames(moon_video):
    """Frames binned 2x2 from a sharp scene at random subpixel offsets: drizzling them onto
    the fine grid beats shift-and-add at the coarse scale followed by upsampling."""
    truth = moon_video.truth[:192, :192].astype(np.float32)  # the fine scene
    rng = np.random.default_rng(7)
    coarse_frames, shifts = [], []
    h, w = truth.shape
    for _ in range(40):
        s = rng.uniform(-1.0, 1.0, 2)  # in coarse pixels
        m = np.array([[1, 0, 2 * s[0]], [0, 1, 2 * s[1]]], dtype=np.float64)
        moved = cv2.warpAffine(truth, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        coarse = cv2.resize(moved, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        coarse += rng.normal(0, 0.5, coarse.shape).astype(np.float32)
        coarse_frames.append(coarse)
        shifts.append(s)
    d = Drizzle((h // 2, w // 2), scale=2.0, pixfrac=0.5)
    acc = np.zeros((h // 2, w // 2), np.float64)
    for f, s in zip(coarse_frames, shifts):
        d.add(f, (s[0], s[1]))
        acc += cv2.warpAffine(f, np.array([[1, 0, -s[0]], [0, 1, -s[1]]]), (w // 2, h // 2),
                              flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    driz, _ = d.result()
    plain = cv2.resize((acc / len(coarse_frames)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    m = 12
    err_d = math.sqrt(np.mean((driz - truth)[m:-m, m:-m] ** 2))
    err_p = math.sqrt(np.mean((plain - truth)[m:-m, m:-m] ** 2))
    assert err_d < 0.9 * err_p
