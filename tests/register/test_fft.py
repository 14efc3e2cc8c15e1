"""skystack.register.fft: SciPy's pocketfft loaded without ``scipy.fft`` gives scipy.fft's
bits; where it cannot be loaded, scipy.fft itself is used; the lucky command imports no
SciPy at all."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.fft as sfft

from skystack.register import fft


@pytest.mark.parametrize("shape", [(48, 48), (7, 64, 64), (3, 45, 33), (240, 320), (1, 31, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_transforms_are_scipys_to_the_bit(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal(shape).astype(dtype)
    f = fft.rfft2(a)
    want = sfft.rfft2(a, workers=1)
    assert f.dtype == want.dtype and np.array_equal(f, want)
    back = fft.irfft2(f, shape[-2:])
    want_back = sfft.irfft2(want, s=shape[-2:], workers=1)
    assert back.dtype == want_back.dtype and np.array_equal(back, want_back)
    np.testing.assert_allclose(back, a, atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, bool, np.float16, ">f4", ">f8", "<f4"])
def test_any_input_type_is_converted_as_scipy_converts_it(dtype):
    rng = np.random.default_rng(5)
    a = (rng.random((64, 80)) * 200).astype(dtype)  # big-endian: FITS data as astropy reads them
    f, want = fft.rfft2(a), sfft.rfft2(a, workers=1)
    assert f.dtype == want.dtype and np.array_equal(f, want)
    spec = want.astype(want.dtype.newbyteorder(">"))
    back, want_back = fft.irfft2(spec, (64, 80)), sfft.irfft2(spec, s=(64, 80), workers=1)
    assert back.dtype == want_back.dtype and np.array_equal(back, want_back)


def test_strided_and_unaligned_input_is_transformed_as_scipy_does():
    rng = np.random.default_rng(6)
    view = rng.standard_normal((64, 80)).astype(np.float32)[::2, 1::3]
    assert np.array_equal(fft.rfft2(view), sfft.rfft2(view, workers=1))
    raw = np.zeros(64 * 80 * 4 + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(64, 80)
    unaligned[...] = rng.standard_normal((64, 80))
    assert not unaligned.flags.aligned
    assert np.array_equal(fft.rfft2(unaligned), sfft.rfft2(unaligned, workers=1))


def test_a_real_spectrum_is_taken_as_complex_and_a_complex_image_refused_as_scipy_does():
    x = np.random.default_rng(7).standard_normal((16, 9))
    assert np.array_equal(fft.irfft2(x, (16, 16)), sfft.irfft2(x, s=(16, 16), workers=1))
    with pytest.raises(TypeError, match="real"):
        fft.rfft2(np.zeros((8, 8), complex))
    with pytest.raises(TypeError, match="real"):
        sfft.rfft2(np.zeros((8, 8), complex))


def test_a_spectrum_of_another_size_is_refused_not_cropped():
    f = fft.rfft2(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="half-spectrum"):
        fft.irfft2(f, (32, 30))


def test_the_module_loaded_by_itself_is_the_one_scipy_uses():
    # imported here after skystack.register.fft (or before it, by another test module):
    # either way one module, initialised once
    assert fft.BACKEND == "pocketfft"
    from scipy.fft._pocketfft import basic
    assert basic.pfft is sys.modules[fft._NAME]


def test_a_module_that_does_not_work_as_expected_is_not_used():
    wrong = types.SimpleNamespace(r2c=lambda *a: np.zeros((2, 3), complex), c2r=lambda *a: np.zeros((2, 4)))
    assert not fft._works(wrong)
    old_api = types.SimpleNamespace(r2c=lambda a, axes: a, c2r=lambda a, axes: a)
    assert not fft._works(old_api)
    assert fft._works(sys.modules[fft._NAME])


def test_without_the_compiled_module_scipy_fft_is_used(monkeypatch):
    monkeypatch.setattr(fft, "_load_file", lambda: None)
    monkeypatch.delitem(sys.modules, fft._NAME)
    assert fft._load() is None
    rfft2, irfft2 = fft._through_scipy()
    a = np.random.default_rng(1).standard_normal((5, 40, 36)).astype(np.float32)
    assert np.array_equal(rfft2(a), fft.rfft2(a))
    assert np.array_equal(irfft2(rfft2(a), (40, 36)), fft.irfft2(fft.rfft2(a), (40, 36)))


def test_the_lucky_command_imports_no_scipy_and_no_deep_sky_registration():
    code = ("import sys, skystack.cli.lucky, skystack.pipeline.lucky.run\n"
            "from skystack.register import fft as f\n"
            "print(f.BACKEND, ' '.join(sorted(m for m in sys.modules if m.startswith('scipy')\n"
            "      or m in ('skystack.register.triangles', 'skystack.register.orb_match', 'skystack.detect'))))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["pocketfft", fft._NAME]
