"""Metric gates: thresholds, run discovery, verdicts, and the pytest plugin, over run folders written here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from suite.commands.check import check_command
from suite.gates import (
    CheckResult,
    GateError,
    MetricNotFound,
    Threshold,
    available_metrics,
    check_runs,
    find_runs,
    format_verdict,
    load_runs,
    load_thresholds,
    metric_value,
    thresholds_for,
)

pytest_plugins = ["pytester"]

LABELS = ("glioma", "meningioma", "no_tumor")


def make_metrics(accuracy=0.931, macro_f1=0.912, recall=None, ci=(0.89, 0.96)) -> dict:
    """A metrics.json shaped like evaluate's: per-class figures with bootstrap intervals."""
    recall = {"glioma": 0.812, "meningioma": 0.95, "no_tumor": 1.0, **(recall or {})}
    per_class = {label: {"precision": 0.9, "recall": r, "f1": 0.9, "support": 40,
                         "f1_ci": [0.85, 0.95], "recall_ci": [round(r - 0.1, 3), min(r + 0.05, 1.0)]}
                 for label, r in recall.items()}
    return {"accuracy": accuracy, "accuracy_ci": list(ci), "macro_f1": macro_f1, "macro_f1_ci": [0.87, 0.94],
            "per_class": per_class, "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            "labels": list(recall), "n_test": 120, "roc_auc_macro": 0.97,
            "roc_auc": {label: 0.97 for label in recall}, "bootstrap": {"n_resamples": 1000, "seed": 0}}


def make_run(out: Path, stamp: str, backbone: str, metrics: dict | None = None, *, status="completed",
             error=None, **manifest_fields) -> Path:
    """A run folder; ``manifest_fields`` adds to its manifest (``pid=..., host=...``)."""
    run_dir = out / f"{stamp}-{backbone}"
    run_dir.mkdir(parents=True)
    manifest = {"schema": 1, "run_id": run_dir.name, "status": status, "error": error, "backbone": backbone,
                "dataset": {"name": "phantom", "synthetic": True}, **manifest_fields}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def make_comparison(out: Path, stamp: str, members: list[tuple[str, Path | None, str]]) -> Path:
    folder = out / f"{stamp}-compare"
    folder.mkdir(parents=True)
    runs = [{"backbone": name, "run_dir": f"../{run_dir.name}" if run_dir else None, "status": status,
             "error": None if status == "completed" else "RuntimeError: out of memory"}
            for name, run_dir, status in members]
    (folder / "comparison.json").write_text(json.dumps({"schema": 1, "kind": "comparison", "runs": runs}))
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    """runs/ with two finished runs and a comparison of them."""
    return build_runs(tmp_path / "runs")


def build_runs(out: Path) -> Path:
    mobile = make_run(out, "20261127-101500", "mobilenetv2", make_metrics())
    effnet = make_run(out, "20261127-102000", "efficientnetb0", make_metrics(accuracy=0.861, macro_f1=0.84))
    make_comparison(out, "20261127-103000", [("mobilenetv2", mobile, "completed"),
                                             ("efficientnetb0", effnet, "completed")])
    return out


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


THRESHOLDS = """
[default]
accuracy = 0.85
macro_f1 = 0.80
recall_glioma = 0.75

[mobilenetv2]
accuracy = 0.90
recall_glioma = 0.85
"""


@pytest.fixture
def thresholds(tmp_path) -> Path:
    return write_toml(tmp_path / "thresholds.toml", THRESHOLDS)


@pytest.fixture
def default_thresholds(tmp_path) -> Path:
    """Bounds for every backbone and no backbone table, for runs of any backbone."""
    return write_toml(tmp_path / "default.toml", THRESHOLDS.split("[mobilenetv2]")[0])


# -- Threshold ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("accuracy>=0.9", Threshold("accuracy", 0.9)),
    ("  macro_f1 >= 0.85 ", Threshold("macro_f1", 0.85)),
    ("recall_no_tumor_ci_low>=0.7", Threshold("recall_no_tumor_ci_low", 0.7)),
    ("f1_meningioma>=1", Threshold("f1_meningioma", 1.0)),
    ("mobilenetv2:accuracy>=0.88", Threshold("accuracy", 0.88, "mobilenetv2")),
])
def test_parse_reads_good_text(text, expected):
    assert Threshold.parse(text) == expected


