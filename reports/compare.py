"""Turn a comparison folder into one self-contained HTML report, and index an output folder.

The comparison pipeline mirrors the run reporter: ``load_comparison`` (read files) ->
``comparison_context`` (a flat dict of plain values and image data URIs) ->
``render_comparison`` (Jinja, autoescaped) -> ``write_comparison_report`` (atomic write
of ``report.html`` into the comparison folder).

``write_index`` scans the immediate sub-folders of an output folder (runs, evaluations
and comparisons) and writes ``index.html`` beside them; ``write_any_report`` picks the
right reporter for a folder.

This module only reads result folders: it never imports Keras or TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import pathlib
import urllib.parse
import zipfile
from typing import Any, Mapping, Sequence

from reports import plots
from reports.render import (
    REPORT_NAME,
    _DASH,
    _as_dict,
    _as_list,
    _atomic_write_text,
    _banner,
    _environment,
    _key_value_rows,
    _read_csv,
    _read_json,
    _to_float,
    fmt3,
    fmt_seconds,
    fmt_value,
    load_run,
    write_run_report,
)

COMPARISON_NAME = "comparison.json"
MANIFEST_NAME = "manifest.json"
METRICS_NAME = "metrics.json"
INDEX_NAME = "index.html"
GRADCAM_NAME = "gradcam.npz"
GRADCAM_SIZE = 112
DEFAULT_ALPHA = 0.05

# What a tier means, as the report states it (the rule is suite.stats.tie_groups).
TIER_SENTENCE = (
    "Tiers summarise the pairwise tests. Tier 1 is the most accurate backbone and every backbone "
    "the paired tests could not show to be worse than it (Holm-corrected, \u03b1 = {alpha:g}); the "
    "best remaining backbone leads tier 2, and so on. Backbones in one tier are tied with its "
    "leader: read a tier as \u201cnot shown worse than its leader\u201d, not as \u201cequal\u201d, "
    "and see the pairwise tests below for any two backbones."
)


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def _run_entries(comparison: Mapping) -> list[dict]:
    """The ``runs`` list of ``comparison.json`` with every field normalised to text."""
    entries = []
    for raw in _as_list(comparison.get("runs")):
        raw = _as_dict(raw)
        if raw.get("backbone") is None:
            continue
        entries.append({
            "backbone": str(raw["backbone"]),
            "run_dir": str(raw["run_dir"]) if raw.get("run_dir") else None,
            "status": str(raw.get("status") or "unknown"),
            "error": str(raw.get("error") or ""),
        })
    return entries


def _member_path(comp_dir: pathlib.Path, run_dir: str) -> pathlib.Path:
    """A member run's folder: ``run_dir`` is relative to the comparison folder."""
    return comp_dir / run_dir


def _load_member(comp_dir: pathlib.Path, entry: Mapping, problems: list[str]) -> dict | None:
    """The :func:`~reports.render.load_run` dict of one member run, or ``None``."""
    if not entry["run_dir"]:
        return None
    try:
        run = load_run(_member_path(comp_dir, entry["run_dir"]))
    except FileNotFoundError as exc:
        if entry["status"] == "completed":
            problems.append(f"{entry['backbone']}: {exc}")
        return None
    problems.extend(f"{entry['backbone']}: {text}" for text in run["problems"])
    return run


def _load_leaderboard(comp_dir: pathlib.Path, problems: list[str]) -> list[dict]:
    """Rows of ``leaderboard.json`` (typed), else ``leaderboard.csv`` (text cells)."""
    path = comp_dir / "leaderboard.json"
    if path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, list):
                return [row for row in rows if isinstance(row, dict)]
            problems.append("leaderboard.json does not hold a list of rows")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"leaderboard.json could not be read: {exc}")
    rows = _read_csv(comp_dir / "leaderboard.csv", problems)
    if not rows and not path.is_file() and not (comp_dir / "leaderboard.csv").is_file():
        problems.append("no leaderboard file: the table is rebuilt from the run folders")
    return rows


def _load_gradcam(comp_dir: pathlib.Path, comparison: Mapping, problems: list[str]) -> dict | None:
    """Grad-CAM spec from ``comparison.json`` plus the arrays of ``gradcam.npz``."""
    spec = comparison.get("gradcam")
    if not isinstance(spec, dict):
        return None
    import numpy as np

    # Only a file name inside the comparison folder is honoured.
    path = comp_dir / pathlib.PurePath(str(spec.get("file") or GRADCAM_NAME)).name
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        problems.append(f"Grad-CAM maps not shown: {path.name} could not be read: {exc}")
        return None
    return {
        "paths": [str(p) for p in _as_list(spec.get("paths"))],
        "true": [str(t) for t in _as_list(spec.get("true"))],
        "backbones": [str(b) for b in _as_list(spec.get("backbones"))],
        "arrays": arrays,
    }


