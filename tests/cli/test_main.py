"""The command line's entry: a process that is one command runs full garbage collections
rarely and skips the shutdown's (gc.freeze); a caller passing argv keeps Python's
defaults."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

from skystack.cli import main


def test_a_caller_passing_argv_keeps_collecting(tmp_path):
    before, threshold = gc.get_freeze_count(), gc.get_threshold()
    rc = main(["stack", str(tmp_path / "no-such-folder"), "-o", str(tmp_path / "s.fits"), "-q"])
    assert rc != 0  # nothing to stack: an exit code, not an exception
    assert gc.get_freeze_count() == before and gc.get_threshold() == threshold


def test_the_process_command_freezes_its_objects_before_exit(tmp_path):
    code = ("import gc, sys\n"
            "from skystack.cli import main\n"
            "sys.argv = ['skystack', 'stack', 'no-such-folder', '-o', sys.argv[1], '-q']\n"
            "rc = main()\n"
            "print(rc, gc.get_freeze_count() > 0, gc.get_threshold()[2])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.fits")], capture_output=True, text=True,
                         env=env, check=True)
    rc, frozen, full_every = out.stdout.split()
    assert int(rc) != 0 and frozen == "True"  # an error exit too: the process ends either way
    assert int(full_every) == 100  # full collections rarer while it runs


def test_an_interrupt_names_resume_only_where_the_command_has_it(monkeypatch, capsys, tmp_path):
    """Ctrl-C: exit code 130; `skystack stack` keeps a journal and says to rerun with
    --resume, the lucky command has none and says it starts over."""
    import skystack.api as api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "stack", interrupted)
    monkeypatch.setattr(api, "lucky", interrupted)
    (tmp_path / "in").mkdir()
    assert main(["stack", str(tmp_path / "in"), "-o", str(tmp_path / "s.fits")]) == 130
    assert "interrupted; rerun the same command with --resume" in capsys.readouterr().err
    assert main(["lucky", str(tmp_path / "v.ser"), "-o", str(tmp_path / "l.tif"), "--workers", "1"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err
