"""The comparison report: comparison folder -> load_comparison -> comparison_context -> render_comparison -> write.

``load_comparison`` reads the comparison's record, its leaderboard, its Grad-CAM maps and
the run folders it points to; ``comparison_context`` builds a flat dict of plain values
and embedded figures (the leaderboard in the one schema of :mod:`suite.metrics`);
``render_comparison`` fills ``comparison.html.j2`` and ``write_comparison_report`` writes the
page into the folder. Only reads folders: never imports Keras or TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import zipfile
from collections.abc import Mapping, Sequence

from reports import plots
from reports.run import load_run, write_run_report
from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    banner,
    data_uri,
    figure_uri,
    fmt3,
    fmt_ci,
    fmt_created,
    fmt_p,
    fmt_params,
    fmt_seconds,
    fmt_unit,
    fmt_value,
    href,
    input_banners,
    key_value_rows,
    read_csv,
    read_json,
    render,
    synthetic_banner,
    thumbnail_uri,
    to_float,
    write_html,
)
from suite import runs
from suite.metrics import leaderboard_columns, leaderboard_row, leaderboard_sort_key

GRADCAM_SIZE = 112
DEFAULT_ALPHA = 0.05
NO_COLOUR = "#9ca3af"
# Leaderboard columns that hold text (or the tier), not a figure.
TEXT_COLUMNS = ("backbone", "status", "tier", "error")

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


def run_entries(comparison: Mapping) -> list[dict]:
    """The comparison record's ``runs`` list, every field normalised to text (entries without a backbone dropped)."""
    entries = []
    for raw in as_list(comparison.get("runs")):
        raw = as_dict(raw)
        if raw.get("backbone") is None:
            continue
        entries.append({
            "backbone": str(raw["backbone"]),
            "run_dir": str(raw["run_dir"]) if raw.get("run_dir") else None,
            "status": str(raw.get("status") or "unknown"),
            "error": str(raw.get("error") or ""),
        })
    return entries


def _load_member(comp_dir: pathlib.Path, entry: Mapping, problems: list[str]) -> dict | None:
    """The :func:`~reports.run.load_run` dict of one member run (its folder relative to ``comp_dir``), or ``None``."""
    if not entry["run_dir"]:
        return None
    try:
        run = load_run(comp_dir / entry["run_dir"])
    except FileNotFoundError as exc:
        if entry["status"] == "completed":
            problems.append(f"{entry['backbone']}: {exc}")
        return None
    problems.extend(f"{entry['backbone']}: {text}" for text in run["problems"])
    return run


def load_leaderboard(comp_dir: pathlib.Path, problems: list[str]) -> list[dict]:
    """Rows of the JSON leaderboard (typed), else of the CSV one (text cells); empty when neither is there."""
    path, csv_path = comp_dir / runs.LEADERBOARD_JSON, comp_dir / runs.LEADERBOARD_CSV
    if path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, list):
                return [row for row in rows if isinstance(row, dict)]
            problems.append(f"{path.name} does not hold a list of rows")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{path.name} could not be read: {exc}")
    rows = read_csv(csv_path, problems)
    if not rows and not path.is_file() and not csv_path.is_file():
        problems.append("no leaderboard file: the table is rebuilt from the run folders")
    return rows


def _load_gradcam(comp_dir: pathlib.Path, comparison: Mapping, problems: list[str]) -> dict | None:
    """The Grad-CAM record of the comparison plus the arrays of its maps file."""
    spec = comparison.get("gradcam")
    if not isinstance(spec, dict):
        return None
    import numpy as np

    # Only a file name inside the comparison folder is honoured.
    path = comp_dir / pathlib.PurePath(str(spec.get("file") or runs.GRADCAM)).name
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        problems.append(f"Grad-CAM maps not shown: {path.name} could not be read: {exc}")
        return None
    return {
        "paths": [str(p) for p in as_list(spec.get("paths"))],
        "true": [str(t) for t in as_list(spec.get("true"))],
        "backbones": [str(b) for b in as_list(spec.get("backbones"))],
        "arrays": arrays,
    }