def load_comparison(comp_dir) -> dict:
    """Read a comparison folder and the run folders it points to.

    Args:
        comp_dir: folder holding ``comparison.json`` and, optionally,
            ``leaderboard.json`` / ``leaderboard.csv`` and ``gradcam.npz``.

    Returns:
        ``{"comp_dir", "comparison", "leaderboard", "runs", "gradcam", "problems"}``:
        ``leaderboard`` is a list of row dicts (empty when absent), ``runs`` maps each
        backbone to its :func:`~reports.render.load_run` dict (``None`` when it has no
        readable run folder), ``gradcam`` is ``None`` or ``{"paths", "true",
        "backbones", "arrays"}`` and ``problems`` lists what could not be read.

    Raises:
        FileNotFoundError: if ``comp_dir`` has no readable ``comparison.json``.
    """
    comp_dir = pathlib.Path(comp_dir)
    problems: list[str] = []
    comparison = _read_json(comp_dir / COMPARISON_NAME, problems)
    if comparison is None:
        detail = "; ".join(problems) or f"{COMPARISON_NAME} is missing"
        raise FileNotFoundError(f"{comp_dir} is not a comparison folder: {detail}")
    runs = {entry["backbone"]: _load_member(comp_dir, entry, problems) for entry in _run_entries(comparison)}
    return {
        "comp_dir": str(comp_dir),
        "comparison": comparison,
        "leaderboard": _load_leaderboard(comp_dir, problems),
        "runs": runs,
        "gradcam": _load_gradcam(comp_dir, comparison, problems),
        "problems": problems,
    }


# ----------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------


def fmt_ci(value: Any, low: Any, high: Any) -> str:
    """``"0.962 [0.941, 0.978]"``; just the value when the interval is unknown."""
    if _to_float(value) is None:
        return _DASH
    if _to_float(low) is None or _to_float(high) is None:
        return fmt3(value)
    return f"{fmt3(value)} [{fmt3(low)}, {fmt3(high)}]"


def fmt_p(value: Any) -> str:
    """A p-value to three decimals, ``"<0.001"`` below that, or a dash."""
    number = _to_float(value)
    if number is None or math.isnan(number):
        return _DASH
    return "<0.001" if number < 0.001 else f"{number:.3f}"


def fmt_params(value: Any) -> str:
    """A parameter count in millions: ``"4.05 M"``, or a dash."""
    number = _to_float(value)
    return _DASH if number is None else f"{number / 1e6:.2f} M"


def fmt_unit(value: Any, unit: str, digits: int = 1) -> str:
    """A number with a unit (``"12.3 ms"``), or a dash."""
    number = _to_float(value)
    return _DASH if number is None else f"{number:.{digits}f} {unit}"


def _href(relative: str) -> str:
    """A relative URL for a relative path: every character but ``/`` percent-encoded."""
    return urllib.parse.quote(pathlib.PurePath(relative).as_posix(), safe="/")


