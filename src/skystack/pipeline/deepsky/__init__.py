"""The deep-sky pipeline (``skystack stack`` and ``skystack register``).

:mod:`.run` is the conductor: it reads as the list of steps. Phase 1 (:mod:`.phase1`)
registers and measures every frame, one Dask task per frame; phase 2 stacks, either as a
streaming mean (:mod:`.mean`) or on the band engine (:mod:`.phase2`); :mod:`.resume`
keeps the journal that makes ``--resume`` possible.
"""
