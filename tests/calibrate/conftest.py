"""The calibration tests' helper module (calib_cases) lives in this folder; put it on
``sys.path`` so test modules import it by name (pytest runs in importlib mode)."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
