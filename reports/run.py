"""The run report (an evaluation's too): run folder -> load_run -> run_context -> render_run -> write_run_report.

``load_run`` reads the folder's files, ``run_context`` turns them into a flat dict of plain
values and embedded images, ``render_run`` fills ``run.html.j2`` and ``write_run_report``
writes the page into the folder. Only reads the folder: never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from reports import plots
from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    banner,
    class_count_table,
    figure_uri,
    fmt2,
    fmt3,
    fmt_int,
    fmt_metric,
    fmt_pct,
    fmt_seconds,
    fmt_share,
    fmt_value,
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

MAX_MISCLASSIFIED = 24
MAX_PAIRS = 12  # example pairs of an evaluated image and its training twin
THUMBNAIL_SIZE = 96
PAIR_THUMBNAIL_SIZE = 128
HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")
TIMING_NAMES = {"data_s": "data", "train_s": "training", "eval_s": "evaluation"}


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def _history_rows(rows: list[dict[str, str]]) -> list[dict[str, float | None]]:
    """Numeric history rows (known columns only)."""
    return [{key: to_float(row.get(key)) for key in HISTORY_COLUMNS if key in row} for row in rows]


def _prediction_rows(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Prediction rows with the ``p_<label>`` columns gathered into a ``probs`` dict."""
    return [{
        "path": row.get("path") or "",
        "true": row.get("true") or "",
        "predicted": row.get("predicted") or "",
        "probs": {key[2:]: to_float(value) for key, value in row.items() if key and key.startswith("p_")},
    } for row in rows]


def load_run(run_dir) -> dict:
    """Read a run or evaluation folder.

    Args:
        run_dir: a folder holding a manifest and, optionally, metrics, history and predictions.

    Returns:
        ``{"run_dir", "manifest", "metrics", "calibration", "history", "predictions", "contamination",
        "problems"}`` where ``metrics`` and ``calibration`` (temperature scaling and conformal sets,
        :mod:`suite.calibration`) are ``None`` when absent, ``history``, ``predictions`` and
        ``contamination`` (an evaluation's images with a training twin) are lists of rows
        (empty when absent) and ``problems`` lists files that could not be read.

    Raises:
        FileNotFoundError: if ``run_dir`` has no readable manifest.
    """
    run_dir = pathlib.Path(run_dir)
    problems: list[str] = []
    manifest = read_json(run_dir / runs.MANIFEST, problems)
    if manifest is None:
        detail = "; ".join(problems) or f"{runs.MANIFEST} is missing"
        raise FileNotFoundError(f"{run_dir} is not a run folder: {detail}")
    return {
        "run_dir": str(run_dir),
        "manifest": manifest,
        "metrics": read_json(run_dir / runs.METRICS, problems),
        "calibration": read_json(run_dir / runs.CALIBRATION, problems),
        "history": _history_rows(read_csv(run_dir / runs.HISTORY, problems)),
        "predictions": _prediction_rows(read_csv(run_dir / runs.PREDICTIONS, problems)),
        "contamination": read_csv(run_dir / runs.CONTAMINATION, problems),
        "problems": problems,
    }


# ----------------------------------------------------------------------------------
# Context pieces
# ----------------------------------------------------------------------------------


def _banners(manifest: Mapping, dataset: Mapping, weights: Mapping, problems: Sequence[str],
             metrics: Mapping | None = None) -> list[dict]:
    """Notices for the top of the report, most serious first: an evaluation's contamination leads."""
    notice = contamination_banner(as_dict((metrics or {}).get("contamination")))
    banners = [notice] if notice else []
    if manifest.get("status") == "failed" or manifest.get("error"):
        title = "Run failed" if manifest.get("status") == "failed" else "Error"
        banners.append(banner("error", title, manifest.get("error") or "no error message recorded"))
    elif runs.status_of(manifest) == "stopped":
        banners.append(banner("error", "Run stopped", runs.status_text(manifest)))
    if dataset.get("synthetic"):
        banners.append(synthetic_banner("This run used synthetic phantom data, not real MRI: its numbers say "
                                        "nothing about performance on real scans.", dataset.get("description")))
    if weights.get("warning"):
        banners.append(banner("warning", "Weights", weights["warning"]))
    banners += [banner("warning", "Warning", text) for text in as_list(manifest.get("warnings"))]
    return banners + input_banners(problems)


