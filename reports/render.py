"""Turn a finished run folder into one self-contained HTML report.

The pipeline is ``load_run`` (read files) -> ``run_context`` (compute a flat dict of
plain values and image data URIs) -> ``render_run`` (Jinja, autoescaped) ->
``write_run_report`` (atomic write of ``report.html`` into the run folder).

This module only reads run folders: it never imports Keras or TensorFlow.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import uuid
from typing import Any, Mapping, Sequence

from reports import plots

REPORT_NAME = "report.html"
MAX_MISCLASSIFIED = 24
THUMBNAIL_SIZE = 96
_HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")
_DASH = "\u2014"

_ENV = None


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def _read_json(path: pathlib.Path, problems: list[str]) -> dict | None:
    """Parse a JSON object file; ``None`` if absent, a note in ``problems`` if broken."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name} could not be read: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} does not hold a JSON object")
        return None
    return data


def _read_csv(path: pathlib.Path, problems: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings; empty if absent or unreadable."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path.name} could not be read: {exc}")
        return []


def _to_float(text: Any) -> float | None:
    """Parse a CSV cell as float; ``None`` for blanks and junk."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _history_rows(rows: list[dict[str, str]]) -> list[dict[str, float | None]]:
    """Numeric history rows (known columns only)."""
    return [{key: _to_float(row.get(key)) for key in _HISTORY_COLUMNS if key in row} for row in rows]


def _prediction_rows(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Prediction rows with ``p_<label>`` columns gathered into a ``probs`` dict."""
    out = []
    for row in rows:
        probs = {key[2:]: _to_float(value) for key, value in row.items() if key and key.startswith("p_")}
        out.append({
            "path": row.get("path") or "",
            "true": row.get("true") or "",
            "predicted": row.get("predicted") or "",
            "probs": probs,
        })
    return out


def load_run(run_dir) -> dict:
    """Read a run folder.

    Args:
        run_dir: folder holding ``manifest.json`` and, optionally, ``metrics.json``,
            ``history.csv`` and ``predictions.csv``.

    Returns:
        ``{"run_dir", "manifest", "metrics", "history", "predictions", "problems"}``
        where ``metrics`` is ``None`` when absent, ``history`` and ``predictions`` are
        lists (empty when absent) and ``problems`` lists files that could not be read.

    Raises:
        FileNotFoundError: if ``run_dir`` has no readable ``manifest.json``.
    """
    run_dir = pathlib.Path(run_dir)
    problems: list[str] = []
    manifest = _read_json(run_dir / "manifest.json", problems)
    if manifest is None:
        detail = "; ".join(problems) or "manifest.json is missing"
        raise FileNotFoundError(f"{run_dir} is not a run folder: {detail}")
    return {
        "run_dir": str(run_dir),
        "manifest": manifest,
        "metrics": _read_json(run_dir / "metrics.json", problems),
        "history": _history_rows(_read_csv(run_dir / "history.csv", problems)),
        "predictions": _prediction_rows(_read_csv(run_dir / "predictions.csv", problems)),
        "problems": problems,
    }


# ----------------------------------------------------------------------------------
# Formatting helpers (plain strings for the template)
# ----------------------------------------------------------------------------------


def fmt3(value: Any) -> str:
    """A number to three decimals, or a dash."""
    number = _to_float(value)
    return _DASH if number is None else f"{number:.3f}"


def fmt_pct(value: Any) -> str:
    """A fraction as a percentage with one decimal, or a dash."""
    number = _to_float(value)
    return _DASH if number is None else f"{100 * number:.1f}%"


def fmt_int(value: Any) -> str:
    """An integer with thousands separators, or a dash."""
    number = _to_float(value)
    return _DASH if number is None else f"{int(number):,}"


def fmt_seconds(value: Any) -> str:
    """A duration: ``"12.3 s"`` or ``"4 min 05 s"``, or a dash."""
    seconds = _to_float(value)
    if seconds is None:
        return _DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_value(value: Any) -> str:
    """Any config value as short text: floats with ``:g``, containers as JSON."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _as_dict(value: Any) -> dict:
    """``value`` if it is a dict, else an empty dict (tolerates nulls and junk)."""
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list:
    """``value`` if it is a list, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


# ----------------------------------------------------------------------------------
# Context pieces
# ----------------------------------------------------------------------------------


