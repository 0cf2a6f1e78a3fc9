"""The robustness report: robustness folder -> load_robustness -> robustness_context -> render -> write.

Everything comes from the folder: ``runs.ROBUSTNESS`` (the figures and what was evaluated) and
``runs.ROBUSTNESS_EXAMPLES`` (one test image clean and at every severity of every corruption).
The page shows the headline figures, how much of the evaluated data could have been seen in
training, a curve per corruption, the table, and the example strip. Never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from reports import plots
from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    banner,
    data_uri,
    figure_uri,
    fmt3,
    fmt_created,
    fmt_int,
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

STRIP_SIZE = 112  # px of each example image on the page


def load_robustness(folder) -> dict:
    """Read a robustness folder.

    Returns:
        ``{"folder", "record", "examples", "problems"}``: the record, the example strip's
        arrays (``{}`` when missing) and what could not be read.

    Raises:
        FileNotFoundError: ``folder`` has no readable ``runs.ROBUSTNESS``.
    """
    folder = pathlib.Path(folder)
    problems: list[str] = []
    record = read_json(folder / runs.ROBUSTNESS, problems)
    if record is None:
        raise FileNotFoundError(f"{folder} is not a robustness folder: {'; '.join(problems) or runs.ROBUSTNESS}")
    return {"folder": str(folder), "record": record, "examples": _examples(folder, problems), "problems": problems}


def _examples(folder: pathlib.Path, problems: list[str]) -> dict:
    import numpy as np

    path = folder / runs.ROBUSTNESS_EXAMPLES
    if not path.is_file():
        problems.append(f"{runs.ROBUSTNESS_EXAMPLES} is missing: no example images")
        return {}
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as exc:
        problems.append(f"{runs.ROBUSTNESS_EXAMPLES} could not be read: {exc}")
        return {}


def _curve_panels(record: Mapping) -> list[dict]:
    clean = as_dict(record.get("clean"))
    panels = []
    for c in (as_dict(c) for c in as_list(record.get("corruptions"))):
        results = [as_dict(r) for r in as_list(c.get("results"))]
        panels.append({"name": str(c.get("name")), "severities": [0] + [r.get("severity") for r in results],
                       "accuracy": [clean.get("accuracy")] + [r.get("accuracy") for r in results],
                       "macro_f1": [clean.get("macro_f1")] + [r.get("macro_f1") for r in results],
                       "leak_free_accuracy": [clean.get("leak_free_accuracy")]
                       + [r.get("leak_free_accuracy") for r in results]})
    return panels


def _table(record: Mapping) -> dict:
    severities = [int(s) for s in as_list(record.get("severities"))]
    rows = []
    for c in (as_dict(c) for c in as_list(record.get("corruptions"))):
        by_severity = {r.get("severity"): r for r in (as_dict(r) for r in as_list(c.get("results")))}
        rows.append({
            "name": str(c.get("name")), "description": str(c.get("description") or ""),
            "parameter": str(c.get("parameter") or ""),
            "cells": [{"accuracy": fmt3(as_dict(by_severity.get(s)).get("accuracy")),
                       "macro_f1": fmt3(as_dict(by_severity.get(s)).get("macro_f1")),
                       "value": fmt_value(as_dict(by_severity.get(s)).get("parameter"))} for s in severities],
            "mean": fmt3(c.get("mean_accuracy")),
            "leak_free_mean": fmt3(c.get("leak_free_mean_accuracy")),
        })
    return {"severities": severities, "rows": rows}


def _strips(record: Mapping, examples: Mapping) -> list[dict]:
    severities = [int(s) for s in as_list(record.get("severities"))]
    strips = []
    for c in (as_dict(c) for c in as_list(record.get("corruptions"))):
        images = examples.get(str(c.get("name")))
        if images is None:
            continue
        values = {r.get("severity"): r.get("parameter") for r in (as_dict(r) for r in as_list(c.get("results")))}
        captions = ["clean"] + [f"{s}: {fmt_value(values.get(s))}" for s in severities]
        strips.append({"name": str(c.get("name")), "parameter": str(c.get("parameter") or ""),
                       "images": [{"src": data_uri(plots.image_png(image, STRIP_SIZE)), "caption": caption}
                                  for image, caption in zip(images, captions)]})
    return strips


def _banners(record: Mapping, problems: list[str]) -> list[dict]:
    seen = as_dict(record.get("seen_in_training"))
    fraction = to_float(seen.get("fraction"))
    kind = "note" if fraction == 0 else "warning"
    banners = [banner(kind, "Could the evaluated images have been seen in training?", seen.get("text") or DASH)]
    if record.get("synthetic_data"):
        banners.insert(0, synthetic_banner("This robustness check used synthetic phantom data: the figures say "
                                           "nothing about real scans."))
    if record.get("n_unreadable"):
        banners.append(banner("warning", "Unreadable images", f"{record['n_unreadable']} test images could not be "
                              "read and are left out"))
    return banners + input_banners(problems)


def _source_link(folder: pathlib.Path, record: Mapping) -> str | None:
    source = record.get("source_run")
    if not source or not (pathlib.Path(str(source)) / runs.REPORT).is_file():
        return None
    try:
        relative = pathlib.Path(str(source)).resolve().relative_to(folder.resolve().parent)
    except ValueError:
        return None
    return "../" + href(relative) + "/" + runs.REPORT


def _leak_free(record: Mapping) -> dict | None:
    """The headline figures on the images with no training twin, or ``None`` when that is unknown."""
    leak_free = record.get("leak_free")
    if not isinstance(leak_free, Mapping):
        return None
    relative = to_float(leak_free.get("relative_robustness"))
    return {"n_images": fmt_int(leak_free.get("n_images")), "clean_accuracy": fmt3(leak_free.get("clean_accuracy")),
            "mean_corruption_accuracy": fmt3(leak_free.get("mean_corruption_accuracy")),
            "relative_robustness": DASH if relative is None else f"{relative:.3f}"}


def robustness_context(loaded: Mapping) -> dict[str, Any]:
    """The flat template context of a robustness report, from :func:`load_robustness`'s dict."""
    record, folder = as_dict(loaded.get("record")), pathlib.Path(loaded.get("folder") or ".")
    problems = list(loaded.get("problems") or [])
    clean, worst = as_dict(record.get("clean")), as_dict(record.get("worst"))
    relative = to_float(record.get("relative_robustness"))
    return {
        "robustness_id": str(record.get("robustness_id") or folder.name),
        "backbone": str(record.get("backbone") or ""),
        "created": fmt_created(record.get("created")),
        "evaluated": str(record.get("evaluated") or DASH),
        "dataset_name": str(as_dict(record.get("dataset")).get("name") or ""),
        "n_images": fmt_int(record.get("n_images")),
        "clean_accuracy": fmt3(clean.get("accuracy")),
        "clean_macro_f1": fmt3(clean.get("macro_f1")),
        "mean_corruption_accuracy": fmt3(record.get("mean_corruption_accuracy")),
        "relative_robustness": DASH if relative is None else f"{relative:.3f}",
        "worst": str(worst.get("corruption") or DASH),
        "worst_accuracy": fmt3(worst.get("mean_accuracy")),
        "seen": str(as_dict(record.get("seen_in_training")).get("text") or DASH),
        "leak_free": _leak_free(record),
        "curves": figure_uri(plots.robustness_curves_png, problems, "robustness curves", _curve_panels(record)),
        "table": _table(record),
        "strips": _strips(record, loaded.get("examples") or {}),
        "source_run": str(record.get("source_run") or DASH),
        "source_link": _source_link(folder, record),
        "settings": [{"key": k, "value": fmt_value(record.get(k))}
                     for k in ("image_size", "seed", "severities", "backend", "timings") if k in record],
        "banners": _banners(record, problems),
    }


def render_robustness(context: Mapping) -> str:
    """The complete robustness report, as HTML text, from :func:`robustness_context`'s dict."""
    return render("robustness.html.j2", context)


def write_robustness_report(folder) -> pathlib.Path:
    """Load a robustness folder, render its report and write it into the folder; returns the report's path."""
    folder = pathlib.Path(folder)
    return write_html(folder / runs.REPORT, render_robustness(robustness_context(load_robustness(folder))))
