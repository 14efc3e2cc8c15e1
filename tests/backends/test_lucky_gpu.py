"""Lucky imaging on the GPU (``backends/lucky_gpu.py``, ``pipeline/lucky/gpu.py``) against
the CPU path it replaces: the ranking pass and the batched phase correlation.

Where they run (as tests/kernels/test_gpu_parity.py):

- With a CUDA device and CuPy: in this process, natively.
- Without one (CI): ``test_lucky_gpu_under_cudasim`` re-runs this file in a subprocess
  with ``NUMBA_ENABLE_CUDASIM=1``, where ``LuckyDevice(simulator=True)`` runs the same
  code on NumPy arrays (``numpy.fft`` for ``cupy.fft``) and the numba.cuda kernels in
  Numba's CUDA simulator. Videos are tiny: the simulator runs each CUDA thread in Python.

Tolerances (measured under the simulator, float32 FFTs and kernels against OpenCV and
``scipy.fft``): views and LoG energy to 1e-5 relative, cell log energies to 1e-4 (the
frame table stores them in float16 anyway), coarse and global shifts to 1e-3 px (the
issue asks ≤ 0.05 px), frame qualities to 1e-3, and the rank order identical.
"""
from __future__ import annotations

import logging
import sys

import cv2
import numpy as np
import pytest
from cudasim_run import SIMULATOR, simulated_module

from skystack.backends import registry
from skystack.errors import BackendUnavailableError, BadFrameError, UsageError
from skystack.options import LuckyOptions
from skystack.quality.metrics import cell_grid, log_energy_map, measure_view, sharpness_view
from skystack.register.planetary import GlobalAligner, PhaseCorrelator, shift_image
from skystack.testing.planetary import Seeing, make_lunar_video, make_planet_video

SHIFT_TOL_PX = 1e-3
CELL_TOL = 1e-4


NATIVE = not SIMULATOR and registry.cupy_device_count() > 0
here, test_lucky_gpu_under_cudasim = simulated_module(__file__, "lucky GPU tests", NATIVE)


@pytest.fixture(scope="module")
def device():
    from skystack.backends.lucky_gpu import LuckyDevice

    return LuckyDevice(simulator=SIMULATOR)


# ---------------------------------------------------------------------------------
# the measurements, one at a time, against OpenCV / the CPU functions


@here
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_gpu_views_and_energy_match_the_cpu(device, dtype):
    rng = np.random.default_rng(5)
    hi = {"uint8": 255, "uint16": 65535, "float32": 1.0}[dtype]
    frames = [(rng.random((23, 35)) * hi).astype(dtype) for _ in range(3)]  # odd: fractional area weights
    batch = device.views(frames, 2)
    views = device.download(batch.views)
    energy = device.download(device.energy(batch))
    for k, f in enumerate(frames):
        want = sharpness_view(f.astype(np.float32), downsample=2)
        assert views[k].shape == want.shape == (11, 17)
        np.testing.assert_allclose(views[k], want, rtol=1e-6, atol=1e-6 * hi)
        np.testing.assert_allclose(energy[k], log_energy_map(want), rtol=1e-5, atol=1e-5 * float(want.max()) ** 2)
    lo, top = device.extrema(batch)
    np.testing.assert_allclose(top, views.reshape(3, -1).max(axis=1))
    np.testing.assert_allclose(lo, views.reshape(3, -1).min(axis=1))


@here
def test_gpu_area_of_float_views_is_opencvs_inter_area(device):
    """The coarse view of a big surface frame is the view halved again on the device."""
    rng = np.random.default_rng(6)
    v = rng.random((2, 13, 18)).astype(np.float32)
    got = device.download(device.area(device.upload(list(v)), 2))
    for k in range(2):
        np.testing.assert_allclose(got[k], cv2.resize(v[k], (9, 6), interpolation=cv2.INTER_AREA), rtol=1e-6)