def _pair(value: Any) -> tuple[float | None, float | None]:
    """``[lo, hi]`` as two floats (``None`` when absent or malformed)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _to_float(value[0]), _to_float(value[1])
    return None, None


# ----------------------------------------------------------------------------------
# Leaderboard
# ----------------------------------------------------------------------------------


def _row_from_run(entry: Mapping, run: Mapping | None, labels: Sequence[str]) -> dict:
    """A leaderboard row rebuilt from a run folder, for backbones the file lacks."""
    run = run or {}
    manifest = _as_dict(run.get("manifest"))
    metrics = _as_dict(run.get("metrics"))
    per_class = _as_dict(metrics.get("per_class"))
    acc_lo, acc_hi = _pair(metrics.get("accuracy_ci"))
    f1_lo, f1_hi = _pair(metrics.get("macro_f1_ci"))
    row = {
        "backbone": entry["backbone"], "status": entry["status"], "tier": None,
        "accuracy": metrics.get("accuracy"), "accuracy_ci_low": acc_lo, "accuracy_ci_high": acc_hi,
        "macro_f1": metrics.get("macro_f1"), "macro_f1_ci_low": f1_lo, "macro_f1_ci_high": f1_hi,
        "roc_auc_macro": metrics.get("roc_auc_macro"), "ece": metrics.get("ece"),
        "params": manifest.get("params"), "train_s": _as_dict(manifest.get("timings")).get("train_s"),
        "image_size": _as_dict(manifest.get("config")).get("image_size"),
        "infer_ms_per_image": metrics.get("infer_ms_per_image"),
        "infer_images_per_s": metrics.get("infer_images_per_s"),
        "error": entry["error"] or manifest.get("error"),
    }
    for label in labels:
        stats = _as_dict(per_class.get(label))
        row[f"recall_{label}"] = stats.get("recall")
        row[f"f1_{label}"] = stats.get("f1")
    return row


def _normal_row(raw: Mapping, labels: Sequence[str]) -> dict:
    """A leaderboard row with numbers as floats (CSV text parsed) and the tier as int."""
    tier = _to_float(raw.get("tier"))
    keys = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "macro_f1_ci_low",
            "macro_f1_ci_high", "roc_auc_macro", "ece", "params", "train_s", "infer_ms_per_image",
            "infer_images_per_s", "image_size")
    row = {key: _to_float(raw.get(key)) for key in keys}
    row.update({
        "backbone": str(raw.get("backbone")),
        "status": str(raw.get("status") or "unknown"),
        "tier": int(tier) if tier is not None and math.isfinite(tier) else None,
        "error": str(raw.get("error") or ""),
        "recall": {label: _to_float(raw.get(f"recall_{label}")) for label in labels},
        "f1": {label: _to_float(raw.get(f"f1_{label}")) for label in labels},
    })
    return row


def _rank_key(row: Mapping) -> tuple:
    """Completed before failed, then tier, then accuracy (best first)."""
    accuracy = row["accuracy"]
    return (row["status"] != "completed", row["tier"] is None, row["tier"] or 0,
            accuracy is None, -(accuracy or 0.0), row["backbone"])


def leaderboard_rows(raw_rows: Sequence[Mapping], entries: Sequence[Mapping],
                     runs: Mapping | None, labels: Sequence[str]) -> list[dict]:
    """The leaderboard, sorted by tier then accuracy, one row per backbone.

    Args:
        raw_rows: rows of ``leaderboard.json`` / ``leaderboard.csv``.
        entries: the normalised ``runs`` list of ``comparison.json``; a backbone
            listed there but missing from the file gets a row rebuilt from its run
            folder, so a failed backbone never silently disappears.
        runs: ``{backbone: load_run dict or None}`` (may be ``None``).
        labels: class labels, for the per-class columns.

    Returns:
        Rows with float metrics (``None`` when unknown), ``tier`` as int or ``None``,
        and ``recall`` / ``f1`` dicts keyed by label.
    """
    rows = [_normal_row(raw, labels) for raw in raw_rows if raw.get("backbone") is not None]
    known = {row["backbone"] for row in rows}
    for entry in entries:
        if entry["backbone"] not in known:
            raw = _row_from_run(entry, (runs or {}).get(entry["backbone"]), labels)
            rows.append(_normal_row(raw, labels))
    status = {entry["backbone"]: entry for entry in entries}
    for row in rows:  # comparison.json has the last word on status and error
        entry = status.get(row["backbone"])
        if entry and entry["status"] != "unknown":
            row["status"] = entry["status"]
            row["error"] = row["error"] or entry["error"]
    return sorted(rows, key=_rank_key)


def _display_row(row: Mapping, colour: str, labels: Sequence[str], link: str | None) -> dict:
    """Template values for one leaderboard row."""
    return {
        "backbone": row["backbone"], "status": row["status"], "colour": colour, "error": row["error"],
        "tier": _DASH if row["tier"] is None else str(row["tier"]),
        "accuracy": fmt_ci(row["accuracy"], row["accuracy_ci_low"], row["accuracy_ci_high"]),
        "macro_f1": fmt_ci(row["macro_f1"], row["macro_f1_ci_low"], row["macro_f1_ci_high"]),
        "roc_auc": fmt3(row["roc_auc_macro"]), "ece": fmt3(row["ece"]),
        "params": fmt_params(row["params"]), "train": fmt_seconds(row["train_s"]),
        "image_size": _DASH if row["image_size"] is None else f"{int(row['image_size'])} px",
        "latency": fmt_unit(row["infer_ms_per_image"], "ms"),
        "throughput": fmt_unit(row["infer_images_per_s"], "img/s"),
        "per_class": [{"recall": fmt3(row["recall"].get(label)), "f1": fmt3(row["f1"].get(label))}
                      for label in labels],
        "report_href": link,
    }


def tier_groups(rows: Sequence[Mapping]) -> list[dict]:
    """Display rows grouped under ``Tier n`` / ``Unranked`` / ``Failed`` headings, in order."""
    groups: list[dict] = []
    for row in rows:
        if row["status"] != "completed":
            title = "Failed"
        elif row["tier"] == _DASH:
            title = "Unranked"
        else:
            title = f"Tier {row['tier']}"
        if not groups or groups[-1]["title"] != title:
            groups.append({"title": title, "rows": []})
        groups[-1]["rows"].append(row)
    for group in groups:
        group["tied"] = group["title"].startswith("Tier") and len(group["rows"]) > 1
    return groups


# ----------------------------------------------------------------------------------
# Pairwise tests
# ----------------------------------------------------------------------------------


def _pairwise_entries(comparison: Mapping) -> list[dict]:
    """The ``pairwise`` list, entries without both names dropped."""
    entries = [_as_dict(item) for item in _as_list(comparison.get("pairwise"))]
    return [item for item in entries if item.get("a") is not None and item.get("b") is not None]


def _matrix_lookup(comparison: Mapping) -> dict[tuple[str, str], float | None]:
    """``p_matrix`` as ``{(row, column): p}``."""
    matrix = _as_dict(comparison.get("p_matrix"))
    names = [str(n) for n in _as_list(matrix.get("names"))]
    values = _as_list(matrix.get("values"))
    lookup = {}
    for i, name in enumerate(names):
        row = _as_list(values[i]) if i < len(values) else []
        for j, other in enumerate(names):
            lookup[(name, other)] = _to_float(row[j]) if j < len(row) else None
    return lookup


def _matrix_cell(row: str, col: str, test: Mapping | None, p_fallback: float | None, alpha: float) -> dict:
    """One matrix cell: the Holm p-value, coloured by who won a significant test."""
    if row == col:
        return {"text": _DASH, "cls": "diag", "title": ""}
    p = _to_float(test.get("p_holm")) if test else None
    p = p_fallback if p is None else p
    significant = bool(test.get("significant")) if test else (p is not None and p < alpha)
    winner = str(test.get("winner")) if test and test.get("winner") is not None else None
    cls = ""
    if significant:
        cls = "win" if winner == row else "loss" if winner == col else "sig"
    return {"text": fmt_p(p), "cls": cls, "title": str(test.get("sentence") or "") if test else ""}


def pairwise_matrix(comparison: Mapping, order: Sequence[str], alpha: float) -> dict:
    """The Holm-corrected p-value matrix, in leaderboard order.

    Args:
        comparison: the parsed ``comparison.json``.
        order: backbone names in leaderboard order; names found only in the tests
            are appended.
        alpha: significance level, used only where a test lacks a ``significant`` flag.

    Returns:
        ``{"names": [...], "rows": [{"name", "cells": [{"text", "cls", "title"}]}]}``
        where ``cls`` is ``"win"`` when the row backbone won a significant test
        against the column, ``"loss"`` when it lost, ``"sig"`` when significant with no
        recorded winner, ``"diag"`` on the diagonal and empty otherwise.
    """
    tests = {}
    for item in _pairwise_entries(comparison):
        a, b = str(item["a"]), str(item["b"])
        tests[(a, b)] = tests[(b, a)] = item
    lookup = _matrix_lookup(comparison)
    present = {name for pair in list(tests) + list(lookup) for name in pair}
    names = [name for name in order if name in present]
    names += sorted(present - set(names))
    rows = [{"name": row, "cells": [_matrix_cell(row, col, tests.get((row, col)), lookup.get((row, col)), alpha)
                                    for col in names]} for row in names]
    return {"names": names, "rows": rows}


def pairwise_details(comparison: Mapping) -> list[dict]:
    """One formatted row per pairwise test (for the details table and the sentences)."""
    rows = []
    for item in _pairwise_entries(comparison):
        rows.append({
            "a": str(item["a"]), "b": str(item["b"]),
            "accuracy_a": fmt3(item.get("accuracy_a")), "accuracy_b": fmt3(item.get("accuracy_b")),
            "only_a": fmt_value(item.get("only_a")), "only_b": fmt_value(item.get("only_b")),
            "method": fmt_value(item.get("method")), "p_value": fmt_p(item.get("p_value")),
            "p_holm": fmt_p(item.get("p_holm")), "significant": bool(item.get("significant")),
            "winner": str(item["winner"]) if item.get("winner") is not None else "",
            "sentence": str(item.get("sentence") or ""),
        })
    return rows


# ----------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------


def _figure_uri(draw, problems: list[str], what: str, *args) -> str | None:
    """Data URI of ``draw(*args)``; ``None`` when there is nothing to plot or it fails."""
    try:
        return plots.to_data_uri(draw(*args))
    except plots.NothingToPlot:
        return None
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        problems.append(f"{what} not drawn: {exc}")
        return None


def _confusion_panels(members: Sequence[dict], labels: Sequence[str], problems: list[str]) -> list[dict]:
    """One confusion-matrix image per completed backbone."""
    panels = []
    for member in members:
        metrics = member["metrics"]
        matrix = metrics.get("confusion_matrix")
        if not matrix:
            continue
        order = [str(x) for x in _as_list(metrics.get("labels"))] or list(labels)
        uri = _figure_uri(plots.confusion_matrix_png, problems, f"{member['name']}: confusion matrix",
                          matrix, order, True)
        panels.append({"name": member["name"], "colour": member["colour"], "uri": uri})
    return panels


def _f1_series(members: Sequence[dict], labels: Sequence[str]) -> list[dict]:
    """Per-class F1 and its CI for each backbone, in label order."""
    series = []
    for member in members:
        per_class = _as_dict(member["metrics"].get("per_class"))
        stats = [_as_dict(per_class.get(label)) for label in labels]
        series.append({"name": member["name"], "colour": member["colour"],
                       "f1": [s.get("f1") for s in stats], "ci": [s.get("f1_ci") for s in stats]})
    return series


def _figures(members: Sequence[dict], rows: Sequence[Mapping], labels: Sequence[str],
             problems: list[str]) -> dict:
    """Every comparison figure as a data URI (``None`` where there is no data).

    ``members`` (see :func:`_members`) already carry the keys the plot functions
    read: ``name``, ``colour``, ``curves``, ``reliability``, ``ece`` and ``history``.
    """
    colours = {m["name"]: m["colour"] for m in members}
    points = [{"name": r["backbone"], "colour": colours[r["backbone"]], "latency_ms": r["infer_ms_per_image"],
               "accuracy": r["accuracy"], "ci": [r["accuracy_ci_low"], r["accuracy_ci_high"]]}
              for r in rows if r["backbone"] in colours]
    return {
        "confusion_panels": _confusion_panels(members, labels, problems),
        "f1_uri": _figure_uri(plots.per_class_f1_png, problems, "per-class F1", labels,
                              _f1_series(members, labels)),
        "roc_uri": _figure_uri(plots.roc_curves_png, problems, "ROC curves", labels, members),
        "reliability_uri": _figure_uri(plots.reliability_png, problems, "reliability diagrams", members),
        "curves_uri": _figure_uri(plots.overlaid_curves_png, problems, "training curves", members),
        "latency_uri": _figure_uri(plots.accuracy_latency_png, problems, "accuracy against latency", points),
        "pareto": [points[i]["name"] for i in plots.pareto_front(points)],
    }


# ----------------------------------------------------------------------------------
# Grad-CAM grid
# ----------------------------------------------------------------------------------


def _image_path(path: str, comp_dir: pathlib.Path) -> pathlib.Path:
    """An image path as recorded; a relative one that is not found is tried from the comparison folder."""
    candidate = pathlib.Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        return comp_dir / candidate
    return candidate


def _gradcam_cell(arrays: Mapping, backbone: str, index: int, path: pathlib.Path,
                  labels: Sequence[str], true: str) -> dict:
    """One overlay of the grid: the heat-map and what the backbone predicted."""
    heat, pred, probs = arrays.get(backbone), arrays.get(f"{backbone}__pred"), arrays.get(f"{backbone}__probs")
    if heat is None or heat.ndim != 3 or index >= len(heat):
        return {"uri": None, "pred": "", "confidence": "", "correct": False}
    pred_index = int(pred[index]) if pred is not None and pred.ndim == 1 and index < len(pred) else None
    known = pred_index is not None and 0 <= pred_index < len(labels)
    confidence = _DASH
    if known and probs is not None and probs.ndim == 2 and index < len(probs) and pred_index < probs.shape[1]:
        confidence = fmt3(float(probs[index, pred_index]))
    png = plots.gradcam_overlay_png(path, heat[index], GRADCAM_SIZE)
    return {"uri": plots.to_data_uri(png) if png else None, "pred": labels[pred_index] if known else "",
            "confidence": confidence, "correct": known and labels[pred_index] == true}


def gradcam_grid(gradcam: Mapping | None, labels: Sequence[str], comp_dir) -> dict:
    """Rows = sample test images (thumbnail, true label); columns = backbones (overlay, prediction).

    Args:
        gradcam: the ``gradcam`` dict of :func:`load_comparison`, or ``None``.
        labels: class labels that the ``__pred`` indices point into.
        comp_dir: the comparison folder (relative image paths are tried from it).

    Returns:
        ``{"backbones": [...], "rows": [{"name", "path", "true", "thumb", "cells": [...]}]}``
        (empty lists when there are no maps).
    """
    if not gradcam:
        return {"backbones": [], "rows": []}
    comp_dir = pathlib.Path(comp_dir)
    arrays = gradcam["arrays"]
    rows = []
    for index, recorded in enumerate(gradcam["paths"]):
        path = _image_path(recorded, comp_dir)
        true = gradcam["true"][index] if index < len(gradcam["true"]) else ""
        thumb = plots.thumbnail_png(path, GRADCAM_SIZE)
        rows.append({
            "name": pathlib.PurePath(recorded).name or recorded, "path": recorded, "true": true,
            "thumb": plots.to_data_uri(thumb) if thumb else None,
            "cells": [_gradcam_cell(arrays, b, index, path, labels, true) for b in gradcam["backbones"]],
        })
    return {"backbones": list(gradcam["backbones"]), "rows": rows}


# ----------------------------------------------------------------------------------
# Context
# ----------------------------------------------------------------------------------


def _fingerprint_banner(comparison: Mapping, runs: Mapping) -> dict | None:
    """A warning when the backbones were not all tested on the same split."""
    prints = {name: str(value) for name, value in _as_dict(comparison.get("split_fingerprints")).items() if value}
    for name, run in runs.items():
        value = _as_dict((run or {}).get("manifest")).get("split_fingerprint")
        if value:
            prints[str(name)] = str(value)
    if comparison.get("split_fingerprint"):
        prints.setdefault("comparison", str(comparison["split_fingerprint"]))
    if len(set(prints.values())) <= 1:
        return None
    detail = "; ".join(f"{name}: {value}" for name, value in prints.items())
    return _banner("warning", "Different test splits",
                   "The backbones were not all evaluated on the same split, so their numbers "
                   "are not directly comparable and the paired tests do not hold.", detail)


def _comparison_banners(comparison: Mapping, dataset: Mapping, rows: Sequence[Mapping], runs: Mapping,
                        problems: Sequence[str]) -> list[dict]:
    """Notices for the top of the report, most serious first."""
    banners = [_banner("error", f"{row['backbone']} failed", row["error"] or "no error message recorded")
               for row in rows if row["status"] == "failed"]
    if dataset.get("synthetic"):
        banners.append(_banner(
            "synthetic", "Synthetic phantom data, not real MRI",
            "This comparison used synthetic phantom data, not real MRI: its ranking says nothing "
            "about performance on real scans.", dataset.get("description")))
    fingerprint = _fingerprint_banner(comparison, runs)
    if fingerprint:
        banners.append(fingerprint)
    banners += [_banner("warning", "Report input", text) for text in problems]
    return banners


def _report_link(comp_dir: pathlib.Path, entry: Mapping) -> str | None:
    """Relative link to a member run's ``report.html``, when that file exists."""
    if not entry["run_dir"]:
        return None
    run_dir = _member_path(comp_dir, entry["run_dir"])
    if not (run_dir / REPORT_NAME).is_file():
        return None
    relative = os.path.relpath(run_dir, comp_dir) if pathlib.Path(entry["run_dir"]).is_absolute() else entry["run_dir"]
    return _href(relative) + "/" + REPORT_NAME


