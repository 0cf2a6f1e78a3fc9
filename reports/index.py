"""The index of an output folder: sub-folders -> their kind's entry -> index_context -> render_index -> write_index.

Every folder kind of :data:`suite.runs.FOLDER_KINDS` names one ``*_entry`` function here; each
reads only its folder's main record and returns the flat row the index shows: kind,
backbones, dataset, one headline figure (named in the row, since every kind has its own),
status and a link to the folder's report. Never imports Keras or TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from reports.comparison import comparison_labels, leaderboard_rows, load_leaderboard, run_entries
from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    fmt3,
    fmt_ci,
    fmt_created,
    fmt_int,
    fmt_metric,
    fmt_value,
    href,
    pair,
    read_json,
    render,
    to_float,
    write_html,
)
from reports.tuning import RUNNING, best_trial, load_tuning
from suite import runs

KNOWN_STATUS = ("completed", "failed", "running")
# What may go wrong reading a folder someone else is writing, or one that is not quite ours.
UNREADABLE = (OSError, ValueError, TypeError, AttributeError, KeyError)


# ----------------------------------------------------------------------------------
# Shared by every entry
# ----------------------------------------------------------------------------------


def _record(path: pathlib.Path) -> dict:
    """A folder's main JSON record.

    Raises:
        ValueError: it is missing, unreadable or not a JSON object (the index lists the folder as unreadable).
    """
    problems: list[str] = []
    record = read_json(path, problems)
    if record is None:
        raise ValueError("; ".join(problems) or f"{path.name} is missing")
    return record


def _timestamp(created: Any, folder: pathlib.Path) -> float:
    """Seconds since the epoch, for sorting: ``created``, else the folder name's timestamp, else its mtime."""
    for text, parse in ((created, dt.datetime.fromisoformat),
                        (folder.name[:15], lambda s: dt.datetime.strptime(s, "%Y%m%d-%H%M%S"))):
        try:
            stamp = parse(str(text))
        except (TypeError, ValueError):
            continue
        return stamp.timestamp()  # a naive time is taken as local time
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0


def _status_class(status: str) -> str:
    if status == "stopped":  # marked running, but its process is gone
        return "failed"
    return status if status in KNOWN_STATUS else "unknown"


def _row(folder: pathlib.Path, kind: str, created: Any, dataset: Any, *, backbones: str, headline_name: str,
         headline: str, status: str, detail: str = "", status_class: str | None = None) -> dict:
    """The index row of one folder: what its entry function found, plus name, dates and the report link."""
    dataset = as_dict(dataset)
    report = runs.FOLDER_KINDS[kind].report_file
    return {
        "name": folder.name, "kind": kind, "created": fmt_created(created), "sort_key": _timestamp(created, folder),
        "backbones": backbones, "dataset": str(dataset.get("name") or DASH),
        "synthetic": bool(dataset.get("synthetic")),
        "headline_name": headline_name, "headline": headline, "detail": detail,
        "status": status, "status_class": status_class or _status_class(status),
        "href": href(folder.name) + "/" + report if (folder / report).is_file() else None,
    }


# ----------------------------------------------------------------------------------
# One entry function per folder kind (suite.runs.FOLDER_KINDS names them)
# ----------------------------------------------------------------------------------


def run_entry(folder) -> dict:
    """The index row of a run or evaluation folder: its test accuracy."""
    folder = pathlib.Path(folder)
    manifest = _record(folder / runs.MANIFEST)
    metrics = read_json(folder / runs.METRICS, []) or {}
    backbone = manifest.get("backbone") or as_dict(manifest.get("config")).get("backbone")
    return _row(folder, "evaluation" if manifest.get("kind") == "evaluation" else "run", manifest.get("created"),
                manifest.get("dataset"), backbones=fmt_value(backbone), headline_name="test accuracy [95% CI]",
                headline=fmt_metric(metrics, "accuracy"), status=runs.status_of(manifest),
                detail=runs.status_text(manifest) if runs.status_of(manifest) == "stopped" else "")


def _comparison_status(entries: Sequence[Mapping]) -> tuple[str, str]:
    """(text, css class) summarising a comparison's member statuses."""
    failed = sum(e["status"] == "failed" for e in entries)
    if not entries:
        return "empty", "unknown"
    if failed == len(entries):
        return "failed", "failed"
    if failed:
        return f"{failed} of {len(entries)} failed", "partial"
    if all(e["status"] == "completed" for e in entries):
        return "completed", "completed"
    return "incomplete", "unknown"


def comparison_entry(folder) -> dict:
    """The index row of a comparison folder: the best backbone's test accuracy."""
    folder = pathlib.Path(folder)
    comparison = _record(folder / runs.COMPARISON)
    entries = run_entries(comparison)
    rows = leaderboard_rows(load_leaderboard(folder, []), entries, None, comparison_labels(comparison))
    best = next((r for r in rows if r["status"] == "completed" and r["accuracy"] is not None), None)
    status, status_class = _comparison_status(entries)
    return _row(folder, "comparison", comparison.get("created"), comparison.get("dataset"),
                backbones=", ".join(e["backbone"] for e in entries) or DASH,
                headline_name="best test accuracy [95% CI]",
                headline=fmt_ci(best["accuracy"], best["accuracy_ci_low"], best["accuracy_ci_high"]) if best else DASH,
                detail=f"best: {best['backbone']}" if best else "", status=status, status_class=status_class)