def _labels(manifest: Mapping, metrics: Mapping | None) -> list[str]:
    """Class labels, from the metrics first (their matrix order), else the dataset."""
    labels = as_list((metrics or {}).get("labels")) or as_list(as_dict(manifest.get("dataset")).get("labels"))
    return [str(label) for label in labels]


def _timing_rows(timings: Mapping) -> list[dict]:
    """Rows of the timing table, plus a total when more than one phase is known."""
    rows, total = [], 0.0
    for key, value in timings.items():
        number = to_float(value)
        rows.append({"key": TIMING_NAMES.get(key, key), "value": fmt_seconds(number)})
        total += number or 0.0
    if len(rows) > 1:
        rows.append({"key": "total", "value": fmt_seconds(total)})
    return rows


def per_class_rows(per_class: Mapping, labels: Sequence[str]) -> list[dict]:
    """Formatted precision/recall/F1/support rows in label order (labels only in ``per_class`` last)."""
    order = list(labels) + [k for k in per_class if k not in labels]
    rows = []
    for label in order:
        stats = as_dict(per_class.get(label))
        if stats:
            rows.append({"label": label, "precision": fmt3(stats.get("precision")),
                         "recall": fmt3(stats.get("recall")), "f1": fmt3(stats.get("f1")),
                         "support": fmt_int(stats.get("support"))})
    return rows


def _wrong_confidence(row: Mapping) -> float:
    """Probability the model gave its (wrong) prediction; -1 when unknown."""
    value = row["probs"].get(row["predicted"])
    return -1.0 if value is None else value


def misclassified(predictions: Sequence[Mapping], limit: int = MAX_MISCLASSIFIED) -> list[Mapping]:
    """Wrong predictions, most confident first, at most ``limit``.

    Args:
        predictions: rows from :func:`load_run` (``path, true, predicted, probs``).
        limit: how many to keep. Defaults to 24.

    Returns:
        The selected rows (unchanged objects), by descending confidence.
    """
    wrong = [row for row in predictions if row["true"] != row["predicted"]]
    return sorted(wrong, key=_wrong_confidence, reverse=True)[:limit]


def _thumbnail_item(row: Mapping, labels: Sequence[str]) -> dict:
    """Template values for one misclassified image (its thumbnail read from disk)."""
    order = list(labels) + [k for k in row["probs"] if k not in labels]
    return {
        "name": pathlib.PurePath(row["path"]).name or row["path"],
        "path": row["path"],
        "true": row["true"],
        "predicted": row["predicted"],
        "confidence": fmt3(row["probs"].get(row["predicted"])),
        "thumb": thumbnail_uri(row["path"], THUMBNAIL_SIZE) if row["path"] else None,
        "probs": [{"label": label, "value": fmt3(row["probs"].get(label)),
                   "is_true": label == row["true"], "is_pred": label == row["predicted"]}
                  for label in order if label in row["probs"]],
    }


def _skipped_rows(skipped: Sequence) -> list[dict]:
    """``[{"path", "reason"}]`` for the files the data loader skipped."""
    items = [item if isinstance(item, dict) else {"path": item} for item in skipped]
    return [{"path": str(item.get("path") or ""), "reason": str(item.get("reason") or "")} for item in items]


LEAKAGE_FIGURES = (("accuracy", "accuracy [95% CI]"), ("balanced_accuracy", "balanced accuracy [95% CI]"),
                   ("macro_f1", "macro F1 [95% CI]"))