def _run_links(comp_dir: pathlib.Path, entries: Sequence[Mapping], links: Mapping, colours: Mapping) -> list[dict]:
    """One row per backbone for the "Run reports" list."""
    return [{"backbone": e["backbone"], "status": e["status"], "href": links.get(e["backbone"]),
             "run_dir": e["run_dir"] or "", "colour": colours.get(e["backbone"], "#9ca3af")}
            for e in entries]


def _members(rows: Sequence[Mapping], runs: Mapping, colours: Mapping) -> list[dict]:
    """Completed backbones with metrics, in leaderboard order, with what the figures need."""
    members = []
    for row in rows:
        run = runs.get(row["backbone"]) or {}
        metrics = run.get("metrics")
        if row["status"] != "completed" or not isinstance(metrics, dict):
            continue
        members.append({
            "name": row["backbone"], "colour": colours[row["backbone"]], "metrics": metrics,
            "history": run.get("history") or [], "curves": _as_dict(metrics.get("roc_curves")),
            "reliability": _as_dict(metrics.get("reliability")), "ece": metrics.get("ece"),
        })
    return members


def comparison_context(comp: dict) -> dict:
    """Build the flat template context for one comparison.

    Args:
        comp: the dict :func:`load_comparison` returns.

    Returns:
        A dict of strings, numbers, booleans, lists and dicts (images as
        ``data:image/png;base64,...`` strings), ready for :func:`render_comparison`.
    """
    comparison = _as_dict(comp.get("comparison"))
    comp_dir = pathlib.Path(comp.get("comp_dir") or ".")
    config = _as_dict(comparison.get("config"))
    dataset = _as_dict(comparison.get("dataset"))
    runs = comp.get("runs") or {}
    problems = list(comp.get("problems") or [])
    labels = [str(x) for x in _as_list(comparison.get("labels")) or _as_list(dataset.get("labels"))]
    alpha = _to_float(config.get("alpha")) or DEFAULT_ALPHA
    entries = _run_entries(comparison)

    rows = leaderboard_rows(comp.get("leaderboard") or [], entries, runs, labels)
    colours = {row["backbone"]: plots.series_colour(i) for i, row in enumerate(rows)}
    links = {e["backbone"]: _report_link(comp_dir, e) for e in entries}
    display = [_display_row(row, colours[row["backbone"]], labels, links.get(row["backbone"])) for row in rows]
    members = _members(rows, runs, colours)

    context = {
        "comparison_id": fmt_value(comparison.get("comparison_id") or comp_dir.name),
        "created": _fmt_created(comparison.get("created")),
        "comp_dir": str(comp_dir),
        "labels": labels,
        "n_backbones": len(rows),
        "n_completed": sum(row["status"] == "completed" for row in rows),
        "dataset_name": str(dataset.get("name") or _DASH),
        "dataset_root": str(dataset.get("root") or _DASH),
        "dataset_layout": str(dataset.get("layout") or _DASH),
        "dataset_description": str(dataset.get("description") or ""),
        "synthetic": bool(dataset.get("synthetic")),
        "split_fingerprint": fmt_value(comparison.get("split_fingerprint")),
        "config_rows": _key_value_rows(config),
        "tier_sentence": TIER_SENTENCE.format(alpha=alpha),
        "alpha": f"{alpha:g}",
        "tier_groups": tier_groups(display),
        "matrix": pairwise_matrix(comparison, [row["backbone"] for row in rows], alpha),
        "pairwise": pairwise_details(comparison),
        "gradcam": gradcam_grid(comp.get("gradcam"), labels, comp_dir),
        "run_links": _run_links(comp_dir, entries, links, colours),
    }
    context.update(_figures(members, rows, labels, problems))
    context["banners"] = _comparison_banners(comparison, dataset, rows, runs, problems)
    return context


