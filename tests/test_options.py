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
from skystack.jobs import BenchJob, CalibrateJob, EnhanceJob, LuckyJob, RegisterJob, StackJob
from skystack.options import OutputOptions, build_job, keywords

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
    assert LuckyJob().read.debayer_method == "ea"  # lucky's own default, defined once (jobs.LuckyJob)


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


# -- property tests: any value either builds or is a UsageError ---------------------------
from hypothesis import given as for_all  # noqa: E402  (``given`` is the CLI helper above)
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from skystack.optionfields import parse_min_registered  # noqa: E402

# What a caller might pass for any keyword: numbers of every kind (NaN, inf, huge, negative),
# text (empty, blank, numbers as text, units), booleans, None, sequences and mappings.
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-10, max_value=10),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", " ", "nan", "inf", "-1", "0", "1e400", "50%", "0.5", "3", "2G", "best:80%",
                     "tcp://", "auto", "1,2,3", "1,,2", "%", "-0"]),
    st.binary(max_size=4),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3), st.tuples(_scalars, _scalars),
                    st.dictionaries(st.text(max_size=3), _scalars, max_size=2))

_JOB_KEYWORDS = sorted({(job.__name__, key) for job in (StackJob, RegisterJob, LuckyJob, EnhanceJob, CalibrateJob)
                        for cls in options.job_groups(job).values() for key in keywords(cls)})
_JOBS = {j.__name__: j for j in (StackJob, RegisterJob, LuckyJob, EnhanceJob, CalibrateJob)}


@pytest.mark.parametrize("job_name,key", _JOB_KEYWORDS)
@settings(max_examples=12, deadline=None)
@for_all(value=_values)
def test_any_keyword_value_builds_or_is_a_usage_error(job_name, key, value):
    # the API contract: a bad value is a UsageError before any frame is read, never a
    # TypeError, OverflowError or a crash later in the run
    try:
        build_job(_JOBS[job_name], {key: value})
    except UsageError:
        pass


_FLAG_ARGS = sorted({(name, fl.flags[0], fl.nargs if isinstance(fl.nargs, int) else 1)
                     for name, (job, _) in COMMANDS.items()
                     for cls in options.job_groups(job).values() for f in dataclasses.fields(cls)
                     if (fl := options.cli_flag(f)) is not None and fl.flags and fl.action is None})


_PARSER = build_parser()  # parse_args leaves a parser as it was: one for every example


@settings(max_examples=300, deadline=None)
@for_all(which=st.sampled_from(_FLAG_ARGS),
         texts=st.lists(st.one_of(st.text(max_size=10).filter(lambda t: not t.startswith("-")),
                                  st.sampled_from(["nan", "inf", "-1", "0", "", "1e999", "%", " ", "-0"])),
                        min_size=3, max_size=3))
def test_any_command_line_value_parses_builds_or_is_a_usage_error(which, texts):
    command, flag, nargs = which
    job, argv = COMMANDS[command]
    try:
        args = _PARSER.parse_args(argv + [flag, *texts[:nargs]])
    except SystemExit as e:  # argparse refused it (a choice list): exit 2, its own message
        assert e.code == 2
        return
    kw = given(args, drop=("quiet", "report") if command in ("enhance", "register") else ())
    try:
        build_job(job, kw)
    except UsageError:
        pass


def test_hostile_values_named_in_the_issue_are_refused():
    for kw in ({"kappa": (-1, float("nan"))}, {"workers": 0}, {"workers": -3}, {"scheduler": ""},
               {"scheduler": "   "}, {"min_registered": "2.5"}, {"min_registered": -1}, {"min_registered": "x"},
               {"min_registered": float("nan")}, {"tile_rows": float("inf")}, {"report": ""}):
        with pytest.raises(UsageError):
            build_job(StackJob, kw)
    with pytest.raises(UsageError, match="unknown output format"):
        OutputOptions(output="x.jpg")


def test_alignment_points_closer_than_an_eighth_of_a_box_are_refused():
    # --ap-spacing 1 (210 000 boxes of 96 px) had the kernel kill a worker; 0.001 asked 1.35 TiB
    for size, spacing in ((96, 1), (96, 0.001), (96, 11.9), (48, 5), (8, 1.5)):
        with pytest.raises(UsageError, match="--ap-spacing"):
            build_job(LuckyJob, {"ap_size": size, "ap_spacing": spacing})
    for size, spacing in ((96, 12), (48, 6), (8, 2), (200, 25)):
        assert build_job(LuckyJob, {"ap_size": size, "ap_spacing": spacing}).lucky.ap_spacing == spacing


def test_min_registered_is_a_fraction_or_a_count():
    assert parse_min_registered("50%").required(5) == 3 and parse_min_registered("50%").required(6) == 3
    assert parse_min_registered(0.5).required(7) == 4 and parse_min_registered("0.25").required(8) == 2
    assert parse_min_registered("3").required(10) == 3 and parse_min_registered(3).required(2) == 2
    assert parse_min_registered(0).required(10) == 0 and parse_min_registered("1.0").required(9) == 9
    assert parse_min_registered(1).required(9) == 1  # a whole number is a count
    assert options.RegisterOptions(min_registered=1 / 3).min_registered_rule.required(9) == 3
    assert options.RegisterOptions().min_registered == "50%"
    for bad in ("150%", "1.5", "-1", "x", "", True, None, [1], float("inf")):
        with pytest.raises(UsageError):
            parse_min_registered(bad)


@pytest.mark.parametrize("command", ["stack", "register", "lucky", "enhance", "master", "calibrate", "colour", "demo"])
def test_every_help_renders(command, capsys):
    # a default holding '%' (--min-registered 50%) once broke argparse's %-formatting of --help
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out
