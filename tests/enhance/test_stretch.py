"""Display conversions: to_uint8 and the lucky previews' object levels."""
from __future__ import annotations

import numpy as np
import pytest

from skystack.enhance.stretch import display_object, object_levels, to_uint8


def _reference_uint8(display):
    """The definition: NaN → 0, ±inf → the ends, × 255, rounded half to even, clipped."""
    x = np.nan_to_num(display, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
@pytest.mark.parametrize("shape", [(7,), (31, 17), (31, 17, 3), (5, 6, 4)])
def test_to_uint8_is_the_definition_exactly(rng, dtype, shape):
    x = (rng.random(shape) * 1.6 - 0.3).astype(dtype) if dtype not in (np.int64, np.bool_) \
        else rng.integers(-1, 3, shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        flat = x.reshape(-1)
        n = min(flat.size, 200)
        flat[:n] = (np.arange(n) % 256 + 0.5) / 255.0  # ties: half to even, as np.rint
        flat[-6:] = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0]
    before = x.copy()
    got = to_uint8(x)
    assert got.dtype == np.uint8 and got.shape == x.shape
    np.testing.assert_array_equal(got, _reference_uint8(x))
    np.testing.assert_array_equal(x, before)  # the input is left as it was


def _planet(rng, h=120, w=160, sky=(3.0, 2.0, 4.0)):
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 60) ** 2 + (xx - 80) ** 2 < 40 ** 2
    img = rng.normal(0.0, 0.5, (h, w, 3)).astype(np.float32) + np.float32(sky)
    belts = 120.0 + 60.0 * np.sin(yy / 6.0)
    img[disk] += (belts[disk, None] * [1.0, 0.9, 0.7]).astype(np.float32)
    return img, disk


def test_planet_levels_put_the_sky_at_black_and_clip_no_disk_pixel(rng):
    img, disk = _planet(rng)
    black, white = object_levels(img, "planet")
    np.testing.assert_allclose(black, [3.0, 2.0, 4.0], atol=0.1)  # the sky's median per channel
    assert white == pytest.approx(float(np.max(img[disk] - black)), rel=1e-6)
    shown = display_object(img, "planet", levels=(black, white))
    assert shown.dtype == np.uint8 and shown.shape == img.shape
    assert shown[disk].max() == 255 and (shown[disk] < 255).mean() > 0.99  # brightest at white, not clipped
    assert np.median(shown[~disk]) <= 2  # the sky black


def test_display_object_is_the_linear_map_of_its_levels(rng):
    img, _ = _planet(rng)
    img[0, 0, 0], img[0, 1, 1] = np.nan, np.inf
    black, white = object_levels(img, "moon")
    with np.errstate(invalid="ignore"):
        expected = _reference_uint8(np.clip((img - black) / np.float32(white), 0.0, 1.0))
    np.testing.assert_array_equal(display_object(img, "moon", levels=(black, white)), expected)
    mono = img[..., 1]
    assert display_object(mono, "moon").shape == mono.shape
