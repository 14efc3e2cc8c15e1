"""skystack: align and stack astronomical frames, out of core.

The public API (everything else is internal and may change)::

    import skystack
    frames = skystack.open_frames(["lights/*.fits"])
    result = skystack.stack(["lights/"], "out.fits", method="sigma")   # register + stack + write
    result = skystack.register(["lights/"], report="reg.json")          # transforms only
    skystack.lucky(["moon.avi"], "moon.tif", keep="10%")               # lucky imaging of a video

GPU libraries are never imported here: ``import skystack`` works on any machine.
"""
from __future__ import annotations

__version__ = "0.1.0"

# Before anything imports NumPy: the command's own process runs BLAS on one thread (_blas).
from ._blas import single_threaded_for_the_command as _single_threaded_blas  # noqa: E402

_single_threaded_blas()

# The subpackages `skystack.stack`, `skystack.register` and `skystack.enhance` share their
# names with the API functions below. Importing them first means the functions, bound
# afterwards, win the module attributes; the subpackages stay importable through
# sys.modules (`from skystack.stack import plan` still works).
from . import enhance as _enhance_pkg  # noqa: E402,F401
from . import register as _register_pkg  # noqa: E402,F401
from . import stack as _stack_pkg  # noqa: E402,F401
from .api import bench, calibrate, colour, demo, enhance, lucky, master, register, stack  # noqa: E402
from .io import open_frames  # noqa: E402
from .types import Fate, FrameInfo, FrameResult, LuckyResult, StackResult, Transform  # noqa: E402

__all__ = [
    "Fate", "FrameInfo", "FrameResult", "LuckyResult", "StackResult", "Transform", "__version__",
    "open_frames", "register", "stack", "lucky", "enhance", "master", "calibrate", "colour", "demo", "bench",
]
