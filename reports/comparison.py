"""The comparison report: comparison folder -> load_comparison -> comparison_context -> render_comparison -> write.

``load_comparison`` reads the comparison's record, its leaderboard, its Grad-CAM maps and
the run folders it points to; ``comparison_context`` builds a flat dict of plain values
and embedded figures (the leaderboard in the one schema of :mod:`suite.metrics`);
``render_comparison`` fills ``comparison.html.j2`` and ``write_comparison_report`` writes the
page into the folder. Only reads folders: never imports Keras or TensorFlow.

A comparison trained under several seeds (``suite compare --seeds N``) has one leaderboard
row per backbone holding the mean over its seeds and their spread, a per-seed leaderboard
(``runs.SEEDS_JSON``), every replicate listed under its backbone's ``seeds`` and pairwise
tests by a bootstrap over images and seeds; the report then adds the seed spread and links
every replicate. A comparison without seeds renders as it always has.
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
    fmt2,
    fmt3,
    fmt_ci,
    fmt_created,
    fmt_p,
    fmt_params,
    fmt_pct,
    fmt_seconds,
    fmt_unit,
    fmt_value,
    href,
    input_banners,
    key_value_rows,
    pair,
    read_csv,
    read_json,
    render,
    synthetic_banner,
    thumbnail_uri,
    to_float,
    write_html,
)
from suite import runs
from suite.metrics import leaderboard_columns, leaderboard_row, leaderboard_sort_key, seed_summary_row
from suite.stats import SEED_METHOD

GRADCAM_SIZE = 112
DEFAULT_ALPHA = 0.05
NO_COLOUR = "#9ca3af"
# Leaderboard columns that hold text (or the tier), not a figure.
TEXT_COLUMNS = ("backbone", "status", "tier", "error")
# The "Seed spread" section, which the leaderboard of a seeded comparison links to.
SEEDS_ANCHOR = "#seeds"
# McNemar's two variants (suite.stats.mcnemar's ``method``), as the report names them.
MCNEMAR_METHODS = {"exact": "exact binomial", "chi2": "chi-square"}

# What the leaderboard of a seeded comparison shows (under the table).
SEED_NOTE = (
    "Each backbone was trained under {n} seeds on the same split. Accuracy and macro F1 read mean \u00b1 SD "
    "(seeds): the mean over the backbone's seeds, \u00b1 the standard deviation across them; every other "
    "figure in these tables is a mean over the seeds too. The interval in brackets is the test-set "
    "uncertainty of one training (the mean of the seeds' own 95% confidence intervals): it leaves out the "
    "seed-to-seed spread that \u00b1 shows."
)
SEED_TIERS = "Tiers come from {test} for every pair of backbones, Holm-corrected."
SEED_FIGURES = (
    "The confusion matrices, per-class F1, ROC curves, calibration, training curves and Grad-CAM maps below "
    "show each backbone's first seed; the seed spread shows every seed."
)

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


def _int(value) -> int | None:
    """A whole number out of JSON or a CSV cell (``"2"``, ``2.0``); ``None`` for blanks and junk."""
    number = to_float(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _run_fields(raw: Mapping) -> dict:
    """``run_dir``, ``status`` and ``error`` of a ``runs`` entry or of one of its replicates, as text."""
    return {"run_dir": str(raw["run_dir"]) if raw.get("run_dir") else None,
            "status": str(raw.get("status") or "unknown"), "error": str(raw.get("error") or "")}


def run_entries(comparison: Mapping) -> list[dict]:
    """The comparison record's ``runs`` list, every field normalised to text (entries without a backbone dropped).

    Each entry also has ``replicates``: its ``seeds`` list (every training replicate of the
    backbone, each with ``replicate``, ``run_dir``, ``status`` and ``error``), empty in a
    comparison without seeds.
    """
    entries = []
    for raw in as_list(comparison.get("runs")):
        raw = as_dict(raw)
        if raw.get("backbone") is None:
            continue
        replicates = [_replicate_entry(item, index) for index, item in enumerate(as_list(raw.get("seeds")))]
        entries.append({"backbone": str(raw["backbone"]), **_run_fields(raw), "replicates": replicates})
    return entries


def _replicate_entry(raw, index: int) -> dict:
    """One item of an entry's ``seeds`` list, normalised; its position stands in for a missing ``replicate``."""
    raw = as_dict(raw)
    number = _int(raw.get("replicate"))
    return {"replicate": index if number is None else number, **_run_fields(raw)}


