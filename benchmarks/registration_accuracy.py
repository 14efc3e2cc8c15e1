#!/usr/bin/env python
"""Registration accuracy and speed on the synthetic acceptance set; prints a table.

    python benchmarks/registration_accuracy.py            # 30 x 2000x1500, then 3000x2000 timing
    python benchmarks/registration_accuracy.py --n 10 --big-n 0

The acceptance set: 30 frames 2000x1500, shifts ±40 px, rotations ±2°, seeing 2.0–3.5 px
FWHM, hot pixels fixed on the sensor, cosmic rays, a satellite trail in frame 7. Each frame
is registered onto frame 0 (the identity) and compared with the generator's exact
transform: RMS and max (corner) error over the frame, in pixels. A frame is
*misregistered* when it fails or its max error exceeds 1 px.

Methods: ``stars`` and ``orb`` (skystack.register), and for comparison ``seed-orb``, the
method of the blog post the project grew from (ORB on a min–max 8-bit view, FLANN-LSH,
ratio test, cv2.estimateAffinePartial2D — no hot-pixel filtering, no refinement), and
``astroalign``, the field's library for star-field registration (``pip install
astroalign``; its defaults).
Frames are rendered in memory one at a time (nothing is written to disk).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
for _p in (_REPO / "src", _REPO / "kernels"):  # run from a checkout without installing
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from skystack.detect.stars import detect_stars  # noqa: E402
from skystack.options import RegisterOptions  # noqa: E402
from skystack.register.deepsky import Reference, register_frame  # noqa: E402
from skystack.testing.synthetic import make_deepsky  # noqa: E402
from skystack.types import Transform  # noqa: E402


def seed_orb_transform(frame: np.ndarray, ref: np.ndarray) -> Transform | None:
    """The seed's method as the blog post describes it (for comparison only)."""
    import cv2

    def u8(img):
        lo, hi = float(img.min()), float(img.max())
        return np.rint((img - lo) * (255.0 / max(hi - lo, 1e-9))).astype(np.uint8)

    orb = cv2.ORB_create(nfeatures=3000)
    k1, d1 = orb.detectAndCompute(u8(frame), None)
    k2, d2 = orb.detectAndCompute(u8(ref), None)
    if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
        return None
    flann = cv2.FlannBasedMatcher(dict(algorithm=6, table_number=6, key_size=12, multi_probe_level=1), dict(checks=50))
    good = [m[0] for m in flann.knnMatch(d1, d2, k=2) if len(m) == 2 and m[0].distance < 0.7 * m[1].distance]
    if len(good) < 3:
        return None
    src = np.float32([k1[m.queryIdx].pt for m in good])
    dst = np.float32([k2[m.trainIdx].pt for m in good])
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC)
    return None if m is None else Transform(m)


def astroalign_transform(frame: np.ndarray, ref: np.ndarray) -> Transform | None:
    """astroalign (Beroiz et al. 2020: asterism triangles, RANSAC similarity), the
    field's reference library for the same job, with its defaults (a benchmark
    dependency only: ``pip install astroalign``)."""
    import astroalign

    try:
        t, _ = astroalign.find_transform(frame, ref)
    except (astroalign.MaxIterError, ValueError, TypeError):
        return None
    return Transform(np.asarray(t.params, dtype=np.float64)[:2], "similarity")


_EXTERNAL = {"seed-orb": seed_orb_transform, "astroalign": astroalign_transform}


def run_set(s, methods: list[str]) -> dict[str, dict]:
    shape = s.shape
    ref_frame = s.frame(0).astype(np.float32)
    refs = {m: Reference.build(ref_frame, RegisterOptions(method=m)) for m in methods if m not in _EXTERNAL}
    res = {m: {"rms": [], "max": [], "t": [], "cpu": [], "fail": 0} for m in methods}
    t_detect = []
    for i in range(len(s)):
        f = s.frame(i).astype(np.float32)
        t0 = time.process_time()
        detect_stars(f)
        t_detect.append(time.process_time() - t0)
        for m in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            if m in _EXTERNAL:
                t = _EXTERNAL[m](f, ref_frame)
            else:
                reg = register_frame(f, refs[m], RegisterOptions(method=m))
                t = reg.transform
            res[m]["t"].append(time.perf_counter() - t0)
            res[m]["cpu"].append(time.process_time() - c0)
            if t is None:
                res[m]["fail"] += 1
                res[m]["rms"].append(np.inf)
                res[m]["max"].append(np.inf)
            else:
                res[m]["rms"].append(t.rms_error(s.transforms[i], shape))
                res[m]["max"].append(t.max_error(s.transforms[i], shape))
    for m in methods:
        res[m]["t_detect"] = t_detect
    return res


