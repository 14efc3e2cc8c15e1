"""The rejection kernels against the field's own libraries where the definitions
coincide: ``astropy.stats.sigma_clip`` (median centre; sample σ for ``sigma``, 1.4826 MAD
for ``mad``; iterated) and ccdproc's ``Combiner.sigma_clipping`` (one pass), each followed
by the mean of what is left."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import sigma_clip

from _skystack_kernels.codes import REDUCE, REJECT
from _skystack_kernels.cpu.combine import combine_band


def _band(seed=0, n=15, h=6, w=7):
    rng = np.random.default_rng(seed)
    band = rng.normal(100.0, 5.0, (n, h, w))
    hits = rng.random((n, h, w)) < 0.06  # hot pixels, cosmic rays, a dark column
    band[hits] += rng.choice([-60.0, 80.0, 400.0], size=int(hits.sum()))
    return band.astype(np.float32)


def _ours(band, method, k_low, k_high, max_iter):
    n, h, w = band.shape
    out, count = np.empty((h, w), np.float32), np.empty((h, w), np.int32)
    combine_band(band, np.ones(n, np.float32), REJECT[method], REDUCE["mean"], k_low, k_high, max_iter, out, count,
                 np.zeros((n, 2), np.int64))
    return out, count


def _std1(x, axis=None):
    # astropy hands the custom σ the data with the clipped values as NaN
    return np.nanstd(x, axis=axis, ddof=1)


@pytest.mark.parametrize("method,stdfunc", [("sigma", _std1), ("mad", "mad_std")])
@pytest.mark.parametrize("seed", range(3))
def test_iterated_clipping_matches_astropy_sigma_clip(method, stdfunc, seed):
    band = _band(seed)
    ours, count = _ours(band, method, 2.5, 3.0, 5)

    def clip(iters):
        return sigma_clip(band.astype(np.float64), sigma_lower=2.5, sigma_upper=3.0, maxiters=iters,
                          cenfunc="median", stdfunc=stdfunc, axis=0)

    clipped = clip(5)
    # The definitions coincide where no value comes back: astropy tests every value against
    # each pass's bounds, so a value clipped early can return when σ shrinks later, where
    # Siril's (and skystack's) rejection is final. Compare the pixels where it does not.
    masks = [clip(k).mask for k in range(1, 6)]
    final = np.all([(a <= b) for a, b in zip(masks, masks[1:])], axis=(0, 1))
    assert final.mean() > 0.9
    np.testing.assert_array_equal(count[final], (~clipped.mask).sum(axis=0)[final])
    np.testing.assert_allclose(ours[final], clipped.mean(axis=0).filled(np.nan)[final], rtol=1e-5)


def test_one_pass_matches_ccdproc_combiner():
    ccdproc = pytest.importorskip("ccdproc")
    from astropy.nddata import CCDData

    band = _band(7)
    ours, count = _ours(band, "sigma", 2.0, 2.0, 1)
    combiner = ccdproc.Combiner([CCDData(b.astype(np.float64), unit="adu") for b in band])
    combiner.sigma_clipping(low_thresh=2.0, high_thresh=2.0, func=np.ma.median,
                            dev_func=lambda a, axis=None: np.ma.std(a, axis=axis, ddof=1))
    theirs = combiner.average_combine()
    np.testing.assert_array_equal(count, (~combiner.data_arr.mask).sum(axis=0))
    np.testing.assert_allclose(ours, theirs.data, rtol=1e-5)
