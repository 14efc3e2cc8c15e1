import numpy as np
import pytest

from skystack.errors import UsageError
from skystack.stack.plan import band_matrix, plan_bands, source_rows
from skystack.types import Transform


def test_band_height_follows_budget_and_frame_count():
    kw = dict(height=2000, width=3000, channels=1, memory_limit=256 * 2**20, concurrent=2, src_rows_extra=120)
    p100 = plan_bands(n_frames=100, **kw)
    p400 = plan_bands(n_frames=400, **kw)
    assert p100.band_rows > p400.band_rows >= 1
    # the buffers of the bands in flight stay inside the budget
    for p, n in ((p100, 100), (p400, 400)):
        in_flight = 2 * p.band_rows * 3000 * 4 * (n + 3) + 2000 * 3000 * 4 * 2
        assert in_flight <= 256 * 2**20
    bands = p100.bands
    assert bands[0][0] == 0 and bands[-1][1] == 2000
    assert all(b[1] == c[0] for b, c in zip(bands, bands[1:]))


def test_budget_below_one_row_is_a_clear_error():
    with pytest.raises(UsageError, match="too small.*needs about"):
        plan_bands(height=2000, width=3000, channels=1, n_frames=100, memory_limit=2 * 2**20)


def test_source_rows_cover_every_tap_of_a_rotated_band():
    t = Transform.from_params(dx=12.3, dy=-7.9, angle_deg=2.0, center=(400, 300))
    h_src, w = 600, 800
    y0, y1 = 200, 240
    rows = source_rows(t.matrix, y0, y1, w, h_src, "lanczos")
    assert rows is not None
    inv = t.inverse()
    ys, xs = np.mgrid[y0:y1, 0:w]
    src = inv.apply(np.column_stack([xs.ravel(), ys.ravel()]))
    needed_lo = max(0, int(np.floor(src[:, 1].min())) - 3)
    needed_hi = min(h_src, int(np.floor(src[:, 1].max())) + 5)
    assert rows[0] <= needed_lo and rows[1] >= needed_hi


def test_band_matrix_maps_local_rows():
    t = Transform.from_params(dx=3.0, dy=5.0, angle_deg=1.0, center=(50, 50))
    m = band_matrix(t.matrix, src_y0=40, band_y0=30)
    p = np.array([[17.0, 63.0]])
    full = t.apply(p)[0]
    local = Transform(m).apply(p - [0, 40])[0]
    assert np.allclose(local, full - [0, 30])


def test_band_warp_equals_whole_frame_warp(rng):
    import cv2

    from skystack.backends.cpu import CpuBackend

    img = rng.normal(100, 10, (120, 160)).astype(np.float32)
    t = Transform.from_params(dx=4.4, dy=-3.3, angle_deg=1.5, center=(80, 60))
    be = CpuBackend()
    whole = be.warp(img, t.matrix, (120, 160), "lanczos")
    for y0, y1 in [(0, 17), (17, 60), (60, 120)]:
        sy0, sy1 = source_rows(t.matrix, y0, y1, 160, 120, "lanczos")
        band = be.warp(img[sy0:sy1], band_matrix(t.matrix, sy0, y0), (y1 - y0, 160), "lanczos")
        ok = np.isfinite(whole[y0:y1])
        assert np.array_equal(ok, np.isfinite(band))
        assert np.allclose(band[ok], whole[y0:y1][ok], atol=1e-4)
    assert cv2 is not None


@pytest.mark.parametrize("interp", ["lanczos", "cubic", "bilinear"])
def test_tiled_band_warps_are_bit_identical_for_any_band_partition(rng, interp):
    from skystack.backends.base import BandJob
    from skystack.backends.cpu import CpuBackend
    from skystack.stack.plan import WARP_TILE_ROWS

    h, w = 100, 90  # 100 is not a multiple of the tile height: the last tile is cut
    img = rng.normal(100, 10, (h, w)).astype(np.float32)
    t = Transform.from_params(dx=2.7, dy=-1.9, angle_deg=1.2, center=(45, 50))
    be = CpuBackend()

    def render(band_rows):
        out = np.empty((h, w), np.float32)
        for y0 in range(0, h, band_rows):
            y1 = min(y0 + band_rows, h)
            y1t = -(-y1 // WARP_TILE_ROWS) * WARP_TILE_ROWS
            sy0, sy1 = source_rows(t.matrix, y0, y1t, w, h, interp)
            job = BandJob(rows=img[sy0:sy1], matrix=band_matrix(t.matrix, sy0, y0), scale=np.ones(1),
                          offset=np.zeros(1), frame_matrix=t.matrix, src_y0=sy0, band_y0=y0, src_height=h)
            be.warp_job(job, out[y0:y1], interp)
        return out

    a, b, c = render(8), render(40), render(96)
    assert np.array_equal(a, b, equal_nan=True) and np.array_equal(a, c, equal_nan=True)
    whole = be.warp(img, t.matrix, (h, w), interp)
    ok = np.isfinite(a) & np.isfinite(whole)
    assert ok.mean() > 0.8 and np.allclose(a[ok], whole[ok], atol=1e-3)
