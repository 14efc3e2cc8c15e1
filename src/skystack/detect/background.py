"""The sky background under the stars and its noise, on a coarse mesh.

Per 64-pixel cell: robust statistics from a fine histogram of the cell's values (no sort),
cells with too few sky pixels filled from a robust plane, and values bilinearly
interpolated where they are used (per row and column, never into frame-sized maps).
Star detection (:mod:`.stars`) thresholds against it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from _skystack_kernels.cpu import stars as kern

_MESH_CELL = 64  # px; several star FWHMs, small enough to follow a sky gradient


def _edges(n: int, cell: int) -> np.ndarray:
    k = max(1, int(round(n / cell)))
    return (np.arange(k + 1) * n // k).astype(np.int64)


def _axis(centres: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mesh interpolation weights along one axis: for each coordinate, the index of the
    mesh cell centre at or below it and the fraction towards the next one (below 0 or above
    1 beyond the outermost centres: linear extrapolation)."""
    if centres.size == 1:
        return np.zeros(coords.size, np.int64), np.zeros(coords.size)
    k = np.clip(np.searchsorted(centres, coords, side="right") - 1, 0, centres.size - 2)
    return k.astype(np.int64), (coords - centres[k]) / (centres[k + 1] - centres[k])


@dataclass(frozen=True)
class Background:
    """Sky background and noise of a frame on a coarse mesh, interpolated where used.

    ``level`` and ``noise`` hold one value per mesh cell (ADU), at the cell centres
    ``centres_y``/``centres_x`` (pixels); between centres they are bilinear, beyond the
    outermost ones extrapolated linearly (a sky gradient continues to the frame edge), and
    the noise never drops below ``noise_floor``. A one-cell axis is stored twice, so the
    arrays always have at least 2 rows and 2 columns.
    """

    level: np.ndarray
    noise: np.ndarray
    centres_y: np.ndarray
    centres_x: np.ndarray
    noise_floor: float
    median_level: float  # the frame's background (median over the mesh)
    median_noise: float  # the frame's noise σ (median over the mesh)
    shape: tuple[int, int]

    def axes(self, binned: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Interpolation weights (row index, row fraction, column index, column fraction)
        for every pixel, or (``binned``) for the centres of the 2×2 bins."""
        h, w = self.shape
        if binned:
            ys = 2.0 * np.arange(h // 2) + 0.5
            xs = 2.0 * np.arange(w // 2) + 0.5
        else:
            ys = np.arange(h, dtype=np.float64)
            xs = np.arange(w, dtype=np.float64)
        return (*_axis(self.centres_y, ys), *_axis(self.centres_x, xs))

    def level_map(self) -> np.ndarray:
        """The interpolated background over the whole frame, (H, W) float32 (a full-frame
        array: for inspection and tests; detection never builds it)."""
        return self._map(self.level, -np.inf)

    def noise_map(self) -> np.ndarray:
        """The interpolated noise σ over the whole frame, (H, W) float32 (see level_map)."""
        return self._map(self.noise, self.noise_floor)

    def _map(self, m: np.ndarray, floor: float) -> np.ndarray:
        rk, rf, ck, cf = self.axes()
        a = m[rk][:, ck] * (1 - cf) + m[rk][:, ck + 1] * cf
        b = m[rk + 1][:, ck] * (1 - cf) + m[rk + 1][:, ck + 1] * cf
        return np.maximum(a * (1 - rf[:, None]) + b * rf[:, None], floor).astype(np.float32)


def _twice(m: np.ndarray) -> np.ndarray:
    """A mesh with at least two rows and two columns (a single one repeated)."""
    if m.shape[0] == 1:
        m = np.concatenate([m, m], axis=0)
    if m.shape[1] == 1:
        m = np.concatenate([m, m], axis=1)
    return np.ascontiguousarray(m, dtype=np.float64)


_NONE = np.zeros((0, 0))
_NO_AXIS = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0))


def _median3x3(a: np.ndarray) -> np.ndarray:
    """3×3 median with edge cells repeated: ``scipy.ndimage.median_filter(a, size=3,
    mode="nearest")`` to the bit, on a mesh of a few hundred cells, without importing
    scipy.ndimage (12 MB of resident memory and 0.1 s in every deep-sky run)."""
    padded = np.pad(a, 1, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, (3, 3)), axis=(-2, -1))


def background_mesh(img: np.ndarray, cell: int = _MESH_CELL) -> Background:
    """The sky background and noise of ``img`` on a mesh of ~``cell`` px (NaNs ignored).

    Each cell's level is an iteratively κ-σ clipped median of every 3rd pixel each way
    (~450 samples per 64 px cell fix it to ~0.06 σ), then a 3×3 median over cells removes
    islands (a galaxy, a bright star's halo). The noise is the clipped σ of every 4th pixel
    around that interpolated level: a sky gradient across a cell would otherwise widen its
    distribution (by ~17 ADU for 58 ADU per cell). Two strided reads of the frame in its own
    dtype; nothing frame-sized is allocated.

    Parameters
    ----------
    img : (H, W) array
        Any real dtype, native byte order.
    cell : int
        Mesh cell size in pixels.

    Returns
    -------
    Background
    """
    h, w = img.shape
    ey, ex = _edges(h, cell), _edges(w, cell)
    # every 3rd pixel each way: ~450 samples per 64 px cell fix the median to ~0.06 σ
    step = 3 if cell >= 48 else 1
    mb = np.empty((len(ey) - 1, len(ex) - 1))
    ms = np.empty_like(mb)
    kern.mesh_stats(img, ey, ex, step, 3.0, 5, _NONE, *_NO_AXIS, _NONE, mb, ms)
    good = np.isfinite(mb)
    if not good.any():
        mb[:] = 0.0
        good[:] = True
    cy = (ey[:-1] + ey[1:] - 1) / 2.0
    cx = (ex[:-1] + ex[1:] - 1) / 2.0
    if min(mb.shape) >= 3:
        # a big galaxy or a bright star's halo biases a few cells upwards: a 3×3 median over
        # cells removes such islands. It runs on the residuals from a robust plane, because
        # at the mesh edges a median (whatever the padding) bends a sky gradient; cells
        # without data (NaN) take the plane's value
        plane = _robust_plane(mb, good)
        mb = plane + _median3x3(np.where(good, mb - plane, 0.0))
    elif not good.all():
        mb[~good] = np.median(mb[good])
    level = _twice(mb)
    cyy = cy if cy.size > 1 else np.array([cy[0], cy[0] + 1.0])
    cxx = cx if cx.size > 1 else np.array([cx[0], cx[0] + 1.0])
    rk, rf = _axis(cyy, np.arange(h, dtype=np.float64))
    ck, cf = _axis(cxx, np.arange(w, dtype=np.float64))
    # σ on a second pass, around the interpolated background; the first pass's σ per cell
    # is the histogram's scale guess
    hint = np.where(np.isfinite(ms), ms, 0.0)
    kern.mesh_stats(img, ey, ex, step + 1, 3.0, 5, level, rk, rf, ck, cf, hint, np.empty_like(mb), ms)
    sgood = np.isfinite(ms)
    ms[~sgood] = np.median(ms[sgood]) if sgood.any() else 0.0
    if min(ms.shape) >= 3:
        ms = _median3x3(ms)
    return Background(level=level, noise=_twice(ms), centres_y=cyy, centres_x=cxx,
                      # linear extrapolation at the edges must not drive the noise towards zero
                      noise_floor=float(0.5 * ms.min()),
                      median_level=float(np.median(mb[good])), median_noise=float(np.median(ms)),
                      shape=(int(h), int(w)))


def _robust_plane(m: np.ndarray, good: np.ndarray) -> np.ndarray:
    """A plane a + b·i + c·j fitted to the ``good`` cells of a mesh by least squares,
    refitted once without the cells more than 3 robust σ away."""
    jj, ii = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    a = np.column_stack([np.ones(m.size), ii.ravel(), jj.ravel()]).astype(np.float64)
    v = np.where(good, m, 0.0).ravel().astype(np.float64)
    keep = good.ravel().copy()
    for _ in range(2):
        coef = np.linalg.lstsq(a[keep], v[keep], rcond=None)[0]
        r = v - a @ coef
        s = 1.4826 * np.median(np.abs(r[keep])) + 1e-12
        keep = good.ravel() & (np.abs(r) <= 3.0 * s)
        if keep.sum() < 3:
            break
    return (a @ coef).reshape(m.shape)