@pytest.mark.parametrize("text, hint", [
    ("accuracy", "METRIC>=MINIMUM"),
    ("accuracy>0.9", "minimums"),
    ("accuracy<=0.9", "minimums"),
    ("accuracy>=", "not a number"),
    ("accuracy>=high", "not a number"),
    (">=0.9", "METRIC>=MINIMUM"),
    ("acc uracy>=0.9", "METRIC>=MINIMUM"),
    ("accuracy>=nan", "finite"),
])
def test_parse_rejects_bad_text_with_a_hint(text, hint):
    with pytest.raises(ValueError, match=hint) as excinfo:
        Threshold.parse(text)
    assert repr(text) in str(excinfo.value)


def test_parse_errors_reach_argparse_users_verbatim(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--require", type=Threshold.parse)
    with pytest.raises(SystemExit):
        parser.parse_args(["--require", "accuracy>0.9"])
    assert "thresholds are minimums, written accuracy>=MINIMUM" in capsys.readouterr().err


@pytest.mark.parametrize("minimum, text", [(0.9, "accuracy>=0.900"), (0.8555, "accuracy>=0.8555")])
def test_threshold_reads_back_as_text(minimum, text):
    assert str(Threshold("accuracy", minimum)) == text


# -- metric names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("accuracy", 0.931),
    ("macro_f1", 0.912),
    ("recall_glioma", 0.812),
    ("recall_no_tumor", 1.0),
    ("f1_meningioma", 0.9),
    ("accuracy_ci_low", 0.89),
    ("macro_f1_ci_low", 0.87),
    ("recall_glioma_ci_low", 0.712),
    ("f1_no_tumor_ci_low", 0.85),
    ("roc_auc_glioma", 0.97),
    ("roc_auc_macro", 0.97),
])
def test_metric_value_resolves_names(name, value):
    assert metric_value(make_metrics(), name) == pytest.approx(value)


def test_every_listed_metric_resolves_and_settings_are_not_metrics():
    metrics = make_metrics()
    names = available_metrics(metrics)
    assert {name: metric_value(metrics, name) for name in names}.keys() == set(names)
    assert "bootstrap_seed" not in names


@pytest.mark.parametrize("name, hint", [
    ("recall_astrocytoma", "this run's classes: glioma, meningioma, no_tumor"),
    ("accurcy", "did you mean accuracy"),
])
def test_missing_metric_says_so(name, hint):
    with pytest.raises(MetricNotFound, match=f"{name}: not in metrics.json") as excinfo:
        metric_value(make_metrics(), name)
    assert hint in str(excinfo.value)


# -- Threshold.check ------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", ["accuracy>=0.9", "recall_glioma>=0.812", "recall_glioma_ci_low>=0.7"])
def test_met_threshold_passes(threshold):
    assert Threshold.parse(threshold).check(make_metrics()) is None


@pytest.mark.parametrize("threshold, message", [
    ("recall_glioma>=0.85", "recall_glioma = 0.812 < 0.850"),
    ("accuracy_ci_low>=0.9", "accuracy_ci_low = 0.890 < 0.900"),
    ("recall_glioma_ci_low>=0.75", "recall_glioma_ci_low = 0.712 < 0.750"),
    ("accuracy>=0.9315", "accuracy = 0.9310 < 0.9315"),  # more digits where 3 would print equal numbers
])
def test_unmet_threshold_names_metric_value_and_bound(threshold, message):
    assert Threshold.parse(threshold).check(make_metrics()) == message


def test_ci_lower_bound_can_fail_where_the_point_estimate_passes():
    metrics = make_metrics(accuracy=0.93, ci=(0.86, 0.97))
    assert Threshold.parse("accuracy>=0.9").check(metrics) is None
    assert Threshold.parse("accuracy_ci_low>=0.9").check(metrics) == "accuracy_ci_low = 0.860 < 0.900"


def test_missing_metric_is_a_failure_not_a_crash():
    message = Threshold.parse("f1_pituitary>=0.8").check(make_metrics())
    assert message.startswith("f1_pituitary: not in metrics.json")


# -- thresholds files -----------------------------------------------------------------------------

def test_backbone_table_overrides_default_per_metric(thresholds):
    table = load_thresholds(thresholds)
    mobile = {t.metric: t for t in thresholds_for("mobilenetv2", table)}
    assert {m: t.minimum for m, t in mobile.items()} == {"accuracy": 0.9, "macro_f1": 0.8, "recall_glioma": 0.85}
    assert (mobile["accuracy"].backbone, mobile["macro_f1"].backbone) == ("mobilenetv2", "default")
    assert [(t.metric, t.minimum) for t in thresholds_for("efficientnetb0", table)] == \
        [("accuracy", 0.85), ("macro_f1", 0.8), ("recall_glioma", 0.75)]


