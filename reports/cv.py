"""The cross-validation report: CV folder -> load_cv -> cv_context -> render_cv -> write_cv_report.

Everything comes from the CV record (``runs.CV``): per-fold figures, their mean, spread
and interval across folds, and the official test split's. Each fold is a run folder
with its own report; this page links to them. Never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    banner,
    fmt3,
    fmt_created,
    fmt_value,
    href,
    input_banners,
    read_json,
    render,
    synthetic_banner,
    to_float,
    write_html,
)
from suite import runs


def load_cv(cv_dir) -> dict:
    """Read a CV folder.

    Returns:
        ``{"cv_dir", "cv", "problems"}``: the CV record and what could not be read.

    Raises:
        FileNotFoundError: if ``cv_dir`` has no readable CV record.
    """
    cv_dir = pathlib.Path(cv_dir)
    problems: list[str] = []
    cv = read_json(cv_dir / runs.CV, problems)
    if cv is None:
        raise FileNotFoundError(f"{cv_dir} is not a CV folder: {'; '.join(problems) or f'no {runs.CV}'}")
    return {"cv_dir": str(cv_dir), "cv": cv, "problems": problems}


def fmt_spread(summary: Mapping, name: str) -> str:
    """``"0.812 ± 0.021 [0.786, 0.838]"``: mean ± std [interval] of ``name`` in a CV summary, or ``""``."""
    mean, std, ci = (as_dict(summary.get(part)) for part in ("mean", "std", "ci"))
    if name not in mean:
        return ""
    low, high = (as_list(ci.get(name)) + [None, None])[:2]
    return f"{fmt3(mean[name])} ± {fmt3(std.get(name))} [{fmt3(low)}, {fmt3(high)}]"


def fmt_count_spread(summary: Mapping, name: str) -> str:
    """``"12.5 ± 1.3"``: mean ± std of a count (test images per fold) in a CV summary, or ``""``."""
    mean, std = as_dict(summary.get("mean")), as_dict(summary.get("std"))
    if name not in mean:
        return ""
    return f"{to_float(mean[name]) or 0:.1f} ± {to_float(std.get(name)) or 0:.1f}"


LEAK_FREE_ROWS = (("n_test", "test images per fold"), ("accuracy", "accuracy"),
                  ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"))


def leak_free_context(cv: Mapping, labels: Sequence[str]) -> dict | None:
    """Full versus leak-free figures across folds (``--dedup report``), with each class's support and recall.

    Returns:
        ``None`` when the folds kept no leak-free figures; else ``{"rows", "per_class"}`` of
        formatted cells ``full`` and ``leak_free``; a figure only some folds have says over how many.
    """
    if "leak_free_n_test" not in as_dict(cv.get("mean")):
        return None
    partial, k = as_dict(cv.get("n_folds")), fmt_value(cv.get("n_completed"))

    def cell(name: str, count: bool = False) -> str:
        text = (fmt_count_spread if count else fmt_spread)(cv, name) or DASH
        return f"{text} ({partial[name]} of {k} folds)" if name in partial else text

    rows = [{"name": title, "full": cell(name, name == "n_test"),
             "leak_free": cell(f"leak_free_{name}", name == "n_test")} for name, title in LEAK_FREE_ROWS]
    per_class = [{"label": label,
                  "full_support": cell(f"support_{label}", True), "full_recall": cell(f"recall_{label}"),
                  "leak_free_support": cell(f"leak_free_support_{label}", True),
                  "leak_free_recall": cell(f"leak_free_recall_{label}")} for label in labels]
    return {"rows": rows, "per_class": per_class}


def _fold_link(cv_dir: pathlib.Path, fold: Mapping) -> str | None:
    run_dir = fold.get("run_dir")
    if not run_dir or not (cv_dir / str(run_dir) / runs.REPORT).is_file():
        return None
    return href(str(run_dir)) + "/" + runs.REPORT


def _fold_rows(cv_dir: pathlib.Path, folds: Sequence[Mapping], names: Sequence[str]) -> list[dict]:
    rows = []
    for fold in folds:
        figures = as_dict(fold.get("metrics"))
        official = fold.get("official_test")
        rows.append({
            "fold": fmt_value(fold.get("fold")),
            "status": str(fold.get("status") or "unknown"),
            "error": str(fold.get("error") or ""),
            "link": _fold_link(cv_dir, fold),
            "values": [fmt3(figures[n]) if n in figures else "" for n in names],
            "official": fmt3(as_dict(official).get("accuracy")) if official else "",
        })
    return rows


def _banners(cv: Mapping, folds: Sequence[Mapping], problems: Sequence[str]) -> list[dict]:
    banners = [banner("error", f"Fold {fold.get('fold')} failed", fold.get("error") or "no error recorded")
               for fold in folds if fold.get("status") not in ("completed", "running")]
    if as_dict(cv.get("dataset")).get("synthetic"):
        banners.append(synthetic_banner("These folds used synthetic phantom data: the figures say nothing "
                                        "about real scans.", as_dict(cv.get("dataset")).get("description")))
    if cv.get("status") == "running":
        banners.append(banner("note", "Unfinished", f"{len(folds)} of {fmt_value(cv.get('k'))} folds on record: "
                              "the cross-validation is running, or stopped before it finished (resume it)."))
    return banners + input_banners(problems)


def cv_context(loaded: Mapping) -> dict[str, Any]:
    """The flat template context of a CV report, from :func:`load_cv`'s dict."""
    cv, cv_dir = as_dict(loaded.get("cv")), pathlib.Path(loaded.get("cv_dir") or ".")
    labels = [str(label) for label in as_list(cv.get("labels"))]
    names = ["accuracy", "balanced_accuracy", "macro_f1"] + [f"recall_{label}" for label in labels]
    leak_free = leak_free_context(cv, labels)
    if leak_free:
        names += ["leak_free_accuracy", "leak_free_balanced_accuracy"]
    folds = [as_dict(fold) for fold in as_list(cv.get("folds"))]
    official = as_dict(cv.get("official_test"))
    return {
        "cv_id": str(cv.get("cv_id") or cv_dir.name),
        "backbone": str(cv.get("backbone") or ""),
        "k": fmt_value(cv.get("k")),
        "status": str(cv.get("status") or "unknown"),
        "created": fmt_created(cv.get("created")),
        "dataset_name": str(as_dict(cv.get("dataset")).get("name") or ""),
        "banners": _banners(cv, folds, loaded.get("problems") or []),
        "names": names,
        "folds": _fold_rows(cv_dir, folds, names),
        "summary": [{"name": n, "value": fmt_spread(cv, n)} for n in names
                    if n in as_dict(cv.get("mean")) and not n.startswith("leak_free_")],
        "leak_free": leak_free,
        "official": [{"name": n, "value": fmt_spread(official, n)} for n in names
                     if n in as_dict(official.get("mean"))],
        "config": [{"key": k, "value": fmt_value(v)} for k, v in sorted(as_dict(cv.get("config")).items())],
    }


def render_cv(context: Mapping) -> str:
    """The complete CV report, as HTML text, from :func:`cv_context`'s dict."""
    return render("cv.html.j2", context)


def write_cv_report(cv_dir) -> pathlib.Path:
    """Load a CV folder, render its report and write it into the folder; returns the report's path."""
    cv_dir = pathlib.Path(cv_dir)
    return write_html(cv_dir / runs.REPORT, render_cv(cv_context(load_cv(cv_dir))))