def seed_count(comparison: Mapping) -> int:
    """Training seeds per backbone: the record's ``seeds``, else the longest ``seeds`` list; 1 without seeds."""
    recorded = _int(comparison.get("seeds"))
    if recorded is not None and recorded >= 1:
        return recorded
    return max([1, *(len(entry["replicates"]) for entry in run_entries(comparison))])


def _load_member(comp_dir: pathlib.Path, entry: Mapping, problems: list[str], who: str | None = None) -> dict | None:
    """The :func:`~reports.run.load_run` dict of one member run (its folder relative to ``comp_dir``), or ``None``.

    ``who`` names the run in ``problems`` (default: its backbone).
    """
    who = who or entry["backbone"]
    if not entry["run_dir"]:
        return None
    try:
        run = load_run(comp_dir / entry["run_dir"])
    except FileNotFoundError as exc:
        if entry["status"] == "completed":
            problems.append(f"{who}: {exc}")
        return None
    problems.extend(f"{who}: {text}" for text in run["problems"])
    return run


def _load_replicates(comp_dir: pathlib.Path, entries: Sequence[Mapping], members: Mapping,
                     problems: list[str]) -> dict[str, dict[int, dict | None]]:
    """``{backbone: {replicate: load_run dict or None}}`` for every replicate (a member's own folder not read twice)."""
    loaded = {}
    for entry in entries:
        loaded[entry["backbone"]] = {
            rep["replicate"]: members.get(entry["backbone"]) if rep["run_dir"] == entry["run_dir"] else
            _load_member(comp_dir, {**rep, "backbone": entry["backbone"]}, problems,
                         f"{entry['backbone']} (replicate {rep['replicate']})")
            for rep in entry["replicates"]}
    return loaded


def _load_table(comp_dir: pathlib.Path, json_name: str, csv_name: str, problems: list[str]) -> list[dict] | None:
    """Rows of a JSON table (typed), else of its CSV twin (text cells); ``None`` when neither file is there."""
    path, csv_path = comp_dir / json_name, comp_dir / csv_name
    if path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, list):
                return [row for row in rows if isinstance(row, dict)]
            problems.append(f"{path.name} does not hold a list of rows")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{path.name} could not be read: {exc}")
    rows = read_csv(csv_path, problems)
    return None if not rows and not path.is_file() and not csv_path.is_file() else rows


def load_leaderboard(comp_dir: pathlib.Path, problems: list[str]) -> list[dict]:
    """Rows of the JSON leaderboard (typed), else of the CSV one (text cells); empty when neither is there."""
    rows = _load_table(comp_dir, runs.LEADERBOARD_JSON, runs.LEADERBOARD_CSV, problems)
    if rows is None:
        problems.append("no leaderboard file: the table is rebuilt from the run folders")
    return rows or []


