"""Registration: each frame's transform onto a reference.

* :mod:`.deepsky` — the deep-sky API the ``stack``/``register`` pipeline calls
  (``Reference.build``, ``register_frame``, ``measure_frame``): star triangles
  (:mod:`.triangles`) or ORB keypoints (:mod:`.orb_match`), RANSAC and refinement
  (:mod:`.estimate`).
* :mod:`.planetary` (global shift of a planet or surface) and :mod:`.multipoint`
  (alignment points) — the lucky-imaging aligners.

This package imports nothing itself, so the lucky pipeline pays no import cost for the
deep-sky matchers (and the reverse). A new deep-sky method is one module here plus a
branch in :func:`.deepsky.register_frame` and its name in
:data:`skystack.options.RegisterMethod`.
"""