def leakage_rows(metrics: Mapping, labels: Sequence[str] = ()) -> dict | None:
    """Full versus leak-free figures, side by side, when the run (or evaluation) looked for training twins.

    The leak-free images' class mix can differ wildly from the full set's, so beside accuracy
    stand balanced accuracy and, per class, the support (with its share of the set) and recall
    of both; a class with no image left has no recall (a dash, not 0).

    Returns:
        ``None`` without ``leak_free``; else ``{"rows", "per_class", "n_excluded", "definition"}``.
    """
    leak = metrics.get("leak_free")
    if not isinstance(leak, Mapping):
        return None
    rows = [{"name": "images", "full": fmt_int(metrics.get("n_test")), "leak_free": fmt_int(leak.get("n_test"))}]
    if leak.get("n_test"):
        rows += [{"name": name, "full": fmt_metric(metrics, key), "leak_free": fmt_metric(leak, key)}
                 for key, name in LEAKAGE_FIGURES]
    full_classes, leak_classes = as_dict(metrics.get("per_class")), as_dict(leak.get("per_class"))
    order = list(labels) + [k for k in full_classes if k not in labels]
    per_class = [{"label": label, **_class_mix(full_classes.get(label), metrics.get("n_test"), "full"),
                  **_class_mix(leak_classes.get(label), leak.get("n_test"), "leak_free")}
                 for label in order if label in full_classes]
    return {"rows": rows, "per_class": per_class, "n_excluded": fmt_int(leak.get("n_excluded")),
            "definition": str(leak.get("definition", ""))}


def _class_mix(stats: Any, n: Any, side: str) -> dict:
    """``<side>_support`` ("12 (30.0%)") and ``<side>_recall`` of one class; no recall where it has no image."""
    stats = as_dict(stats)
    support = to_float(stats.get("support"))
    if support is None and to_float(n) == 0:  # no image left at all: no per-class figures recorded
        support = 0.0
    if not support:
        return {f"{side}_support": fmt_int(support), f"{side}_recall": DASH}
    return {f"{side}_support": f"{fmt_int(support)} ({fmt_share(support, n)})",
            f"{side}_recall": fmt3(stats.get("recall"))}


# ----------------------------------------------------------------------------------
# An evaluation's contamination: evaluated images that are the run's own training images
# ----------------------------------------------------------------------------------


def _not_checked(check: str) -> bool:
    return check.startswith("not possible")


def contamination_banner(contamination: Mapping) -> dict | None:
    """The notice an evaluation report leads with: copies of training images found, or no check possible."""
    if not contamination:
        return None
    check = str(contamination.get("check") or "")
    if _not_checked(check):
        return banner("warning", "Not checked for the run's training images",
                      f"The evaluated images could not be compared with the run's training images ({check}): "
                      "the figures may include copies of them.")
    count, n = to_float(contamination.get("count")), contamination.get("n_evaluated")
    how = _how_text(contamination)
    if count:
        return banner("error", "Evaluated images include the run's own training images",
                      f"{fmt_int(count)} of {fmt_int(n)} evaluated images ({fmt_share(count, n)}) are exact or near "
                      f"copies of images the model was trained or validated on ({fmt_int(contamination.get('exact'))} "
                      f"exact, {fmt_int(contamination.get('near'))} near): the full figures overstate how the model "
                      "does on unseen images. The leak-free figures leave them out.", how)
    if check != "pixels":
        return banner("note", "Checked for training images on hashes only",
                      f"No evaluated image matched the run's training images, {how}")
    return None


def _how_text(contamination: Mapping) -> str:
    check = str(contamination.get("check") or "")
    if check == "pixels":
        return "Checked on pixels against the training images themselves."
    return f"Checked {'in part ' if check == 'mixed' else ''}on perceptual hashes only: {contamination.get('detail')}."