def load_comparison(comp_dir) -> dict:
    """Read a comparison folder and the run folders it points to.

    Args:
        comp_dir: a folder holding the comparison record (``runs.COMPARISON``) and,
            optionally, its leaderboard (JSON or CSV) and Grad-CAM maps.

    Returns:
        ``{"comp_dir", "comparison", "leaderboard", "runs", "gradcam", "problems"}``:
        ``leaderboard`` is a list of row dicts (empty when absent), ``runs`` maps each
        backbone to its :func:`~reports.run.load_run` dict (``None`` when it has no
        readable run folder), ``gradcam`` is ``None`` or ``{"paths", "true",
        "backbones", "arrays"}`` and ``problems`` lists what could not be read.

    Raises:
        FileNotFoundError: if ``comp_dir`` has no readable comparison record.
    """
    comp_dir = pathlib.Path(comp_dir)
    problems: list[str] = []
    comparison = read_json(comp_dir / runs.COMPARISON, problems)
    if comparison is None:
        detail = "; ".join(problems) or f"{runs.COMPARISON} is missing"
        raise FileNotFoundError(f"{comp_dir} is not a comparison folder: {detail}")
    members = {entry["backbone"]: _load_member(comp_dir, entry, problems) for entry in run_entries(comparison)}
    return {
        "comp_dir": str(comp_dir),
        "comparison": comparison,
        "leaderboard": load_leaderboard(comp_dir, problems),
        "runs": members,
        "gradcam": _load_gradcam(comp_dir, comparison, problems),
        "problems": problems,
    }


# ----------------------------------------------------------------------------------
# Leaderboard: suite.metrics' schema, one row per backbone
# ----------------------------------------------------------------------------------


def _typed_row(raw: Mapping, labels: Sequence[str]) -> dict:
    """A leaderboard row with its figures as floats (a CSV row's cells are text) and the tier as int."""
    row = {column: to_float(raw.get(column)) for column in leaderboard_columns(labels) if column not in TEXT_COLUMNS}
    tier = to_float(raw.get("tier"))
    row.update(backbone=str(raw.get("backbone")), status=str(raw.get("status") or "unknown"),
               tier=int(tier) if tier is not None and math.isfinite(tier) else None,
               error=str(raw.get("error") or ""))
    return row


def _row_from_run(entry: Mapping, run: Mapping | None, labels: Sequence[str]) -> dict:
    """A leaderboard row rebuilt from a member's run folder, for a backbone the leaderboard file lacks."""
    manifest = as_dict((run or {}).get("manifest"))
    metrics = as_dict((run or {}).get("metrics"))
    return leaderboard_row(metrics, manifest, labels=labels, backbone=entry["backbone"], status=entry["status"],
                           tier=None, error=entry["error"] or manifest.get("error"))


def leaderboard_rows(raw_rows: Sequence[Mapping], entries: Sequence[Mapping],
                     members: Mapping | None, labels: Sequence[str]) -> list[dict]:
    """The leaderboard, one row per backbone, in :func:`suite.metrics.leaderboard_sort_key` order.

    Args:
        raw_rows: rows of the leaderboard file (JSON or CSV).
        entries: :func:`run_entries` of the comparison record; a backbone listed there
            but missing from the file gets a row rebuilt from its run folder, so a
            failed backbone never silently disappears.
        members: ``{backbone: load_run dict or None}`` (may be ``None``).
        labels: class labels, for the per-class columns.

    Returns:
        Rows with every column of :func:`suite.metrics.leaderboard_columns`: figures
        as floats (``None`` when unknown), ``tier`` as int or ``None``, ``backbone``,
        ``status`` and ``error`` as text.
    """
    rows = [_typed_row(raw, labels) for raw in raw_rows if raw.get("backbone") is not None]
    known = {row["backbone"] for row in rows}
    rows += [_typed_row(_row_from_run(entry, (members or {}).get(entry["backbone"]), labels), labels)
             for entry in entries if entry["backbone"] not in known]
    recorded = {entry["backbone"]: entry for entry in entries}
    for row in rows:  # the comparison record has the last word on status and error
        entry = recorded.get(row["backbone"])
        if entry and entry["status"] != "unknown":
            row["status"] = entry["status"]
            row["error"] = row["error"] or entry["error"]
    return sorted(rows, key=leaderboard_sort_key)


def _display_row(row: Mapping, colour: str, labels: Sequence[str], link: str | None) -> dict:
    """Template values for one leaderboard row."""
    return {
        "backbone": row["backbone"], "status": row["status"], "colour": colour, "error": row["error"],
        "tier": DASH if row["tier"] is None else str(row["tier"]),
        "accuracy": fmt_ci(row["accuracy"], row["accuracy_ci_low"], row["accuracy_ci_high"]),
        "macro_f1": fmt_ci(row["macro_f1"], row["macro_f1_ci_low"], row["macro_f1_ci_high"]),
        "roc_auc": fmt3(row["roc_auc_macro"]), "ece": fmt3(row["ece"]),
        "params": fmt_params(row["params"]), "train": fmt_seconds(row["train_s"]),
        "image_size": DASH if row["image_size"] is None else f"{int(row['image_size'])} px",
        "latency": fmt_unit(row["infer_ms_per_image"], "ms"),
        "throughput": fmt_unit(row["infer_images_per_s"], "img/s"),
        "per_class": [{"recall": fmt3(row[f"recall_{label}"]), "f1": fmt3(row[f"f1_{label}"])} for label in labels],
        "report_href": link,
    }