# ----------------------------------------------------------------------------------
# Rendering and writing the comparison
# ----------------------------------------------------------------------------------


def render_comparison(context: dict) -> str:
    """Render the comparison report.

    Args:
        context: the dict :func:`comparison_context` returns.

    Returns:
        The complete HTML document as text.
    """
    return _environment().get_template("compare.html.j2").render(**context)


def _write_missing_run_reports(comp: dict) -> None:
    """Write ``report.html`` for member runs that lack one, so the report's links work.

    A run report that cannot be written is noted in the comparison, never raised:
    it must not cost the comparison its own report.
    """
    for backbone, run in (comp.get("runs") or {}).items():
        if not run or (pathlib.Path(run["run_dir"]) / REPORT_NAME).is_file():
            continue
        try:
            write_run_report(run["run_dir"])
        except Exception as exc:  # noqa: BLE001 - recorded in the report's banners
            comp["problems"].append(f"{backbone}: run report could not be written: {type(exc).__name__}: {exc}")


def write_comparison_report(comp_dir, *, write_run_reports: bool = True) -> pathlib.Path:
    """Load a comparison folder, render its report and write ``report.html`` into it.

    Args:
        comp_dir: the comparison folder.
        write_run_reports: first write the ``report.html`` of member runs that have
            none (existing run reports are left alone), so every per-backbone link
            resolves. Default ``True``.

    Returns:
        The path of the written report.
    """
    comp_dir = pathlib.Path(comp_dir)
    comp = load_comparison(comp_dir)
    if write_run_reports:
        _write_missing_run_reports(comp)
    html = render_comparison(comparison_context(comp))
    path = comp_dir / REPORT_NAME
    _atomic_write_text(path, html)
    return path


