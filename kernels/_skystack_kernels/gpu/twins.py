"""The GPU twins of the CPU per-pixel functions: the same Python source, compiled by
``numba.cuda`` as device functions.

The per-pixel algorithms (selection, rejection, reduction, warp taps) are written once,
in ``cpu/``, in the subset of Python that both Numba targets accept (no allocation, no
recursion, ``math`` only). This module rebuilds each ``@njit`` function of the given
modules from its ``py_func`` as a ``cuda.jit(device=True)`` function, with a copy of its
module globals in which every reference to a sibling ``@njit`` function points to that
sibling's device version. So "how is sigma clipping computed on the GPU" has the same
answer as on the CPU, by construction; the parity tests check the plumbing around it.

This works on a real GPU and under Numba's CUDA simulator alike (where device functions
are plain Python, so every call must stay inside the rebuilt set: a CPU dispatcher would
be handed the simulator's fake arrays).
"""
from __future__ import annotations

import types

from numba import cuda
from numba.core.dispatcher import Dispatcher


def device_twins(*modules) -> types.SimpleNamespace:
    """Device-function versions of every ``@njit`` function defined in ``modules``.

    Parameters
    ----------
    modules : module
        The CPU kernel modules, all of them: a function may only call ``@njit`` functions
        defined in one of these.

    Returns
    -------
    SimpleNamespace
        ``ns.<name>`` is the ``cuda.jit(device=True)`` twin of ``<module>.<name>``.

    Raises
    ------
    ValueError
        A function calls an ``@njit`` function from a module that was not passed.
    """
    twins: dict[int, object] = {}  # id(CPU dispatcher) -> device function
    rebuilt: list[tuple[types.FunctionType, dict]] = []
    ns = types.SimpleNamespace()
    for module in modules:
        g = dict(vars(module))  # the twins' globals; CPU dispatchers swapped below
        for name, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == module.__name__:
                f = obj.py_func
                clone = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
                clone.__qualname__ = f.__qualname__
                clone.__module__ = f.__module__
                clone.__doc__ = f.__doc__
                dev = cuda.jit(device=True)(clone)
                twins[id(obj)] = dev
                rebuilt.append((clone, g))
                setattr(ns, name, dev)
    for _, g in rebuilt:
        for name, obj in list(g.items()):
            if isinstance(obj, Dispatcher):
                if id(obj) in twins:
                    g[name] = twins[id(obj)]
    for clone, g in rebuilt:
        for name in clone.__code__.co_names:
            if isinstance(g.get(name), Dispatcher):
                raise ValueError(f"{clone.__module__}.{clone.__name__} calls {name}, a CPU function from a "
                                 "module not passed to device_twins")
    return ns
