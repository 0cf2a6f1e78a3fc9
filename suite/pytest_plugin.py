"""pytest plugin: each (run, threshold) pair becomes a test item, so a regression reads like a failing test.

    pytest --suite-runs runs/ --suite-thresholds thresholds/phantom.toml

Items are named ``mobilenetv2[20261127-101500]::accuracy>=0.900`` and carry the ``suite_gate``
marker. Given no test paths, the run collects the gates only (from any folder, with or without
test files); name test paths as well (``pytest tests/ --suite-runs ...``) to run both. Without
the two options the plugin adds nothing. Registered through the ``pytest11`` entry point; when it
is not installed, add ``-p suite.pytest_plugin``. Runs, thresholds and verdicts come from
``suite.gates``; this module only turns them into items.

The session never passes vacuously. A ``[<backbone>]`` table that matches no run, or thresholds
under which no run would be checked, is a usage error naming the table, with a "did you mean"
(pytest exits 4, ``ExitCode.USAGE_ERROR``), as are a bad thresholds file and paths without runs.
A run no threshold applies to gets one skipped item ("not checked"). A run that failed, was
terminated by a signal, is stopped (still marked running, its process gone) or is still running
fails each of its items, saying which (pytest exits 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from suite.runs import METRICS

MARKER = "suite_gate"


@dataclasses.dataclass(frozen=True)
class _Gates:
    thresholds_file: Path
    table: dict
    runs: list
    only: bool  # no test paths named: collect the gates and nothing else


_GATES = pytest.StashKey[_Gates]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("suite", "MRI backbone suite: metric thresholds as tests")
    group.addoption("--suite-runs", action="append", default=[], metavar="DIR",
                    help="run, comparison or CV folder, or a folder of them (runs/); may repeat")
    group.addoption("--suite-thresholds", metavar="FILE",
                    help="TOML file of minimum metric values ([default] and [<backbone>] tables)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: a metric threshold checked against a run folder "
                                       "(added by --suite-runs/--suite-thresholds)")
    runs, thresholds = config.getoption("suite_runs"), config.getoption("suite_thresholds")
    if not runs and not thresholds:
        return
    if not (runs and thresholds):
        raise pytest.UsageError("--suite-runs and --suite-thresholds go together: "
                                "pytest --suite-runs runs/ --suite-thresholds thresholds.toml")
    from suite import gates  # late: a plain test run never imports it

    here = config.invocation_params.dir
    thresholds_file = here / thresholds
    try:
        table = gates.load_thresholds(thresholds_file)
        found = gates.load_runs([here / p for p in runs])
        gates.check_coverage(found, table, thresholds_file)
    except gates.GateError as exc:
        raise pytest.UsageError(str(exc)) from None
    only = config.args_source != pytest.Config.ArgsSource.ARGS
    config.stash[_GATES] = _Gates(thresholds_file, table, found, only)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Hang one collector per run under the session, beside (or instead of) the test files."""
    report = yield
    gates = collector.config.stash.get(_GATES, None)
    if gates is None or not isinstance(collector, pytest.Session) or not report.passed:
        return report
    from suite.gates import thresholds_for

    found = [RunGates.from_parent(collector, name=run.id, nodeid=run.id, run=run,
                                  thresholds=thresholds_for(run.backbone, gates.table), gates=gates)
             for run in gates.runs]
    report.result = found if gates.only else [*report.result, *found]
    return report


class RunGates(pytest.Collector):
    """One run folder; its items are the thresholds that apply to its backbone."""

    def __init__(self, *, run, thresholds, gates: _Gates, **kwargs):
        super().__init__(**kwargs)
        self.run, self.thresholds, self.gates = run, thresholds, gates

    def collect(self):
        # A backbone without bounds still gets an item: skipped (not checked), or failed when the run failed.
        for threshold in self.thresholds or [None]:
            name = str(threshold) if threshold else "thresholds"
            item = GateItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}", threshold=threshold)
            item.add_marker(MARKER)
            yield item


class GateFailure(Exception):
    """A threshold not met: the message says which figure, its value and the bound."""


class GateItem(pytest.Item):
    """One threshold checked against one run."""

    def __init__(self, *, threshold, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.result = None

    def runtest(self) -> None:
        from suite.gates import check_run, check_unthresholded

        run = self.parent.run
        self.result = check_run(run, self.threshold) if self.threshold else check_unthresholded(run)
        self.user_properties += [("run_dir", str(run.path)), ("value", self.result.value),
                                 ("message", self.result.message)]
        if not self.result.checked:
            pytest.skip(f"not checked: {self.result.message}")
        if not self.result.passed:
            raise GateFailure(self.result.message)

    def repr_failure(self, excinfo, style=None):
        if not isinstance(excinfo.value, GateFailure):
            return super().repr_failure(excinfo, style)
        run, threshold = self.parent.run, self.threshold
        lines = [str(excinfo.value), f"  run folder: {run.path or '(none was made)'}"]
        if threshold is not None:
            lines.append(f"  bound from: [{threshold.backbone}] in {self.parent.gates.thresholds_file}")
        return "\n".join(lines)

    def reportinfo(self):
        run = self.parent.run
        return (run.path / METRICS if run.path else self.path), None, self.nodeid
