"""Progress bars (tqdm on stderr) and one-line user messages."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("skystack")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (so redirections
    made after start-up, e.g. by a test harness or a GUI, are honoured)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """``skystack: message`` lines on stderr; -q keeps warnings and errors only."""
    if getattr(setup_logging, "_done", False):
        log.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("skystack: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    setup_logging._done = True  # type: ignore[attr-defined]


class Progress:
    """A tqdm bar, or nothing when quiet / not on a terminal-less batch run."""

    def __init__(self, total: int, desc: str, quiet: bool, initial: int = 0):
        self._bar = None
        if not quiet and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="frame" if "phase 1" in desc else "it",
                             initial=initial, file=sys.stderr, leave=False, dynamic_ncols=True,
                             mininterval=0.5)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