def test_backbone_table_adds_metrics_and_works_without_default(tmp_path):
    table = load_thresholds(write_toml(tmp_path / "t.toml", "[vgg16]\nf1_glioma = 0.7\naccuracy = 1\n"))
    assert thresholds_for("vgg16", table) == [Threshold("f1_glioma", 0.7, "vgg16"), Threshold("accuracy", 1.0, "vgg16")]
    assert thresholds_for("mobilenetv2", table) == []


@pytest.mark.parametrize("text, hint", [
    ('[default]\naccuracy = "high"\n', "[default] accuracy = 'high': the bound must be a finite number"),
    ("[default]\naccuracy = true\n", "[default] accuracy = True"),
    ("[default]\naccuracy = nan\n", "[default] accuracy = nan"),
    ("[mobilenetv2]\naccuracy = [0.8, 0.9]\n", "[mobilenetv2] accuracy"),
    ("[default.recall]\nglioma = 0.8\n", "[default] recall is a table"),
    ("accuracy = 0.8\n", "accuracy = 0.8 is outside any table"),
    ("[default]\naccuracy = \n", "cannot read thresholds"),
    ('[default]\n"bad name" = 0.8\n', "[default] bad name"),
])
def test_bad_thresholds_file_names_the_file_and_key(tmp_path, text, hint):
    path = write_toml(tmp_path / "bad.toml", text)
    with pytest.raises(GateError) as excinfo:
        load_thresholds(path)
    assert str(path) in str(excinfo.value)
    assert hint in str(excinfo.value)


def test_missing_thresholds_file(tmp_path):
    with pytest.raises(GateError, match="no such thresholds file"):
        load_thresholds(tmp_path / "nope.toml")


# -- finding runs ---------------------------------------------------------------------------------

def test_find_runs_in_a_runs_folder_counts_each_run_once(runs):
    assert [p.name for p in find_runs([runs])] == ["20261127-101500-mobilenetv2", "20261127-102000-efficientnetb0"]


def test_find_runs_follows_a_comparison_to_its_members(runs):
    comparison = runs / "20261127-103000-compare"
    found = find_runs([comparison])
    assert [p.resolve() for p in found] == [(runs / n).resolve() for n in
                                            ("20261127-101500-mobilenetv2", "20261127-102000-efficientnetb0")]


def test_find_runs_takes_a_run_folder_as_it_is(runs):
    assert find_runs([runs / "20261127-102000-efficientnetb0"]) == [runs / "20261127-102000-efficientnetb0"]


@pytest.mark.parametrize("make, hint", [
    (lambda tmp: tmp / "missing", "no such folder"),
    (lambda tmp: tmp, "holds no run, comparison or cross-validation folder"),
])
def test_find_runs_refuses_paths_without_runs(tmp_path, make, hint):
    with pytest.raises(GateError, match=hint):
        find_runs([make(tmp_path)])


def test_runs_are_labelled_by_folder_name_without_backbone(runs):
    assert [r.id for r in load_runs([runs])] == ["mobilenetv2[20261127-101500]", "efficientnetb0[20261127-102000]"]


def make_cv(out: Path, folds_done: int, k: int = 3) -> Path:
    cv_dir = out / "20261127-110000-cv-mobilenetv2"
    cv_dir.mkdir(parents=True)
    folds = []
    for fold in range(1, folds_done + 1):
        run_dir = cv_dir / f"fold-{fold}"
        run_dir.mkdir()
        (run_dir / "manifest.json").write_text(json.dumps({"backbone": "mobilenetv2", "status": "completed"}))
        (run_dir / "metrics.json").write_text(json.dumps(make_metrics(accuracy=0.9 + fold / 100)))
        folds.append({"fold": fold, "run_dir": run_dir.name, "status": "completed"})
    (cv_dir / "fold-3.incomplete-20261127-120000").mkdir()  # set aside by a resume: not a run
    status = "completed" if folds_done == k else "running"
    (cv_dir / "cv.json").write_text(json.dumps({"kind": "cv", "backbone": "mobilenetv2", "k": k,
                                                "status": status, "folds": folds}))
    return cv_dir


def test_cv_folder_counts_each_fold_as_a_run(tmp_path):
    cv_dir = make_cv(tmp_path / "runs", folds_done=3)
    assert [r.id for r in load_runs([tmp_path / "runs"])] == [
        f"mobilenetv2[20261127-110000-cv-fold-{k}]" for k in (1, 2, 3)]
    results = check_runs(None, [cv_dir], [Threshold.parse("accuracy>=0.915")])
    assert [r.passed for r in results] == [False, True, True]