def _banner(kind: str, title: str, text: Any, detail: Any = "") -> dict:
    """One banner: ``kind`` is ``"error"``, ``"synthetic"`` or ``"warning"``."""
    return {"kind": kind, "title": title, "text": str(text), "detail": str(detail or "")}


def _banners(manifest: Mapping, dataset: Mapping, weights: Mapping, problems: Sequence[str]) -> list[dict]:
    """Prominent notices for the top of the report, most serious first."""
    banners = []
    if manifest.get("status") == "failed" or manifest.get("error"):
        title = "Run failed" if manifest.get("status") == "failed" else "Error"
        banners.append(_banner("error", title, manifest.get("error") or "no error message recorded"))
    if dataset.get("synthetic"):
        banners.append(_banner(
            "synthetic", "Synthetic phantom data, not real MRI",
            "This run used synthetic phantom data, not real MRI: its numbers say nothing "
            "about performance on real scans.",
            dataset.get("description"),
        ))
    if weights.get("warning"):
        banners.append(_banner("warning", "Weights", weights["warning"]))
    banners += [_banner("warning", "Warning", text) for text in _as_list(manifest.get("warnings"))]
    banners += [_banner("warning", "Report input", text) for text in problems]
    return banners


def _labels(manifest: Mapping, metrics: Mapping | None) -> list[str]:
    """Class labels, from metrics first (their matrix order), else the dataset."""
    labels = _as_list((metrics or {}).get("labels")) or _as_list(_as_dict(manifest.get("dataset")).get("labels"))
    return [str(label) for label in labels]


def class_count_table(class_counts: Mapping, labels: Sequence[str], class_folders: Mapping) -> dict:
    """Per-class counts for each split, with totals.

    Args:
        class_counts: ``{split: {label: n}}``.
        labels: class order for the rows (labels only in the counts are appended).
        class_folders: ``{label: [folder names]}`` shown next to each class.

    Returns:
        ``{"splits": [...], "rows": [{"label", "folders", "counts", "total"}], "totals": [...], "grand_total"}``.
    """
    splits = [s for s in ("train", "val", "test") if s in class_counts]
    splits += [s for s in class_counts if s not in splits]
    per_split = {s: _as_dict(class_counts.get(s)) for s in splits}
    order = list(labels) + sorted({k for c in per_split.values() for k in c} - set(labels))
    rows = []
    for label in order:
        values = [_to_float(per_split[s].get(label)) or 0 for s in splits]
        folders = ", ".join(str(f) for f in _as_list(class_folders.get(label)))
        rows.append({"label": label, "folders": folders, "counts": [fmt_int(v) for v in values],
                     "total": fmt_int(sum(values))})
    totals = [sum(_to_float(per_split[s].get(label)) or 0 for label in order) for s in splits]
    return {"splits": splits, "rows": rows, "totals": [fmt_int(t) for t in totals],
            "grand_total": fmt_int(sum(totals))}


def _key_value_rows(mapping: Mapping) -> list[dict]:
    """``[{"key", "value"}]`` rows for a table, keys in their given order."""
    return [{"key": str(key), "value": fmt_value(value)} for key, value in mapping.items()]


def _timing_rows(timings: Mapping) -> list[dict]:
    """Rows for the timing table, plus a total when more than one phase is known."""
    names = {"data_s": "data", "train_s": "training", "eval_s": "evaluation"}
    rows, total = [], 0.0
    for key, value in timings.items():
        number = _to_float(value)
        rows.append({"key": names.get(key, key), "value": fmt_seconds(number)})
        total += number or 0.0
    if len(rows) > 1:
        rows.append({"key": "total", "value": fmt_seconds(total)})
    return rows


def per_class_rows(per_class: Mapping, labels: Sequence[str]) -> list[dict]:
    """Formatted precision/recall/F1/support rows in label order."""
    order = list(labels) + [k for k in per_class if k not in labels]
    rows = []
    for label in order:
        stats = _as_dict(per_class.get(label))
        if not stats:
            continue
        rows.append({"label": label, "precision": fmt3(stats.get("precision")),
                     "recall": fmt3(stats.get("recall")), "f1": fmt3(stats.get("f1")),
                     "support": fmt_int(stats.get("support"))})
    return rows


def _confusion_uri(metrics: Mapping, labels: Sequence[str], problems: list[str]) -> str | None:
    """Data URI of the confusion-matrix heatmap, or ``None`` if absent or malformed."""
    matrix = metrics.get("confusion_matrix")
    if not matrix:
        return None
    try:
        return plots.to_data_uri(plots.confusion_matrix_png(matrix, labels, normalise=True))
    except (TypeError, ValueError) as exc:
        problems.append(f"confusion matrix not drawn: {exc}")
        return None