# ----------------------------------------------------------------------------------
# Index of an output folder
# ----------------------------------------------------------------------------------


def folder_kind(path) -> str | None:
    """``"comparison"``, ``"evaluation"``, ``"run"`` or ``None`` for any other folder.

    Only the file names are checked (an evaluation is told apart by reading the
    manifest's ``kind``; an unreadable manifest counts as a run).
    """
    path = pathlib.Path(path)
    if (path / COMPARISON_NAME).is_file():
        return "comparison"
    if (path / MANIFEST_NAME).is_file():
        manifest = _read_json(path / MANIFEST_NAME, [])
        return "evaluation" if _as_dict(manifest).get("kind") == "evaluation" else "run"
    return None


def _timestamp(created: Any, folder: pathlib.Path) -> float:
    """Seconds since the epoch for sorting: ``created``, else the folder name, else its mtime."""
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


def _fmt_created(created: Any) -> str:
    """``"2026-11-27 17:00"`` from an ISO string; the text itself when it does not parse."""
    try:
        return dt.datetime.fromisoformat(str(created)).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return fmt_value(created)


def _status_of(entries: Sequence[Mapping]) -> tuple[str, str]:
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


def _comparison_entry(folder: pathlib.Path, problems: list[str]) -> dict | None:
    """Index values of a comparison folder (the best backbone's accuracy)."""
    comparison = _read_json(folder / COMPARISON_NAME, problems)
    if comparison is None:
        return None
    dataset = _as_dict(comparison.get("dataset"))
    labels = [str(x) for x in _as_list(comparison.get("labels"))]
    entries = _run_entries(comparison)
    rows = leaderboard_rows(_load_leaderboard(folder, []), entries, None, labels)
    best = next((r for r in rows if r["status"] == "completed" and r["accuracy"] is not None), None)
    status, status_class = _status_of(entries)
    return {
        "created_raw": comparison.get("created"), "kind": "comparison",
        "backbones": ", ".join(e["backbone"] for e in entries) or _DASH,
        "dataset": str(dataset.get("name") or _DASH), "synthetic": bool(dataset.get("synthetic")),
        "accuracy": fmt_ci(best["accuracy"], best["accuracy_ci_low"], best["accuracy_ci_high"]) if best else _DASH,
        "best": best["backbone"] if best else "",
        "status": status, "status_class": status_class,
    }