def contamination_context(contamination: Mapping, rows: Sequence[Mapping]) -> dict | None:
    """The contamination section of an evaluation report: counts, by class, and example pairs with thumbnails."""
    if not contamination:
        return None
    check = str(contamination.get("check") or "")
    training = as_dict(contamination.get("training"))
    settings = as_dict(contamination.get("settings"))
    return {
        "checked": not _not_checked(check),
        "check": check,
        "detail": str(contamination.get("detail") or ""),
        "count": fmt_int(contamination.get("count")),
        "n_evaluated": fmt_int(contamination.get("n_evaluated")),
        "fraction": fmt_pct(contamination.get("fraction")),
        "exact": fmt_int(contamination.get("exact")),
        "near": fmt_int(contamination.get("near")),
        "label_conflicts": fmt_int(contamination.get("label_conflicts")),
        "twin_splits": ", ".join(f"{k} {fmt_int(v)}" for k, v in as_dict(contamination.get("twin_splits")).items())
        or DASH,
        "by_class": [{"label": label, "n": fmt_int(c.get("n_evaluated")), "count": fmt_int(c.get("count")),
                      "fraction": fmt_pct(c.get("fraction")), "exact": fmt_int(c.get("exact")),
                      "near": fmt_int(c.get("near"))}
                     for label, c in ((k, as_dict(v)) for k, v in as_dict(contamination.get("by_class")).items())],
        "training_root": fmt_value(training.get("root")),
        "training_root_found": bool(training.get("root_found")),
        "training_images": f"{fmt_int(training.get('n_train'))} training, {fmt_int(training.get('n_val'))} validation"
        if training else DASH,
        "settings": key_value_rows(settings),
        "n_pairs": len(rows),
        "pairs": [_pair_item(row) for row in example_pairs(rows)],
    }


def example_pairs(rows: Sequence[Mapping], limit: int = MAX_PAIRS) -> list[Mapping]:
    """Pairs worth a look, at most ``limit``: near twins first, the least alike first (they are where a
    reader would doubt the detector), then exact ones."""
    near = [r for r in rows if r.get("kind") != "exact"]
    near.sort(key=lambda r: (to_float(r.get("pixel_distance")) or -1.0, to_float(r.get("hamming")) or 0.0),
              reverse=True)
    return (near + [r for r in rows if r.get("kind") == "exact"])[:limit]


def _pair_item(row: Mapping) -> dict:
    """Template values for an evaluated image beside its training twin (a twin whose file is gone says so)."""
    path, twin = str(row.get("path") or ""), str(row.get("twin_path") or "")
    twin_there = bool(twin) and pathlib.Path(twin).is_file()
    return {
        "path": path, "name": pathlib.PurePath(path).name or path, "label": str(row.get("label") or ""),
        "thumb": thumbnail_uri(path, PAIR_THUMBNAIL_SIZE, jpeg=True) if path else None,
        "twin_path": twin, "twin_name": pathlib.PurePath(twin).name or twin,
        "twin_label": str(row.get("twin_label") or ""), "twin_split": str(row.get("twin_split") or ""),
        "twin_thumb": thumbnail_uri(twin, PAIR_THUMBNAIL_SIZE, jpeg=True) if twin_there else None,
        "twin_gone": not twin_there,
        "kind": str(row.get("kind") or ""), "method": str(row.get("method") or ""),
        "hamming": fmt_value(row.get("hamming")), "pixel_distance": str(row.get("pixel_distance") or DASH),
    }


def _metrics_context(metrics: Mapping | None, labels: Sequence[str], problems: list[str]) -> dict:
    """Headline numbers, per-class table and confusion matrix (empty when there are no metrics)."""
    if metrics is None:
        return {"has_metrics": False, "accuracy": DASH, "accuracy_pct": DASH, "balanced_accuracy": DASH,
                "macro_f1": DASH, "n_test": DASH, "per_class": [], "confusion_matrix_uri": None, "leakage": None}
    matrix = metrics.get("confusion_matrix")
    return {
        "has_metrics": True,
        "leakage": leakage_rows(metrics, labels),
        "accuracy": fmt3(metrics.get("accuracy")),
        "accuracy_pct": fmt_pct(metrics.get("accuracy")),
        "balanced_accuracy": fmt3(metrics.get("balanced_accuracy")),
        "macro_f1": fmt3(metrics.get("macro_f1")),
        "n_test": fmt_int(metrics.get("n_test")),
        "per_class": per_class_rows(as_dict(metrics.get("per_class")), labels),
        "confusion_matrix_uri": figure_uri(plots.confusion_matrix_png, problems, "confusion matrix",
                                           matrix, labels, True) if matrix else None,
    }