def tier_groups(rows: Sequence[Mapping]) -> list[dict]:
    """Display rows grouped under ``Tier n`` / ``Unranked`` / ``Failed`` headings, in order."""
    groups: list[dict] = []
    for row in rows:
        if row["status"] != "completed":
            title = "Failed"
        elif row["tier"] == DASH:
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
    entries = [as_dict(item) for item in as_list(comparison.get("pairwise"))]
    return [item for item in entries if item.get("a") is not None and item.get("b") is not None]


def _matrix_lookup(comparison: Mapping) -> dict[tuple[str, str], float | None]:
    """``p_matrix`` as ``{(row, column): p}``."""
    matrix = as_dict(comparison.get("p_matrix"))
    names = [str(n) for n in as_list(matrix.get("names"))]
    values = as_list(matrix.get("values"))
    lookup = {}
    for i, name in enumerate(names):
        row = as_list(values[i]) if i < len(values) else []
        for j, other in enumerate(names):
            lookup[(name, other)] = to_float(row[j]) if j < len(row) else None
    return lookup


def _matrix_cell(row: str, col: str, test: Mapping | None, p_fallback: float | None, alpha: float) -> dict:
    """One matrix cell: the Holm p-value, coloured by who won a significant test."""
    if row == col:
        return {"text": DASH, "cls": "diag", "title": ""}
    p = to_float(test.get("p_holm")) if test else None
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
        comparison: the comparison record.
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
    present = {name for names in list(tests) + list(lookup) for name in names}
    names = [name for name in order if name in present]
    names += sorted(present - set(names))
    rows = [{"name": row, "cells": [_matrix_cell(row, col, tests.get((row, col)), lookup.get((row, col)), alpha)
                                    for col in names]} for row in names]
    return {"names": names, "rows": rows}


def pairwise_details(comparison: Mapping) -> list[dict]:
    """One formatted row per pairwise test (for the details table and the sentences)."""
    return [{
        "a": str(item["a"]), "b": str(item["b"]),
        "accuracy_a": fmt3(item.get("accuracy_a")), "accuracy_b": fmt3(item.get("accuracy_b")),
        "only_a": fmt_value(item.get("only_a")), "only_b": fmt_value(item.get("only_b")),
        "method": fmt_value(item.get("method")), "p_value": fmt_p(item.get("p_value")),
        "p_holm": fmt_p(item.get("p_holm")), "significant": bool(item.get("significant")),
        "winner": str(item["winner"]) if item.get("winner") is not None else "",
        "sentence": str(item.get("sentence") or ""),
    } for item in _pairwise_entries(comparison)]


# ----------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------


def _confusion_panels(members: Sequence[dict], labels: Sequence[str], problems: list[str]) -> list[dict]:
    """One confusion-matrix image per completed backbone."""
    panels = []
    for member in members:
        metrics = member["metrics"]
        matrix = metrics.get("confusion_matrix")
        if not matrix:
            continue
        order = [str(x) for x in as_list(metrics.get("labels"))] or list(labels)
        uri = figure_uri(plots.confusion_matrix_png, problems, f"{member['name']}: confusion matrix",
                         matrix, order, True)
        panels.append({"name": member["name"], "colour": member["colour"], "uri": uri})
    return panels


