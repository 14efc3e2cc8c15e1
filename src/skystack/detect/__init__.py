"""Feature detection for registration: stars (:mod:`.stars`) and ORB keypoints (:mod:`.orb`).

:func:`working_bytes` tells the phase-1 planner how much memory registering one frame needs
besides the frame itself.
"""
from __future__ import annotations

import numpy as np

__all__ = ["working_bytes"]


def working_bytes(shape: tuple[int, ...], dtype=np.float32, method: str = "auto") -> int:
    """Memory (bytes, an upper bound) that registering one frame of this luminance shape and
    dtype needs besides the frame: star detection and measurement, plus ORB for the methods
    that may run it (``orb``; ``auto`` when the stars do not match — about 12 bytes per
    pixel against star detection's ~0.6). Matching the ~100 brightest stars or keypoints
    adds nothing that scales with the frame.

    Parameters
    ----------
    shape : (H, W) or (H, W, C)
        Frame shape (only H and W matter: registration works on the luminance).
    dtype : numpy dtype
        The luminance's dtype (the pipeline's frames are float32).
    method : {"stars", "orb", "auto"}
        ``RegisterOptions.method``.

    Returns
    -------
    int
    """
    from .orb import orb_working_bytes
    from .stars import detection_working_bytes

    stars = detection_working_bytes(shape, dtype)
    if method == "stars":
        return stars
    # register_frame detects the stars first (their metrics are reported either way), then
    # runs ORB after the star list is down to its few kept stars: the peaks do not add up
    return max(stars, orb_working_bytes(shape, dtype))
