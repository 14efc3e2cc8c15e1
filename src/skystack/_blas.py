"""Single-threaded BLAS in the ``skystack`` command's own process (imported first by the
package, before anything imports NumPy).

NumPy, OpenCV and SciPy each bundle their own OpenBLAS, and each starts a helper thread
when it loads that then spins (busy-waits for work, yielding) for about 0.1 s of CPU: 0.3
core-seconds per command, taken from the run's workers on a small machine. skystack's
linear algebra is on matrices of a few columns (3×3 transforms, a background polynomial's
least squares), too small to gain from BLAS threads. Measured on the project's 2-core
machine with 1000-frame 640×480 videos: `skystack lucky` 0.07-0.17 s faster with two
workers (of ~2 s), 0.1 s faster with one (of ~3.2 s).

Only the command is changed: a program that imports skystack as a library keeps its BLAS as
it was, and an ``OPENBLAS_NUM_THREADS`` the user set is kept.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

_MODULES = ("skystack.cli",)


def launched_as_command(orig_argv: Sequence[str], argv: Sequence[str]) -> bool:
    """True when the process is the ``skystack`` command: the console script (``argv[0]``
    named ``skystack``) or ``python -m skystack.cli``.

    ``orig_argv`` is the interpreter's own command line (``sys.orig_argv``: while the
    package is imported by ``-m``, ``sys.argv[0]`` is only ``"-m"``)."""
    if argv and os.path.basename(argv[0]) in ("skystack", "skystack.exe"):
        return True
    args, k = list(orig_argv), 1
    while k < len(args):
        a = args[k]
        if a == "--" or not a.startswith("-") or a == "-":
            return False  # a script, or the standard input: not the command
        if a.startswith("--"):  # the only long option with a value
            k += 2 if a == "--check-hash-based-pycs" else 1
            continue
        for j, ch in enumerate(a[1:], start=1):  # short options, possibly grouped (-Im)
            rest = a[j + 1:]
            if ch == "m":
                module = rest or (args[k + 1] if k + 1 < len(args) else "")
                return module in _MODULES
            if ch == "c":
                return False
            if ch in "WX":  # an option with a value: the rest of this word, or the next
                k += 0 if rest else 1
                break
        k += 1
    return False


def single_threaded_for_the_command() -> bool:
    """Ask for single-threaded OpenBLAS when this process is the command and no BLAS is
    loaded yet; returns whether the setting was made here."""
    if "numpy" in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ:
        return False
    if not launched_as_command(getattr(sys, "orig_argv", ()), sys.argv):
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    return True