def _f1_series(members: Sequence[dict], labels: Sequence[str]) -> list[dict]:
    """Per-class F1 and its interval for each backbone, in label order."""
    series = []
    for member in members:
        per_class = as_dict(member["metrics"].get("per_class"))
        stats = [as_dict(per_class.get(label)) for label in labels]
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
        "f1_uri": figure_uri(plots.per_class_f1_png, problems, "per-class F1", labels, _f1_series(members, labels)),
        "roc_uri": figure_uri(plots.roc_curves_png, problems, "ROC curves", labels, members),
        "reliability_uri": figure_uri(plots.reliability_png, problems, "reliability diagrams", members),
        "curves_uri": figure_uri(plots.overlaid_curves_png, problems, "training curves", members),
        "latency_uri": figure_uri(plots.accuracy_latency_png, problems, "accuracy against latency", points),
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
    confidence = DASH
    if known and probs is not None and probs.ndim == 2 and index < len(probs) and pred_index < probs.shape[1]:
        confidence = fmt3(float(probs[index, pred_index]))
    return {"uri": data_uri(plots.gradcam_overlay_png(path, heat[index], GRADCAM_SIZE)),
            "pred": labels[pred_index] if known else "", "confidence": confidence,
            "correct": known and labels[pred_index] == true}


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
    rows = []
    for index, recorded in enumerate(gradcam["paths"]):
        path = _image_path(recorded, comp_dir)
        true = gradcam["true"][index] if index < len(gradcam["true"]) else ""
        rows.append({
            "name": pathlib.PurePath(recorded).name or recorded, "path": recorded, "true": true,
            "thumb": thumbnail_uri(path, GRADCAM_SIZE),
            "cells": [_gradcam_cell(gradcam["arrays"], b, index, path, labels, true) for b in gradcam["backbones"]],
        })
    return {"backbones": list(gradcam["backbones"]), "rows": rows}


# ----------------------------------------------------------------------------------
# Context
# ----------------------------------------------------------------------------------


def fingerprint_banner(comparison: Mapping, members: Mapping) -> dict | None:
    """A warning when the backbones were not all tested on the same split (``None`` when they were)."""
    prints = {name: str(value) for name, value in as_dict(comparison.get("split_fingerprints")).items() if value}
    for name, run in members.items():
        value = as_dict((run or {}).get("manifest")).get("split_fingerprint")
        if value:
            prints[str(name)] = str(value)
    if comparison.get("split_fingerprint"):
        prints.setdefault("comparison", str(comparison["split_fingerprint"]))
    if len(set(prints.values())) <= 1:
        return None
    detail = "; ".join(f"{name}: {value}" for name, value in prints.items())
    return banner("warning", "Different test splits",
                  "The backbones were not all evaluated on the same split, so their numbers "
                  "are not directly comparable and the paired tests do not hold.", detail)


def _banners(comparison: Mapping, dataset: Mapping, rows: Sequence[Mapping], members: Mapping,
             problems: Sequence[str]) -> list[dict]:
    """Notices for the top of the report, most serious first."""
    banners = [banner("error", f"{row['backbone']} failed", row["error"] or "no error message recorded")
               for row in rows if row["status"] == "failed"]
    if dataset.get("synthetic"):
        banners.append(synthetic_banner("This comparison used synthetic phantom data, not real MRI: its ranking "
                                        "says nothing about performance on real scans.", dataset.get("description")))
    fingerprint = fingerprint_banner(comparison, members)
    if fingerprint:
        banners.append(fingerprint)
    return banners + input_banners(problems)


def _report_link(comp_dir: pathlib.Path, entry: Mapping) -> str | None:
    """Relative link to a member run's report, when that file exists."""
    if not entry["run_dir"]:
        return None
    run_dir = comp_dir / entry["run_dir"]
    if not (run_dir / runs.REPORT).is_file():
        return None
    relative = os.path.relpath(run_dir, comp_dir) if pathlib.Path(entry["run_dir"]).is_absolute() else entry["run_dir"]
    return href(relative) + "/" + runs.REPORT


def _run_links(entries: Sequence[Mapping], links: Mapping, colours: Mapping) -> list[dict]:
    """One row per backbone for the "Run reports" list."""
    return [{"backbone": e["backbone"], "status": e["status"], "href": links.get(e["backbone"]),
             "run_dir": e["run_dir"] or "", "colour": colours.get(e["backbone"], NO_COLOUR)}
            for e in entries]


def _members(rows: Sequence[Mapping], members: Mapping, colours: Mapping) -> list[dict]:
    """Completed backbones with metrics, in leaderboard order, with what the figures need."""
    out = []
    for row in rows:
        run = members.get(row["backbone"]) or {}
        metrics = run.get("metrics")
        if row["status"] != "completed" or not isinstance(metrics, dict):
            continue
        out.append({
            "name": row["backbone"], "colour": colours[row["backbone"]], "metrics": metrics,
            "history": run.get("history") or [], "curves": as_dict(metrics.get("roc_curves")),
            "reliability": as_dict(metrics.get("reliability")), "ece": metrics.get("ece"),
        })
    return out


