"""The jobs: each command's option groups, composed from :mod:`skystack.options`.

A job is what the API builds (``options.build_job``) from keyword arguments or parsed CLI
flags and what a pipeline conductor takes; the options themselves, with their defaults,
checks and flags, live once in :mod:`skystack.options`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .options import (BenchOptions, CalibrationOptions, ColourOptions, EnhanceOptions, LuckyOptions, OutputOptions,
                      ReadOptions, RegisterOptions, RunOptions, SelectOptions, StackOptions)


@dataclass(frozen=True, kw_only=True)
class StackJob:
    """``skystack stack``: register, select, stack, write."""

    read: ReadOptions = ReadOptions()
    register: RegisterOptions = RegisterOptions()
    select: SelectOptions = SelectOptions()
    stack: StackOptions = StackOptions()
    calibration: CalibrationOptions = CalibrationOptions()
    colour: ColourOptions = ColourOptions()
    output: OutputOptions = OutputOptions()
    run: RunOptions = RunOptions()


@dataclass(frozen=True, kw_only=True)
class RegisterJob:
    """``skystack register``: the transforms only."""

    read: ReadOptions = ReadOptions()
    register: RegisterOptions = RegisterOptions()
    output: OutputOptions = OutputOptions()
    run: RunOptions = RunOptions()


# Planetary frames are bright and oversampled: the edge-aware demosaic keeps belt and crater
# edges, where deep-sky's bilinear default is chosen for the colours of small stars.
_LUCKY_READ = ReadOptions(debayer_method="ea")


@dataclass(frozen=True, kw_only=True)
class LuckyJob:
    """``skystack lucky``: rank, align, stack the best frames of a video; optional
    calibration of the raw frames (darks, flats) before demosaicing and sharpening
    (``enhance`` is ``None`` unless wavelets or a stretch were asked for)."""

    read: ReadOptions = _LUCKY_READ
    lucky: LuckyOptions = LuckyOptions()
    calibration: CalibrationOptions = CalibrationOptions()
    enhance: EnhanceOptions | None = None
    output: OutputOptions = OutputOptions()
    quiet: bool = False


@dataclass(frozen=True, kw_only=True)
class EnhanceJob:
    """``skystack enhance``: sharpen/stretch one stacked image."""

    enhance: EnhanceOptions = EnhanceOptions()
    output: OutputOptions = OutputOptions()


@dataclass(frozen=True, kw_only=True)
class CalibrateJob:
    """``skystack calibrate``: calibrated lights into a folder."""

    read: ReadOptions = ReadOptions(debayer="none")
    calibration: CalibrationOptions = CalibrationOptions()
    memory_limit: int | None = None
    run: RunOptions = RunOptions()


@dataclass(frozen=True, kw_only=True)
class BenchJob:
    """``skystack bench``: each backend's throughput per stage, and its parity with the CPU
    backend. Stacking is a rejection stack by default (sigma), the work a GPU is for."""

    bench: BenchOptions = BenchOptions()
    read: ReadOptions = ReadOptions()
    register: RegisterOptions = RegisterOptions()
    stack: StackOptions = StackOptions(method="sigma")
    quiet: bool = False