@here
def test_gpu_cells_match_measure_view_with_offsets(device):
    """Cells moved by each frame's displacement, some partly or wholly off the view."""
    video = make_lunar_video(3, (64, 96), seed=2)
    frames = [video.frame(i) for i in range(3)]
    batch = device.views(frames, 2)
    views = device.download(batch.views)
    grid = cell_grid(views.shape[1:])
    offsets = [(0, 0), (10, -3), (-9, 12)]  # the last two leave cells less than half inside
    dx = np.array([o[0] for o in offsets])
    dy = np.array([o[1] for o in offsets])
    e, lev, area = device.cells(batch, np.arange(3), grid.size, grid.ny, grid.nx, dx, dy)
    for k in range(3):
        want = measure_view(views[k], grid, offsets[k])
        inside = area[k] >= grid.size ** 2 / 2
        assert (~inside).sum() == np.isnan(want.log_energy).sum() and (k == 0 or (~inside).any())
        np.testing.assert_allclose(np.log(e[k][inside]), want.log_energy.ravel()[inside], rtol=0, atol=CELL_TOL)
        np.testing.assert_allclose(np.log(lev[k][inside]), want.log_level.ravel()[inside], rtol=0, atol=CELL_TOL)


# ---------------------------------------------------------------------------------
# phase correlation


@here
def test_gpu_correlator_matches_the_cpu_correlator(device):
    rng = np.random.default_rng(7)
    ref = cv2.GaussianBlur(rng.random((40, 48)).astype(np.float32), (0, 0), 1.5)
    truth = [(0.0, 0.0), (1.3, -0.6), (-2.45, 3.1), (4.8, 0.25)]
    imgs = np.stack([shift_image(ref, -sx, -sy) + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
                     for sx, sy in truth])
    cpu = PhaseCorrelator(ref, peak_sigma=1.0, window="tukey")
    want_s, want_r = cpu.measure_many(imgs)
    got_s, got_r = device.correlator(cpu).measure_many(device.upload(list(imgs)))
    assert np.abs(want_s - np.array(truth)).max() < 0.25  # the case measures real shifts
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=SHIFT_TOL_PX)
    np.testing.assert_allclose(got_r, want_r, rtol=0, atol=1e-4)


@here
@pytest.mark.parametrize("downsample", [1, 2])
def test_gpu_aligner_matches_global_aligner(device, downsample):
    """Frames of a lunar video against the mean of a few, from coarse positions off by up
    to 1.4 px (so some frames are measured twice), as GlobalAligner.measure does it."""
    video = make_lunar_video(6, (96, 112), seed=4, seeing=Seeing(jitter_px=3.0, distortion_px=0.0))
    lums = [video.frame(i).astype(np.float32) for i in range(6)]
    ref = np.mean([shift_image(lums[i], *video.shifts[i]) for i in range(3)], axis=0).astype(np.float32)
    cpu = GlobalAligner(ref, (12, 84, 12, 100), peak_sigma=1.5, downsample=downsample)
    coarse = np.array(video.shifts) + np.array([[1.4, -0.2], [0, 0], [-0.7, 0.9], [0.2, 0.6], [0, -1.2], [0.5, 0]])
    got, got_inside = device.aligner(cpu).measure_many(lums, coarse)
    again = 0
    for k, lum in enumerate(lums):
        want, inside = cpu.measure(lum, tuple(coarse[k]))
        again += (round(want.sx), round(want.sy)) != (round(coarse[k, 0]), round(coarse[k, 1]))
        assert abs(got[k].sx - want.sx) <= SHIFT_TOL_PX and abs(got[k].sy - want.sy) <= SHIFT_TOL_PX, (k, got[k], want)
        assert got[k].response == pytest.approx(want.response, abs=1e-4)
        assert got_inside[k] == pytest.approx(inside)
    assert again >= 1  # the re-measurement path ran


# ---------------------------------------------------------------------------------
# the ranking pass


def _rank_table(video, device, *, raw: bool = True, items_hook=None):
    from skystack.pipeline.lucky.frames import FrameTable, LuckyRun, Reader
    from skystack.pipeline.lucky.gpu import GpuRanker
    from skystack.pipeline.lucky.pool import Workers
    from skystack.pipeline.lucky.points import score_frames
    from skystack.pipeline.lucky.rank import Ranker, rank_all

    frames = video.as_frameset() if items_hook is None else items_hook(video.as_frameset())
    shape = video.shape
    opts = LuckyOptions(keep="3")
    workers = Workers(1, processes=False)
    try:
        run = LuckyRun(frames=frames, reader=Reader(frames, shape), table=FrameTable(len(frames)), opts=opts,
                       source="test", workers=workers, quiet=True)
        ranker = Ranker(opts, shape)
        mode = ranker.start(run, np.asarray(frames.read_raw(0), np.float32))
        rank_all(run, ranker, raw, GpuRanker(ranker, device) if device is not None else None)
        score_frames(run, ranker)
    finally:
        workers.close()
    return mode, run.table