def _run_entry(folder: pathlib.Path, problems: list[str]) -> dict | None:
    """Index values of a run or evaluation folder."""
    manifest = _read_json(folder / MANIFEST_NAME, problems)
    if manifest is None:
        return None
    metrics = _read_json(folder / METRICS_NAME, []) or {}
    dataset = _as_dict(manifest.get("dataset"))
    low, high = _pair(metrics.get("accuracy_ci"))
    status = str(manifest.get("status") or "unknown")
    backbone = manifest.get("backbone") or _as_dict(manifest.get("config")).get("backbone")
    return {
        "created_raw": manifest.get("created"),
        "kind": "evaluation" if manifest.get("kind") == "evaluation" else "run",
        "backbones": fmt_value(backbone), "dataset": str(dataset.get("name") or _DASH),
        "synthetic": bool(dataset.get("synthetic")), "accuracy": fmt_ci(metrics.get("accuracy"), low, high),
        "best": "", "status": status,
        "status_class": status if status in ("completed", "failed") else "unknown",
    }


def index_entry(folder) -> dict | None:
    """Index values for one sub-folder, or ``None`` when it is not a result folder.

    Raises:
        ValueError: if it looks like a result folder but its main JSON file cannot
            be read (half-written, or not ours).
    """
    folder = pathlib.Path(folder)
    problems: list[str] = []
    if (folder / COMPARISON_NAME).is_file():
        entry = _comparison_entry(folder, problems)
    elif (folder / MANIFEST_NAME).is_file():
        entry = _run_entry(folder, problems)
    else:
        return None
    if entry is None:
        raise ValueError("; ".join(problems) or "unreadable")
    report = folder / REPORT_NAME
    entry.update({
        "name": folder.name,
        "created": _fmt_created(entry["created_raw"]),
        "sort_key": _timestamp(entry.pop("created_raw"), folder),
        "href": _href(folder.name) + "/" + REPORT_NAME if report.is_file() else None,
    })
    return entry


