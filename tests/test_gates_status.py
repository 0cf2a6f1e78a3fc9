"""A run's status as the gates read it: stopped (marked running, its process gone), still running, killed.

Manifests record the ``pid`` and ``host`` of the process writing them (``suite.runs.process_stamp``);
here they are written by hand: this test process for a live one, a finished child for a gone one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from suite.commands.check import check_command
from suite.gates import Threshold, check_runs
from suite.runs import process_state
from tests.test_gates import PLUGIN, make_cv, make_metrics, make_run, write_toml

pytest_plugins = ["pytester"]

HOST = socket.gethostname()
STOPPED = "stopped: still marked running, but its process ({pid} on {host}) is gone (killed, or the machine went down)"


@pytest.fixture(scope="module")
def gone_pid() -> int:
    """The pid of a process that ran on this host and has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    assert process_state({"pid": child.pid, "host": HOST}) == "gone"
    return child.pid


@pytest.fixture
def default_thresholds(tmp_path) -> Path:
    return write_toml(tmp_path / "t.toml", "[default]\naccuracy = 0.8\nmacro_f1 = 0.8\n")


def test_running_run_whose_process_is_gone_fails_as_stopped(tmp_path, default_thresholds, gone_pid, capsys):
    run_dir = make_run(tmp_path / "runs", "20261127-101500", "mobilenetv2", status="running", pid=gone_pid,
                       host=HOST)
    results = check_runs(default_thresholds, [run_dir])
    assert [(r.passed, r.checked, r.value) for r in results] == [(False, True, None)] * 2
    assert results[0].message == "accuracy: not checked, " + STOPPED.format(pid=gone_pid, host=HOST)
    assert check_command(default_thresholds, [run_dir]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL  mobilenetv2  20261127-101500  accuracy: not checked, stopped: ")
    assert lines[-1] == "0 passed, 2 failed"


def test_running_run_whose_process_is_alive_fails_as_still_running(tmp_path, default_thresholds):
    run_dir = make_run(tmp_path / "runs", "20261127-101500", "mobilenetv2", make_metrics(), status="running",
                       pid=os.getpid(), host=HOST)
    results = check_runs(default_thresholds, [run_dir])
    assert not any(r.passed for r in results)
    assert results[0].message == (f"accuracy: not checked, still running: its process ({os.getpid()} on {HOST}) "
                                  "is alive; check it once it has finished")


def test_running_run_recorded_on_another_host_cannot_be_told(tmp_path, default_thresholds):
    run_dir = make_run(tmp_path / "runs", "20261127-101500", "mobilenetv2", status="running", pid=4242,
                       host="gpu-node-7.invalid")
    results = check_runs(default_thresholds, [run_dir])
    assert not any(r.passed for r in results)
    assert "still marked running, by a process (4242 on gpu-node-7.invalid) on another host" in results[0].message


@pytest.mark.parametrize("error, message", [
    ("terminated by SIGTERM", "run terminated by SIGTERM before it finished (stopped from outside, not a crash of "
                              "its own)"),
    ("interrupted by SIGINT (Ctrl-C)", "run interrupted by SIGINT (Ctrl-C) before it finished"),
    ("RuntimeError: out of memory", "run failed: RuntimeError: out of memory"),
])
def test_failed_run_says_whether_it_was_stopped_by_a_signal(tmp_path, default_thresholds, error, message):
    run_dir = make_run(tmp_path / "runs", "20261127-101500", "mobilenetv2", status="failed", error=error,
                       pid=os.getpid(), host=HOST)
    results = check_runs(default_thresholds, [run_dir])
    assert not any(r.passed for r in results)
    assert message in results[0].message


def test_cv_whose_process_is_gone_fails_its_missing_folds_as_stopped(tmp_path, gone_pid):
    cv_dir = make_cv(tmp_path, folds_done=1)
    cv = (cv_dir / "cv.json").read_text().replace('"status": "running"',
                                                  f'"status": "running", "pid": {gone_pid}, "host": "{HOST}"')
    (cv_dir / "cv.json").write_text(cv)
    results = check_runs(None, [cv_dir], [Threshold.parse("accuracy>=0.9")])
    assert [r.passed for r in results] == [True, False, False]
    assert results[2].message.endswith("fold 3 has not run (cross-validation "
                                       + STOPPED.format(pid=gone_pid, host=HOST) + ")")


def test_plugin_fails_stopped_and_running_runs_saying_which(pytester, gone_pid):
    runs = pytester.path / "runs"
    make_run(runs, "20261127-101500", "mobilenetv2", status="running", pid=gone_pid, host=HOST)
    make_run(runs, "20261127-102000", "mobilenetv2", make_metrics(), status="running", pid=os.getpid(), host=HOST)
    thresholds = write_toml(pytester.path / "t.toml", "[default]\naccuracy = 0.8\n")
    result = pytester.runpytest("--suite-runs", str(runs), "--suite-thresholds", str(thresholds), *PLUGIN)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*_ mobilenetv2[[]20261127-101500[]]::accuracy>=0.800 _*",
        "accuracy: not checked, " + STOPPED.format(pid=gone_pid, host=HOST).replace("[", "[[]"),
        "*_ mobilenetv2[[]20261127-102000[]]::accuracy>=0.800 _*",
        f"accuracy: not checked, still running: its process ({os.getpid()} on {HOST}) is alive*",
    ])