def _assert_same_ranking(cpu, gpu) -> None:
    np.testing.assert_array_equal(gpu.status, cpu.status)
    ok = cpu.status == 0
    assert ok.sum() >= 5
    np.testing.assert_allclose(gpu.coarse[ok], cpu.coarse[ok], rtol=0, atol=SHIFT_TOL_PX)
    np.testing.assert_allclose(gpu.peak, cpu.peak, rtol=1e-6)
    # the table keeps cells in float16: equal up to one float16 step of the log
    np.testing.assert_allclose(gpu.log_energy.astype(np.float32), cpu.log_energy.astype(np.float32), rtol=0,
                               atol=4e-3, equal_nan=True)
    np.testing.assert_allclose(gpu.quality[ok], cpu.quality[ok], rtol=0, atol=1e-3)
    order = lambda t: np.argsort(-np.where(ok, t.quality, -np.inf), kind="stable")  # noqa: E731
    np.testing.assert_array_equal(order(gpu), order(cpu))


@here
def test_gpu_ranks_a_lunar_video_as_the_cpu(device):
    video = make_lunar_video(7, (64, 96), seed=3, blank_frames=[5])
    mode_c, cpu = _rank_table(video, None)
    mode_g, gpu = _rank_table(video, device)
    assert mode_c == mode_g == "surface"
    assert (cpu.status != 0).sum() == 1  # the blank frame
    _assert_same_ranking(cpu, gpu)


@here
def test_gpu_ranks_a_16bit_planet_video_as_the_cpu(device):
    video = make_planet_video(6, (64, 96), seed=3, radius_px=16.0, dtype="uint16")
    mode_c, cpu = _rank_table(video, None)
    mode_g, gpu = _rank_table(video, device)
    assert mode_c == mode_g == "planet"
    _assert_same_ranking(cpu, gpu)


@here
def test_gpu_ranker_chunk_is_the_rankers_for_the_tasks_key_frame(device):
    """GpuRanker.chunk returns what Ranker.chunk returns for the same task, frame for
    frame: an unreadable frame stays an error, and each task is correlated against its
    own key frame (the first one, a later one, and back), whatever the previous task's."""
    import dataclasses

    from skystack.pipeline.lucky.frames import FrameChunk, FrameTable, LuckyRun, Reader
    from skystack.pipeline.lucky.gpu import GpuRanker
    from skystack.pipeline.lucky.pool import Workers
    from skystack.pipeline.lucky.rank import KeyFrame, Ranker, _RankTask

    video = make_lunar_video(4, (64, 96), seed=8, seeing=Seeing(jitter_px=3.0))
    frames = video.as_frameset()
    opts = LuckyOptions(mode="surface")
    workers = Workers(1, processes=False)
    try:
        run = LuckyRun(frames=frames, reader=Reader(frames, video.shape), table=FrameTable(4), opts=opts,
                       source="t", workers=workers, quiet=True)
        ranker = Ranker(opts, video.shape)
        ranker.start(run, frames.read_raw(0).astype(np.float32))
    finally:
        workers.close()
    read = frames.read_raw
    gpu = GpuRanker(ranker, device)
    images = [frames.read_raw(0), BadFrameError("f", "truncated"), frames.read_raw(2)]
    chunk = FrameChunk(3, np.array([0, 1, 2]), images)
    first = dataclasses.replace(ranker.first_key, view=None)  # as rank_all's tasks name it
    k2 = ranker.chunk(_RankTask(FrameChunk(0, np.array([2]), [images[2]]), first), read)[0]
    later = KeyFrame(0, 2, k2.coarse, k2.coarse_view)
    for key in (first, later, first):
        task = _RankTask(chunk, key)
        got, want = gpu.chunk(task, read), ranker.chunk(task, read)
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert g.i == w.i and (g.error is None) == (w.error is None)
            if w.error is not None:
                continue
            assert g.keyable == w.keyable
            assert g.coarse == pytest.approx(w.coarse, abs=SHIFT_TOL_PX)
            assert g.response == pytest.approx(w.response, abs=1e-4)
            np.testing.assert_allclose(g.cells.log_energy, w.cells.log_energy, atol=CELL_TOL)
            np.testing.assert_allclose(g.coarse_view, w.coarse_view, rtol=1e-6, atol=1e-4)
        if key is later:
            assert got[2].coarse == pytest.approx(later.offset, abs=SHIFT_TOL_PX)  # frame 2 against itself