def _curves_uri(history: Sequence[Mapping]) -> str | None:
    """Data URI of the training curves, or ``None`` when there is no history."""
    try:
        return plots.to_data_uri(plots.training_curves_png(history))
    except ValueError:
        return None


def _wrong_confidence(row: Mapping) -> float:
    """Probability the model gave its (wrong) prediction; -1 when unknown."""
    value = row["probs"].get(row["predicted"])
    return -1.0 if value is None else value


def misclassified(predictions: Sequence[Mapping], limit: int = MAX_MISCLASSIFIED) -> list[Mapping]:
    """Wrong predictions, most confident first, at most ``limit``.

    Args:
        predictions: rows from :func:`load_run` (``path, true, predicted, probs``).
        limit: how many to keep.

    Returns:
        The selected rows (unchanged objects), sorted by descending confidence.
    """
    wrong = [row for row in predictions if row["true"] != row["predicted"]]
    return sorted(wrong, key=_wrong_confidence, reverse=True)[:limit]


def _thumbnail_item(row: Mapping, labels: Sequence[str]) -> dict:
    """Template values for one misclassified image (thumbnail read from disk)."""
    order = list(labels) + [k for k in row["probs"] if k not in labels]
    png = plots.thumbnail_png(row["path"], THUMBNAIL_SIZE) if row["path"] else None
    return {
        "name": pathlib.PurePath(row["path"]).name or row["path"],
        "path": row["path"],
        "true": row["true"],
        "predicted": row["predicted"],
        "confidence": fmt3(row["probs"].get(row["predicted"])),
        "thumb": plots.to_data_uri(png) if png else None,
        "probs": [{"label": label, "value": fmt3(row["probs"].get(label)),
                   "is_true": label == row["true"], "is_pred": label == row["predicted"]}
                  for label in order if label in row["probs"]],
    }


def _skipped_rows(skipped: Sequence) -> list[dict]:
    """``[{"path", "reason"}]`` for files the data loader skipped."""
    rows = []
    for item in skipped:
        item = item if isinstance(item, dict) else {"path": item}
        rows.append({"path": str(item.get("path") or ""), "reason": str(item.get("reason") or "")})
    return rows


def _metrics_context(metrics: Mapping | None, labels: Sequence[str], problems: list[str]) -> dict:
    """Headline numbers, per-class table and confusion matrix (empty when no metrics)."""
    if metrics is None:
        return {"has_metrics": False, "accuracy": _DASH, "accuracy_pct": _DASH, "macro_f1": _DASH,
                "n_test": _DASH, "per_class": [], "confusion_matrix_uri": None, "leakage": None}
    return {
        "leakage": leakage_rows(metrics),
        "has_metrics": True,
        "accuracy": fmt3(metrics.get("accuracy")),
        "accuracy_pct": fmt_pct(metrics.get("accuracy")),
        "macro_f1": fmt3(metrics.get("macro_f1")),
        "n_test": fmt_int(metrics.get("n_test")),
        "per_class": per_class_rows(_as_dict(metrics.get("per_class")), labels),
        "confusion_matrix_uri": _confusion_uri(metrics, labels, problems),
    }


def _with_ci(value: Any, ci: Any) -> str:
    ci = _as_list(ci)
    if len(ci) == 2 and None not in ci:
        return f"{fmt3(value)} [{fmt3(ci[0])}, {fmt3(ci[1])}]"
    return fmt3(value)


def leakage_rows(metrics: Mapping) -> dict | None:
    """Full versus leak-free test figures, side by side, when the run looked for duplicates."""
    leak = metrics.get("leak_free")
    if not isinstance(leak, Mapping):
        return None
    rows = [{"name": "test images", "full": fmt_int(metrics.get("n_test")), "leak_free": fmt_int(leak.get("n_test"))}]
    if leak.get("n_test"):
        for key, name in (("accuracy", "accuracy [95% CI]"), ("macro_f1", "macro F1 [95% CI]")):
            rows.append({"name": name, "full": _with_ci(metrics.get(key), metrics.get(f"{key}_ci")),
                         "leak_free": _with_ci(leak.get(key), leak.get(f"{key}_ci"))})
    return {"rows": rows, "n_excluded": fmt_int(leak.get("n_excluded")), "definition": str(leak.get("definition", ""))}