def load_seed_leaderboard(comp_dir: pathlib.Path, problems: list[str]) -> list[dict]:
    """Rows of the per-seed leaderboard (``runs.SEEDS_JSON``, else ``runs.SEEDS_CSV``); empty when neither is there."""
    rows = _load_table(comp_dir, runs.SEEDS_JSON, runs.SEEDS_CSV, problems)
    if rows is None:
        problems.append("no per-seed leaderboard file: the seed spread is rebuilt from the run folders")
    return rows or []


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
        ``{"comp_dir", "comparison", "leaderboard", "seed_leaderboard", "runs",
        "replicates", "gradcam", "problems"}``: ``leaderboard`` and ``seed_leaderboard``
        are lists of row dicts (empty when absent; the latter only read when
        :func:`seed_count` is above 1), ``runs`` maps
        each backbone to the :func:`~reports.run.load_run` dict of its (first) run
        (``None`` when it has no readable run folder), ``replicates`` maps each backbone
        to ``{replicate: load_run dict or None}`` (empty without seeds), ``gradcam`` is
        ``None`` or ``{"paths", "true", "backbones", "arrays"}`` and ``problems`` lists
        what could not be read.

    Raises:
        FileNotFoundError: if ``comp_dir`` has no readable comparison record.
    """
    comp_dir = pathlib.Path(comp_dir)
    problems: list[str] = []
    comparison = read_json(comp_dir / runs.COMPARISON, problems)
    if comparison is None:
        detail = "; ".join(problems) or f"{runs.COMPARISON} is missing"
        raise FileNotFoundError(f"{comp_dir} is not a comparison folder: {detail}")
    entries = run_entries(comparison)
    members = {entry["backbone"]: _load_member(comp_dir, entry, problems) for entry in entries}
    seeds = seed_count(comparison)
    return {
        "comp_dir": str(comp_dir),
        "comparison": comparison,
        "leaderboard": load_leaderboard(comp_dir, problems),
        "seed_leaderboard": load_seed_leaderboard(comp_dir, problems) if seeds > 1 else [],
        "runs": members,
        "replicates": _load_replicates(comp_dir, entries, members, problems) if seeds > 1 else {},
        "gradcam": _load_gradcam(comp_dir, comparison, problems),
        "problems": problems,
    }


# ----------------------------------------------------------------------------------
# Leaderboard: suite.metrics' schema, one row per backbone
# ----------------------------------------------------------------------------------


def _typed_row(raw: Mapping, labels: Sequence[str], seeds: bool = False) -> dict:
    """A leaderboard row with its figures as floats (a CSV row's cells are text) and the tier as int.

    ``seeds``: the row also has the spread across seeds (:data:`suite.metrics.SEED_COLUMNS`).
    """
    row = {column: to_float(raw.get(column)) for column in leaderboard_columns(labels, seeds=seeds)
           if column not in TEXT_COLUMNS}
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


def _row_from_replicates(entry: Mapping, replicates: Mapping, labels: Sequence[str]) -> dict:
    """A seed-summary row rebuilt from the run folders of a backbone's completed replicates."""
    done = [replicates.get(rep["replicate"]) for rep in entry["replicates"] if rep["status"] == "completed"]
    rows = [leaderboard_row(as_dict(run["metrics"]), as_dict(run["manifest"]), labels=labels)
            for run in done if run and run.get("metrics")]
    return seed_summary_row(rows, labels=labels, backbone=entry["backbone"], status=entry["status"], tier=None,
                            error=entry["error"])


def leaderboard_rows(raw_rows: Sequence[Mapping], entries: Sequence[Mapping],
                     members: Mapping | None, labels: Sequence[str], *,
                     replicates: Mapping | None = None, seeds: bool = False) -> list[dict]:
    """The leaderboard, one row per backbone, in :func:`suite.metrics.leaderboard_sort_key` order.

    Args:
        raw_rows: rows of the leaderboard file (JSON or CSV).
        entries: :func:`run_entries` of the comparison record; a backbone listed there
            but missing from the file gets a row rebuilt from its run folder, so a
            failed backbone never silently disappears.
        members: ``{backbone: load_run dict or None}`` (may be ``None``).
        labels: class labels, for the per-class columns.
        replicates: ``{backbone: {replicate: load_run dict or None}}`` (the
            ``replicates`` of :func:`load_comparison`); with seeds, a missing row is the
            mean over these. Defaults to None.
        seeds: the comparison was trained under several seeds: rows also hold
            :data:`suite.metrics.SEED_COLUMNS`. Defaults to False.

    Returns:
        Rows with every column of :func:`suite.metrics.leaderboard_columns`: figures
        as floats (``None`` when unknown), ``tier`` as int or ``None``, ``backbone``,
        ``status`` and ``error`` as text.
    """
    rows = [_typed_row(raw, labels, seeds) for raw in raw_rows if raw.get("backbone") is not None]
    known = {row["backbone"] for row in rows}
    for entry in entries:
        if entry["backbone"] in known:
            continue
        if seeds and entry["replicates"]:
            rebuilt = _row_from_replicates(entry, (replicates or {}).get(entry["backbone"]) or {}, labels)
        else:
            rebuilt = _row_from_run(entry, (members or {}).get(entry["backbone"]), labels)
        rows.append(_typed_row(rebuilt, labels, seeds))
    recorded = {entry["backbone"]: entry for entry in entries}
    for row in rows:  # the comparison record has the last word on status and error
        entry = recorded.get(row["backbone"])
        if entry and entry["status"] != "unknown":
            row["status"] = entry["status"]
            row["error"] = row["error"] or entry["error"]
    return sorted(rows, key=leaderboard_sort_key)


def fmt_seeds(row: Mapping, name: str) -> str:
    """``"0.967 ± 0.014 (3 seeds) [0.871, 0.996]"`` from a seed-summary row, or a dash without a mean.

    The mean of ``name`` over the seeds, its SD across them, how many seeds, and the mean of
    the seeds' own intervals.
    """
    mean, sd, n = row.get(name), row.get(f"{name}_sd"), _int(row.get("n_seeds"))
    if to_float(mean) is None:
        return DASH
    text = fmt3(mean) + ("" if to_float(sd) is None else f" \u00b1 {fmt3(sd)}")
    if n is not None:
        text += f" ({n} seed{'' if n == 1 else 's'})"
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    return text if to_float(low) is None or to_float(high) is None else f"{text} [{fmt3(low)}, {fmt3(high)}]"


def _display_row(row: Mapping, colour: str, labels: Sequence[str], link: str | None, seeds: bool = False) -> dict:
    """Template values for one leaderboard row (``seeds``: accuracy and macro-F1 as mean ± SD over the seeds)."""
    if seeds:
        accuracy, macro_f1 = fmt_seeds(row, "accuracy"), fmt_seeds(row, "macro_f1")
    else:
        accuracy = fmt_ci(row["accuracy"], row["accuracy_ci_low"], row["accuracy_ci_high"])
        macro_f1 = fmt_ci(row["macro_f1"], row["macro_f1_ci_low"], row["macro_f1_ci_high"])
    return {
        "backbone": row["backbone"], "status": row["status"], "colour": colour, "error": row["error"],
        "tier": DASH if row["tier"] is None else str(row["tier"]),
        "accuracy": accuracy, "macro_f1": macro_f1,
        "roc_auc": fmt3(row["roc_auc_macro"]), "ece": fmt3(row["ece"]),
        "params": fmt_params(row["params"]), "train": fmt_seconds(row["train_s"]),
        "image_size": DASH if row["image_size"] is None else f"{int(row['image_size'])} px",
        "latency": fmt_unit(row["infer_ms_per_image"], "ms"),
        "throughput": fmt_unit(row["infer_images_per_s"], "img/s"),
        "per_class": [{"recall": fmt3(row[f"recall_{label}"]), "f1": fmt3(row[f"f1_{label}"])} for label in labels],
        # With seeds the row is a mean: it points at the per-seed table, which links every replicate's report.
        "report_href": SEEDS_ANCHOR if seeds else link,
        "report_label": "per seed" if seeds else "run report",
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


def pairwise_test_name(method) -> str:
    """The test a pairwise record's ``method`` stands for, as the details table names it.

    ``"McNemar (exact binomial)"``, ``"McNemar (chi-square)"``, the seed bootstrap's own
    description (``suite.stats.SEED_METHOD``) or any other method as recorded; a dash for none.
    """
    method = "" if method is None else str(method)
    if method in MCNEMAR_METHODS:
        return f"McNemar ({MCNEMAR_METHODS[method]})"
    return method or DASH


def pairwise_test_phrase(methods: Sequence) -> str:
    """The test(s) behind some pairwise records, as a phrase for a sentence (``"McNemar's test"``)."""
    names = []
    for method in methods:
        method = "" if method is None else str(method)
        name = ("McNemar's test" if method in MCNEMAR_METHODS else f"the {SEED_METHOD}" if method == SEED_METHOD
                else f"the {method} test" if method else "the paired test")
        if name not in names:
            names.append(name)
    return " or ".join(names) or "the paired test"


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
    title = str(test.get("sentence") or pairwise_test_name(test.get("method"))) if test else ""
    return {"text": fmt_p(p), "cls": cls, "title": title}


def pairwise_matrix(comparison: Mapping, order: Sequence[str], alpha: float) -> dict:
    """The Holm-corrected p-value matrix, in leaderboard order.

    Args:
        comparison: the comparison record.
        order: backbone names in leaderboard order; names found only in the tests
            are appended.
        alpha: significance level, used only where a test lacks a ``significant`` flag.

    Returns:
        ``{"names": [...], "test", "rows": [{"name", "cells": [{"text", "cls", "title"}]}]}``
        where ``test`` names the test the p-values come from (:func:`pairwise_test_phrase`)
        and ``cls`` is ``"win"`` when the row backbone won a significant test against
        the column, ``"loss"`` when it lost, ``"sig"`` when significant with no recorded
        winner, ``"diag"`` on the diagonal and empty otherwise.
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
    test = pairwise_test_phrase([item.get("method") for item in _pairwise_entries(comparison)])
    return {"names": names, "test": test, "rows": rows}


def _fmt_diff(item: Mapping) -> str:
    """``"+0.092 [+0.050, +0.133]"``: accuracy A - B with the bootstrap interval of the difference."""
    a, b = to_float(item.get("accuracy_a")), to_float(item.get("accuracy_b"))
    low, high = pair(item.get("diff_ci"))
    diff = DASH if a is None or b is None else f"{a - b:+.3f}"
    return diff if low is None or high is None else f"{diff} [{low:+.3f}, {high:+.3f}]"


def pairwise_details(comparison: Mapping) -> list[dict]:
    """One formatted row per pairwise test (for the details table and the sentences).

    ``test`` names the test from the record's ``method``; McNemar's evidence is
    ``only_a`` / ``only_b`` (the discordant images), the seed bootstrap's ``diff``
    (accuracy A - B with its interval) and ``seeds`` (``"3 / 3"``); a dash where the
    record has none.
    """
    return [{
        "a": str(item["a"]), "b": str(item["b"]),
        "accuracy_a": fmt3(item.get("accuracy_a")), "accuracy_b": fmt3(item.get("accuracy_b")),
        "only_a": fmt_value(item.get("only_a")), "only_b": fmt_value(item.get("only_b")),
        "diff": _fmt_diff(item) if "diff_ci" in item else DASH,
        "seeds": f"{fmt_value(item.get('seeds_a'))} / {fmt_value(item.get('seeds_b'))}" if "seeds_a" in item else DASH,
        "method": fmt_value(item.get("method")), "test": pairwise_test_name(item.get("method")),
        "p_value": fmt_p(item.get("p_value")),
        "p_holm": fmt_p(item.get("p_holm")), "significant": bool(item.get("significant")),
        "winner": str(item["winner"]) if item.get("winner") is not None else "",
        "sentence": str(item.get("sentence") or ""),
    } for item in _pairwise_entries(comparison)]


def pairwise_columns(comparison: Mapping) -> dict:
    """Which evidence the details table shows: ``{"discordant", "diff"}`` (McNemar's counts, the bootstrap's CI)."""
    tests = _pairwise_entries(comparison)
    diff = any("diff_ci" in item for item in tests)
    return {"diff": diff, "discordant": any("only_a" in item or "only_b" in item for item in tests) or not diff}


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
# Seed spread: every replicate of every backbone
# ----------------------------------------------------------------------------------


def _training_seed(replicate: Mapping, run: Mapping | None) -> int | None:
    """The seed a replicate trained with, from its manifest: ``seed + replicate`` (``RunConfig.training_seed``)."""
    seed = _int(as_dict(as_dict((run or {}).get("manifest")).get("config")).get("seed"))
    return None if seed is None else seed + replicate["replicate"]


def _seed_row_from_run(replicate: Mapping, run: Mapping | None, labels: Sequence[str]) -> dict:
    """What the per-seed leaderboard says of a replicate, rebuilt from its run folder."""
    manifest, metrics = as_dict((run or {}).get("manifest")), as_dict((run or {}).get("metrics"))
    return {**leaderboard_row(metrics, manifest, labels=labels), "training_seed": _training_seed(replicate, run)}


def _seed_row(backbone: str, replicate: Mapping, raw: Mapping) -> dict:
    """One row of :func:`seed_rows`; the comparison record has the last word on status and error."""
    status = replicate["status"] if replicate["status"] != "unknown" else str(raw.get("status") or "unknown")
    return {"backbone": backbone, "replicate": replicate["replicate"], "training_seed": _int(raw.get("training_seed")),
            "accuracy": to_float(raw.get("accuracy")), "macro_f1": to_float(raw.get("macro_f1")),
            "status": status, "error": replicate["error"] or str(raw.get("error") or ""),
            "run_dir": replicate["run_dir"]}


def seed_rows(raw_rows: Sequence[Mapping], entries: Sequence[Mapping], replicates: Mapping,
              labels: Sequence[str]) -> list[dict]:
    """One row per (backbone, replicate), every replicate the comparison record lists.

    Args:
        raw_rows: rows of the per-seed leaderboard file (JSON or CSV); a replicate the
            record lists but the file lacks is rebuilt from its run folder (so is a
            training seed the file leaves blank), and a row of the file the record does
            not list is kept (status from the file).
        entries: :func:`run_entries` of the comparison record.
        replicates: ``{backbone: {replicate: load_run dict or None}}``.
        labels: class labels.

    Returns:
        Dicts with ``backbone``, ``replicate`` (int), ``training_seed`` (int or ``None``),
        ``accuracy`` and ``macro_f1`` (float or ``None``), ``status``, ``error`` and
        ``run_dir`` (relative to the comparison folder, or ``None``).
    """
    recorded = {(str(raw["backbone"]), _int(raw.get("replicate"))): raw for raw in raw_rows
                if raw.get("backbone") is not None and _int(raw.get("replicate")) is not None}
    rows = []
    for entry in entries:
        runs_of = as_dict(replicates.get(entry["backbone"]))
        for rep in entry["replicates"]:
            run = runs_of.get(rep["replicate"])
            raw = recorded.pop((entry["backbone"], rep["replicate"]), None) or _seed_row_from_run(rep, run, labels)
            if _int(raw.get("training_seed")) is None:  # the file leaves it out for a failed replicate
                raw = {**raw, "training_seed": _training_seed(rep, run)}
            rows.append(_seed_row(entry["backbone"], rep, raw))
    unlisted = {"run_dir": None, "status": "unknown", "error": ""}
    rows += [_seed_row(backbone, {**unlisted, "replicate": k}, raw) for (backbone, k), raw in recorded.items()]
    return rows


def _mean_sd(row: Mapping, name: str) -> str:
    """``"0.967 ± 0.014"`` from a seed-summary row (just the mean when there is no SD)."""
    if to_float(row.get(name)) is None:
        return DASH
    sd = row.get(f"{name}_sd")
    return fmt3(row[name]) + ("" if to_float(sd) is None else f" \u00b1 {fmt3(sd)}")


def seed_groups(rows: Sequence[Mapping], board: Sequence[Mapping], colours: Mapping, comp_dir) -> list[dict]:
    """The seed spread table: per backbone (leaderboard order), its mean ± SD and every replicate.

    Args:
        rows: :func:`seed_rows`.
        board: :func:`leaderboard_rows` (for the order and each backbone's mean ± SD).
        colours: ``{backbone: colour}``.
        comp_dir: the comparison folder (a replicate's report link is relative to it).

    Returns:
        ``[{"backbone", "colour", "accuracy", "macro_f1", "rows": [{"replicate",
        "training_seed", "accuracy", "macro_f1", "status", "error", "href"}]}]``, text
        throughout (``href`` ``None`` where the replicate has no report).
    """
    by_backbone: dict[str, list] = {}
    for row in rows:
        by_backbone.setdefault(row["backbone"], []).append(row)
    summary = {row["backbone"]: row for row in board}
    order = [name for name in summary if name in by_backbone] + [name for name in by_backbone if name not in summary]
    return [{
        "backbone": name, "colour": colours.get(name, NO_COLOUR),
        "accuracy": _mean_sd(summary.get(name, {}), "accuracy"),
        "macro_f1": _mean_sd(summary.get(name, {}), "macro_f1"),
        "rows": [{"replicate": str(r["replicate"]), "training_seed": fmt_value(r["training_seed"]),
                  "accuracy": fmt3(r["accuracy"]), "macro_f1": fmt3(r["macro_f1"]), "status": r["status"],
                  "error": r["error"], "href": _report_link(pathlib.Path(comp_dir), r)}
                 for r in sorted(by_backbone[name], key=lambda r: r["replicate"])],
    } for name in order]


def _seed_series(rows: Sequence[Mapping], groups: Sequence[Mapping]) -> list[dict]:
    """What :func:`reports.plots.seed_strip_png` draws: per backbone, its completed seeds' figures."""
    series = []
    for group in groups:
        done = [r for r in rows if r["backbone"] == group["backbone"] and r["status"] == "completed"]
        series.append({"name": group["backbone"], "colour": group["colour"],
                       "accuracy": [r["accuracy"] for r in done], "macro_f1": [r["macro_f1"] for r in done]})
    return series


def _seed_context(comparison: Mapping, n_seeds: int, rows: Sequence[Mapping], board: Sequence[Mapping],
                  colours: Mapping, comp_dir, problems: list[str]) -> dict:
    """The note under the leaderboard and the "Seed spread" section (empty values without seeds).

    ``rows`` are :func:`seed_rows`, ``board`` :func:`leaderboard_rows`.
    """
    if n_seeds < 2:
        return {"seeded": False, "n_seeds": n_seeds, "seed_note": "", "seed_figures_note": "", "seed_groups": [],
                "seed_uri": None}
    groups = seed_groups(rows, board, colours, comp_dir)
    tests = _pairwise_entries(comparison)
    note = SEED_NOTE.format(n=n_seeds)
    if tests:
        note += " " + SEED_TIERS.format(test=pairwise_test_phrase([t.get("method") for t in tests]))
    return {
        "seeded": True, "n_seeds": n_seeds, "seed_note": note, "seed_figures_note": SEED_FIGURES,
        "seed_groups": groups,
        "seed_uri": figure_uri(plots.seed_strip_png, problems, "seed spread", _seed_series(rows, groups)),
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


def _run_links(entries: Sequence[Mapping], links: Mapping, colours: Mapping, comp_dir: pathlib.Path,
               seeds: Sequence[Mapping] = ()) -> list[dict]:
    """One row per backbone for the "Run reports" list; with seeds, each lists every replicate's report.

    ``seeds`` are the :func:`seed_rows` (for each replicate's training seed).
    """
    training_seed = {(r["backbone"], r["replicate"]): r["training_seed"] for r in seeds}
    return [{"backbone": e["backbone"], "status": e["status"], "href": links.get(e["backbone"]),
             "run_dir": e["run_dir"] or "", "colour": colours.get(e["backbone"], NO_COLOUR),
             "replicates": [{"replicate": str(rep["replicate"]), "status": rep["status"],
                             "training_seed": fmt_value(training_seed.get((e["backbone"], rep["replicate"]))),
                             "href": _report_link(comp_dir, rep), "run_dir": rep["run_dir"] or ""}
                            for rep in e["replicates"]]}
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


def calibration_table(rows: Sequence[Mapping], members: Mapping) -> dict:
    """Each completed backbone's calibration side by side: the temperature, test ECE before and after
    scaling, and the conformal sets' test coverage and mean size at every fitted level.

    Returns:
        ``{"targets": ["90%", ...], "rows": [...]}``; a backbone whose calibration was skipped carries
        its reason, one without ``calibration.json`` says so; no rows when no member has a record.
    """
    records = {row["backbone"]: as_dict((members.get(row["backbone"]) or {}).get("calibration"))
               for row in rows if row["status"] == "completed"}
    targets = sorted({t for r in records.values() for t in _level_targets(r)})
    out = []
    for name, record in records.items():
        item = {"backbone": name, "fitted": record.get("status") == "fitted"}
        if not record:
            item["reason"] = f"no {runs.CALIBRATION} in its run folder"
        elif not item["fitted"]:
            item["reason"] = "skipped: " + str(record.get("reason") or "no reason recorded")
        else:
            levels = _level_targets(record)
            item.update({
                "temperature": fmt3(record.get("temperature")),
                "ece_before": fmt3(record.get("ece_test_before")), "ece_after": fmt3(record.get("ece_test_after")),
                "levels": [{"coverage": fmt3(levels[t].get("coverage")) if t in levels else DASH,
                            "size": fmt2(levels[t].get("mean_set_size")) if t in levels else DASH}
                           for t in targets],
            })
        out.append(item)
    return {"targets": [fmt_pct(t) for t in targets], "rows": out if any(records.values()) else []}


def _level_targets(record: Mapping) -> dict[float, Mapping]:
    levels = (as_dict(level) for level in as_list(as_dict(record.get("conformal")).get("levels")))
    return {t: level for level in levels if (t := to_float(level.get("target"))) is not None}



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


def external_matrix(comparison: Mapping, raw_rows: Sequence[Mapping], comp_dir: pathlib.Path) -> dict:
    """The backbone x external-dataset table (``compare --external``): per cell the accuracy, the
    leak-free accuracy, the share of evaluated images that copy a training image and the drop from
    the internal test, linked to the first replicate's evaluation report; empty without external sets.
    """
    sets = [as_dict(e) for e in as_list(comparison.get("externals")) if as_dict(e).get("slug")]
    if not sets:
        return {"datasets": [], "rows": []}
    links = {str(as_dict(e).get("backbone")): as_dict(as_dict(e).get("externals"))
             for e in as_list(comparison.get("runs"))}
    rows = []
    for raw in sorted((as_dict(r) for r in raw_rows), key=lambda r: str(r.get("backbone"))):
        name = str(raw.get("backbone"))
        rows.append({"backbone": name, "cells": [_external_cell(raw, e["slug"], links.get(name, {}), comp_dir)
                                                 for e in sets]})
    return {"datasets": [str(e.get("name") or e["slug"]) for e in sets], "rows": rows}


def _external_cell(raw: Mapping, slug: str, links: Mapping, comp_dir: pathlib.Path) -> dict:
    figure = {name: to_float(raw.get(f"ext_{slug}_{name}")) for name in
              ("accuracy", "balanced_accuracy", "leak_free_accuracy", "leak_free_balanced_accuracy",
               "contamination", "drop")}
    evaluation = as_dict(links.get(slug)).get("evaluation")
    report = (comp_dir / str(evaluation) / runs.REPORT) if evaluation else None
    return {
        "accuracy": fmt3(figure["accuracy"]), "balanced_accuracy": fmt3(figure["balanced_accuracy"]),
        "leak_free_accuracy": fmt3(figure["leak_free_accuracy"]),
        "leak_free_balanced_accuracy": fmt3(figure["leak_free_balanced_accuracy"]),
        "contamination": fmt_pct(figure["contamination"]), "contaminated": bool(figure["contamination"]),
        "drop": DASH if figure["drop"] is None else f"{figure['drop']:+.3f}",
        "href": href(pathlib.Path(str(evaluation)) / runs.REPORT) if report and report.is_file() else None,
        "error": as_dict(links.get(slug)).get("error"),
    }


def robustness_rows(comparison: Mapping, raw_rows: Sequence[Mapping], comp_dir: pathlib.Path) -> list[dict]:
    """Per backbone (``compare --robustness``): test accuracy, mean corruption accuracy and relative
    robustness, linked to its (first replicate's) robustness report; empty without ``--robustness``."""
    if not comparison.get("robustness"):
        return []
    links = {str(as_dict(e).get("backbone")): as_dict(as_dict(e).get("robustness"))
             for e in as_list(comparison.get("runs"))}
    rows = []
    for raw in (as_dict(r) for r in raw_rows):
        link = links.get(str(raw.get("backbone")), {})
        folder = link.get("folder")
        report = comp_dir / str(folder) / runs.REPORT if folder else None
        relative = to_float(raw.get("relative_robustness"))
        rows.append({"backbone": str(raw.get("backbone")), "accuracy": fmt3(raw.get("accuracy")),
                     "mean_corruption_accuracy": fmt3(raw.get("mean_corruption_accuracy")),
                     "relative_robustness": DASH if relative is None else f"{relative:.3f}",
                     "leak_free_mean_corruption_accuracy": fmt3(raw.get("leak_free_mean_corruption_accuracy")),
                     "href": href(pathlib.Path(str(folder)) / runs.REPORT) if report and report.is_file() else None,
                     "error": link.get("error")})
    return rows


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
    n_seeds = seed_count(comparison)
    replicates = as_dict(comp.get("replicates"))

    rows = leaderboard_rows(comp.get("leaderboard") or [], entries, members, labels, replicates=replicates,
                            seeds=n_seeds > 1)
    seeds = seed_rows(comp.get("seed_leaderboard") or [], entries, replicates, labels) if n_seeds > 1 else []
    colours = {row["backbone"]: plots.series_colour(i) for i, row in enumerate(rows)}
    links = {e["backbone"]: _report_link(comp_dir, e) for e in entries}
    display = [_display_row(row, colours[row["backbone"]], labels, links.get(row["backbone"]), n_seeds > 1)
               for row in rows]

    context = _setup_context(comparison, comp_dir, labels, alpha)
    context.update({
        "n_backbones": len(rows),
        "n_completed": sum(row["status"] == "completed" for row in rows),
        "tier_groups": tier_groups(display),
        "matrix": pairwise_matrix(comparison, [row["backbone"] for row in rows], alpha),
        "pairwise": pairwise_details(comparison),
        "pairwise_columns": pairwise_columns(comparison),
        "gradcam": gradcam_grid(comp.get("gradcam"), labels, comp_dir),
        "run_links": _run_links(entries, links, colours, comp_dir, seeds),
        "externals": external_matrix(comparison, comp.get("leaderboard") or [], comp_dir),
        "robustness": robustness_rows(comparison, comp.get("leaderboard") or [], comp_dir),
    })
    context.update(_seed_context(comparison, n_seeds, seeds, rows, colours, comp_dir, problems))
    context.update(_figures(_members(rows, members, colours), rows, labels, problems))
    context["calibration"] = calibration_table(rows, members)
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

    Every replicate of a seeded comparison gets one too. A run report that cannot be
    written is noted in the comparison, never raised: it must not cost the comparison
    its own report.
    """
    loaded = list((comp.get("runs") or {}).items())
    loaded += [(f"{backbone} (replicate {k})", run) for backbone, by_replicate in (comp.get("replicates") or {}).items()
               for k, run in by_replicate.items()]
    done = set()
    for who, run in loaded:
        if not run or run["run_dir"] in done or (pathlib.Path(run["run_dir"]) / runs.REPORT).is_file():
            continue
        done.add(run["run_dir"])
        try:
            write_run_report(run["run_dir"])
        except Exception as exc:  # noqa: BLE001 - recorded in the report's banners
            comp["problems"].append(f"{who}: run report could not be written: {type(exc).__name__}: {exc}")


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
