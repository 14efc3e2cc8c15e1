"""Where frames are warped and combined: the CPU (Numba kernels), CuPy with numba.cuda
kernels, or OpenCV's CUDA warp (:mod:`.registry` resolves ``--backend`` once per run).

Every backend implements the :class:`~.base.Backend` protocol (``warp``,
``combine_band``); pipeline code never asks which device it runs on. **Adding a backend**
touches one obvious place plus its test: a module here implementing the protocol (GPU
libraries imported inside it, so ``import skystack`` never needs them), its name in
:data:`skystack.options.Backend` and a branch in :func:`.registry.resolve`, and parity
tests against :class:`~.cpu.CpuBackend` (``tests/backends/backend_cases.py`` holds the
shared cases).

The lucky pipeline's GPU work (batched ranking measurements and phase correlation) is in
:mod:`.lucky_gpu`, resolved by :func:`.registry.resolve_lucky` from the same ``--backend``
option (``auto|cpu|cupy``).
"""