def _dataset_context(manifest: Mapping, dataset: Mapping, labels: Sequence[str]) -> dict:
    """What the run was trained and tested on."""
    return {
        "dataset_root": str(dataset.get("root") or DASH),
        "dataset_name": str(dataset.get("name") or DASH),
        "dataset_layout": str(dataset.get("layout") or DASH),
        "dataset_description": str(dataset.get("description") or ""),
        "synthetic": bool(dataset.get("synthetic")),
        "labels": list(labels),
        "class_counts": class_count_table(as_dict(manifest.get("class_counts")), labels,
                                          as_dict(dataset.get("class_folders"))),
    }


def _provenance_context(manifest: Mapping, weights: Mapping) -> dict:
    """Weights, settings, timings, environment and fingerprints."""
    return {
        "weights_requested": fmt_value(weights.get("requested")),
        "weights_source": fmt_value(weights.get("source")),
        "weights_warning": str(weights.get("warning") or ""),
        "config_rows": key_value_rows(as_dict(manifest.get("config"))),
        "timing_rows": _timing_rows(as_dict(manifest.get("timings"))),
        "backend": fmt_value(manifest.get("backend")),
        "device": fmt_value(manifest.get("device")),
        "seed": fmt_value(manifest.get("seed")),
        "params": fmt_int(manifest.get("params")),
        "data_fingerprint": fmt_value(manifest.get("data_fingerprint")),
        "split_fingerprint": fmt_value(manifest.get("split_fingerprint")),
        "cache_hit": fmt_value(manifest.get("cache_hit")),
        "package_rows": key_value_rows(dict(sorted(as_dict(manifest.get("package_versions")).items()))),
    }


def _predictions_context(predictions: Sequence[Mapping], labels: Sequence[str]) -> dict:
    """The misclassified test images, most confident first."""
    wrong = [row for row in predictions if row["true"] != row["predicted"]]
    return {"n_predictions": len(predictions), "n_misclassified": len(wrong),
            "misclassified": [_thumbnail_item(row, labels) for row in misclassified(wrong)]}


def run_context(run: dict) -> dict:
    """Build the flat template context for one run.

    Args:
        run: the dict :func:`load_run` returns.

    Returns:
        A dict of strings, numbers, booleans, lists and dicts (images as
        ``data:image/png;base64,...`` strings), ready for :func:`render_run`.
    """
    manifest = as_dict(run.get("manifest"))
    metrics = run.get("metrics") if isinstance(run.get("metrics"), dict) else None
    dataset, weights = as_dict(manifest.get("dataset")), as_dict(manifest.get("weights"))
    problems = list(run.get("problems") or [])
    labels = _labels(manifest, metrics)
    if metrics is None and manifest.get("status") == "completed":
        problems.append(f"{runs.METRICS} is missing although the run completed")
    context = {
        "run_id": fmt_value(manifest.get("run_id") or pathlib.PurePath(run.get("run_dir", "")).name),
        "run_dir": str(run.get("run_dir") or ""),
        "status": str(manifest.get("status") or "unknown"),
        "backbone": fmt_value(manifest.get("backbone") or as_dict(manifest.get("config")).get("backbone")),
        "created": fmt_value(manifest.get("created")),
        "error": str(manifest.get("error") or ""),
        "skipped": _skipped_rows(as_list(manifest.get("skipped"))),
    }
    context.update(_dataset_context(manifest, dataset, labels))
    context.update(_provenance_context(manifest, weights))
    context.update(_metrics_context(metrics, labels, problems))
    context.update(_predictions_context(run.get("predictions") or [], labels))
    context["contamination"] = contamination_context(as_dict((metrics or {}).get("contamination")),
                                                     run.get("contamination") or [])
    context["calibration"] = calibration_context(as_dict(run.get("calibration")), labels, problems)
    context["curves_uri"] = figure_uri(plots.training_curves_png, problems, "training curves", run.get("history") or [])
    context["banners"] = _banners(manifest, dataset, weights, problems, metrics)
    return context


