"""Gates never pass vacuously: a table that matches no run, or thresholds that check nothing, fail loudly.

``suite check`` exits 2 on such thresholds (naming the table, with a "did you mean"), the pytest plugin
makes them a usage error; a run no threshold applies to is reported as not checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from suite.commands.check import check_command
from suite.gates import GateError, Threshold, check_runs, check_unthresholded, format_verdict, gate_passed, load_runs
from tests.test_gates import PLUGIN, THRESHOLDS, build_runs, make_metrics, make_run, write_toml

pytest_plugins = ["pytester"]

# build_runs makes runs of mobilenetv2 and efficientnetb0 (and a comparison of them).
RUNS_ARE_OF = "the runs here are of efficientnetb0, mobilenetv2"


@pytest.fixture
def runs(tmp_path) -> Path:
    return build_runs(tmp_path / "runs")


def suite_check(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m suite check ARGS`` as a user runs it: exit status, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "suite", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# -- a table that matches no run ------------------------------------------------------------------

@pytest.mark.parametrize("table, hint", [
    ("mobilenet", "(did you mean [mobilenetv2]?)"),  # misspelt: the nearest backbone that has runs
    ("MobileNetV2", "(did you mean [mobilenetv2]?)"),  # names are matched exactly; case is a typo too
    ("resnet_50", "(did you mean [resnet50]? a registered backbone, though no run here is of it)"),
    ("alexnet", "(alexnet is not a registered backbone either; `python -m suite list` shows them)"),
    ("resnet50", ""),  # registered, but its run is missing: no guess, the backbones that have runs are listed
])
def test_table_matching_no_run_is_an_error_naming_it(runs, tmp_path, table, hint):
    path = write_toml(tmp_path / "t.toml", f"[default]\naccuracy = 0.8\n\n[{table}]\naccuracy = 0.95\n")
    with pytest.raises(GateError) as excinfo:
        check_runs(path, [runs])
    assert str(excinfo.value) == f"[{table}] in {path} matches no run{' ' + hint if hint else ''}; {RUNS_ARE_OF}"


def test_required_bound_for_a_backbone_with_no_run_is_an_error(runs):
    with pytest.raises(GateError, match="matches no run") as excinfo:
        check_runs(None, [runs], [Threshold.parse("accuracy>=0.8"), Threshold.parse("mobilenet:accuracy>=0.9")])
    assert str(excinfo.value) == ("--require mobilenet:accuracy>=0.900 matches no run "
                                  f"(did you mean mobilenetv2:accuracy>=0.900?); {RUNS_ARE_OF}")


def test_every_table_matching_no_run_is_named_at_once(runs, tmp_path):
    path = write_toml(tmp_path / "t.toml", "[default]\naccuracy = 0.8\n[mobilenet]\naccuracy = 0.9\n"
                                           "[efficientnet]\naccuracy = 0.9\n")
    with pytest.raises(GateError) as excinfo:
        check_command(path, [runs])
    assert f"[mobilenet] in {path} matches no run (did you mean [mobilenetv2]?); " \
           f"[efficientnet] in {path} matches no run (did you mean [efficientnetb0]?)" in str(excinfo.value)


def test_cli_exits_2_with_one_line_and_no_verdict_for_a_misspelt_table(runs, tmp_path):
    path = write_toml(tmp_path / "t.toml", "[mobilenet]\naccuracy = 0.9\n")
    done = suite_check("--thresholds", path, runs)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: nothing would be checked: no threshold applies to any run; [mobilenet] in {path} matches no run "
        f"(did you mean [mobilenetv2]?); {RUNS_ARE_OF}"]


# -- runs no threshold covers, and verdicts that check nothing ------------------------------------

def test_thresholds_that_check_nothing_are_an_error(runs, tmp_path):
    # before: "0 passed, 0 failed, 2 skipped" and exit 0
    only_vgg = write_toml(tmp_path / "vgg.toml", "[vgg16]\naccuracy = 0.9\n")
    with pytest.raises(GateError, match=r"^nothing would be checked: no threshold applies to any run; "
                                        r"\[vgg16\] in .*vgg\.toml matches no run"):
        check_command(only_vgg, [runs])


def test_run_no_threshold_covers_is_reported_and_the_rest_still_gate(runs, tmp_path, capsys):
    make_run(runs, "20261127-104500", "resnet50", make_metrics(accuracy=0.7))
    path = write_toml(tmp_path / "t.toml", "[mobilenetv2]\naccuracy = 0.9\n[efficientnetb0]\naccuracy = 0.85\n")
    assert check_command(path, [runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PASS         mobilenetv2     20261127-101500  accuracy 0.931 >= 0.900")
    assert lines[2] == ("NOT CHECKED  resnet50        20261127-104500  no thresholds for resnet50 "
                        "(no [default] or [resnet50] table)")
    assert lines[-1] == "2 passed, 0 failed, 1 not checked"


def test_a_verdict_that_checked_nothing_never_passes(runs):
    results = [check_unthresholded(run) for run in load_runs([runs])]
    assert all(r.passed and not r.checked for r in results)
    assert not gate_passed(results)
    assert format_verdict(results).splitlines()[-2:] == ["0 passed, 0 failed, 2 not checked",
                                                         "nothing was checked: that is not a pass"]


def test_cli_exit_statuses(runs, tmp_path):
    easy = write_toml(tmp_path / "easy.toml", "[default]\naccuracy = 0.8\n")
    hard = write_toml(tmp_path / "hard.toml", THRESHOLDS)
    assert suite_check("--thresholds", easy, runs).returncode == 0
    assert suite_check("--thresholds", hard, runs).returncode == 1
    assert suite_check("--require", "mobilenet:accuracy>=0.5", runs).returncode == 2


# -- the pytest plugin ------------------------------------------------------------------------------

def run_gates(pytester, thresholds_text: str, *extra: str):
    runs = build_runs(pytester.path / "runs")
    thresholds = write_toml(pytester.path / "t.toml", thresholds_text)
    return pytester.runpytest("--suite-runs", str(runs), "--suite-thresholds", str(thresholds), *PLUGIN, *extra)


def test_plugin_fails_the_session_on_a_table_matching_no_run(pytester):
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    result = run_gates(pytester, "[default]\naccuracy = 0.8\n[mobilenet]\naccuracy = 0.9\n", "test_other.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: [[]mobilenet[]] in *t.toml matches no run (did you mean [[]mobilenetv2[]]?); "
                                 f"{RUNS_ARE_OF}"])


@pytest.mark.parametrize("text, line", [
    ("[vgg16]\naccuracy = 0.9\n", "[[]vgg16[]] in *t.toml matches no run*"),
    ("[default]\n", f"the runs here are of {RUNS_ARE_OF.split(' of ')[1]}"),  # a file with no bound in it
])
def test_plugin_fails_the_session_when_nothing_would_be_checked(pytester, text, line):
    result = run_gates(pytester, text)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: nothing would be checked: no threshold applies to any run; {line}"])


def test_plugin_skips_a_run_no_threshold_covers_as_not_checked(pytester):
    result = run_gates(pytester, "[mobilenetv2]\naccuracy = 0.9\n", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*not checked: no thresholds for efficientnetb0*"])
