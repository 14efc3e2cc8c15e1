"""The command line's entry: a process that is one command runs full garbage collections
rarely and skips the shutdown's (gc.freeze), and loads BLAS single-threaded; a caller
passing argv, or importing skystack, keeps Python's defaults."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from skystack._blas import launched_as_command
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


# -- single-threaded BLAS in the command's own process (skystack._blas) ------------------------

@pytest.mark.parametrize("orig_argv, argv, expected", [
    (["/usr/bin/python3", "/venv/bin/skystack", "lucky", "v.ser"], ["/venv/bin/skystack", "lucky"], True),
    (["python", "-m", "skystack.cli", "lucky", "v.ser"], ["-m", "lucky", "v.ser"], True),
    (["python", "-m", "skystack_extras", "stack"], ["-m", "stack"], False),
    (["python", "-X", "importtime", "-I", "-mskystack.cli", "lucky"], ["-m", "lucky"], True),
    (["python", "-m", "pytest", "tests"], ["-m", "tests"], False),
    (["python", "-c", "import skystack"], ["-c"], False),
    (["python", "notebook_script.py"], ["notebook_script.py"], False),
    (["python", "-Im", "skystack.cli"], ["-m"], True),
    (["python", "-W", "error", "-m", "skystack.cli"], ["-m"], True),
    (["python", "-Werror", "script.py"], ["script.py"], False),
    (["python", "-m"], ["-m"], False),
    ([], [], False),
])
def test_the_command_is_recognised_from_the_interpreters_command_line(orig_argv, argv, expected):
    assert launched_as_command(orig_argv, argv) is expected


def _threads_after_imports(tmp_path, script_name: str, env_extra: dict[str, str]) -> tuple[str, int]:
    """Run a script called ``script_name`` that imports skystack, SciPy's FFT and OpenCV
    (the lucky command's imports), and return its OPENBLAS_NUM_THREADS and OS thread count."""
    script = tmp_path / script_name
    script.write_text("import os\n"
                      "import skystack, scipy.fft, cv2\n"
                      "print(os.environ.get('OPENBLAS_NUM_THREADS', '-'), len(os.listdir('/proc/self/task')))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **env_extra)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    value, threads = out.stdout.split()
    return value, int(threads)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_the_command_starts_no_blas_helper_threads(tmp_path):
    """The console script's process (named ``skystack``): NumPy's, OpenCV's and SciPy's
    OpenBLAS each load single-threaded, so no helper thread spins beside the run."""
    value, threads = _threads_after_imports(tmp_path, "skystack", {})
    assert value == "1" and threads == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_a_program_importing_skystack_keeps_its_blas_and_the_users_setting_is_kept(tmp_path):
    value, threads = _threads_after_imports(tmp_path, "analysis.py", {})
    assert value == "-"  # a library import changes nothing in the caller's process
    value, threads = _threads_after_imports(tmp_path, "skystack", {"OPENBLAS_NUM_THREADS": "2"})
    assert value == "2"  # the user's own setting wins in the command too
