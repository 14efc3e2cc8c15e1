"""write_stack: the image and its side files; the preview and the quality plot are drawn on
a side thread while the image is written, and their failures still reach the caller."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from skystack.errors import OutputError
from skystack.options import OutputOptions
from skystack.output import products


def _image():
    rng = np.random.default_rng(5)
    return rng.normal(100, 10, (40, 60)).astype(np.float32)


def test_every_side_file_is_written_and_listed(tmp_path):
    out = tmp_path / "s.fits"
    img = _image()
    count = np.full(img.shape, 7, np.int32)
    written = products.write_stack(out, img, header={"OBJECT": "M94"},
                                   output=OutputOptions(output=str(out), coverage=True), count=count)
    assert written[0] == out and products.preview_path(out) in written and products.coverage_path(out) in written
    assert np.array_equal(fits.getdata(products.coverage_path(out)), count.astype(np.float32))
    assert all(p.exists() for p in written)
    assert np.array_equal(fits.getdata(out), img)
    assert fits.getheader(out)["OBJECT"] == "M94"


def test_a_failing_preview_fails_the_write(tmp_path, monkeypatch):
    def broken(path, image):
        raise OutputError(f"{path}: disk full")

    monkeypatch.setattr(products, "write_preview", broken)
    out = tmp_path / "s.fits"
    with pytest.raises(OutputError, match="preview.png: disk full"):
        products.write_stack(out, _image(), header=None, output=OutputOptions(output=str(out)))
    assert not products.preview_path(out).exists()


def test_a_failing_image_write_raises_its_own_error(tmp_path, monkeypatch):
    # the image's writer fails while the preview is drawn: the image's error is raised
    def broken(*a, **k):
        raise OutputError("s.fits: read-only folder")

    monkeypatch.setattr(products, "write_image", broken)
    out = tmp_path / "s.fits"
    with pytest.raises(OutputError, match="read-only folder"):
        products.write_stack(out, _image(), header=None, output=OutputOptions(output=str(out)))
