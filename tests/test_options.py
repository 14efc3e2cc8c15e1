"""One home for every option: the CLI, the API and the option dataclasses agree.

The demosaicing default once drifted between ``ReadOptions`` ("ea"), the CLI and
``api.stack`` ("bilinear") and ``api.register`` (nothing), so ``skystack register`` and
``skystack stack`` reported different transforms for the same Bayer frames. These tests
pin the mechanism that prevents that: defaults, choices and keywords all come from
:mod:`skystack.options`.
"""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from skystack import options
from skystack.cli import build_parser
from skystack.cli.args import given
from skystack.errors import UsageError
from skystack.options import (BenchJob, CalibrateJob, EnhanceJob, LuckyJob, OutputOptions, RegisterJob, StackJob,
                              build_job, keywords)

# command → (job, argv that gives only the required arguments)
COMMANDS = {
    "stack": (StackJob, ["stack", "in/", "-o", "out.fits"]),
    "register": (RegisterJob, ["register", "in/", "--report", "r.json"]),
    "lucky": (LuckyJob, ["lucky", "in.ser", "-o", "out.fits"]),
    "enhance": (EnhanceJob, ["enhance", "in.fits", "-o", "out.fits"]),
    "calibrate": (CalibrateJob, ["calibrate", "in/", "-o", "cal/"]),
    "bench": (BenchJob, ["bench"]),
}


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_without_options_builds_the_dataclass_defaults(command):
    job, argv = COMMANDS[command]
    args = build_parser().parse_args(argv)
    kw = given(args, drop=("quiet", "report") if command in ("enhance", "register") else ())
    assert "debayer_method" not in kw  # argparse holds no defaults of its own
    built = build_job(job, kw)
    assert built == job(), f"{command}: {built} != {job()}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_choices_and_help_defaults_come_from_the_fields(command):
    job, _ = COMMANDS[command]
    p = _subparser(command)
    by_dest = {a.dest: a for a in p._actions}
    defaults = job()
    for group, cls in options.job_groups(job).items():
        for f in dataclasses.fields(cls):
            fl = options.cli_flag(f)
            dest = options.public_name(f)
            if fl is None or not fl.flags or dest not in by_dest or by_dest[dest].option_strings[0] not in fl.flags:
                continue
            action = by_dest[dest]
            if action.required:  # a required argument (register's --report) has no default
                continue
            assert action.default is argparse.SUPPRESS, dest
            allowed = options.choices(cls, f.name)
            if allowed is not None and fl.action is None:
                assert list(action.choices) == list(allowed), dest
            inst = getattr(defaults, group) or cls()
            value = getattr(inst, f.name)
            if fl.action is None and value not in (None, ()) and not fl.hidden:
                shown = str(value) if not isinstance(value, (tuple, float)) else None
                if shown is not None:
                    assert f"(default: {shown}" in action.help, (dest, action.help)


@pytest.mark.parametrize("job", [StackJob, RegisterJob, LuckyJob, EnhanceJob, CalibrateJob, BenchJob])
def test_every_keyword_belongs_to_one_group(job):
    seen: dict[str, str] = {}
    for group, cls in options.job_groups(job).items():
        for key in keywords(cls):
            assert key not in seen, f"{job.__name__}: keyword {key!r} in both {seen[key]} and {group}"
            seen[key] = group


def test_register_and_stack_read_bayer_frames_alike():
    # the bug this module exists for: one ReadOptions default for both commands
    assert StackJob().read == RegisterJob().read == options.ReadOptions()
    assert options.ReadOptions().debayer_method == "bilinear"
    assert LuckyJob().read.debayer_method == "ea"  # lucky's own default, defined once (options.LuckyJob)


def test_keywords_map_to_fields_and_values_are_parsed():
    job = build_job(StackJob, {"method": "sigma", "kappa": ("2.5", 3), "memory_limit": "256M", "norm": "add",
                               "register": "stars", "max_fwhm": "4", "white_balance": "1.9,1,1.4",
                               "darks": "darks/", "workers": "2"}, output=OutputOptions(output="o.fits"))
    assert job.stack.method == "sigma" and (job.stack.kappa_low, job.stack.kappa_high) == (2.5, 3.0)
    assert job.stack.memory_limit == 256 * 2**20 and job.stack.normalization == "add"
    assert job.register.method == "stars" and job.select.max_fwhm_px == 4.0
    assert job.colour.white_balance == (1.9, 1.0, 1.4) and job.calibration.darks == ("darks/",)
    assert job.run.workers == 2


@pytest.mark.parametrize("kw", [
    {"method": "average"}, {"kappa": (3,)}, {"kappa": (-1, 3)}, {"kappa": (float("nan"), 3)},
    {"memory_limit": "lots"}, {"memory_limit": 0}, {"workers": 0}, {"workers": -3}, {"workers": "two"},
    {"keep": "0"}, {"keep": "150%"}, {"keep": "2.5"}, {"register": "planetary"}, {"model": "homography"},
    {"reference": -1}, {"interpolation": "nearest"}, {"max_roundness": 2}, {"white_balance": "1,2"},
    {"no_such_option": 1},
])
def test_bad_values_are_refused_before_any_frame_is_read(kw):
    with pytest.raises(UsageError):
        build_job(StackJob, kw)


def test_keep_rule_is_one_parser_for_both_pipelines():
    rule = options.parse_keep
    assert rule(None) is None
    assert rule("80%").count(10) == 8 and rule("best:80%").count(10) == 8
    assert rule("best:3").count(10) == 3 and rule("200").count(10) == 10
    assert rule("1%").count(10) == 1 and rule("10%").count(30) == 3
    assert rule("10%").count(120) == 12 and rule("100%").count(7) == 7 and rule("10%").count(0) == 0
    assert rule("200").requested == 200 and rule("10%").requested is None
    for bad in ("x", "150%", "0%", "0", "2.5", "-3", ""):
        with pytest.raises(UsageError):
            rule(bad)


def test_every_command_renders_its_help_and_every_option_has_one():
    # a default with a % (lucky's --keep 10%) once broke `skystack lucky --help`
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "usage:" in text
        for a in p._actions:
            if a.help == argparse.SUPPRESS:
                continue
            assert a.help and a.help.strip() and not a.help.strip().startswith("(default"), (name, a.option_strings)


def test_the_drizzle_options_of_stack():
    job = build_job(StackJob, {"drizzle": "2", "pixfrac": 0.5})
    assert job.stack.drizzle == 2.0 and job.stack.pixfrac == 0.5
    for bad in ({"drizzle": 0.5}, {"drizzle": "x"}, {"pixfrac": 0}, {"pixfrac": 1.5}):
        with pytest.raises(UsageError):
            build_job(StackJob, bad)
