"""Real 2-D FFTs over the last two axes, for phase correlation: SciPy's pocketfft, called
exactly as ``scipy.fft.rfft2``/``irfft2`` call it, without importing ``scipy.fft``.

Why not simply ``import scipy.fft``: that import takes 0.13-0.16 s (it brings
``scipy.special`` and SciPy's array-API layer; ``python -X importtime``), half of
``skystack lucky``'s start-up, for two functions that live in one compiled module,
``scipy/fft/_pocketfft/pypocketfft``, which imports nothing and loads in about a
millisecond. This module loads that file from the installed SciPy, registers it under its
own name (a later ``import scipy.fft`` then reuses it instead of initialising it twice) and
checks it on a small transform whose result is known. If a SciPy release moves or changes
it, ``scipy.fft`` is imported instead: the same transforms, only the import is slower.

Why not NumPy's FFT, which is already imported: NumPy 2 transforms a batch of small
patches 1.3-2x slower than SciPy's pocketfft, which vectorises across lines (200 patches of
48x48: 2.1 ms against 1.0 ms forward), and the multi-point pass is mostly such batches.
OpenCV's ``dft`` transforms one image per call and keeps half-spectra in its packed CCS
layout, which the whitening of the cross-power spectrum cannot use as it is.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Callable

import numpy as np

_NAME = "scipy.fft._pocketfft.pypocketfft"


def _works(mod: ModuleType) -> bool:
    """Whether ``mod`` has pocketfft's ``r2c``/``c2r`` with the arguments used below: the
    transform of a 2x4 ramp, and back (exact in binary floating point)."""
    x = np.arange(8.0).reshape(2, 4)
    want = np.array([[28, -4 + 4j, -4], [-16, 0, 0]])
    try:
        f = mod.r2c(x, (0, 1), True, 0, None, 1)
        back = mod.c2r(f, (0, 1), 4, False, 2, None, 1)
    except Exception:  # a changed signature: use scipy.fft
        return False
    return f.shape == want.shape and np.allclose(f, want, atol=1e-12) and np.allclose(back, x, atol=1e-12)


def _load_file() -> ModuleType | None:
    """SciPy's compiled pocketfft module, loaded from its file by itself."""
    try:
        spec = importlib.util.find_spec("scipy")
        if spec is None or spec.origin is None:
            return None
        folder = os.path.join(os.path.dirname(spec.origin), "fft", "_pocketfft")
        path = next((p for p in (os.path.join(folder, "pypocketfft" + s)
                                 for s in importlib.machinery.EXTENSION_SUFFIXES) if os.path.isfile(p)), None)
        if path is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(_NAME, path)
        file_spec = importlib.util.spec_from_file_location(_NAME, path, loader=loader)
        if file_spec is None:
            return None
        mod = importlib.util.module_from_spec(file_spec)
        loader.exec_module(mod)
        return mod
    except Exception:  # not installed this way, or unloadable here: use scipy.fft
        return None


def _load() -> ModuleType | None:
    """The pocketfft module (already imported by scipy.fft, or loaded now); ``None`` where
    it cannot be loaded or does not work as expected."""
    mod = sys.modules.get(_NAME) or _load_file()
    if mod is None or not _works(mod):
        return None
    sys.modules.setdefault(_NAME, mod)
    return mod


def _native(x: np.ndarray) -> np.ndarray:
    """``x`` as pocketfft takes it, converted as scipy.fft converts it: float16 to float32,
    integers and booleans to float64, and native byte order, aligned."""
    x = np.asarray(x)
    if x.dtype == np.float16:
        return x.astype(np.float32)
    if x.dtype.kind not in "fc":
        return x.astype(np.float64)
    if x.dtype.isnative and x.flags.aligned:
        return x
    return np.array(x, dtype=x.dtype.newbyteorder("="), copy=True)


def _direct(mod: ModuleType) -> tuple[Callable, Callable]:
    def rfft2(a: np.ndarray) -> np.ndarray:
        a = _native(a)
        if a.dtype.kind == "c":
            raise TypeError("x must be a real sequence")
        return mod.r2c(a, (a.ndim - 2, a.ndim - 1), True, 0, None, 1)

    def irfft2(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        x = _native(x)
        if x.dtype.kind != "c":
            x = x + 0j
        h, w = shape
        if x.shape[-2:] != (h, w // 2 + 1):  # scipy would crop or pad; phase correlation never asks
            raise ValueError(f"spectrum {x.shape[-2:]} is not the half-spectrum of {shape}")
        return mod.c2r(x, (x.ndim - 2, x.ndim - 1), w, False, 2, None, 1)

    return rfft2, irfft2


def _through_scipy() -> tuple[Callable, Callable]:
    import scipy.fft as sfft

    def rfft2(a: np.ndarray) -> np.ndarray:
        return sfft.rfft2(a, workers=1)

    def irfft2(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        return sfft.irfft2(x, s=shape, workers=1)

    return rfft2, irfft2


_mod = _load()
#: which implementation is in use: ``"pocketfft"`` (loaded directly) or ``"scipy.fft"``
BACKEND = "pocketfft" if _mod is not None else "scipy.fft"
rfft2, irfft2 = _direct(_mod) if _mod is not None else _through_scipy()
rfft2.__doc__ = "Forward FFT of real ``a`` over its last two axes (``scipy.fft.rfft2``, one thread)."
irfft2.__doc__ = ("Inverse of :func:`rfft2`: the real ``shape`` (h, w) images of half-spectra ``x`` "
                  "(``scipy.fft.irfft2(x, s=shape)``, one thread).")
