"""GPU backend: numba.cuda warp and rejection kernels on CuPy-owned memory and streams.

Per band of output rows, for each frame (job) in turn:

1. its source rows are copied into a page-locked staging buffer (host I/O) and sent to the
   device asynchronously on the lane's *copy* stream (native dtype: 16-bit frames cross
   the bus at 2 bytes a pixel, not 4);
2. the *compute* stream waits for that copy (and for the frame's tile table, a few
   hundred bytes, uploaded with it), converts to float32 planes, warps every channel on
   the fixed 8-row tile grid the CPU backend uses (so each output pixel is the same
   whatever the band partition) into a device ``(C, N, h, W)`` band buffer, in one kernel
   launch per frame and channel (all its tiles at once), and normalises
   (``v * scale + offset``);
3. once all frames are in, the combine kernel rejects and reduces each channel, and the
   image, count and rejection tallies come back through page-locked buffers.

Two staging slots and two streams double-buffer the frames: the host fills slot ``k+1``
and the copy engine uploads it while the kernels of frame ``k`` run; events keep a slot
from being overwritten before both its upload and its consumer have finished. Each thread
that calls the backend gets its own *lane* (streams, events, buffers), so the pipeline's
band tasks running on several Dask threads overlap one band's kernels with another band's
uploads, and never share a buffer.

The device-array layer (:mod:`._device`) is CuPy on a real GPU and NumPy under Numba's
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` and ``CupyBackend(simulator=True)``), where CI runs
this same code on tiny bands.

Parity with :class:`~.cpu.CpuBackend`: the combine kernel is the CPU kernel's twin (same
per-pixel source), so rejection and reduction agree within float32 rounding. The warp
kernel (``_skystack_kernels.gpu.warp``) follows ``CpuBackend.warp``'s edge rules (taps off
the frame replicate its edge, coverage by pixel centre) and OpenCV's interpolation
arithmetic; its CPU twin matches OpenCV to the bit (Lanczos) or one float32 ulp
(bilinear), and the tests check the backend against both (tests/backends/test_cupy.py).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from ..options import StackOptions
from ..stack.plan import WARP_TILE_ROWS, tile_warps
from ._device import GrowBuffer, OnDevice, device_layer
from .base import BandJob, BandResult
from .cpu import reject_codes

# dtypes uploaded as they are (converted to float32 on the device); anything else is
# converted on the host first, as the CPU backend does
_UPLOAD_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


# Scratch of the combine kernel (per thread and stacked value: the gathered values, masks,
# selection buffers): its size sets how many pixels are in flight at once. 256 MiB keeps
# ~78 000 threads busy on a 64-frame stack (53 bytes per value and thread), enough to fill a
# large GPU, and is allocated once per lane.
COMBINE_SCRATCH_BYTES = 256 * 2**20


def _kernels():
    """The numba.cuda twins of the CPU kernels, imported on first use (importing them
    needs numba.cuda, which must not load with ``import skystack``)."""
    from _skystack_kernels.gpu.combine import combine_band_gpu, combine_scratch_nbytes
    from _skystack_kernels.gpu.warp import warp_tiles_gpu

    return combine_band_gpu, warp_tiles_gpu, combine_scratch_nbytes


def _tile_table(pieces, interpolation: str, out_rows: int, src_rows: int) -> np.ndarray:
    from _skystack_kernels.cpu.warp import tile_table

    return tile_table(pieces, interpolation, out_rows, src_rows)


@dataclass
class Timings:
    """Where a GPU backend's time went, summed over calls (seconds; bytes).

    ``transfer_s``: host↔device copies (copy-engine time, from events); ``kernel_s``:
    conversion, warp, normalisation and combine kernels (compute-stream time);
    ``host_io_s``: host-side work: loading the jobs' rows (when they are loaders) and the
    copies into and out of the page-locked staging buffers.
    Copies and kernels overlap, so the three need not add up to the wall time.
    """

    transfer_s: float = 0.0
    kernel_s: float = 0.0
    host_io_s: float = 0.0
    bytes_h2d: int = 0
    bytes_d2h: int = 0

    def add(self, other: Timings) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _Lane:
    """One calling thread's streams, events and reusable buffers."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.copy = layer.stream()
        self.compute = layer.stream()
        sync = self.synchronize

        def device(nbytes: int):
            return layer.empty((nbytes,), np.uint8)

        self.staging = [GrowBuffer(layer.pinned, sync) for _ in range(2)]
        self.raw = [GrowBuffer(device, sync) for _ in range(2)]
        self.uploaded = [layer.event() for _ in range(2)]  # H2D from slot i done
        self.consumed = [layer.event() for _ in range(2)]  # device raw slot i read
        self.planar = GrowBuffer(device, sync)  # float32 (C, hs, Ws) of the current frame
        # float64 (N, T, 12): every frame's tile table for the band, one region per frame so
        # no upload overwrites a table a queued warp still reads
        self.tables = GrowBuffer(device, sync)
        self.tables_host = GrowBuffer(layer.pinned, sync)
        self.band = GrowBuffer(device, sync)  # float32 (C, N, h, W), or (C, H, W) for warp()
        self.small = GrowBuffer(device, sync)  # weights
        self.scratch = GrowBuffer(device, sync)  # the combine kernel's per-thread scratch
        self.small_host = GrowBuffer(layer.pinned, sync)
        self.image = GrowBuffer(device, sync)
        self.count = GrowBuffer(device, sync)
        self.rejected = GrowBuffer(device, sync)
        self.out_host = [GrowBuffer(layer.pinned, sync) for _ in range(3)]
        self.timings = Timings()
        self.marks: list[tuple[str, Any, Any]] = []

    def synchronize(self) -> None:
        self.layer.sync(self.copy)
        self.layer.sync(self.compute)

    def settle_marks(self) -> None:
        """Turn this call's timing events into seconds (after the streams were synced)."""
        for category, start, end in self.marks:
            dt = self.layer.elapsed(start, end)
            if category == "transfer":
                self.timings.transfer_s += dt
            else:
                self.timings.kernel_s += dt
        self.marks.clear()


