"""The prediction page of ``suite serve``: run folder -> serve_context -> render_page (``serve.html.j2``).

The page is rendered once, when the server starts; what it shows per image is filled in by the
page's own script from the server's JSON, into the ``<template>`` elements of the same file.
Only reads the folder: never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from reports.run import load_run
from reports.toolkit import (
    as_dict,
    banner,
    fmt3,
    fmt_created,
    fmt_int,
    fmt_metric,
    fmt_pct,
    fmt_value,
    input_banners,
    render,
    synthetic_banner,
)


def serve_context(run_dir, calibration_note: Mapping, limits) -> dict:
    """What the page shows about the model, and the limits its drop zone announces.

    Args:
        run_dir: the run folder being served.
        calibration_note: the ``calibration`` entry every prediction of the run carries
            (:class:`suite.inference.Predictor`).
        limits: the server's :class:`suite.serve.ServeLimits`.
    """
    run = load_run(run_dir)
    manifest, metrics = run["manifest"], as_dict(run["metrics"])
    dataset, config = as_dict(manifest.get("dataset")), as_dict(manifest.get("config"))
    synthetic = bool(dataset.get("synthetic") or manifest.get("synthetic_data"))
    banners = []
    if synthetic:
        banners.append(synthetic_banner("This model was trained on synthetic phantom data, not real MRI: its "
                                        "predictions on real scans mean nothing.", dataset.get("description")))
    if manifest.get("status") != "completed":
        banners.append(banner("warning", "Run not completed", f"The run's status is {manifest.get('status')!r}: "
                              "its model is the best checkpoint it reached."))
    banners.append(banner("note", "Research use only", "A benchmark model, not a medical device: do not use its "
                          "predictions for diagnosis."))
    labels = [str(label) for label in dataset.get("labels") or metrics.get("labels") or []]
    return {
        "run_id": fmt_value(manifest.get("run_id") or pathlib.PurePath(run["run_dir"]).name),
        "run_dir": run["run_dir"],
        "backbone": fmt_value(manifest.get("backbone") or config.get("backbone")),
        "created": fmt_created(manifest.get("created")),
        "dataset_name": fmt_value(dataset.get("name")),
        "dataset_root": fmt_value(dataset.get("root")),
        "synthetic": synthetic,
        "image_size": fmt_value(config.get("image_size")),
        "weights": fmt_value(as_dict(manifest.get("weights")).get("source") or config.get("weights")),
        "labels": labels,
        "accuracy": fmt_metric(metrics, "accuracy"),
        "balanced_accuracy": fmt_metric(metrics, "balanced_accuracy"),
        "accuracy_pct": fmt_pct(metrics.get("accuracy")),
        "balanced_accuracy_pct": fmt_pct(metrics.get("balanced_accuracy")),
        "n_test": fmt_int(metrics.get("n_test")),
        "calibration": _calibration_text(calibration_note),
        "calibrated": bool(calibration_note.get("applied")),
        "banners": banners + input_banners(run["problems"]),
        "max_files": limits.max_files,
        "max_mib": f"{limits.max_request_bytes / 2**20:.0f}",
        "max_megapixels": f"{limits.max_pixels / 1e6:.0f}",
    }


def _calibration_text(note: Mapping) -> str:
    """One sentence on what the calibrated columns are, or why there are none."""
    if not note.get("applied"):
        return f"No calibrated probabilities: {note.get('reason', 'not recorded')}."
    return (f"Temperature {fmt3(note.get('temperature'))}; the prediction set targets "
            f"{fmt3(note.get('set_coverage_target'))} coverage ({fmt3(note.get('set_test_coverage'))} reached on "
            f"the test split, {note.get('method', '')}).")


def render_page(context: dict) -> str:
    """The complete page ``serve.html.j2`` makes of ``context``."""
    return render("serve.html.j2", context)