# ----------------------------------------------------------------------------------
# Calibration: temperature scaling and conformal prediction sets
# ----------------------------------------------------------------------------------


def calibration_context(record: Mapping, labels: Sequence[str], problems: list[str]) -> dict | None:
    """The calibration section: ECE before and after temperature scaling, the reliability diagrams, and
    the conformal table (target, test coverage overall and per class, mean set size).

    Returns:
        ``None`` for a folder without ``calibration.json`` (an evaluation, or an older run);
        ``{"fitted": False, "reason"}`` when calibration was skipped; else the figures, formatted.
    """
    if not record:
        return None
    if record.get("status") != "fitted":
        return {"fitted": False, "reason": str(record.get("reason") or "no reason recorded")}
    conformal = as_dict(record.get("conformal"))
    levels = [as_dict(level) for level in as_list(conformal.get("levels"))]
    order = list(labels) + [k for level in levels for k in as_dict(level.get("per_class_coverage"))
                            if k not in labels]
    order = list(dict.fromkeys(order))
    series = [{"name": f"{when} temperature scaling", "reliability": record.get(f"reliability_test_{key}"),
               "ece": record.get(f"ece_test_{key}"), "colour": colour}
              for when, key, colour in (("before", "before", "#9ca3af"), ("after", "after", "#2563eb"))]
    return {
        "fitted": True,
        "temperature": fmt3(record.get("temperature")),
        "at_bound": bool(record.get("at_bound")),
        "n_val": fmt_int(record.get("n_val")),
        "n_test": fmt_int(record.get("n_test")),
        "nll_before": fmt3(record.get("nll_val_before")),
        "nll_after": fmt3(record.get("nll_val_after")),
        "ece_before": fmt3(record.get("ece_test_before")),
        "ece_after": fmt3(record.get("ece_test_after")),
        "reliability_uri": figure_uri(plots.reliability_png, problems, "reliability diagram", series),
        "method": str(conformal.get("method") or DASH),
        "scores_on": str(conformal.get("scores_on") or DASH),
        "labels": order,
        "levels": [{"target": fmt_pct(level.get("target")), "coverage": fmt3(level.get("coverage")),
                    "per_class": [fmt3(as_dict(level.get("per_class_coverage")).get(label)) for label in order],
                    "mean_set_size": fmt2(level.get("mean_set_size")),
                    "below_target": _below_target(level)} for level in levels],
    }


def _below_target(level: Mapping) -> bool:
    """Test coverage more than two binomial standard errors under the target: val and test differ."""
    target, coverage, n = to_float(level.get("target")), to_float(level.get("coverage")), to_float(level.get("n"))
    if target is None or coverage is None or not n:
        return False
    return coverage < target - 2 * (target * (1 - target) / n) ** 0.5



# ----------------------------------------------------------------------------------
# Rendering and writing
# ----------------------------------------------------------------------------------


def render_run(context: dict) -> str:
    """The complete run report, as HTML text, from :func:`run_context`'s dict."""
    return render("run.html.j2", context)


def write_run_report(run_dir) -> pathlib.Path:
    """Load a run or evaluation folder, render its report and write it into the folder.

    Args:
        run_dir: the run folder.

    Returns:
        The path of the written report (``runs.REPORT`` in the folder).
    """
    run_dir = pathlib.Path(run_dir)
    return write_html(run_dir / runs.REPORT, render_run(run_context(load_run(run_dir))))