def test_unfinished_cv_fails_the_folds_it_lacks(tmp_path):
    cv_dir = make_cv(tmp_path, folds_done=1)
    results = check_runs(None, [cv_dir], [Threshold.parse("accuracy>=0.9")])
    assert [r.passed for r in results] == [True, False, False]
    assert "fold 3 has not run (cross-validation status 'running')" in results[2].message


# -- check_runs and the verdict -------------------------------------------------------------------

def test_check_runs_applies_each_backbones_thresholds(runs, thresholds):
    results = check_runs(thresholds, [runs])
    assert [(r.backbone, str(r.threshold), r.passed) for r in results] == [
        ("mobilenetv2", "accuracy>=0.900", True),
        ("mobilenetv2", "macro_f1>=0.800", True),
        ("mobilenetv2", "recall_glioma>=0.850", False),
        ("efficientnetb0", "accuracy>=0.850", True),
        ("efficientnetb0", "macro_f1>=0.800", True),
        ("efficientnetb0", "recall_glioma>=0.750", True),
    ]
    failed = results[2]
    assert (failed.value, failed.message) == (0.812, "recall_glioma = 0.812 < 0.850")
    assert failed.id == "mobilenetv2[20261127-101500]::recall_glioma>=0.850"


@pytest.mark.parametrize("status, error, metrics, hint", [
    ("failed", "ValueError: bad shape", make_metrics(), "run failed: ValueError: bad shape"),
    ("running", None, None, "run did not finish (status 'running'"),
    ("completed", None, None, "metrics.json is missing"),
])
def test_failed_or_incomplete_run_fails_every_check_saying_why(tmp_path, default_thresholds, status, error, metrics,
                                                               hint):
    run_dir = make_run(tmp_path / "runs", "20261127-101500", "vgg16", metrics, status=status, error=error)
    results = check_runs(default_thresholds, [run_dir])
    assert len(results) == 3 and not any(r.passed for r in results)
    assert all(hint in r.message and r.value is None for r in results)


def test_comparison_member_that_never_made_a_folder_fails(runs, thresholds):
    comparison = make_comparison(runs, "20261127-104000", [
        ("mobilenetv2", runs / "20261127-101500-mobilenetv2", "completed"), ("vgg16", None, "failed")])
    results = [r for r in check_runs(thresholds, [comparison]) if r.backbone == "vgg16"]
    assert [r.passed for r in results] == [False] * 3
    assert results[0].run == "20261127-104000-compare"
    assert "failed before it made a run folder: RuntimeError: out of memory" in results[0].message


def test_comparison_member_whose_folder_is_gone_fails(runs, default_thresholds):
    gone = runs / "20261127-000000-resnet50"
    comparison = make_comparison(runs, "20261127-104000", [("resnet50", gone, "completed")])
    results = check_runs(default_thresholds, [comparison])
    assert results and all("is missing" in r.message and not r.passed for r in results)


def test_verdict_has_a_line_per_check_and_a_summary(runs, thresholds):
    lines = format_verdict(check_runs(thresholds, [runs])).splitlines()
    assert lines[0].split() == ["PASS", "mobilenetv2", "20261127-101500", "accuracy", "0.931", ">=", "0.900"]
    assert lines[2].split()[:3] == ["FAIL", "mobilenetv2", "20261127-101500"]
    assert lines[2].endswith("recall_glioma = 0.812 < 0.850")
    assert lines[-1] == "5 passed, 1 failed"


def test_backbone_without_thresholds_is_reported_as_not_checked(runs, tmp_path):
    only_mobile = write_toml(tmp_path / "mobile.toml", "[mobilenetv2]\naccuracy = 0.9\n")
    results = check_runs(only_mobile, [runs])
    assert [(r.backbone, r.checked, r.passed) for r in results] == [("mobilenetv2", True, True),
                                                                    ("efficientnetb0", False, True)]
    lines = format_verdict(results).splitlines()
    assert lines[1].split()[:4] == ["NOT", "CHECKED", "efficientnetb0", "20261127-102000"]
    assert lines[1].endswith("  no thresholds for efficientnetb0 (no [default] or [efficientnetb0] table)")
    assert lines[-1] == "1 passed, 0 failed, 1 not checked"


# -- check_command --------------------------------------------------------------------------------