def index_context(out_dir) -> dict:
    """The flat template context of the index: entries newest first, plus skipped folders.

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
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            unreadable.append({"name": child.name, "reason": str(exc)})
            continue
        if entry is not None:
            entries.append(entry)
    entries.sort(key=lambda e: (e["sort_key"], e["name"]), reverse=True)
    return {"out_dir": str(out_dir), "entries": entries, "unreadable": unreadable}


def render_index(context: dict) -> str:
    """Render the index page from :func:`index_context`."""
    return _environment().get_template("index.html.j2").render(**context)


def write_index(out_dir) -> pathlib.Path:
    """Write ``out_dir/index.html``: every run, evaluation and comparison, newest first.

    Sub-folders that are not result folders are skipped; half-written ones (an
    unreadable ``manifest.json`` or ``comparison.json``) are listed at the bottom
    instead of failing the index.

    Args:
        out_dir: the output folder (e.g. ``runs/``).

    Returns:
        The path of the written index.
    """
    out_dir = pathlib.Path(out_dir)
    path = out_dir / INDEX_NAME
    _atomic_write_text(path, render_index(index_context(out_dir)))
    return path


# ----------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------


def write_any_report(path) -> pathlib.Path:
    """Write the report a folder calls for: a comparison's, a tuning search's or a run's.

    Args:
        path: a comparison folder (has ``comparison.json``), a tuning folder (has
            ``tuning.json``) or a run or evaluation folder (has ``manifest.json``).

    Returns:
        The path of the written ``report.html``.

    Raises:
        ValueError: if ``path`` is neither.
    """
    path = pathlib.Path(path)
    if (path / COMPARISON_NAME).is_file():
        return write_comparison_report(path)
    if (path / "tuning.json").is_file():
        from reports.tuning import write_tuning_report

        return write_tuning_report(path)
    if (path / MANIFEST_NAME).is_file():
        return write_run_report(path)
    what = "is not a folder" if not path.is_dir() else f"has neither {COMPARISON_NAME} nor {MANIFEST_NAME}"
    raise ValueError(f"cannot report on {path}: it {what}; expected a run folder or a comparison folder")
