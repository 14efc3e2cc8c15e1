"""Diagnostic plots for both pipelines: per-frame quality, shifts and fates, written as
``OUT.quality.png``.

Both are drawn with OpenCV primitives, not matplotlib: matplotlib costs 0.48 s to import
with pyplot and about 0.4 s to draw a figure (measured on the project's 2-core machine),
more than stacking 18 Seestar subs takes; an OpenCV canvas costs about 10 ms. OpenCV's
Hershey fonts are ASCII only, so labels say "deg" and "sigma".
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from ..types import Fate, FrameResult
from .write import write_png

# matplotlib's "tab" colours, as BGR (OpenCV's order): the plot reads as it did when it was
# drawn with matplotlib
_TAB = {"blue": (180, 119, 31), "orange": (14, 127, 255), "green": (44, 160, 44), "red": (40, 39, 214),
        "purple": (189, 103, 148), "brown": (75, 86, 140), "gray": (127, 127, 127), "cyan": (207, 190, 23),
        "black": (0, 0, 0)}
_COLOURS = {Fate.USED: _TAB["green"], Fate.REJECTED: _TAB["orange"],
            Fate.FAILED_REGISTRATION: _TAB["red"], Fate.UNREADABLE: _TAB["black"]}
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# the deep-sky canvas: four panels one above the other, with room for an axis on each side
_DW, _DH = 900, 1000
_LEFT, _RIGHT, _TOP, _GAP, _BOTTOM = 92, 92, 34, 16, 52
_SHADE_ALPHA = 0.12  # frames not stacked: a light band on every panel


def _text(canvas: np.ndarray, s: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float = 0.42,
          anchor: str = "left") -> None:
    """Text with its baseline at ``org``; ``anchor`` says which end (or the middle) sits there."""
    (w, _), _ = cv2.getTextSize(s, _FONT, scale, 1)
    x = org[0] - (w if anchor == "right" else w // 2 if anchor == "centre" else 0)
    cv2.putText(canvas, s, (int(x), int(org[1])), _FONT, scale, colour, 1, cv2.LINE_AA)


def _vertical_text(canvas: np.ndarray, s: str, centre: tuple[int, int], colour: tuple[int, int, int],
                   scale: float = 0.45) -> None:
    """An axis label read bottom to top, centred on ``centre``."""
    (w, h), base = cv2.getTextSize(s, _FONT, scale, 1)
    tile = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(tile, s, (2, h + 2), _FONT, scale, colour, 1, cv2.LINE_AA)
    tile = cv2.rotate(tile, cv2.ROTATE_90_COUNTERCLOCKWISE)
    th, tw = tile.shape[:2]
    y0, x0 = max(0, centre[1] - th // 2), max(0, centre[0] - tw // 2)
    y1, x1 = min(canvas.shape[0], y0 + th), min(canvas.shape[1], x0 + tw)
    np.minimum(canvas[y0:y1, x0:x1], tile[:y1 - y0, :x1 - x0], out=canvas[y0:y1, x0:x1])


def nice_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values (1, 2 or 5 × 10^k apart) inside ``[lo, hi]``: the spacing whose
    count of ticks is nearest ``target`` (the wider of equals)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(0)
    k = math.floor(math.log10((hi - lo) / max(target, 1)))
    best = None
    for step in sorted(m * 10.0 ** e for e in (k - 1, k, k + 1) for m in (1, 2, 5)):
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        count = last - first + 1
        if best is None or abs(count - target) <= abs(best[0] - target):
            best = (count, first, step)
    count, first, step = best
    return np.round((first + np.arange(max(count, 0))) * step, 12)


def _tick_label(v: float, step: float) -> str:
    digits = max(0, -int(math.floor(math.log10(step)))) if step > 0 else 0
    return f"{v:.{digits}f}" if digits <= 6 else f"{v:.3g}"


class _Axes:
    """One panel of the deep-sky plot: a frame, x from frame index, a left and an optional
    right y-axis (a twin, as matplotlib's ``twinx``), each with round ticks."""

    def __init__(self, canvas: np.ndarray, top: int, height: int, xlim: tuple[float, float]):
        self.c = canvas
        self.x0, self.x1 = _LEFT, canvas.shape[1] - _RIGHT
        self.y0, self.y1 = top, top + height
        self.xlim = xlim
        self.ylims: dict[str, tuple[float, float]] = {"left": (0.0, 1.0), "right": (0.0, 1.0)}

    def px(self, x: np.ndarray) -> np.ndarray:
        a, b = self.xlim
        return self.x0 + (np.asarray(x, np.float64) - a) / max(b - a, 1e-9) * (self.x1 - self.x0)

    def py(self, y: np.ndarray, side: str = "left") -> np.ndarray:
        lo, hi = self.ylims[side]
        return self.y1 - (np.asarray(y, np.float64) - lo) / max(hi - lo, 1e-12) * (self.y1 - self.y0)

    def axis(self, side: str, values: list[np.ndarray], label: str, colour: tuple[int, int, int]) -> None:
        """Scale the ``side`` axis to ``values`` and draw its ticks, numbers and label."""
        lo, hi = _limits(*[np.asarray(v, np.float64) for v in values])
        self.ylims[side] = (lo, hi)
        ticks = nice_ticks(lo, hi)
        step = float(ticks[1] - ticks[0]) if ticks.size > 1 else 1.0
        x = self.x0 if side == "left" else self.x1
        sign = -1 if side == "left" else 1
        for t in ticks:
            y = int(round(float(self.py(t, side))))
            cv2.line(self.c, (x, y), (x + 5 * sign, y), _TAB["black"], 1)
            _text(self.c, _tick_label(float(t), step), (x + 8 * sign, y + 5), _TAB["black"], 0.4,
                  "right" if side == "left" else "left")
        lx = 16 if side == "left" else self.c.shape[1] - 16
        _vertical_text(self.c, label, (lx, (self.y0 + self.y1) // 2), colour)

    def x_ticks(self, ticks: np.ndarray, labels: bool) -> None:
        for t in ticks:
            x = int(round(float(self.px(t))))
            cv2.line(self.c, (x, self.y1), (x, self.y1 + 5), _TAB["black"], 1)
            if labels:
                _text(self.c, f"{t:g}", (x, self.y1 + 20), _TAB["black"], 0.4, "centre")

    def _points(self, x: np.ndarray, y: np.ndarray, side: str) -> np.ndarray:
        return np.column_stack([self.px(x), self.py(y, side)]).round().astype(np.int32)

    def line(self, x: np.ndarray, y: np.ndarray, colour: tuple[int, int, int], side: str = "left") -> None:
        """A polyline through the finite points (broken where a value is missing), each marked
        with a dot."""
        y = np.asarray(y, np.float64)
        ok = np.isfinite(y)
        runs = np.split(np.arange(y.size), np.flatnonzero(np.diff(ok.astype(np.int8))) + 1)
        for run in runs:
            if run.size > 1 and ok[run[0]]:
                cv2.polylines(self.c, [self._points(x[run], y[run], side)], False, colour, 2, cv2.LINE_AA)
        self.dots(x, y, colour, side)

    def dots(self, x: np.ndarray, y: np.ndarray, colour: tuple[int, int, int], side: str = "left",
             r: int = 3) -> None:
        for px, py in self.positions(x, y, side):
            cv2.circle(self.c, (int(px), int(py)), r, colour, -1, cv2.LINE_AA)

    def crosses(self, x: np.ndarray, y: np.ndarray, colour: tuple[int, int, int], side: str = "left") -> None:
        for px, py in self.positions(x, y, side):
            cv2.drawMarker(self.c, (int(px), int(py)), colour, cv2.MARKER_TILTED_CROSS, 8, 1, cv2.LINE_AA)

    def shade(self, frames: np.ndarray, colour: tuple[int, int, int]) -> None:
        """Light bands over ``frames`` (one frame wide each), blended as matplotlib's ``axvspan``."""
        if frames.size == 0:
            return
        region = self.c[self.y0:self.y1, self.x0:self.x1]
        mask = np.zeros(region.shape[1], bool)
        for i in frames:
            a, b = self.px(np.array([i - 0.5, i + 0.5])) - self.x0
            mask[max(0, int(round(a))):max(0, int(round(b)))] = True
        cols = region[:, mask].astype(np.float32)
        region[:, mask] = np.round(cols * (1 - _SHADE_ALPHA) + np.float32(colour) * _SHADE_ALPHA).astype(np.uint8)

    def vline_dashed(self, x: float, colour: tuple[int, int, int]) -> None:
        px = int(round(float(self.px(x))))
        for y in range(self.y0, self.y1, 10):
            cv2.line(self.c, (px, y), (px, min(y + 5, self.y1)), colour, 1)

    def frame(self) -> None:
        cv2.rectangle(self.c, (self.x0, self.y0), (self.x1, self.y1), _TAB["black"], 1)

    def legend(self, entries: list[tuple[str, tuple[int, int, int]]], points: list[np.ndarray]) -> None:
        """A key (a coloured dash and a name per entry) in the panel's corner that covers the
        fewest of ``points`` (pixel positions, as matplotlib's ``loc="best"``)."""
        w = 38 + max(cv2.getTextSize(s, _FONT, 0.4, 1)[0][0] for s, _ in entries)
        h = 8 + 16 * len(entries)
        pts = np.concatenate(points) if points else np.zeros((0, 2))
        corners = [(self.x1 - w - 6, self.y0 + 6), (self.x0 + 6, self.y0 + 6),
                   (self.x1 - w - 6, self.y1 - h - 6), (self.x0 + 6, self.y1 - h - 6)]

        def covered(c: tuple[int, int]) -> int:
            return int(np.count_nonzero((pts[:, 0] >= c[0] - 4) & (pts[:, 0] <= c[0] + w + 4)
                                        & (pts[:, 1] >= c[1] - 4) & (pts[:, 1] <= c[1] + h + 4)))

        x, y = min(corners, key=covered)  # the first of equals: top right, as matplotlib starts
        cv2.rectangle(self.c, (x, y), (x + w, y + h), (255, 255, 255), -1)
        cv2.rectangle(self.c, (x, y), (x + w, y + h), (210, 210, 210), 1)
        for k, (s, colour) in enumerate(entries):
            yy = y + 16 + 16 * k
            cv2.line(self.c, (x + 6, yy - 4), (x + 26, yy - 4), colour, 2, cv2.LINE_AA)
            _text(self.c, s, (x + 32, yy), _TAB["black"], 0.4)

    def positions(self, x: np.ndarray, y: np.ndarray, side: str = "left") -> np.ndarray:
        """Pixel positions of the finite points."""
        ok = np.isfinite(np.asarray(y, np.float64))
        return self._points(np.asarray(x)[ok], np.asarray(y)[ok], side)


def plot_frames(path: str | os.PathLike, results: list[FrameResult], reference: int) -> Path:
    """Deep-sky ``OUT.quality.png``: per frame (x: frame index), shift and rotation to the
    reference, FWHM and star count, background and noise, and each frame's fate (used,
    rejected, failed registration, unreadable) with the reference marked (dashed) and the
    frames not stacked shaded."""
    canvas = np.full((_DH, _DW, 3), 255, np.uint8)
    idx = np.array([r.index for r in results], dtype=np.float64)
    nan = np.nan
    dx = np.array([r.transform.shift[0] if r.transform is not None else nan for r in results])
    dy = np.array([r.transform.shift[1] if r.transform is not None else nan for r in results])
    rot = np.array([r.transform.rotation_deg if r.transform is not None else nan for r in results])
    fwhm = np.array([r.metrics.get("fwhm_px", nan) for r in results], dtype=float)
    stars = np.array([r.n_stars if r.n_stars is not None else nan for r in results], dtype=float)
    bg = np.array([r.metrics.get("background", r.metrics.get("location_0", nan)) for r in results], dtype=float)
    noise = np.array([r.metrics.get("noise", r.metrics.get("scale_0", nan)) for r in results], dtype=float)
    used = np.array([r.fate is Fate.USED for r in results], dtype=bool)
    xlim = (float(idx.min()) - 0.5, float(idx.max()) + 0.5) if idx.size else (-0.5, 0.5)
    height = (_DH - _TOP - _BOTTOM - 3 * _GAP) // 4
    panels = [_Axes(canvas, _TOP + k * (height + _GAP), height, xlim) for k in range(4)]
    for a in panels[:3]:
        a.shade(idx[~used], _TAB["orange"])
    xt = nice_ticks(xlim[0] + 0.5, xlim[1] - 0.5, 10)
    xt = xt[np.isclose(xt, np.round(xt))] if xt.size else np.array([0.0])  # whole frame indices only

    shift, fwhm_p, sky, fate_p = panels
    shift.axis("left", [dx, dy], "shift to reference (px)", _TAB["black"])
    shift.axis("right", [rot], "rotation (deg)", _TAB["red"])
    shift.line(idx, dx, _TAB["blue"])
    shift.line(idx, dy, _TAB["orange"])
    shift.crosses(idx, rot, _TAB["red"], "right")
    shift.legend([("dx", _TAB["blue"]), ("dy", _TAB["orange"]), ("rotation (x)", _TAB["red"])],
                 [shift.positions(idx, dx), shift.positions(idx, dy), shift.positions(idx, rot, "right")])
    fwhm_p.axis("left", [fwhm], "FWHM (px)", _TAB["purple"])
    fwhm_p.axis("right", [stars], "stars detected", _TAB["gray"])
    fwhm_p.line(idx, fwhm, _TAB["purple"])
    fwhm_p.dots(idx, stars, _TAB["gray"], "right")
    sky.axis("left", [bg], "background (ADU)", _TAB["brown"])
    sky.axis("right", [noise], "noise sigma (ADU)", _TAB["cyan"])
    sky.line(idx, bg, _TAB["brown"])
    sky.dots(idx, noise, _TAB["cyan"], "right")
    fate_p.ylims["left"] = (-0.5, len(_COLOURS) - 0.5)
    for k, (fate, colour) in enumerate(_COLOURS.items()):
        sel = np.array([r.fate is fate for r in results], dtype=bool)
        y = int(round(float(fate_p.py(k))))
        cv2.line(canvas, (fate_p.x0, y), (fate_p.x0 - 5, y), _TAB["black"], 1)
        # the names are longer than the margin: written inside, above their row of dots
        _text(canvas, f"{fate.value} ({int(sel.sum())})", (fate_p.x0 + 6, y - 9), colour, 0.4)
        fate_p.dots(idx[sel], np.full(int(sel.sum()), float(k)), colour)
    for a in panels:
        a.vline_dashed(reference, _TAB["blue"])
        a.x_ticks(xt, labels=a is fate_p)
        a.frame()
    _text(canvas, "frame index (dashed: reference; shaded: not stacked)", (_DW // 2, _DH - 10), _TAB["black"],
          0.45, "centre")
    _text(canvas, f"{int(used.sum())} of {len(results)} frames stacked; reference frame {reference}",
          (_DW // 2, 22), _TAB["black"], 0.55, "centre")
    return write_png(path, canvas[..., ::-1].copy())


_W, _H, _PAD = 960, 560, 56
_GREY, _GREEN, _RED, _BLACK = (170, 170, 170), (40, 160, 40), (40, 40, 220), (0, 0, 0)
_BLUE, _ORANGE = (200, 110, 30), (20, 130, 240)  # BGR


class _Panel:
    """A plot area on an OpenCV canvas mapping data to pixels."""

    def __init__(self, canvas: np.ndarray, top: int, height: int, xlim: tuple[float, float],
                 ylim: tuple[float, float], label: str):
        self.c, self.top, self.h = canvas, top, height
        self.x0, self.x1 = _PAD, _W - 16
        self.xlim, self.ylim = xlim, ylim
        cv2.rectangle(canvas, (self.x0, top), (self.x1, top + height), _BLACK, 1)
        cv2.putText(canvas, label, (self.x0 + 6, top + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _BLACK, 1, cv2.LINE_AA)
        for v, y in ((ylim[1], top + 10), (ylim[0], top + height - 2)):
            cv2.putText(canvas, f"{v:.3g}", (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, _BLACK, 1, cv2.LINE_AA)

    def xy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (a, b), (lo, hi) = self.xlim, self.ylim
        px = self.x0 + (x - a) / max(b - a, 1e-9) * (self.x1 - self.x0)
        py = self.top + self.h - (y - lo) / max(hi - lo, 1e-9) * self.h
        return np.column_stack([px, py]).round().astype(np.int32)

    def dots(self, x: np.ndarray, y: np.ndarray, colour: tuple[int, int, int], r: int = 1) -> None:
        ok = np.isfinite(x) & np.isfinite(y)
        for px, py in self.xy(x[ok], y[ok]):
            cv2.circle(self.c, (int(px), int(py)), r, colour, -1, cv2.LINE_AA)


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    v = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo) or 1.0
    return lo - pad, hi + pad


def plot_lucky(path: str | os.PathLike, quality: np.ndarray, used: np.ndarray, failed: np.ndarray,
               unreadable: np.ndarray, coarse: np.ndarray, shift: np.ndarray, mode: str) -> Path:
    """Lucky imaging: quality over time (used frames green, lost or blank red, unreadable
    black ticks) and displacement (coarse x blue, y orange; used frames ringed)."""
    n = quality.size
    canvas = np.full((_H, _W, 3), 255, np.uint8)
    idx = np.arange(n, dtype=np.float64)
    q = np.asarray(quality, np.float64)
    top = _Panel(canvas, 28, 230, (0.0, max(n - 1, 1)), _limits(q),
                 f"quality ({mode}): {int(used.sum())} of {n} frames used (green)")
    other = np.isfinite(q) & ~used
    top.dots(idx[other], q[other], _GREY)
    top.dots(idx[used], q[used], _GREEN, 2)
    bad = failed & np.isfinite(q)
    top.dots(idx[bad], q[bad], _RED, 2)
    if unreadable.any():
        for px, py in top.xy(idx[unreadable], np.full(int(unreadable.sum()), top.ylim[0])):
            cv2.line(canvas, (int(px), int(py) - 8), (int(px), int(py)), _BLACK, 1)
    c = coarse - np.nanmedian(coarse, axis=0) if np.isfinite(coarse).any() else coarse
    low = _Panel(canvas, 300, 220, top.xlim, _limits(c[:, 0], c[:, 1], shift[used, 0], shift[used, 1]),
                 "displacement (px): x blue, y orange; used frames ringed")
    low.dots(idx, c[:, 0], _BLUE)
    low.dots(idx, c[:, 1], _ORANGE)
    for comp, colour in ((0, _BLUE), (1, _ORANGE)):
        s = shift[used, comp]
        ok = np.isfinite(s)
        for px, py in low.xy(idx[used][ok], s[ok]):
            cv2.circle(canvas, (int(px), int(py)), 3, colour, 1, cv2.LINE_AA)
    cv2.putText(canvas, f"frame index 0 .. {n - 1}", (_W // 2 - 70, _H - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                _BLACK, 1, cv2.LINE_AA)
    return write_png(path, canvas[..., ::-1].copy())
