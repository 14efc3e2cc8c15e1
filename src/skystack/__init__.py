"""skystack: align and stack astronomical frames, out of core.

The public API (everything else is internal and may change)::

    import skystack
    frames = skystack.open_frames(["lights/*.fits"])
    result = skystack.stack(["lights/"], "out.fits")            # register + stack + write
    report = skystack.register(["lights/"])                      # transforms only
    skystack.lucky(["moon.avi"], "moon.tif", keep="10%")         # lucky imaging of a video
"""
from __future__ import annotations

__version__ = "0.1.0"

from .types import Fate, FrameInfo, FrameResult, Transform  # noqa: E402

__all__ = [
    "Fate", "FrameInfo", "FrameResult", "Transform", "__version__",
    "open_frames", "register", "stack", "lucky", "enhance", "demo",
]


def __getattr__(name: str):  # lazy: `import skystack` stays cheap and GPU-free
    if name == "open_frames":
        from .io import open_frames
        return open_frames
    if name in ("register", "stack", "lucky", "enhance", "demo"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'skystack' has no attribute {name!r}")