def test_check_command_exits_0_when_all_pass(runs, tmp_path, capsys):
    easy = write_toml(tmp_path / "easy.toml", "[default]\naccuracy = 0.8\n")
    assert check_command(easy, [runs]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 passed, 0 failed"


def test_check_command_exits_1_when_any_fails(runs, thresholds, capsys):
    assert check_command(thresholds, [runs / "20261127-103000-compare"]) == 1
    assert "FAIL  mobilenetv2" in capsys.readouterr().out


def test_check_command_takes_bounds_from_the_command_line(runs, thresholds, capsys):
    assert check_command(thresholds, [runs], [Threshold.parse("mobilenetv2:recall_glioma>=0.8")]) == 0
    assert check_command(None, [runs], [Threshold.parse("accuracy>=0.9")]) == 1


def test_check_command_without_any_threshold_is_an_error(runs):
    with pytest.raises(GateError, match="no thresholds to check"):
        check_command(None, [runs])


def test_check_result_is_plain_data():
    result = CheckResult(None, "vgg16", "x", None, None, False, "run failed: boom")
    assert result.id == "vgg16[x]::thresholds"
    assert result.checked


# -- the pytest plugin ----------------------------------------------------------------------------

PLUGIN = ("-p", "suite.pytest_plugin")  # in case the pytest11 entry point is not installed


@pytest.fixture
def gated(pytester) -> tuple[Path, Path]:
    """runs/ and thresholds.toml inside pytester's folder, as a project would have them.

    (pytest counts existing paths given as option values when it picks the rootdir, and shows
    ids relative to it: runs outside the current folder would print as ``../mobilenetv2[...]``.)
    """
    return build_runs(pytester.path / "runs"), write_toml(pytester.path / "thresholds.toml", THRESHOLDS)


def run_gates(pytester, runs, thresholds, *extra):
    return pytester.runpytest("--suite-runs", str(runs), "--suite-thresholds", str(thresholds), *PLUGIN, *extra)


def test_plugin_makes_an_item_per_run_and_threshold(pytester, gated):
    runs, thresholds = gated
    result = run_gates(pytester, runs, thresholds, "-v")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines([
        "mobilenetv2[[]20261127-101500[]]::accuracy>=0.900 PASSED*",
        "mobilenetv2[[]20261127-101500[]]::recall_glioma>=0.850 FAILED*",
        "efficientnetb0[[]20261127-102000[]]::macro_f1>=0.800 PASSED*",
    ])


def test_plugin_failure_names_metric_value_and_bound(pytester, gated):
    runs, thresholds = gated
    result = run_gates(pytester, runs, thresholds)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*_ mobilenetv2[[]20261127-101500[]]::recall_glioma>=0.850 _*",
        "recall_glioma = 0.812 < 0.850",
        f"  run folder: {runs / '20261127-101500-mobilenetv2'}",
        f"  bound from: [[]mobilenetv2[]] in {thresholds}",
    ])


def test_plugin_reports_failed_runs_and_skips_unthresholded_ones(pytester, tmp_path):
    out = tmp_path / "runs"
    make_run(out, "20261127-101500", "vgg16", status="failed", error="ValueError: bad shape")
    make_run(out, "20261127-102000", "resnet50", make_metrics())
    only_vgg = write_toml(tmp_path / "vgg.toml", "[vgg16]\naccuracy = 0.9\n")
    result = run_gates(pytester, out, only_vgg, "-rs")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["accuracy: not checked, run failed: ValueError: bad shape",
                                 "SKIPPED*no thresholds for resnet50*"])


def test_plugin_collects_only_gates_unless_test_paths_are_named(pytester, gated):
    runs, thresholds = gated
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    run_gates(pytester, runs, thresholds).assert_outcomes(passed=5, failed=1)
    run_gates(pytester, runs, thresholds, "test_other.py").assert_outcomes(passed=6, failed=1)
    run_gates(pytester, runs, thresholds, "test_other.py", "-m", "not suite_gate").assert_outcomes(passed=1)


def test_plugin_does_nothing_without_its_options(pytester):
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_other.py::test_other", "1 test collected*"])
    assert "[" not in result.stdout.str()


@pytest.mark.parametrize("args, hint", [
    (("--suite-runs", "runs"), "--suite-runs and --suite-thresholds go together"),
    (("--suite-runs", "nowhere", "--suite-thresholds", "t.toml"), "nowhere: no such folder"),
    (("--suite-runs", ".", "--suite-thresholds", "missing.toml"), "no such thresholds file"),
])
def test_plugin_usage_errors(pytester, args, hint):
    pytester.makefile(".toml", t="[default]\naccuracy = 0.9\n")
    result = pytester.runpytest(*args, *PLUGIN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert hint in result.stderr.str()
