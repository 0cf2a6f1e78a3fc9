"""``reports.write_report`` and ``reports.finish`` on every folder kind, from hand-written records (no training)."""

from __future__ import annotations

import json
import re

import pytest

import reports
from reports.audit import render_audit
from suite import runs
from tests.comparefixture import build_every_kind, write_search

JPEG_URI = 'src="data:image/jpeg;base64,'


@pytest.fixture
def every(tmp_path):
    """An output folder with a folder of every kind; no report written yet."""
    return build_every_kind(tmp_path)


# One row per kind: the folder's key in ``every``, the report's file name, and what the page must say.
KINDS = {
    "cv": ("cv", "report.html", ["2-fold cross-validation", "0.925 ± 0.020 [0.875, 0.975]",
                                 "Official test split", "Synthetic phantom data"]),
    "tuning": ("tuning", "report.html", ["Best settings", "0.875", "0.900 [0.769, 0.960]",
                                         "1 of 3 trials failed", "dropout must be in [0, 1)"]),
    "search-only": ("search", "report.html", ["Search unfinished", "Best settings so far", "0.750",
                                              "not retrained or tested yet", "1 completed of 1 run (10 allowed)"]),
    "evaluation": ("evaluation", "report.html", ["93.2%", "efficientnetb0", "Run summary"]),
    "audit": ("audit", "audit.html", ["Test images leak from training", "1 of 4 test images",
                                      "Cross-split exact duplicates", JPEG_URI]),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_write_report_writes_each_kind(every, kind):
    key, name, texts = KINDS[kind]
    path = reports.write_report(every[key])
    assert path == every[key] / name and path.is_file()
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    for text in texts:
        assert text in html, text
    assert not [p for p in every[key].iterdir() if p.name.endswith(".tmp")]


def test_search_that_has_written_its_starting_record(tmp_path):
    """``tuning.json`` says ``running`` and holds no trials: the trial files tell how far the search got."""
    folder = write_search(tmp_path, started=True)
    html = reports.write_report(folder).read_text(encoding="utf-8")
    assert 'class="badge running"' in html and "Search unfinished" in html
    assert ">00<" in html and "0.750" in html


def test_search_with_a_broken_final_record_reports_what_it_can(tmp_path):
    folder = write_search(tmp_path)
    (folder / "tuning.json").write_text("{half", encoding="utf-8")
    html = reports.write_report(folder).read_text(encoding="utf-8")
    assert "Search unfinished" in html and "tuning.json could not be read" in html


def test_cv_report_links_only_fold_reports_that_exist(every):
    cv_dir = every["cv"]
    assert 'href="fold-1/report.html"' not in reports.write_report(cv_dir).read_text(encoding="utf-8")
    reports.write_report(cv_dir / "fold-1")
    html = reports.write_report(cv_dir).read_text(encoding="utf-8")
    assert 'href="fold-1/report.html"' in html and 'href="fold-2/report.html"' not in html


def test_audit_page_from_the_folder_is_the_page_the_audit_writes(every):
    record = json.loads((every["audit"] / runs.AUDIT).read_text(encoding="utf-8"))
    written = reports.write_report(every["audit"]).read_text(encoding="utf-8")
    assert written == render_audit(record)


@pytest.mark.parametrize("make", [lambda every: every["foreign"], lambda every: every["out"] / "missing"],
                         ids=["not-ours", "missing"])
def test_write_report_names_the_kinds_for_other_folders(every, make):
    with pytest.raises(ValueError, match="known kinds: " + ", ".join(runs.kind_names())):
        reports.write_report(make(every))


# ----------------------------------------------------------------------------------
# finish: the last step of every command
# ----------------------------------------------------------------------------------


def test_finish_writes_the_report_and_the_index_beside_it(every):
    logged = []
    path = reports.finish(every["cv"], log=logged.append)
    assert logged == [] and path == every["cv"] / "report.html" and path.is_file()
    index = (every["out"] / "index.html").read_text(encoding="utf-8")
    assert f'href="{every["cv"].name}/report.html"' in index


@pytest.mark.parametrize("key, broken, expected", [
    ("cv", "cv.json", "warning: the cv report could not be written: FileNotFoundError: "),
    ("foreign", None, "warning: the report of "),
], ids=["unreadable-record", "no-kind"])
def test_finish_logs_a_report_failure_and_returns_none(every, key, broken, expected):
    folder = every[key]
    if broken:
        (folder / broken).write_text("{not json", encoding="utf-8")
    logged = []
    assert reports.finish(folder, log=logged.append) is None
    assert len(logged) == 1 and logged[0].startswith(expected), logged
    assert (every["out"] / "index.html").is_file()  # the index is still brought up to date


def test_finish_logs_an_index_failure_and_keeps_the_report(every):
    (every["out"] / "index.html").mkdir()  # the index cannot be replaced by a file
    logged = []
    path = reports.finish(every["tuning"], log=logged.append)
    assert path == every["tuning"] / "report.html" and path.is_file()
    assert len(logged) == 1
    assert re.match(r"warning: .*index\.html could not be updated: IsADirectoryError: ", logged[0]), logged


# ----------------------------------------------------------------------------------
# Leak-free figures across CV folds
# ----------------------------------------------------------------------------------


def _fold_metrics(seed: int, keep_class_1: bool) -> dict:
    """A fold's metrics.json as ``suite run --dedup report`` writes it: full and leak-free, from predictions."""
    import numpy as np

    from suite.metrics import classification_metrics, leak_free_metrics

    rng = np.random.default_rng(seed)
    labels = ["glioma", "meningioma", "no_tumor"]
    y = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet(np.ones(3), size=len(y))
    probs[np.arange(len(y)), y] += rng.random(len(y)) > 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    keep = (np.arange(len(y)) % 3 != 0) & ((y != 1) | keep_class_1)  # leaks everywhere; fold 2 leaks all class 1
    metrics = classification_metrics(y, probs, labels, n_resamples=100)
    metrics["leak_free"] = leak_free_metrics(y, probs, labels, keep, definition="d", n_resamples=100)
    return metrics


def test_cv_report_sets_full_beside_leak_free_with_the_class_mix(every):
    from suite.commands.cv import aggregate, fold_figures

    cv_dir = every["cv"]
    cv = json.loads((cv_dir / runs.CV).read_text(encoding="utf-8"))
    folds = [{**fold, "metrics": fold_figures(_fold_metrics(k, keep_class_1=k == 1))}
             for k, fold in enumerate(cv["folds"], start=1)]
    assert "leak_free_recall_meningioma" in folds[0]["metrics"]
    assert "leak_free_recall_meningioma" not in folds[1]["metrics"]  # no image of the class left: no recall
    assert folds[1]["metrics"]["leak_free_support_meningioma"] == 0
    summary = aggregate(folds)
    assert summary["n_folds"] == {"leak_free_recall_meningioma": 1}
    cv.update(folds=folds, labels=["glioma", "meningioma", "no_tumor"], **summary)
    cv.pop("official_test")
    (cv_dir / runs.CV).write_text(json.dumps(cv), encoding="utf-8")
    html = reports.write_report(cv_dir).read_text(encoding="utf-8")
    assert "Full versus leak-free held-out images" in html and "balanced accuracy" in html
    assert "(1 of 2 folds)" in html and "support, leak-free" in html
    assert "60.0 ± 0.0" in html  # full test images per fold
    for name in ("balanced_accuracy", "leak_free_accuracy", "leak_free_balanced_accuracy"):
        assert f">{name}<" in html, name  # columns of the folds table
