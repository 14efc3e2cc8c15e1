"""The lucky-imaging pipeline (``skystack lucky``): rank every frame of a video, build a
reference from the best, select the best frames per alignment point among all of them,
align and de-warp them where they are stacked, blend. :mod:`.run` is the conductor;
:mod:`.batch` runs many videos into one folder."""
