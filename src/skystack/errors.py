"""Exceptions. A frame that cannot be read or registered is *not* an exception at the
pipeline level (it becomes a :class:`~skystack.types.FrameResult`); these are for the
caller's mistakes and for the per-frame readers to signal a bad frame to the pipeline."""
from __future__ import annotations


class SkystackError(Exception):
    """Base class. ``exit_code`` is what the CLI returns when this stops a run."""

    exit_code = 1


class UsageError(SkystackError):
    """Bad options or arguments (the caller's mistake)."""

    exit_code = 2


class CalibrationError(UsageError):
    """Calibration frames that cannot be applied to the lights (another size, binning or
    CFA pattern; a dark whose exposure cannot be known or scaled). The run stops before
    anything is written: a wrong calibration silently applied is worse than none."""


class NoFramesError(SkystackError):
    """No input frame could be found or read at all (empty folder, no image files)."""

    exit_code = 3


class BadFrameError(SkystackError):
    """One frame cannot be used: unreadable, truncated, wrong size, not an image.

    Raised by readers for a single frame; the pipeline turns it into a report entry and
    goes on. ``path`` names the file, ``reason`` says what is wrong in words a user can act
    on.
    """

    exit_code = 4

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        # a forked lucky worker sends it back as a value: pickled by default as the one
        # message argument, it could not be rebuilt there (unpickling raised TypeError)
        return (type(self), (self.path, self.reason))


class RegistrationError(SkystackError):
    """Too few frames registered to produce a stack (e.g. the reference has no stars)."""

    exit_code = 5


class OutputError(SkystackError):
    """The output cannot be written (disk full, permission, would overwrite an input)."""

    exit_code = 6


class BackendUnavailableError(SkystackError):
    """A GPU backend was asked for explicitly and no usable device/library is present."""

    exit_code = 7


class ClusterError(SkystackError):
    """The Dask scheduler named by ``--scheduler`` cannot be reached."""

    exit_code = 8


class InputChangedError(SkystackError):
    """A frame changed on disk between phase 1 and phase 2 (size or mtime)."""

    exit_code = 9


class ParityError(SkystackError):
    """``skystack bench``: a GPU backend failed, or its stack differs from the CPU
    backend's beyond float rounding (see :mod:`skystack.pipeline.bench`)."""

    exit_code = 10


# ``skystack lucky A.ser B.ser ... -o FOLDER/``: some videos were stacked, some could not be
# (each failure is logged with its reason and listed in FOLDER/lucky-summary.json).
BATCH_PARTIAL = 11

# stdout's reader went away (`skystack ... | head`): 128 + SIGPIPE, as a shell reports a
# process its pipe ended
STDOUT_CLOSED = 141

# Exit codes, documented in `skystack --help` and the README.
EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: please report it with the traceback from -v)",
    2: "bad arguments or option values (refused before any frame is read)",
    3: "no readable input frame",
    4: "a bad input file stopped the run (only when it cannot go on without it)",
    5: "too few frames registered to stack (see --min-registered)",
    6: "an output could not be written or would replace an input (nothing written)",
    7: "the requested GPU backend is not usable",
    8: "the Dask scheduler could not be reached or is not a Dask scheduler",
    9: "an input changed on disk during the run",
    10: "skystack bench: a GPU backend failed or its result differs from the CPU backend's",
    BATCH_PARTIAL: "lucky batch (-o FOLDER/): some videos could not be stacked, the others were "
                   "(see FOLDER/lucky-summary.json); when every video fails, the first one's code",
    130: "interrupted (Ctrl-C); `skystack stack` continues with --resume, the others start over",
    STDOUT_CLOSED: "stdout was closed by its reader (`| head`); the outputs are written",
}