def table(title: str, res: dict[str, dict], n: int) -> None:
    print(f"\n{title}")
    head = (f"{'method':<10}{'registered':>11}{'misreg.>1px':>12}{'within 1px':>11}{'RMS mean':>10}{'RMS max':>10}"
            f"{'max err':>9}{'wall s':>8}{'CPU s':>8}")
    print(head)
    print("-" * len(head))
    for m, r in res.items():
        rms = np.array(r["rms"])
        mx = np.array(r["max"])
        ok = np.isfinite(rms)
        within = float(np.mean(mx <= 1.0))
        mis = int(np.sum(~(mx <= 1.0)))
        rms_mean = f"{rms[ok].mean():.4f}" if ok.any() else "-"
        rms_max = f"{rms.max():.4f}" if np.isfinite(rms).all() else "inf"
        mx_max = f"{mx.max():.3f}" if np.isfinite(mx).all() else "inf"
        print(f"{m:<10}{int(ok.sum()):>7}/{n:<3}{mis:>12}{within:>10.0%}{rms_mean:>10}{rms_max:>10}{mx_max:>9}"
              f"{np.median(r['t']):>8.3f}{np.median(r['cpu']):>8.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=30, help="frames in the acceptance set (default 30)")
    p.add_argument("--size", default="2000x1500", help="WxH of the acceptance set (default 2000x1500)")
    p.add_argument("--big-n", type=int, default=6, help="frames timed at --big-size (0: skip; default 6)")
    p.add_argument("--big-size", default="3000x2000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="stars,orb,seed-orb,astroalign",
                   help="stars, orb (skystack), seed-orb (the blog post's), astroalign (the library)")
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: single-core figures)")
    a = p.parse_args(argv)
    import cv2

    cv2.setNumThreads(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    w, h = (int(v) for v in a.size.lower().split("x"))
    s = make_deepsky(n_frames=a.n, shape=(h, w), seed=a.seed, max_shift=40.0, max_rot_deg=2.0)
    print(f"acceptance set: {a.n} frames {w}x{h}, shifts ±40 px, rotation ±2°, FWHM 2.0–3.5 px, "
          f"{len(s.hot_pixels)} hot pixels, trail in frame {s.trail_frame}, seed {a.seed}")
    res = run_set(s, methods)
    table(f"registration onto frame 0 ({w}x{h}); errors vs the generator's transforms, px", res, a.n)
    print(f"star detection alone: {np.median(res[methods[0]]['t_detect']):.3f} CPU s/frame (median)")
    if a.big_n > 0:
        bw, bh = (int(v) for v in a.big_size.lower().split("x"))
        big = make_deepsky(n_frames=a.big_n, shape=(bh, bw), seed=a.seed + 1, max_shift=40.0, max_rot_deg=2.0)
        t0 = time.perf_counter()
        for i in range(a.big_n):
            big.frame(i)
        t_render = (time.perf_counter() - t0) / a.big_n
        bres = run_set(big, [m for m in methods if m not in _EXTERNAL])
        table(f"{bw}x{bh}, {a.big_n} frames (timing)", bres, a.big_n)
        print(f"star detection alone: {np.median(next(iter(bres.values()))['t_detect']):.3f} CPU s/frame; "
              f"rendering a synthetic frame: {t_render:.2f} s")
    print("\nwall s / CPU s: register_frame (detection + matching) per frame, median; "
          f"OpenCV threads: {a.threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