class CupyBackend(OnDevice):
    """Warp and rejection-stack bands on a CUDA GPU (see the module docstring).

    Parameters
    ----------
    profile : bool
        Record CUDA events around every copy and kernel so :meth:`timings` can split the
        time into transfer / kernel / host I/O (costs a little; the benchmark turns it on).
    simulator : bool
        Run on Numba's CUDA simulator instead of a GPU (tests, code-path checks): only when
        asked; the simulator being on in the environment does not make it a device.

    Raises
    ------
    BackendUnavailableError
        No CuPy or no CUDA device, or the simulator is on in this process (``simulator=False``);
        the simulator is off (``simulator=True``).
    """

    name = "cupy"

    def __init__(self, profile: bool = False, simulator: bool = False) -> None:
        self._layer = device_layer(simulator)
        self._profile = profile
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._lanes_lock = threading.Lock()

    def timings(self) -> Timings:
        """Transfer / kernel / host I/O time summed over all calls and threads (with
        ``profile=True``; only host I/O and byte counts otherwise)."""
        total = Timings()
        with self._lanes_lock:
            for lane in self._lanes:
                total.add(lane.timings)
        return total

    # -- public API -----------------------------------------------------------------

    def warp(self, rows: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int], interpolation: str,
             out: np.ndarray | None = None) -> np.ndarray:
        """Resample ``rows`` (H0, W0[, C]) through ``matrix`` onto an ``out_shape`` (h, W)
        grid on the GPU; float32 host array (h, W[, C]), NaN where the frame does not cover
        the output (as :meth:`CpuBackend.warp`, a single warp, no tile grid)."""
        _, warp_tiles, _ = _kernels()
        _check_interpolation(interpolation)
        L, lane = self._layer, self._lane()
        h, w = out_shape
        c = rows.shape[2] if rows.ndim == 3 else 1
        # one tile: the whole output from all the rows
        table = _tile_table([(0, h, 0, 0, rows.shape[0], np.asarray(matrix, dtype=np.float64))], interpolation,
                            h, rows.shape[0])
        tables = self._tables(lane, 1, 1)
        self._upload_table(lane, tables, 0, table)
        planar = self._upload(lane, 0, rows, c)
        dst = lane.band.view((c, h, w), np.float32)
        ks = L.kernel_stream(lane.compute)
        start = self._mark(lane.compute)
        table = L.kernel_array(tables[1][0, :1])
        with L.launching():
            for ch in range(c):
                warp_tiles(L.kernel_array(planar[ch]), table, L.kernel_array(dst[ch]), stream=ks)
        self._span("kernel", start, lane.compute)
        host = self._download(lane, 0, dst)
        L.sync(lane.compute)
        t0 = time.perf_counter()
        if out is None:
            out = np.empty((h, w, c) if c > 1 else (h, w), dtype=np.float32)
        out[...] = host.transpose(1, 2, 0) if c > 1 else host[0]
        lane.timings.host_io_s += time.perf_counter() - t0
        lane.settle_marks()
        return out

    def combine_band(self, jobs: Sequence[BandJob], out_shape: tuple[int, ...], weights: np.ndarray,
                     options: StackOptions) -> BandResult:
        """Warp every job into a device ``(C, N, h, W)`` buffer, normalise, reject and
        reduce per channel; same contract as :meth:`CpuBackend.combine_band` (results: see
        the module docstring on parity)."""
        _, warp_tiles, _ = _kernels()
        interpolation = options.interpolation
        _check_interpolation(interpolation)
        h, w = out_shape[:2]
        c = out_shape[2] if len(out_shape) == 3 else 1
        n = len(jobs)
        if n == 0:
            return _empty_result(h, w, c)
        L, lane = self._layer, self._lane()
        band = lane.band.view((c, n, h, w), np.float32)
        # a band of h rows starting anywhere meets at most ceil(h / 8) + 1 grid tiles
        tables = self._tables(lane, n, -(-h // WARP_TILE_ROWS) + 1)
        ks = L.kernel_stream(lane.compute)
        for k, job in enumerate(jobs):
            slot = k % 2
            t0 = time.perf_counter()
            rows = job.load_rows()  # may read the frame now: one frame's rows at a time
            lane.timings.host_io_s += time.perf_counter() - t0
            n_tiles = self._upload_table(lane, tables, k, _job_table(job, h, w, rows.shape[0], interpolation))
            planar = self._upload(lane, slot, rows, c)
            del rows
            start = self._mark(lane.compute)
            if n_tiles == 0:  # the frame reaches no row of this band
                with L.on(lane.compute):
                    band[:, k].fill(np.nan)
            else:
                table = L.kernel_array(tables[1][k, :n_tiles])
                with L.launching():
                    # all tiles of the frame in one launch per channel (rows no tile reaches
                    # become NaN). Per channel, not one planar launch: band[:, k] is strided
                    # across frames, which the CUDA simulator's argument copies refuse.
                    for ch in range(c):
                        warp_tiles(L.kernel_array(planar[ch]), table, L.kernel_array(band[ch, k]), stream=ks)
            _normalise(L, lane.compute, band[:, k], job.scale, job.offset)
            self._span("kernel", start, lane.compute)
        return self._combine_on_device(lane, band, weights, options)

    def combine_warped(self, band_host: np.ndarray, weights: np.ndarray, options: StackOptions) -> BandResult:
        """Reject and reduce an already warped and normalised host band ``(N, h, W[, C])``
        on the GPU (the cv2.cuda backend warps with OpenCV, then stacks here)."""
        n, h, w = band_host.shape[:3]
        c = band_host.shape[3] if band_host.ndim == 4 else 1
        if n == 0:
            return _empty_result(h, w, c)
        L, lane = self._layer, self._lane()
        band = lane.band.view((c, n, h, w), np.float32)
        stage = lane.staging[0].view((c, n, h, w), np.float32)
        L.host_wait(lane.uploaded[0])
        t0 = time.perf_counter()
        stage[...] = np.moveaxis(band_host, 3, 0) if c > 1 else band_host[None]
        lane.timings.host_io_s += time.perf_counter() - t0
        start = self._mark(lane.copy)
        L.h2d(band, stage, lane.copy)
        self._span("transfer", start, lane.copy)
        lane.timings.bytes_h2d += stage.nbytes
        L.record(lane.uploaded[0], lane.copy)
        L.wait(lane.compute, lane.uploaded[0])
        return self._combine_on_device(lane, band, weights, options)

    # -- steps ----------------------------------------------------------------------

    def _lane(self) -> _Lane:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            lane = self._local.lane = _Lane(self._layer)
            with self._lanes_lock:
                self._lanes.append(lane)
        return lane

    def _mark(self, stream) -> Any:
        return self._layer.mark(stream) if self._profile else None

    def _span(self, category: str, start: Any, stream) -> None:
        if self._profile:
            self._lane().marks.append((category, start, self._layer.mark(stream)))

    def _upload(self, lane: _Lane, slot: int, rows: np.ndarray, c: int):
        """Stage ``rows`` through pinned slot ``slot``, upload on the copy stream, and
        convert to float32 planes ``(C, hs, Ws)`` on the compute stream."""
        L = self._layer
        if rows.ndim != (3 if c > 1 else 2) or (c > 1 and rows.shape[2] != c):
            raise ValueError(f"source rows of shape {rows.shape} do not match {c} channel(s)")
        dtype = rows.dtype if rows.dtype in _UPLOAD_DTYPES else np.dtype(np.float32)
        # the previous upload from this pinned slot must have left it before we overwrite it
        L.host_wait(lane.uploaded[slot])
        t0 = time.perf_counter()
        stage = lane.staging[slot].view(rows.shape, dtype)
        np.copyto(stage, rows, casting="unsafe")
        lane.timings.host_io_s += time.perf_counter() - t0
        raw = lane.raw[slot].view(rows.shape, dtype)
        # ...and the compute stream must have finished reading the device slot
        L.wait(lane.copy, lane.consumed[slot])
        start = self._mark(lane.copy)
        L.h2d(raw, stage, lane.copy)
        self._span("transfer", start, lane.copy)
        lane.timings.bytes_h2d += stage.nbytes
        L.record(lane.uploaded[slot], lane.copy)
        L.wait(lane.compute, lane.uploaded[slot])
        planar = lane.planar.view((c,) + rows.shape[:2], np.float32)
        start = self._mark(lane.compute)
        with L.on(lane.compute):
            if c == 1:
                planar[0] = raw
            else:
                planar[...] = raw.transpose(2, 0, 1)
        self._span("kernel", start, lane.compute)
        L.record(lane.consumed[slot], lane.compute)
        return planar

    def _tables(self, lane: _Lane, n: int, t_cap: int):
        """Pinned and device ``(n, t_cap, 12)`` tile-table buffers for one call (the previous
        call synchronised its streams, so both are free)."""
        from _skystack_kernels.cpu.warp import TILE_COLUMNS

        shape = (n, t_cap, TILE_COLUMNS)
        return lane.tables_host.view(shape, np.float64), lane.tables.view(shape, np.float64)

    def _upload_table(self, lane: _Lane, tables, k: int, table: np.ndarray) -> int:
        """Copy frame ``k``'s tile table into its region and send it on the copy stream,
        ahead of the frame's rows (whose upload event the warp waits for). Returns the
        number of tiles."""
        host, dev = tables
        t = table.shape[0]
        if t > host.shape[1]:
            raise ValueError(f"{t} tiles for a band with room for {host.shape[1]}")
        if t == 0:
            return 0
        host[k, :t] = table
        start = self._mark(lane.copy)
        self._layer.h2d(dev[k, :t], host[k, :t], lane.copy)
        self._span("transfer", start, lane.copy)
        lane.timings.bytes_h2d += table.nbytes
        return t

    def _combine_on_device(self, lane: _Lane, band, weights: np.ndarray, options: StackOptions) -> BandResult:
        combine_gpu, _, scratch_nbytes = _kernels()
        L = self._layer
        c, n, h, w = band.shape
        rej, red = reject_codes(options)
        # small_host is free: the previous call synchronised the compute stream before returning
        w_host = lane.small_host.view((n,), np.float32)
        w_host[...] = np.asarray(weights, dtype=np.float32).reshape(n)
        w_dev = lane.small.view((n,), np.float32)
        L.h2d(w_dev, w_host, lane.compute)
        image = lane.image.view((c, h, w), np.float32)
        count = lane.count.view((c, h, w), np.int32)
        rejected = lane.rejected.view((n, 2), np.int64)
        # as many threads as pixels, up to what the scratch budget holds (the kernel loops)
        n_threads = max(1, min(h * w, COMBINE_SCRATCH_BYTES // scratch_nbytes(n, 1)))
        scratch = lane.scratch.view((scratch_nbytes(n, n_threads),), np.uint8)
        ks = L.kernel_stream(lane.compute)
        start = self._mark(lane.compute)
        with L.on(lane.compute):
            rejected.fill(0)
        with L.launching():
            for ch in range(c):
                combine_gpu(L.kernel_array(band[ch]), L.kernel_array(w_dev), rej, red, float(options.kappa_low),
                            float(options.kappa_high), int(options.max_iter), L.kernel_array(image[ch]),
                            L.kernel_array(count[ch]), L.kernel_array(rejected), stream=ks,
                            scratch=L.kernel_array(scratch))
        self._span("kernel", start, lane.compute)
        img_h = self._download(lane, 0, image)
        cnt_h = self._download(lane, 1, count)
        rej_h = self._download(lane, 2, rejected)
        L.sync(lane.compute)
        t0 = time.perf_counter()
        if c > 1:
            res = BandResult(image=np.ascontiguousarray(img_h.transpose(1, 2, 0)),
                             count=np.ascontiguousarray(cnt_h.transpose(1, 2, 0)), rejected=rej_h.copy())
        else:
            res = BandResult(image=img_h[0].copy(), count=cnt_h[0].copy(), rejected=rej_h.copy())
        lane.timings.host_io_s += time.perf_counter() - t0
        lane.settle_marks()
        return res

    def _download(self, lane: _Lane, which: int, dev) -> np.ndarray:
        """Queue a device→pinned copy on the compute stream (read it after a sync)."""
        host = lane.out_host[which].view(dev.shape, dev.dtype)
        start = self._mark(lane.compute)
        self._layer.d2h(host, dev, lane.compute)
        self._span("transfer", start, lane.compute)
        lane.timings.bytes_d2h += host.nbytes
        return host


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in ("lanczos", "cubic", "bilinear"):
        raise ValueError(f"interpolation must be lanczos, cubic or bilinear, not {interpolation!r}")


def _job_table(job: BandJob, h: int, w: int, hs: int, interpolation: str) -> np.ndarray:
    """One job's tile table (``_skystack_kernels.cpu.warp.tile_table``): the CPU backend's
    tile grid when the job carries its absolute geometry, else one tile for the band, all
    rows relative to the band and to the job's source rows."""
    if job.frame_matrix is None:
        pieces = [(0, h, 0, 0, hs, np.asarray(job.matrix, dtype=np.float64))]
    else:
        y_band, y_src = job.band_y0, job.src_y0
        pieces = [(a - y_band, b - y_band, ty0 - y_band, sy0 - y_src, sy1 - y_src, m)
                  for ty0, _, a, b, sy0, sy1, m in tile_warps(job.frame_matrix, y_band, y_band + h, y_src,
                                                              y_src + hs, w, job.src_height, interpolation)]
    return _tile_table(pieces, interpolation, h, hs)


def _normalise(layer, stream, x, scale: np.ndarray, offset: np.ndarray) -> None:
    """``x[c] = x[c] * scale[c] + offset[c]`` in float32 on the device, two rounding steps
    exactly as the CPU backend's in-place NumPy ops (so the results are bit-identical)."""
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    offset = np.asarray(offset, dtype=np.float32).reshape(-1)
    if np.all(scale == 1) and np.all(offset == 0):
        return
    c = x.shape[0]
    if scale.size == 1 and c > 1:
        scale, offset = np.repeat(scale, c), np.repeat(offset, c)
    with layer.on(stream):
        for ch in range(c):
            x[ch] *= scale[ch]
            x[ch] += offset[ch]


def _empty_result(h: int, w: int, c: int) -> BandResult:
    shape = (h, w, c) if c > 1 else (h, w)
    return BandResult(image=np.full(shape, np.nan, dtype=np.float32), count=np.zeros(shape, dtype=np.int32),
                      rejected=np.zeros((0, 2), dtype=np.int64))


__all__ = ["CupyBackend", "Timings"]