def _summary_context(manifest: Mapping, dataset: Mapping, weights: Mapping, labels: Sequence[str]) -> dict:
    """Dataset, weights, environment and provenance values."""
    return {
        "dataset_root": str(dataset.get("root") or _DASH),
        "dataset_name": str(dataset.get("name") or _DASH),
        "dataset_layout": str(dataset.get("layout") or _DASH),
        "dataset_description": str(dataset.get("description") or ""),
        "synthetic": bool(dataset.get("synthetic")),
        "labels": list(labels),
        "class_counts": class_count_table(_as_dict(manifest.get("class_counts")), labels,
                                          _as_dict(dataset.get("class_folders"))),
        "weights_requested": fmt_value(weights.get("requested")),
        "weights_source": fmt_value(weights.get("source")),
        "weights_warning": str(weights.get("warning") or ""),
        "config_rows": _key_value_rows(_as_dict(manifest.get("config"))),
        "timing_rows": _timing_rows(_as_dict(manifest.get("timings"))),
        "backend": fmt_value(manifest.get("backend")),
        "device": fmt_value(manifest.get("device")),
        "seed": fmt_value(manifest.get("seed")),
        "params": fmt_int(manifest.get("params")),
        "data_fingerprint": fmt_value(manifest.get("data_fingerprint")),
        "split_fingerprint": fmt_value(manifest.get("split_fingerprint")),
        "cache_hit": fmt_value(manifest.get("cache_hit")),
        "package_rows": _key_value_rows(dict(sorted(_as_dict(manifest.get("package_versions")).items()))),
    }


def run_context(run: dict) -> dict:
    """Build the flat template context for one run.

    Args:
        run: the dict :func:`load_run` returns.

    Returns:
        A dict of strings, numbers, booleans, lists and dicts (images as
        ``data:image/png;base64,...`` strings), ready for :func:`render_run`.
    """
    manifest = _as_dict(run.get("manifest"))
    metrics = run.get("metrics") if isinstance(run.get("metrics"), dict) else None
    dataset = _as_dict(manifest.get("dataset"))
    weights = _as_dict(manifest.get("weights"))
    problems = list(run.get("problems") or [])
    labels = _labels(manifest, metrics)
    if metrics is None and manifest.get("status") == "completed":
        problems.append("metrics.json is missing although the run completed")

    context = {
        "run_id": fmt_value(manifest.get("run_id") or pathlib.PurePath(run.get("run_dir", "")).name),
        "run_dir": str(run.get("run_dir") or ""),
        "status": str(manifest.get("status") or "unknown"),
        "backbone": fmt_value(manifest.get("backbone") or _as_dict(manifest.get("config")).get("backbone")),
        "created": fmt_value(manifest.get("created")),
        "error": str(manifest.get("error") or ""),
    }
    context.update(_summary_context(manifest, dataset, weights, labels))
    context.update(_metrics_context(metrics, labels, problems))
    context["curves_uri"] = _curves_uri(run.get("history") or [])

    predictions = run.get("predictions") or []
    wrong = [row for row in predictions if row["true"] != row["predicted"]]
    context["n_predictions"] = len(predictions)
    context["n_misclassified"] = len(wrong)
    context["misclassified"] = [_thumbnail_item(row, labels) for row in misclassified(wrong)]
    context["skipped"] = _skipped_rows(_as_list(manifest.get("skipped")))
    context["banners"] = _banners(manifest, dataset, weights, problems)
    return context


# ----------------------------------------------------------------------------------
# Rendering and writing
# ----------------------------------------------------------------------------------


def _environment():
    """The (cached) Jinja environment: package templates, autoescape always on."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(
            loader=jinja2.PackageLoader("reports", "templates"),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _ENV


def render_run(context: dict) -> str:
    """Render the run report.

    Args:
        context: the dict :func:`run_context` returns.

    Returns:
        The complete HTML document as text.
    """
    return _environment().get_template("run.html.j2").render(**context)


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_run_report(run_dir) -> pathlib.Path:
    """Load a run folder, render its report and write ``report.html`` into it.

    Args:
        run_dir: the run folder.

    Returns:
        The path of the written report.
    """
    run_dir = pathlib.Path(run_dir)
    html = render_run(run_context(load_run(run_dir)))
    path = run_dir / REPORT_NAME
    _atomic_write_text(path, html)
    return path
