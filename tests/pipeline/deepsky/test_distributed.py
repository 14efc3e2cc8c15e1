"""Both phases on a dask.distributed cluster (a LocalCluster of 2 worker processes), and
the failures around it: an unreachable scheduler, a frame changing between the phases."""
from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits

import skystack
import skystack.pipeline.deepsky.run as run_mod
from skystack.cli import main
from skystack.errors import InputChangedError
from skystack.testing.synthetic import make_deepsky


@pytest.fixture(scope="module")
def lights(tmp_path_factory):
    s = make_deepsky(n_frames=8, shape=(200, 260), seed=8, max_shift=8.0, max_rot_deg=1.0, trail_frame=2,
                     star_density=3e-3)
    folder = tmp_path_factory.mktemp("lights")
    s.write_fits(folder)
    return folder


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40, memory_limit="2GiB") as c:
        yield c


def test_local_cluster_gives_the_local_result(lights, tmp_path, cluster):
    local = skystack.stack(lights, tmp_path / "local.fits", method="sigma", tile_rows=32, strip_cols=128)
    remote = skystack.stack(lights, tmp_path / "remote.fits", method="sigma", strip_cols=128,
                            scheduler=cluster.scheduler_address)
    assert [r.fate for r in remote.results] == [r.fate for r in local.results]
    for a, b in zip(local.results, remote.results):
        if a.transform is not None:
            assert np.array_equal(a.transform.matrix, b.transform.matrix)
    assert np.array_equal(fits.getdata(local.output), fits.getdata(remote.output), equal_nan=True)
    # tiles sized by the cluster: one per worker thread in flight, several per thread
    st = remote.report["stack"]
    assert st["in_flight"] == 2 and st["tiles"] >= 4 * 2
    assert st["tile_bytes"] <= st["phase2_budget"] < 2 * 2**30


def test_cluster_shape_reads_the_workers(cluster):
    from skystack.runtime.executor import cluster_shape

    shape = cluster_shape(cluster.scheduler_address, skystack.__version__)
    assert shape.workers == 2 and shape.threads == 2
    assert 0 < shape.thread_memory < 0.8 * 2 * 2**30


def test_workers_of_another_version_are_refused(lights, tmp_path, cluster, monkeypatch, capsys):
    monkeypatch.setattr(run_mod, "__version__", "0.0.1-other")  # this client; the workers run the real one
    rc = main(["stack", str(lights), "-o", str(tmp_path / "o.fits"), "-q", "--scheduler", cluster.scheduler_address])
    assert rc == 8
    err = capsys.readouterr().err
    assert "skystack 0.0.1-other" in err and f"runs skystack {skystack.__version__}" in err
    assert not (tmp_path / "o.fits").exists()


def test_unreachable_scheduler_exit_code(lights, tmp_path, capsys):
    rc = main(["stack", str(lights), "-o", str(tmp_path / "o.fits"), "-q", "--scheduler", "tcp://127.0.0.1:9"])
    assert rc == 8
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert not (tmp_path / "o.fits").exists()


def test_frame_changed_between_phases(lights, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "lights"
    shutil.copytree(lights, copy)
    victim = sorted(copy.glob("*.fits"))[3]
    original = run_mod.apply_selection

    def select_then_touch(*a, **k):
        kept = original(*a, **k)
        st = victim.stat()
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # "edited" after phase 1
        return kept

    monkeypatch.setattr(run_mod, "apply_selection", select_then_touch)
    with pytest.raises(InputChangedError, match=victim.name):
        skystack.stack(copy, tmp_path / "o.fits", method="sigma")
    assert not (tmp_path / "o.fits").exists()
