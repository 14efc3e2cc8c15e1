#!/usr/bin/env python
"""The blog post's pipeline, as a new user would write it: every frame loaded into memory,
ORB on a min–max 8-bit view, FLANN (LSH) + ratio test, estimateAffinePartial2D, warpAffine
onto the first frame, mean. Used by seed_vs_skystack.py as the baseline; writes its
transforms so their accuracy can be measured.

    python benchmarks/naive_seed.py FOLDER OUT.fits TRANSFORMS.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from astropy.io import fits


def u8(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    return np.rint((img - lo) * (255.0 / max(hi - lo, 1e-9))).astype(np.uint8)


def main(folder: str, out: str, transforms_out: str) -> None:
    paths = sorted(Path(folder).glob("*.fits"))
    frames = [fits.getdata(p).astype(np.float32) for p in paths]  # all in memory
    h, w = frames[0].shape
    orb = cv2.ORB_create(nfeatures=3000)
    flann = cv2.FlannBasedMatcher(dict(algorithm=6, table_number=6, key_size=12, multi_probe_level=1),
                                  dict(checks=50))
    k0, d0 = orb.detectAndCompute(u8(frames[0]), None)
    aligned = [frames[0]]
    transforms = [np.eye(2, 3).tolist()]
    for f in frames[1:]:
        k, d = orb.detectAndCompute(u8(f), None)
        good = [m[0] for m in flann.knnMatch(d, d0, k=2) if len(m) == 2 and m[0].distance < 0.7 * m[1].distance]
        src = np.float32([k[m.queryIdx].pt for m in good])
        dst = np.float32([k0[m.trainIdx].pt for m in good])
        m, _ = cv2.estimateAffinePartial2D(src, dst) if len(good) >= 3 else (None, None)
        if m is None:
            m = np.eye(2, 3)
        transforms.append(m.tolist())
        aligned.append(cv2.warpAffine(f, m, (w, h)))
    stack = np.mean(aligned, axis=0)
    fits.PrimaryHDU(stack.astype(np.float32)).writeto(out, overwrite=True)
    Path(transforms_out).write_text(json.dumps(transforms))


if __name__ == "__main__":
    main(*sys.argv[1:4])
