"""The cross-validation report: folds, mean, spread and interval, from ``cv.json`` alone."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

from reports.render import _atomic_write_text, _banner, _environment, fmt3

REPORT_NAME = "report.html"


def load_cv(cv_dir) -> dict:
    cv_dir = pathlib.Path(cv_dir)
    return json.loads((cv_dir / "cv.json").read_text(encoding="utf-8"))


def _interval(summary: Mapping, name: str) -> str:
    if name not in summary.get("mean", {}):
        return ""
    low, high = summary["ci"][name]
    return f"{fmt3(summary['mean'][name])} ± {fmt3(summary['std'][name])} [{fmt3(low)}, {fmt3(high)}]"


def _fold_rows(cv: Mapping, names: list[str]) -> list[dict]:
    rows = []
    for fold in cv.get("folds", []):
        figures = fold.get("metrics", {})
        rows.append({
            "fold": fold["fold"],
            "status": fold["status"],
            "error": fold.get("error") or "",
            "link": f"{fold['run_dir']}/report.html",
            "values": [fmt3(figures.get(n)) if n in figures else "" for n in names],
            "official": fmt3(fold.get("official_test", {}).get("accuracy")) if "official_test" in fold else "",
        })
    return rows


def cv_context(cv: Mapping) -> dict[str, Any]:
    labels = list(cv.get("labels", []))
    names = ["accuracy", "macro_f1"] + [f"recall_{label}" for label in labels]
    banners = []
    if cv.get("dataset", {}).get("synthetic"):
        banners.append(_banner("synthetic", "Synthetic phantom data, not real MRI",
                               "These folds used synthetic phantom data: the figures say nothing about real scans."))
    for fold in cv.get("folds", []):
        if fold["status"] != "completed":
            banners.append(_banner("error", f"Fold {fold['fold']} failed", fold.get("error") or "no error recorded"))
    official = cv.get("official_test", {})
    return {
        "cv_id": cv.get("cv_id", ""),
        "backbone": cv.get("backbone", ""),
        "k": cv.get("k"),
        "status": cv.get("status", ""),
        "created": cv.get("created", ""),
        "dataset_name": cv.get("dataset", {}).get("name", ""),
        "banners": banners,
        "names": names,
        "folds": _fold_rows(cv, names),
        "summary": [{"name": n, "value": _interval(cv, n)} for n in names if n in cv.get("mean", {})],
        "official": [{"name": n, "value": _interval(official, n)} for n in names if n in official.get("mean", {})],
        "config": [{"key": k, "value": str(v)} for k, v in sorted(cv.get("config", {}).items())],
    }


def write_cv_report(cv_dir) -> pathlib.Path:
    """Render ``cv_dir/report.html`` from ``cv_dir/cv.json``."""
    cv_dir = pathlib.Path(cv_dir)
    html = _environment().get_template("cv.html.j2").render(**cv_context(load_cv(cv_dir)))
    path = cv_dir / REPORT_NAME
    _atomic_write_text(path, html)
    return path
