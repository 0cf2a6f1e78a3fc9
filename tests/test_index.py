"""``index.html`` lists every folder kind with its headline figure and a link to its report."""

from __future__ import annotations

import re

import pytest

import reports
from reports.index import index_entry
from suite import runs
from tests.comparefixture import AUDIT_DIR, BACKBONES, COMPARE_DIR, CV_DIR, SEARCH_DIR, TUNE_DIR, build_every_kind


@pytest.fixture(scope="module")
def every(tmp_path_factory):
    """Every kind of folder, each with its report written, and the index of them all."""
    paths = build_every_kind(tmp_path_factory.mktemp("index"))
    for key in ("comp", "cv", "tuning", "search", "audit", "evaluation"):
        reports.write_report(paths[key])
    reports.write_report(paths["runs"]["efficientnetb0"])
    paths["html"] = reports.write_index(paths["out"]).read_text(encoding="utf-8")
    return paths


def _row(html: str, name: str) -> str:
    """The index's table row of the folder ``name``."""
    rows = [row for row in re.findall(r"<tr>(.*?)</tr>", html, re.S) if f">{name}<" in row]
    assert len(rows) == 1, name
    return rows[0]


# folder, kind, headline name, headline figure, detail, status, report file
ROWS = [
    (BACKBONES["efficientnetb0"][0], "run", "test accuracy [95% CI]", "0.975 [0.871, 0.996]", "", "completed",
     "report.html"),
    ("20261127-180000-evaluate-efficientnetb0", "evaluation", "test accuracy [95% CI]", "0.932 [0.910, 0.950]", "",
     "completed", "report.html"),
    (COMPARE_DIR, "comparison", "best test accuracy [95% CI]", "0.975 [0.871, 0.996]", "best: efficientnetb0",
     "1 of 4 failed", "report.html"),
    (CV_DIR, "cv", "mean accuracy across folds [95% CI]", "0.925 [0.875, 0.975]", "2 of 2 folds completed",
     "completed", "report.html"),
    (TUNE_DIR, "tuning", "best trial val_accuracy", "0.875", "retrained: test accuracy 0.900 [0.769, 0.960]",
     "completed", "report.html"),
    (SEARCH_DIR, "tuning", "best trial val_accuracy so far", "0.750", "unfinished: 1 trial(s) so far", "running",
     "report.html"),
    (AUDIT_DIR, "audit", "test images with a training twin", "1 of 4",
     "8 images, 1 duplicate pairs, 0 label conflicts", "leakage found", "audit.html"),
]


@pytest.mark.parametrize("name, kind, headline_name, headline, detail, status, report", ROWS,
                         ids=[row[1] if row[0] != SEARCH_DIR else "search" for row in ROWS])
def test_index_lists_each_kind_with_its_headline(every, name, kind, headline_name, headline, detail, status, report):
    row = _row(every["html"], name)
    assert f'<span class="badge kind {kind}">{kind}</span>' in row
    assert f'<span class="figure-name">{headline_name}</span><br>{headline}' in row
    assert detail in row and f">{status}</span>" in row
    assert f'<a href="{name}/{report}">{name}</a>' in row
    assert (every["out"] / name / report).is_file()
    assert "synthetic" in row


def test_index_heads_the_figure_column_neutrally(every):
    assert '<th class="num">headline</th>' in every["html"]
    assert "accuracy [95% CI]</th>" not in every["html"]


def test_index_without_reports_links_nothing(tmp_path):
    paths = build_every_kind(tmp_path)
    html = reports.write_index(paths["out"]).read_text(encoding="utf-8")
    for name in (CV_DIR, TUNE_DIR, SEARCH_DIR, AUDIT_DIR):
        assert f'<span class="mono">{name}</span> <span class="empty">(no report)</span>' in _row(html, name)


@pytest.mark.parametrize("key, kind", [("comp", "comparison"), ("cv", "cv"), ("tuning", "tuning"),
                                       ("search", "tuning"), ("audit", "audit"), ("evaluation", "evaluation")])
def test_index_entry_dispatches_on_the_folder_kind(every, key, kind):
    entry = index_entry(every[key])
    assert entry["kind"] == kind == runs.kind_of(every[key]).name and entry["name"] == every[key].name


def test_index_entry_of_other_folders(every):
    assert index_entry(every["foreign"]) is None
    with pytest.raises(ValueError, match="manifest.json could not be read"):
        index_entry(every["half"])


@pytest.mark.parametrize("name, content", [
    ("cv.json", "{"), ("search.json", "[]"), ("audit.json", ""), ("comparison.json", "null"),
], ids=["cv", "tuning", "audit", "comparison"])
def test_unreadable_record_of_any_kind_is_listed_as_unreadable(tmp_path, name, content):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / name).write_text(content, encoding="utf-8")
    html = reports.write_index(tmp_path).read_text(encoding="utf-8")
    match = re.search(r'<section id="unreadable">(.*?)</section>', html, re.S)
    assert match and "half" in match.group(1) and name in match.group(1)
