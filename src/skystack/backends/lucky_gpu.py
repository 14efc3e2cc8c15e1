"""Lucky imaging on the GPU: batched sharpness views and cells, and batched phase
correlation, behind the same ``--backend`` switch as the deep-sky stack.

What runs here, for a batch of video frames at once:

* the ranking measurements of :mod:`skystack.quality.metrics` — the ``f``× area-averaged
  view (frames uploaded in their own dtype, uint8/uint16 crossing the bus at 1–2 bytes a
  pixel, converted on the device), its extrema (blank check), the LoG energy map and the
  per-cell means of energy and level at per-frame offsets — with the numba.cuda kernels of
  ``_skystack_kernels.gpu.lucky``;
* phase correlation (:class:`DeviceCorrelator`) of many same-size images against one
  reference spectrum: the window, whitening, Gaussian taper and inverse transform of
  :class:`skystack.register.planetary.PhaseCorrelator` with the array module's FFTs
  (``cupy.fft`` on a GPU), and the CPU's own three-point sub-pixel fit on the 3×3
  neighbourhoods of the peaks (the only thing downloaded);
* :class:`DeviceAligner`: :class:`~skystack.register.planetary.GlobalAligner`'s
  measurement (crop at the rounded coarse position, area-reduce, correlate, re-crop once
  when the result lands more than half a pixel away) for a batch of frames.

The device-array layer is :mod:`._device`'s: CuPy on a real GPU, NumPy under Numba's CUDA
simulator (``LuckyDevice(simulator=True)``, tests only), where ``xp.fft`` is ``numpy.fft``
and the very same kernels run simulated. Everything else is the same code. Parity with the
CPU path is tested in ``tests/backends/test_lucky_gpu.py`` (cell log-energies within
1e-4, rank order identical, shifts within 0.01 px on the synthetic videos).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..quality.metrics import LOG_SIGMA, gaussian_ksize
from ..register.planetary import GlobalAligner, PhaseCorrelator, Shift, _subpixel, crop_shifted
from ._device import GrowBuffer, OnDevice, device_layer

# dtypes uploaded as they are and converted on the device; anything else goes as float32
_UPLOAD_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _kernels():
    """The lucky kernels, imported on first use (numba.cuda must not load with ``import
    skystack``)."""
    from _skystack_kernels.gpu import lucky

    return lucky


@dataclass
class ViewBatch:
    """A batch of sharpness views on the device: ``views`` (B, h, w) float32 and, once
    asked for (:meth:`LuckyDevice.energy`), their LoG energy maps."""

    views: Any
    energy: Any = None


class LuckyDevice(OnDevice):
    """The lucky pipeline's GPU work on one device-array layer.

    Parameters
    ----------
    simulator : bool
        Run on Numba's CUDA simulator (NumPy "device" arrays; tests): only when asked,
        never because ``NUMBA_ENABLE_CUDASIM`` happens to be set.

    Raises
    ------
    BackendUnavailableError
        No CuPy or no CUDA device, or the simulator is on in this process
        (``simulator=False``); the simulator is off (``simulator=True``).

    Notes
    -----
    One instance serves one thread at a time: it owns one stream and reusable buffers.
    Callers on several threads (the lucky pipeline's threaded chunk tasks) hold ``lock``
    around their device work.
    """

    name = "cupy"

    def __init__(self, simulator: bool = False) -> None:
        self._layer = device_layer(simulator)
        self.xp = self._layer.xp
        self._stream = self._layer.stream()
        L = self._layer
        self._stage = GrowBuffer(L.pinned, lambda: L.sync(self._stream))
        self._out_host = GrowBuffer(L.pinned, lambda: L.sync(self._stream))
        self._gauss: dict[float, Any] = {}
        self.lock = threading.Lock()

    # -- transfers ------------------------------------------------------------------------

    def upload(self, frames: Sequence[np.ndarray]):
        """Stack same-shape 2-D ``frames`` into a device ``(B, H, W)`` array in their own
        dtype (uint8, uint16, float32; others as float32), through a page-locked buffer."""
        L = self._layer
        shape = (len(frames),) + tuple(frames[0].shape)
        dtype = frames[0].dtype if all(f.dtype == frames[0].dtype for f in frames) else np.dtype(np.float32)
        dtype = dtype if dtype in _UPLOAD_DTYPES else np.dtype(np.float32)
        L.sync(self._stream)  # the previous batch's upload has left the staging buffer
        stage = self._stage.view(shape, dtype)
        for k, f in enumerate(frames):
            if f.shape != shape[1:]:
                raise ValueError(f"frame {k} has shape {f.shape}, the batch {shape[1:]}")
            np.copyto(stage[k], f, casting="unsafe")
        # a fresh device array per batch: the views of the previous one may still be in use
        dev = L.empty(shape, dtype)
        L.h2d(dev, stage, self._stream)
        return dev

    def download(self, dev) -> np.ndarray:
        """A host copy of a (small) device array."""
        L = self._layer
        if not dev.flags.c_contiguous:
            with L.on(self._stream):
                dev = self.xp.ascontiguousarray(dev)
        host = self._out_host.view(dev.shape, dev.dtype)
        L.d2h(host, dev, self._stream)
        L.sync(self._stream)
        return host.copy()

    def _launch(self, fn, *args) -> None:
        L = self._layer
        with L.launching():
            fn(*[L.kernel_array(a) if hasattr(a, "shape") else a for a in args], stream=L.kernel_stream(self._stream))

    # -- ranking --------------------------------------------------------------------------

    def area(self, src, factor: int):
        """``src`` (B, H, W) area-averaged by ``factor`` into a new float32 device array
        (B, H // f, W // f), at least one pixel a side (as ``cv2.resize(..., INTER_AREA)``
        with ``max(1, W // f)``)."""
        b, h, w = src.shape
        f = int(factor)
        if f <= 1:
            with self._layer.on(self._stream):
                return self.xp.ascontiguousarray(src, dtype=np.float32)
        out = self._layer.empty((b, max(1, h // f), max(1, w // f)), np.float32)
        self._launch(_kernels().area_downsample_gpu, src, out)
        return out

    def views(self, frames: Sequence[np.ndarray], factor: int) -> ViewBatch:
        """Upload ``frames`` (2-D, same shape) and make their sharpness views."""
        return ViewBatch(self.area(self.upload(frames), factor))

    def extrema(self, batch: ViewBatch) -> tuple[np.ndarray, np.ndarray]:
        """Per-view minimum and maximum (float64 host arrays)."""
        with self._layer.on(self._stream):
            lohi = self.xp.stack([batch.views.min(axis=(1, 2)), batch.views.max(axis=(1, 2))])
        lohi = self.download(lohi).astype(np.float64)
        return lohi[0], lohi[1]

    def energy(self, batch: ViewBatch, sigma: float = LOG_SIGMA):
        """The views' LoG energy maps ``(∇²(G_σ * v))²`` (computed once per batch)."""
        if batch.energy is None:
            lucky = _kernels()
            weights = self._gaussian(sigma)
            v = batch.views
            tmp = self._layer.empty(v.shape, np.float32)
            blurred = self._layer.empty(v.shape, np.float32)
            self._launch(lucky.blur_gpu, v, weights, 2, tmp)
            self._launch(lucky.blur_gpu, tmp, weights, 1, blurred)
            self._launch(lucky.log_energy_gpu, blurred, tmp)
            batch.energy = tmp
        return batch.energy

    def _gaussian(self, sigma: float):
        """The device copy of OpenCV's Gaussian taps for ``sigma`` (the CPU's kernel size)."""
        w = self._gauss.get(sigma)
        if w is None:
            taps = cv2.getGaussianKernel(gaussian_ksize(sigma), sigma, cv2.CV_64F).ravel()
            w = self._layer.empty(taps.shape, np.float64)
            stage = self._stage.view(taps.shape, np.float64)
            self._layer.sync(self._stream)
            stage[...] = taps
            self._layer.h2d(w, stage, self._stream)
            self._layer.sync(self._stream)
            self._gauss[sigma] = w
        return w

    def cells(self, batch: ViewBatch, rows: np.ndarray, size: int, ny: int, nx: int, dx: np.ndarray,
              dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell means of energy and level for the views ``rows`` of ``batch``, each frame's
        cells moved by its ``dx``, ``dy`` (whole view pixels). Returns host arrays
        ``(len(rows), ny·nx)``: energy means, level means (float64), clipped areas (int64)."""
        xp, L = self.xp, self._layer
        energy = self.energy(batch)
        n = len(rows)
        if n == 0:
            z = np.zeros((0, ny * nx))
            return z, z.copy(), z.astype(np.int64)
        idx = np.asarray(rows, np.int64)
        offsets = np.stack([np.asarray(dx, np.int64), np.asarray(dy, np.int64)])
        with L.on(self._stream):
            if n == batch.views.shape[0] and np.array_equal(idx, np.arange(n)):
                e, v = energy, batch.views
            else:
                sel = xp.asarray(idx)
                e, v = xp.ascontiguousarray(energy[sel]), xp.ascontiguousarray(batch.views[sel])
            d = xp.asarray(offsets)
            ddx, ddy = xp.ascontiguousarray(d[0]), xp.ascontiguousarray(d[1])
        e_mean = L.empty((n, ny * nx), np.float64)
        l_mean = L.empty((n, ny * nx), np.float64)
        area = L.empty((n, ny * nx), np.int64)
        self._launch(_kernels().cells_gpu, e, v, ddx, ddy, int(size), int(ny), int(nx), e_mean, l_mean, area)
        return self.download(e_mean), self.download(l_mean), self.download(area)

    def take(self, batch: ViewBatch, rows: np.ndarray):
        """The views ``rows`` of ``batch`` as one contiguous device array."""
        with self._layer.on(self._stream):
            return self.xp.ascontiguousarray(batch.views[self.xp.asarray(np.asarray(rows, np.int64))])

    # -- correlation ------------------------------------------------------------------------

    def correlator(self, corr: PhaseCorrelator) -> DeviceCorrelator:
        """A device twin of a CPU :class:`PhaseCorrelator` (same reference spectra,
        window and taper)."""
        return DeviceCorrelator(self, corr)

    def aligner(self, aligner: GlobalAligner) -> DeviceAligner:
        """A batched device twin of a CPU :class:`GlobalAligner`."""
        return DeviceAligner(self, aligner)


class DeviceCorrelator:
    """Phase correlation of many images against the single reference of a CPU
    :class:`~skystack.register.planetary.PhaseCorrelator`, on the device.

    The reference spectrum, window and taper are the CPU correlator's own arrays, uploaded
    once; a batch of images costs one forward and one inverse batched real FFT. Only the
    3×3 neighbourhood of each correlation peak comes back, and the CPU's sub-pixel fit
    (``register.planetary._subpixel``) finishes the job, so the two paths differ only by
    the FFT libraries' float32 rounding.
    """

    def __init__(self, device: LuckyDevice, corr: PhaseCorrelator):
        # the correlator's state is read, never changed: one reference, its conjugate
        # spectrum, window, taper and the ideal peak height
        conj, win, taper, ideal = corr._conj, corr._win, corr._taper, corr._ideal
        if conj.shape[0] != 1:
            raise ValueError("a DeviceCorrelator correlates against one reference")
        self._dev = device
        self.shape = corr.shape
        self._ideal = float(ideal)
        L, xp = device._layer, device.xp
        with L.on(device._stream):
            self._conj = xp.asarray(np.ascontiguousarray(conj[0]))
            self._win = xp.asarray(np.ascontiguousarray(win))
            self._taper = xp.asarray(np.ascontiguousarray(taper))
        L.sync(device._stream)

    def measure_many(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Displacements ``(n, 2)`` (sx, sy) and responses ``(n,)`` of the device images
        ``(n, h, w)`` float32 against the reference (as ``PhaseCorrelator.measure_many``)."""
        dev, xp = self._dev, self._dev.xp
        n = images.shape[0]
        if images.shape[1:] != self.shape:
            raise ValueError(f"image shape {images.shape[1:]} differs from the reference {self.shape}")
        if n == 0:
            return np.zeros((0, 2)), np.zeros(0)
        h, w = self.shape
        with dev._layer.on(dev._stream):
            a = images.astype(np.float32, copy=False)
            a = (a - a.mean(axis=(-2, -1), keepdims=True, dtype=np.float32)) * self._win
            f = xp.fft.rfft2(a).astype(np.complex64, copy=False)
            x = f * self._conj
            mag = xp.abs(x)
            # the CPU correlator's whitening floor and taper (see PhaseCorrelator._block)
            mag += mag.max(axis=(-2, -1), keepdims=True) * np.float32(1e-6) + np.float32(1e-30)
            x *= self._taper / mag
            c = xp.fft.irfft2(x, s=(h, w)).astype(np.float32, copy=False)
            flat = c.reshape(n, -1).argmax(axis=1)
            iy, ix = flat // w, flat % w
            # each peak's 3x3 neighbourhood, wrapping around the circular surface
            oy = (iy[:, None] + xp.arange(-1, 2)[None, :]) % h
            ox = (ix[:, None] + xp.arange(-1, 2)[None, :]) % w
            k = xp.arange(n)[:, None, None]
            near = c[k, oy[:, :, None], ox[:, None, :]]
            packed = xp.concatenate([near.reshape(n, 9).astype(np.float64),
                                     xp.stack([iy, ix], axis=1).astype(np.float64)], axis=1)
        host = dev.download(packed)
        near_h = host[:, :9].reshape(n, 3, 3)
        iy_h, ix_h = host[:, 9].astype(np.int64), host[:, 10].astype(np.int64)
        one = np.ones(n, np.int64)
        dx, dy = _subpixel(near_h, one, one)
        sx = np.where(ix_h > w // 2, ix_h - w, ix_h) + dx
        sy = np.where(iy_h > h // 2, iy_h - h, iy_h) + dy
        return np.stack([sx, sy], axis=1), near_h[:, 1, 1] / self._ideal


class DeviceAligner:
    """:meth:`GlobalAligner.measure <skystack.register.planetary.GlobalAligner.measure>`
    for a batch of frames: crops at the rounded coarse positions (on the host: a copy),
    area reduction and correlation on the device, one batched re-measurement of the frames
    whose result landed more than half a pixel from their crop."""

    def __init__(self, device: LuckyDevice, aligner: GlobalAligner):
        self._dev = device
        self.roi = aligner.roi
        self.downsample = aligner.downsample
        self._corr = DeviceCorrelator(device, aligner._corr)

    def _measure_at(self, lums: Sequence[np.ndarray], cx: np.ndarray,
                    cy: np.ndarray) -> tuple[list[Shift], np.ndarray]:
        crops, inside = [], np.empty(len(lums))
        for k, lum in enumerate(lums):
            crop, inside[k] = crop_shifted(lum, self.roi, int(cx[k]), int(cy[k]))
            crops.append(crop)
        dev = self._dev
        reduced = dev.area(dev.upload(crops), self.downsample)
        s, r = self._corr.measure_many(reduced)
        f = self.downsample
        # area averaging keeps pixel centres aligned: a shift of d reduced pixels is f*d
        shifts = [Shift(float(f * s[k, 0] + cx[k]), float(f * s[k, 1] + cy[k]), float(r[k])) for k in range(len(lums))]
        return shifts, inside

    def measure_many(self, lums: Sequence[np.ndarray], coarse: np.ndarray) -> tuple[list[Shift], np.ndarray]:
        """The displacements of the luminance frames ``lums`` (same shape) from their
        coarse positions ``coarse`` (n, 2), and the fraction of the ROI inside each."""
        if len(lums) == 0:
            return [], np.zeros(0)
        c = np.asarray(coarse, np.float64).reshape(-1, 2)
        cx = np.array([int(round(v)) for v in c[:, 0]])
        cy = np.array([int(round(v)) for v in c[:, 1]])
        shifts, inside = self._measure_at(lums, cx, cy)
        nx = np.array([int(round(s.sx)) for s in shifts])
        ny = np.array([int(round(s.sy)) for s in shifts])
        again = np.nonzero(((nx != cx) | (ny != cy)) & np.array([s.response > 0 for s in shifts]))[0]
        if again.size:
            s2, in2 = self._measure_at([lums[k] for k in again], nx[again], ny[again])
            for j, k in enumerate(again):
                if s2[j].response >= 0.5 * shifts[k].response:
                    shifts[k], inside[k] = s2[j], in2[j]
        return shifts, inside


__all__ = ["DeviceAligner", "DeviceCorrelator", "LuckyDevice", "ViewBatch"]