@here
@pytest.mark.parametrize("multipoint, workers", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_gpu_lucky_run_through_the_backend_switch(device, monkeypatch, multipoint, workers):
    """The whole lucky pipeline with its ranking and global alignment on the device (the
    switch returning the device, as --backend cupy does on a GPU) stacks as the CPU run:
    the same frames used, the same shifts within 1e-3 px, the same image to the rounding
    those shifts make. With two workers the tasks run on threads, never forked (a CUDA
    context is unusable in a forked child)."""
    import skystack
    from skystack.pipeline.lucky import pool
    from skystack.pipeline.lucky import run as lucky_run

    video = make_lunar_video(6, (64, 96), seed=11)
    kw = dict(keep="3", multipoint=multipoint, ap_size=32, workers=workers)
    cpu = skystack.lucky(video.as_frameset(), None, backend="cpu", **kw)
    monkeypatch.setattr(lucky_run, "resolve_lucky", lambda name: device if name == "cupy" else None)

    def no_fork(*a, **k):
        raise AssertionError("a lucky run with a device forked its workers")

    monkeypatch.setattr(pool, "_forked", no_fork)
    from skystack.backends.lucky_gpu import DeviceAligner

    measured = []
    real = DeviceAligner.measure_many

    def spy(self, lums, coarse):
        measured.append(len(lums))
        return real(self, lums, coarse)

    monkeypatch.setattr(DeviceAligner, "measure_many", spy)
    gpu = skystack.lucky(video.as_frameset(), None, backend="cupy", **kw)
    assert sum(measured) == 3  # the globally kept frames' shifts came from the device
    assert [f.fate for f in gpu.frames] == [f.fate for f in cpu.frames]
    assert gpu.n_used == cpu.n_used >= 3
    for g, c in zip(gpu.frames, cpu.frames):
        if c.transform is not None:
            np.testing.assert_allclose(g.transform.matrix, c.transform.matrix, rtol=0, atol=SHIFT_TOL_PX)
    np.testing.assert_allclose(gpu.image, cpu.image, rtol=0, atol=1e-2 * float(np.abs(cpu.image).max()))


# ---------------------------------------------------------------------------------
# the switch (no device needed)


def test_lucky_gpu_backend_option_and_switch(monkeypatch):
    monkeypatch.setattr(registry, "cupy_device_count", lambda: 0)
    assert LuckyOptions().backend == "auto"
    with pytest.raises(UsageError, match="--backend"):
        LuckyOptions(backend="cv2cuda")  # OpenCV's CUDA module has nothing for lucky imaging
    assert registry.resolve_lucky("cpu") is None
    assert registry.resolve_lucky("auto") is None
    with pytest.raises(BackendUnavailableError) as err:
        registry.resolve_lucky("cupy")
    assert str(err.value).startswith("--backend cupy:") and err.value.exit_code == 7
    with pytest.raises(UsageError, match="expected auto, cpu or cupy"):
        registry.resolve_lucky("opencl")


def test_lucky_gpu_auto_falls_back_to_cpu_when_the_gpu_stack_is_broken(monkeypatch, caplog):
    """A device counted but a CuPy that cannot be imported (or the simulator on in this
    process): auto warns and ranks on the CPU, never on the simulator."""
    monkeypatch.setattr(registry, "cupy_device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "cupy", None)
    with caplog.at_level(logging.WARNING, logger="skystack"):
        assert registry.resolve_lucky("auto") is None
    assert any("ranking on the CPU" in r.getMessage() for r in caplog.records)


def test_lucky_gpu_cli_backend_cupy_without_a_gpu_exits_7(tmp_path, monkeypatch, capsys):
    from skystack.cli import main

    monkeypatch.setattr(registry, "cupy_device_count", lambda: 0)
    video = make_lunar_video(6, (48, 64), seed=1)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), video.frame(i))
    rc = main(["lucky", str(folder), "-o", str(tmp_path / "out.fits"), "--backend", "cupy", "-q"])
    assert rc == 7
    assert "--backend cupy: no usable CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out.fits").exists()
