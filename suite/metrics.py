"""Predictions to metrics: pure functions over arrays.

Point estimates come from scikit-learn. Their uncertainty comes from a percentile
bootstrap over test images; every bootstrap metric is read off one stack of confusion
matrices (one per resample, built with a single ``np.bincount``), so a thousand
resamples cost milliseconds instead of a thousand scikit-learn calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

N_BINS = 15
"""Calibration bins used by :func:`classification_metrics` (the usual choice since Guo et al. 2017)."""


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Point metrics, their bootstrap intervals, ROC curves and calibration, as plain JSON values.

    Args:
        y_true: integer labels, shape ``(n,)``.
        probs: class probabilities, shape ``(n, len(labels))``.
        labels: class names, in column order.
        n_resamples: bootstrap resamples of the test images. Defaults to 1000.
        confidence: coverage of every interval. Defaults to 0.95.
        seed: seed of the bootstrap; the same seed gives the same intervals. Defaults to 0.

    Returns:
        ``accuracy``, ``accuracy_ci``, ``balanced_accuracy`` (the mean recall over the classes
        present in ``y_true``), ``balanced_accuracy_ci``, ``macro_f1``, ``macro_f1_ci``, ``per_class``
        (``{label: {precision, recall, f1, support, f1_ci, recall_ci}}``),
        ``confusion_matrix`` (rows true, columns predicted), ``labels``, ``n_test``,
        ``roc_auc_macro``, ``roc_auc`` (``{label: auc}``), ``roc_curves`` (see
        :func:`roc_curves`), ``ece``, ``reliability`` (see :func:`reliability_bins`) and
        ``bootstrap`` (the settings above). Every ``*_ci`` is ``[low, high]``; a value
        that cannot be computed is ``None``, never NaN.
    """
    y_true, probs = _check_predictions(y_true, probs, len(labels))
    y_pred = probs.argmax(axis=1)
    point = _point_metrics(y_true, y_pred, labels)
    ci = _bootstrap_intervals(y_true, y_pred, len(labels), n_resamples, confidence, seed)
    curves = roc_curves(y_true, probs, labels)
    return {
        "accuracy": point["accuracy"],
        "accuracy_ci": ci["accuracy"],
        "balanced_accuracy": point["balanced_accuracy"],
        "balanced_accuracy_ci": ci["balanced_accuracy"],
        "macro_f1": point["macro_f1"],
        "macro_f1_ci": ci["macro_f1"],
        "per_class": {
            label: {**point["per_class"][label], "f1_ci": ci["f1"][i], "recall_ci": ci["recall"][i]}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": point["confusion_matrix"],
        "labels": point["labels"],
        "n_test": point["n_test"],
        "roc_auc_macro": _macro_auc(curves),
        "roc_auc": {label: curve["auc"] for label, curve in curves.items()},
        "roc_curves": curves,
        "ece": expected_calibration_error(y_true, probs, N_BINS),
        "reliability": reliability_bins(y_true, probs, N_BINS),
        "bootstrap": {"n_resamples": int(n_resamples), "confidence": float(confidence), "seed": int(seed)},
    }


# What ``leak_free`` keeps of the metrics of the images that have no twin in training.
LEAK_FREE_KEYS = ("accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1", "macro_f1_ci",
                  "per_class", "confusion_matrix", "n_test")


def leak_free_metrics(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], keep: np.ndarray, *,
                      definition: str, **bootstrap) -> dict:
    """Metrics on the images ``keep`` selects (those with no exact or near twin in training), beside the full ones.

    The kept images' class mix can differ wildly from the full set's (one class may lose most
    of its images to duplicates), so ``per_class`` carries each class's ``support`` and
    ``recall`` and ``balanced_accuracy`` stands beside ``accuracy``.

    Args:
        y_true: integer labels of every image, shape ``(n,)``.
        probs: class probabilities, shape ``(n, len(labels))``.
        labels: class names, in column order.
        keep: boolean mask, shape ``(n,)``: the leak-free images.
        definition: what "leak-free" means here, in words, recorded with the figures.
        **bootstrap: ``n_resamples``, ``confidence``, ``seed`` for :func:`classification_metrics`.

    Returns:
        ``definition``, ``n_excluded`` and ``n_test`` (the leak-free images: 0 when none is
        left, and then nothing else), and :data:`LEAK_FREE_KEYS` of :func:`classification_metrics`.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(y_true),):
        raise ValueError(f"keep must have shape ({len(y_true)},) to match y_true, got {keep.shape}")
    summary = {"definition": definition, "n_excluded": int((~keep).sum())}
    if not keep.any():
        return {**summary, "n_test": 0}
    full = classification_metrics(np.asarray(y_true)[keep], np.asarray(probs)[keep], labels, **bootstrap)
    return {**summary, **{k: full[k] for k in LEAK_FREE_KEYS}}


# ----------------------------------------------------------------------------------
# One schema: named figures and the leaderboard
# ----------------------------------------------------------------------------------

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
# Leaderboard columns before and after the per-class ones; ``recall_<label>`` and
# ``f1_<label>`` come between them, in label order.
LEADERBOARD_HEAD = ("backbone", "status", "tier", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                    "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high")
LEADERBOARD_TAIL = ("roc_auc_macro", "ece", "params", "train_s", "image_size", "infer_ms_per_image",
                    "infer_images_per_s", "error")
PER_CLASS_COLUMNS = ("recall", "f1")
# From the manifest, not metrics.json: (column, path in the manifest).
MANIFEST_COLUMNS = (("params", ("params",)), ("train_s", ("timings", "train_s")),
                    ("image_size", ("config", "image_size")))


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_interval(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(v is None or is_number(v) for v in x)


def named_figures(metrics: Mapping) -> dict[str, float]:
    """Every figure of a ``metrics.json`` by one flat name: the one schema gates, CV and leaderboards read.

    ``accuracy``; an interval ``accuracy_ci`` gives ``accuracy_ci_low`` and ``accuracy_ci_high``;
    per-class statistics become ``<stat>_<label>`` (``recall_glioma``, ``f1_glioma_ci_low``);
    per-label tables such as ``roc_auc`` become ``roc_auc_<label>``. Settings (``bootstrap``),
    curves and matrices are not figures. A missing or ``None`` value is left out.
    """
    out: dict[str, float] = {}
    per_class = metrics.get("per_class") or {}
    labels = set(metrics.get("labels") or per_class)
    for key, value in metrics.items():
        if key == "per_class":
            continue
        out.update(_figures_of(key, value))
        if isinstance(value, Mapping) and value and labels.issuperset(value):
            out.update({f"{key}_{label}": float(v) for label, v in value.items() if is_number(v)})
    for label, entry in per_class.items():
        for stat, value in entry.items():
            out.update(_figures_of(stat, value, f"_{label}"))
    return out


def _figures_of(key: str, value, suffix: str = "") -> dict[str, float]:
    if is_number(value):
        return {f"{key}{suffix}": float(value)}
    if _is_interval(value) and key.endswith("_ci"):
        base = f"{key[:-3]}{suffix}"
        return {f"{base}{end}": float(v) for end, v in zip((CI_LOW, CI_HIGH), value) if v is not None}
    return {}


# With several seeds per backbone: the spread across them, after the accuracy and macro-F1 columns.
SEED_COLUMNS = ("n_seeds", "accuracy_sd", "accuracy_min", "accuracy_max", "macro_f1_sd")


# Per external dataset (``compare --external``), as ``ext_<slug>_<figure>``: accuracy and balanced
# accuracy on it, the same without the images that copy a training image, the share of such
# copies, and the drop from the internal test accuracy (internal minus external).
EXTERNAL_FIGURES = ("accuracy", "balanced_accuracy", "leak_free_accuracy", "leak_free_balanced_accuracy",
                    "contamination", "drop")


def external_columns(slug: str) -> list[str]:
    return [f"ext_{slug}_{figure}" for figure in EXTERNAL_FIGURES]


def external_figures(slug: str, evaluation: Mapping, internal_accuracy: float | None) -> dict:
    """A run's ``ext_<slug>_*`` leaderboard cells from its evaluation's ``metrics.json``."""
    leak_free, contamination = evaluation.get("leak_free") or {}, evaluation.get("contamination") or {}
    accuracy = evaluation.get("accuracy")
    drop = internal_accuracy - accuracy if is_number(internal_accuracy) and is_number(accuracy) else None
    values = (accuracy, evaluation.get("balanced_accuracy"), leak_free.get("accuracy"),
              leak_free.get("balanced_accuracy"), contamination.get("fraction"), drop)
    return dict(zip(external_columns(slug), values))


# With ``compare --robustness``: the mean accuracy over every corruption x severity of ``suite robustness``,
# that over the clean test accuracy, and the mean again on the test images with no training twin.
ROBUSTNESS_COLUMNS = ("mean_corruption_accuracy", "relative_robustness", "leak_free_mean_corruption_accuracy")


def robustness_figures(record: Mapping) -> dict:
    """A run's :data:`ROBUSTNESS_COLUMNS` cells from its robustness folder's record (``{}``: all ``None``)."""
    return {column: record.get(column) for column in ROBUSTNESS_COLUMNS}


def leaderboard_columns(labels: Sequence[str], *, seeds: bool = False, externals: Sequence[str] = (),
                        robustness: bool = False) -> list[str]:
    """The leaderboard's columns for these class labels, in order (``seeds``: with the spread across
    seeds; ``externals``: the slugs of external datasets, each with :data:`EXTERNAL_FIGURES`;
    ``robustness``: with :data:`ROBUSTNESS_COLUMNS`)."""
    per_class = [f"{stat}_{label}" for label in labels for stat in PER_CLASS_COLUMNS]
    external = [column for slug in externals for column in external_columns(slug)]
    return [*LEADERBOARD_HEAD, *(SEED_COLUMNS if seeds else ()), *per_class, *external,
            *(ROBUSTNESS_COLUMNS if robustness else ()), *LEADERBOARD_TAIL]


def seed_summary_row(replicates: Sequence[Mapping], *, labels: Sequence[str], externals: Sequence[str] = (),
                     robustness: bool = False, **given) -> dict:
    """A backbone's leaderboard row over its seeds: each figure's mean over the replicates' rows.

    ``*_ci_low`` / ``*_ci_high`` are then the mean of the replicates' own intervals (the test-set
    uncertainty of one training); ``accuracy_sd`` and ``macro_f1_sd`` (sample SD, ddof=1) the
    spread across seeds; ``accuracy_min`` / ``accuracy_max`` its range. ``None`` where no
    replicate has the figure.

    Args:
        replicates: leaderboard rows (:func:`leaderboard_row`) of the completed replicates.
        labels: the class labels of the per-class columns.
        externals, robustness: as for :func:`leaderboard_columns`.
        **given: values of other columns (``backbone``, ``status``, ``tier``, ``error``).
    """
    row = {}
    for column in leaderboard_columns(labels, seeds=True, externals=externals, robustness=robustness):
        values = [r[column] for r in replicates if is_number(r.get(column))]
        if column in ("params", "image_size"):  # the same for every replicate
            row[column] = values[0] if values else None
        else:
            row[column] = float(np.mean(values)) if values else None
    accuracy = [r["accuracy"] for r in replicates if is_number(r.get("accuracy"))]
    f1 = [r["macro_f1"] for r in replicates if is_number(r.get("macro_f1"))]
    row.update(n_seeds=len(replicates), accuracy_sd=_sd(accuracy), macro_f1_sd=_sd(f1),
               accuracy_min=min(accuracy) if accuracy else None, accuracy_max=max(accuracy) if accuracy else None)
    row.update(given)
    return row


def _sd(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def leaderboard_row(metrics: Mapping | None, manifest: Mapping | None = None, *,
                    labels: Sequence[str] | None = None, **given) -> dict:
    """One leaderboard row from a run's ``metrics.json`` and ``manifest.json``.

    Args:
        metrics: the run's metrics (``None`` or ``{}`` for a run that has none). Keys added
            after the first release (intervals, AUC, ECE) may be missing from older run
            folders; they become ``None`` so old runs still list.
        manifest: the run's manifest, for parameters, training time and image size.
        labels: the class labels of the per-class columns (default: the metrics' own).
        **given: values of other columns (``backbone``, ``status``, ``tier``, ``error``).

    Returns:
        Every column of :func:`leaderboard_columns`, ``None`` where unknown.
    """
    metrics, manifest = metrics or {}, manifest or {}
    figures = named_figures(metrics)
    labels = list(labels if labels is not None else metrics.get("labels") or metrics.get("per_class") or [])
    row = {column: figures.get(column) for column in leaderboard_columns(labels)}
    for column, path in MANIFEST_COLUMNS:
        row[column] = _dig(manifest, path)
    row.update(backbone=manifest.get("backbone"), status=manifest.get("status"), error=manifest.get("error"))
    row.update(given)
    return row


def _dig(mapping: Mapping, path: Sequence[str]):
    for key in path:
        mapping = mapping.get(key) if isinstance(mapping, Mapping) else None
    return mapping


def leaderboard_sort_key(row: Mapping) -> tuple:
    """Completed before failed, then tier (ranked before unranked), then accuracy, best first."""
    accuracy = row.get("accuracy")
    tier = row.get("tier")
    return (row.get("status") != "completed", tier is None, tier or 0, accuracy is None, -(accuracy or 0.0),
            str(row.get("backbone")))


def prediction_rows(paths, y_true, probs, labels) -> tuple[list[str], list[list]]:
    """Header and rows of ``predictions.csv``: path, true, predicted, one probability per class."""
    header = ["path", "true", "predicted"] + [f"p_{label}" for label in labels]
    rows = [
        [str(p), labels[t], labels[int(np.argmax(pr))]] + [f"{v:.6f}" for v in pr]
        for p, t, pr in zip(paths, y_true, probs)
    ]
    return header, rows


# ----------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    batched: bool = True,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of a metric, resampling test images with replacement.

    The resampled indices depend only on ``len(y_true)``, ``n_resamples`` and ``seed``, so
    intervals from this function and from :func:`classification_metrics` use the same resamples.

    Args:
        y_true: true labels, shape ``(n,)``.
        y_pred: predicted labels, shape ``(n,)``.
        metric_fn: with ``batched=True`` (the default), called once with two arrays of shape
            ``(n_resamples, n)``, one resample per row, and returns shape ``(n_resamples,)``,
            e.g. ``lambda t, p: (t == p).mean(axis=1)``. With ``batched=False``, called once
            per resample with two ``(n,)`` arrays and returns a number (slow, but takes any
            scikit-learn metric).
        n_resamples: number of resamples. Defaults to 1000.
        confidence: coverage of the interval. Defaults to 0.95.
        seed: seed of ``np.random.default_rng``. Defaults to 0.
        batched: how ``metric_fn`` is called; see above. Defaults to True.

    Returns:
        ``(low, high)``; resamples where the metric is NaN (undefined) are left out, and both
        ends are ``None`` when no resample gives a value.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-D and equally long, got {y_true.shape} and {y_pred.shape}")
    idx = _resample_indices(len(y_true), n_resamples, seed)
    if batched:
        values = np.asarray(metric_fn(y_true[idx], y_pred[idx]), dtype=float)
    else:
        values = np.array([metric_fn(y_true[i], y_pred[i]) for i in idx], dtype=float)
    if values.shape != (n_resamples,):
        raise ValueError(f"metric_fn returned shape {values.shape}, expected ({n_resamples},)")
    low, high = _interval(values, confidence)
    return low, high


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Indices of shape ``(n_resamples, n)``, drawn with replacement from ``range(n)``."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty test set")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval(samples: np.ndarray, confidence: float) -> list[float | None]:
    """Central percentile interval of the non-NaN samples, ``[None, None]`` if there are none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return [None, None]
    tail = 50 * (1 - confidence)
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def _bootstrap_intervals(y_true, y_pred, n_classes, n_resamples, confidence, seed) -> dict:
    """Intervals of accuracy, balanced accuracy, macro-F1 and per-class F1 and recall from one set of resamples.

    Returns:
        ``{"accuracy": [lo, hi], "balanced_accuracy": [lo, hi], "macro_f1": [lo, hi], "f1": [[lo, hi], ...],
        "recall": [...]}`` with one ``[lo, hi]`` per class in ``f1`` and ``recall``.
    """
    idx = _resample_indices(len(y_true), n_resamples, seed)
    # One code per (true, predicted) pair: gathering it once is half the work of gathering both.
    pair = y_true * n_classes + y_pred
    cm = _confusion_stack(pair[idx], n_classes)
    recall, f1 = _per_class_rates(cm)
    accuracy = np.trace(cm, axis1=1, axis2=2) / len(y_true)
    # Mean recall over the classes each resample holds, as the point estimate averages over the
    # classes the test set holds (every resample holds at least one image, so at least one class).
    balanced = np.nanmean(recall, axis=1)
    # Undefined F1 counts as 0, as in the point estimate (scikit-learn, zero_division=0),
    # so the interval describes the same statistic as the number it surrounds.
    macro_f1 = np.nan_to_num(f1, nan=0.0).mean(axis=1)
    return {
        "accuracy": _interval(accuracy, confidence),
        "balanced_accuracy": _interval(balanced, confidence),
        "macro_f1": _interval(macro_f1, confidence),
        # Per class, a resample without the class says nothing about it: left out, not 0.
        "f1": [_interval(f1[:, k], confidence) for k in range(n_classes)],
        "recall": [_interval(recall[:, k], confidence) for k in range(n_classes)],
    }


def _confusion_stack(pairs: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices, shape ``(R, K, K)``, from pair codes ``true * K + predicted`` of shape ``(R, n)``."""
    n_cells = n_classes * n_classes
    codes = pairs + np.arange(pairs.shape[0])[:, None] * n_cells
    counts = np.bincount(codes.ravel(), minlength=pairs.shape[0] * n_cells)
    return counts.reshape(pairs.shape[0], n_classes, n_classes)


def _per_class_rates(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and F1 per resample and class, shape ``(R, K)``; NaN where undefined."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / support
        f1 = 2 * tp / (support + predicted)
    return recall, f1


# ----------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-label confidence.

    The mean over equal-width confidence bins on ``[0, 1]`` of ``|confidence - accuracy|``,
    weighted by the share of images in each bin.

    Args:
        y_true: integer labels, shape ``(n,)``.
        probs: class probabilities, shape ``(n, n_classes)``.
        n_bins: number of bins. Defaults to 15.
    """
    y_true, probs = _check_predictions(y_true, probs)
    count, conf_sum, correct_sum = _bin_sums(y_true, probs, n_bins)
    # sum_b (n_b / n) |conf_b - acc_b| == sum_b |conf_sum_b - correct_sum_b| / n
    return float(np.abs(conf_sum - correct_sum).sum() / count.sum())


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Per-bin mean confidence and accuracy of the top label, for a reliability diagram.

    Args:
        y_true: integer labels, shape ``(n,)``.
        probs: class probabilities, shape ``(n, n_classes)``.
        n_bins: number of equal-width bins on ``[0, 1]``. Defaults to 15.

    Returns:
        Lists of length ``n_bins``: ``bin_lower``, ``bin_upper``, ``confidence``, ``accuracy``
        and ``count``. A bin holds confidences in ``(lower, upper]`` (the first also holds 0);
        an empty bin has count 0 and ``None`` confidence and accuracy.
    """
    y_true, probs = _check_predictions(y_true, probs)
    count, conf_sum, correct_sum = _bin_sums(y_true, probs, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, count)],
        "count": [int(c) for c in count],
    }


def _bin_sums(y_true, probs, n_bins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image count, summed confidence and summed correctness per confidence bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    # searchsorted on the inner edges instead of floor(conf * n_bins): exact at bin edges,
    # where the float product can land one bin too high.
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner, confidence, side="left")
    return (
        np.bincount(bins, minlength=n_bins),
        np.bincount(bins, weights=confidence, minlength=n_bins),
        np.bincount(bins, weights=correct, minlength=n_bins),
    )


# ----------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------


def roc_curves(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], max_points: int = 200) -> dict:
    """One-vs-rest ROC curve and AUC per class.

    Args:
        y_true: integer labels, shape ``(n,)``.
        probs: class probabilities, shape ``(n, len(labels))``.
        labels: class names, in column order.
        max_points: most points kept per curve; the first ``(0, 0)`` and last ``(1, 1)``
            are always kept. Defaults to 200.

    Returns:
        ``{label: {"fpr": [...], "tpr": [...], "auc": float | None}}``. A class with no
        positive or no negative image in ``y_true`` (absent, or the only class present) has
        no curve: empty lists and ``auc`` ``None``.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2 to keep both ends of a curve, got {max_points}")
    y_true, probs = _check_predictions(y_true, probs, len(labels))
    return {label: _one_vs_rest(y_true == k, probs[:, k], max_points) for k, label in enumerate(labels)}


def _one_vs_rest(positive: np.ndarray, scores: np.ndarray, max_points: int) -> dict:
    """Thinned ROC curve and AUC of one class against the rest."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if positive.all() or not positive.any():
        return {"fpr": [], "tpr": [], "auc": None}
    fpr, tpr, _ = roc_curve(positive, scores)
    keep = _thin(len(fpr), max_points)
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "auc": float(roc_auc_score(positive, scores))}


def _thin(n_points: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced indices into ``range(n_points)``, both ends included."""
    if n_points <= max_points:
        return np.arange(n_points)
    return np.unique(np.linspace(0, n_points - 1, max_points).round().astype(int))


def _macro_auc(curves: dict) -> float | None:
    """Mean one-vs-rest AUC over the classes that have one.

    Averaged here rather than with ``roc_auc_score(multi_class="ovr")``, which refuses a test
    set that lacks a class; with every class present the two agree.
    """
    aucs = [curve["auc"] for curve in curves.values() if curve["auc"] is not None]
    return float(np.mean(aucs)) if aucs else None


# ----------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------


def _point_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # scikit-learn's balanced_accuracy_score: mean recall over the classes present in y_true
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(labels),
        "n_test": int(len(y_true)),
    }


def _check_predictions(y_true, probs, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` as integers in ``range(n_classes)`` and ``probs`` as float64 ``(n, n_classes)``.

    ``n_classes`` defaults to the number of columns of ``probs``.

    Raises:
        ValueError: on a shape mismatch, a label out of range, or values outside ``[0, 1]``
            (logits passed where probabilities were expected would give a meaningless ECE).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if n_classes is None and probs.ndim == 2:
        n_classes = probs.shape[1]
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (n, {n_classes}), got {probs.shape}")
    if y_true.shape != (len(probs),):
        raise ValueError(f"y_true must have shape ({len(probs)},) to match probs, got {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("no predictions to evaluate")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must hold integer labels in [0, {n_classes}), got {y_true.dtype} "
                         f"values in [{y_true.min()}, {y_true.max()}]")
    # A little slack: float16 softmax outputs can overshoot 1 by a rounding step.
    if probs.min() < 0 or probs.max() > 1 + 1e-3:
        raise ValueError("probs must be probabilities in [0, 1]; apply a softmax to logits first")
    return y_true.astype(np.int64), np.clip(probs, 0.0, 1.0)
