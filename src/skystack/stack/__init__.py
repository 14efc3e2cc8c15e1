"""Stacking stages: the plan (output blocks from the memory budget, source rows of a
transformed frame), normalisation and weights, the block loop shared by every combine,
and drizzle.

The per-pixel work is in ``kernels/_skystack_kernels`` (STYLE.md §1–2: rejection makes a
mask, reduction consumes it). **Adding a rejection method** touches one obvious place
plus its test: a function in ``kernels/_skystack_kernels/cpu/reject.py`` that fills the
keep-flags of one pixel's values, its code in ``kernels/_skystack_kernels/codes.py``
(``REJECT``) and its branch in the reject dispatcher, and a case in the hypothesis tests
(``tests/kernels``) against a NumPy reference. The GPU twin is generated from the same
source (``gpu/twins.py``); :data:`skystack.options.STACK_METHODS` derives the
``--method`` choices from ``codes.REJECT``, so the CLI and API offer it at once.
"""
