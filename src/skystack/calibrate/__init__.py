"""Calibration and colour: master bias/dark/flat frames, their application to the lights
before demosaicing, cosmetic correction, demosaicing and the colour balance of stacks.

``prepare_calibration`` is what the stacking pipeline calls; ``make_master``,
``calibrate_frames`` and ``colour_balance_file`` are the ``skystack master``,
``skystack calibrate`` and ``skystack colour`` commands.
"""
from __future__ import annotations

from .apply import CalibrationStep, prepare_calibration
from .masters import Master, build_master, get_master, load_master

__all__ = ["CalibrationStep", "Master", "build_master", "get_master", "load_master", "prepare_calibration"]
