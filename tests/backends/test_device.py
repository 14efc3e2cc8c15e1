"""The device-array layer under the GPU backends (the parts that run without a GPU here;
the layers themselves are exercised by the backend tests, under the simulator)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from skystack.backends._device import GrowBuffer, SimLayer, device_layer
from skystack.errors import BackendUnavailableError


def test_grow_buffer_reuses_its_block_and_grows_safely():
    allocs: list[int] = []
    syncs: list[int] = []

    def alloc(nbytes: int) -> np.ndarray:
        allocs.append(nbytes)
        return np.zeros(nbytes, np.uint8)

    buf = GrowBuffer(alloc, before_grow=lambda: syncs.append(len(allocs)))
    a = buf.view((4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and len(allocs) == 1
    a[...] = 7
    b = buf.view((2, 3, 2), np.int32)  # smaller: the same block, no allocation
    assert len(allocs) == 1 and np.shares_memory(a, b)
    c = buf.view((100,), np.float64)  # larger: queued work is waited for, then one new block
    assert len(allocs) == 2 and allocs[1] >= 800 and syncs == [1]
    assert not np.shares_memory(a, c)
    d = buf.view((90,), np.float64)  # within the grown block: reused
    assert len(allocs) == 2 and np.shares_memory(c, d)


def test_no_device_layer_without_cupy(monkeypatch):
    from skystack.backends import _device

    monkeypatch.setattr(_device, "simulator_enabled", lambda: False)  # as without NUMBA_ENABLE_CUDASIM
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendUnavailableError, match="CuPy and numba-cuda.*--backend cpu"):
        device_layer()


def test_the_simulator_is_a_device_only_when_asked_for(monkeypatch):
    """With NUMBA_ENABLE_CUDASIM on, a plain request refuses (nothing can run on a GPU in
    such a process) rather than quietly handing out the simulator; asked for explicitly,
    the simulator's layer comes back. Asked for while it is off: a clear error."""
    from skystack.backends import _device

    monkeypatch.setattr(_device, "simulator_enabled", lambda: True)
    with pytest.raises(BackendUnavailableError, match="NUMBA_ENABLE_CUDASIM=1 is set.*--backend cpu"):
        device_layer()
    assert isinstance(device_layer(simulator=True), SimLayer)
    monkeypatch.setattr(_device, "simulator_enabled", lambda: False)
    with pytest.raises(BackendUnavailableError, match="simulator was asked for but is off"):
        device_layer(simulator=True)


def test_sim_layer_copies_are_plain_and_synchronous():
    layer = SimLayer()
    s = layer.stream()
    host = np.arange(12, dtype=np.uint16).reshape(3, 4)
    dev = layer.empty((3, 4), np.uint16)
    layer.h2d(dev, host, s)
    back = np.zeros_like(host)
    layer.d2h(back, dev, s)
    np.testing.assert_array_equal(back, host)
    start = layer.mark(s)
    end = layer.mark(s)
    assert layer.elapsed(start, end) >= 0.0
