"""The lucky-imaging pipeline (``skystack lucky``): rank every frame of a video, build a
reference from the best, align a pool globally and per alignment point, select, de-warp
and blend. :mod:`.run` is the conductor."""
