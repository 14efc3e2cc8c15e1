#!/usr/bin/env python
"""The naive all-in-memory NumPy stack, for comparison: every frame loaded, every frame
warped (cv2, Lanczos-4, given transforms) into one (N, H, W) array, iterative sigma
clipping 3/3 with nanmedian/nanstd along the frames, nanmean of what is left.

    python benchmarks/naive_numpy_stack.py FOLDER TRANSFORMS.json OUT.fits
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from astropy.io import fits


def main(folder: str, transforms: str, out: str) -> None:
    paths = sorted(Path(folder).glob("*.fits"))
    mats = json.loads(Path(transforms).read_text())
    frames = [fits.getdata(p).astype(np.float32) for p in paths]
    h, w = frames[0].shape
    data = np.stack([cv2.warpAffine(f, np.array(m), (w, h), flags=cv2.INTER_LANCZOS4,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
                     for f, m in zip(frames, mats) if m is not None])
    del frames
    rejected = np.zeros(data.shape, dtype=bool)
    for _ in range(5):
        d = np.where(rejected, np.nan, data)
        med = np.nanmedian(d, axis=0)
        sd = np.nanstd(d, axis=0)
        new = rejected | (data < med - 3 * sd) | (data > med + 3 * sd)
        if np.array_equal(new, rejected):
            break
        rejected = new
    stack = np.nanmean(np.where(rejected, np.nan, data), axis=0)
    fits.PrimaryHDU(stack.astype(np.float32)).writeto(out, overwrite=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