def _setup_context(comparison: Mapping, comp_dir: pathlib.Path, labels: Sequence[str], alpha: float) -> dict:
    """The header and the "Shared setup" section: what was compared, on what, with which settings."""
    dataset = as_dict(comparison.get("dataset"))
    return {
        "comparison_id": fmt_value(comparison.get("comparison_id") or comp_dir.name),
        "created": fmt_created(comparison.get("created")),
        "comp_dir": str(comp_dir),
        "labels": list(labels),
        "dataset_name": str(dataset.get("name") or DASH),
        "dataset_root": str(dataset.get("root") or DASH),
        "dataset_layout": str(dataset.get("layout") or DASH),
        "dataset_description": str(dataset.get("description") or ""),
        "synthetic": bool(dataset.get("synthetic")),
        "split_fingerprint": fmt_value(comparison.get("split_fingerprint")),
        "config_rows": key_value_rows(as_dict(comparison.get("config"))),
        "tier_sentence": TIER_SENTENCE.format(alpha=alpha),
        "alpha": f"{alpha:g}",
    }


def comparison_labels(comparison: Mapping) -> list[str]:
    """The class labels of a comparison record (its own, else its dataset's)."""
    labels = as_list(comparison.get("labels")) or as_list(as_dict(comparison.get("dataset")).get("labels"))
    return [str(x) for x in labels]


def comparison_context(comp: dict) -> dict:
    """Build the flat template context for one comparison.

    Args:
        comp: the dict :func:`load_comparison` returns.

    Returns:
        A dict of strings, numbers, booleans, lists and dicts (images as
        ``data:image/png;base64,...`` strings), ready for :func:`render_comparison`.
    """
    comparison = as_dict(comp.get("comparison"))
    comp_dir = pathlib.Path(comp.get("comp_dir") or ".")
    members = comp.get("runs") or {}
    problems = list(comp.get("problems") or [])
    labels = comparison_labels(comparison)
    alpha = to_float(as_dict(comparison.get("config")).get("alpha")) or DEFAULT_ALPHA
    entries = run_entries(comparison)

    rows = leaderboard_rows(comp.get("leaderboard") or [], entries, members, labels)
    colours = {row["backbone"]: plots.series_colour(i) for i, row in enumerate(rows)}
    links = {e["backbone"]: _report_link(comp_dir, e) for e in entries}
    display = [_display_row(row, colours[row["backbone"]], labels, links.get(row["backbone"])) for row in rows]

    context = _setup_context(comparison, comp_dir, labels, alpha)
    context.update({
        "n_backbones": len(rows),
        "n_completed": sum(row["status"] == "completed" for row in rows),
        "tier_groups": tier_groups(display),
        "matrix": pairwise_matrix(comparison, [row["backbone"] for row in rows], alpha),
        "pairwise": pairwise_details(comparison),
        "gradcam": gradcam_grid(comp.get("gradcam"), labels, comp_dir),
        "run_links": _run_links(entries, links, colours),
    })
    context.update(_figures(_members(rows, members, colours), rows, labels, problems))
    context["banners"] = _banners(comparison, as_dict(comparison.get("dataset")), rows, members, problems)
    return context


# ----------------------------------------------------------------------------------
# Rendering and writing
# ----------------------------------------------------------------------------------


def render_comparison(context: dict) -> str:
    """The complete comparison report, as HTML text, from :func:`comparison_context`'s dict."""
    return render("comparison.html.j2", context)


def _write_missing_run_reports(comp: dict) -> None:
    """Write the report of member runs that lack one, so the comparison's links work.

    A run report that cannot be written is noted in the comparison, never raised:
    it must not cost the comparison its own report.
    """
    for backbone, run in (comp.get("runs") or {}).items():
        if not run or (pathlib.Path(run["run_dir"]) / runs.REPORT).is_file():
            continue
        try:
            write_run_report(run["run_dir"])
        except Exception as exc:  # noqa: BLE001 - recorded in the report's banners
            comp["problems"].append(f"{backbone}: run report could not be written: {type(exc).__name__}: {exc}")


def write_comparison_report(comp_dir, *, write_run_reports: bool = True) -> pathlib.Path:
    """Load a comparison folder, render its report and write it into the folder.

    Args:
        comp_dir: the comparison folder.
        write_run_reports: first write the report of member runs that have none
            (existing run reports are left alone), so every per-backbone link
            resolves. Defaults to True.

    Returns:
        The path of the written report (``runs.REPORT`` in the folder).
    """
    comp_dir = pathlib.Path(comp_dir)
    comp = load_comparison(comp_dir)
    if write_run_reports:
        _write_missing_run_reports(comp)
    return write_html(comp_dir / runs.REPORT, render_comparison(comparison_context(comp)))