def cv_entry(folder) -> dict:
    """The index row of a cross-validation folder: mean accuracy with its interval across folds."""
    folder = pathlib.Path(folder)
    cv = _record(folder / runs.CV)
    done = sum(as_dict(fold).get("status") == "completed" for fold in as_list(cv.get("folds")))
    accuracy = as_dict(cv.get("mean")).get("accuracy")
    return _row(folder, "cv", cv.get("created"), cv.get("dataset"), backbones=fmt_value(cv.get("backbone")),
                headline_name="mean accuracy across folds [95% CI]",
                headline=fmt_ci(accuracy, *pair(as_dict(cv.get("ci")).get("accuracy"))),
                detail=f"{done} of {fmt_value(cv.get('k'))} folds completed", status=str(cv.get("status") or "unknown"))


def _tuning_detail(tuning: Mapping) -> str:
    test = as_dict(tuning.get("test_metrics"))
    if test:
        return f"retrained: test accuracy {fmt_metric(test, 'accuracy')}"
    n_trials = len(as_list(tuning.get("trials")))
    return f"unfinished: {n_trials} trial(s) so far" if tuning.get("status") == RUNNING else "not retrained"


def tuning_entry(folder) -> dict:
    """The index row of a tuning folder: the best trial's objective and its retrained run's test accuracy."""
    folder = pathlib.Path(folder)
    try:
        tuning = load_tuning(folder)["tuning"]
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    so_far = " so far" if tuning.get("status") == RUNNING else ""
    return _row(folder, "tuning", tuning.get("created") or tuning.get("updated"), tuning.get("dataset"),
                backbones=fmt_value(tuning.get("backbone")),
                headline_name=f"best trial {tuning.get('objective') or 'objective'}{so_far}",
                headline=fmt3(best_trial(tuning).get("score")), detail=_tuning_detail(tuning),
                status=str(tuning.get("status") or "unknown"))


def robustness_entry(folder) -> dict:
    """The index row of a robustness folder: mean corruption accuracy, with clean accuracy and the worst corruption."""
    folder = pathlib.Path(folder)
    record = _record(folder / runs.ROBUSTNESS)
    clean, worst = as_dict(record.get("clean")), as_dict(record.get("worst"))
    relative = to_float(record.get("relative_robustness"))
    detail = (f"clean {fmt3(clean.get('accuracy'))}, relative robustness "
              f"{DASH if relative is None else f'{relative:.3f}'}, worst: {worst.get('corruption') or DASH}")
    return _row(folder, "robustness", record.get("created"), record.get("dataset"),
                backbones=fmt_value(record.get("backbone")), headline_name="mean corruption accuracy",
                headline=fmt3(record.get("mean_corruption_accuracy")), detail=detail, status="completed")


def audit_entry(folder) -> dict:
    """The index row of a dataset audit: test images with a training twin, images, duplicates, conflicts."""
    folder = pathlib.Path(folder)
    result = _record(folder / runs.AUDIT)
    leak = as_dict(result.get("leakage"))
    leaking = to_float(result.get("cross_split_near")) or 0
    pairs = sum(to_float(as_dict(result.get(key)).get("pairs")) or 0 for key in ("exact", "near"))
    detail = (f"{fmt_int(as_dict(result.get('counts')).get('images'))} images, {fmt_int(pairs)} duplicate pairs, "
              f"{fmt_int(result.get('label_conflicts') or 0)} label conflicts")
    headline = f"{fmt_int(leaking)} of {fmt_int(leak.get('test_images'))}" if leak.get("applicable") else "n/a"
    status, status_class = ("leakage found", "failed") if leak.get("applicable") and leaking else ("completed", None)
    return _row(folder, "audit", result.get("created"), result.get("dataset"), backbones=DASH,
                headline_name="test images with a training twin", headline=headline, detail=detail,
                status=status, status_class=status_class)


# ----------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------


def index_entry(folder) -> dict | None:
    """The index row of one folder, or ``None`` when it is no kind of folder the suite writes.

    Raises:
        ValueError: it looks like a suite folder but its main record cannot be read
            (half-written, or not ours).
    """
    kind = runs.kind_of(folder)
    return None if kind is None else kind.entry(folder)


def index_context(out_dir) -> dict:
    """The flat template context of the index: rows newest first, plus the folders that could not be read.

    Args:
        out_dir: the output folder whose immediate sub-folders are listed.

    Returns:
        ``{"out_dir", "entries": [...], "unreadable": [{"name", "reason"}]}``.
    """
    out_dir = pathlib.Path(out_dir)
    entries, unreadable = [], []
    for child in sorted(out_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            entry = index_entry(child)
        except UNREADABLE as exc:
            unreadable.append({"name": child.name, "reason": str(exc)})
            continue
        if entry is not None:
            entries.append(entry)
    entries.sort(key=lambda e: (e["sort_key"], e["name"]), reverse=True)
    return {"out_dir": str(out_dir), "entries": entries, "unreadable": unreadable}


def render_index(context: Mapping) -> str:
    """The complete index page, as HTML text, from :func:`index_context`'s dict."""
    return render("index.html.j2", context)


def write_index(out_dir) -> pathlib.Path:
    """Write the index of ``out_dir`` (``runs.INDEX``): every folder of every kind, newest first.

    Sub-folders of no kind are skipped; half-written ones are listed at the bottom
    instead of failing the index.

    Args:
        out_dir: the output folder (e.g. ``runs/``).

    Returns:
        The path of the written index.
    """
    out_dir = pathlib.Path(out_dir)
    return write_html(out_dir / runs.INDEX, render_index(index_context(out_dir)))
