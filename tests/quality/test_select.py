from skystack.options import SelectOptions
from skystack.quality.select import select


def test_select_by_rank_and_thresholds():
    m = [{"fwhm_px": 2.0 + 0.1 * i, "n_stars": 100, "noise": 1.0, "roundness": 0.05} for i in range(10)]
    m[3]["fwhm_px"] = 9.0
    m[4]["roundness"] = 0.6
    m[5]["n_stars"] = 3
    r = select(m, SelectOptions(max_fwhm_px=5.0, max_roundness=0.3, min_stars=10, keep="50%"))
    assert "FWHM 9.00" in r[3] and "roundness" in r[4] and "3 stars" in r[5]
    kept = [i for i, why in enumerate(r) if not why]
    # 7 candidates left, 50% → 4 kept: the sharpest ones
    assert kept == [0, 1, 2, 6]
    assert "quality rank" in r[9]


def test_reference_is_never_dropped_by_keep():
    m = [{"fwhm_px": 2.0 + i, "n_stars": 100} for i in range(5)]
    r = select(m, SelectOptions(keep="2"), always_keep=4)
    assert not r[4] and not r[0] and all(r[i] for i in (1, 2, 3))
