"""Tests for ``suite.metrics``: point metrics, bootstrap intervals, calibration and ROC."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from suite.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    leaderboard_columns,
    leaderboard_row,
    leaderboard_sort_key,
    leak_free_metrics,
    named_figures,
    reliability_bins,
    roc_curves,
)

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


def _predictions(n: int, n_classes: int = 4, skill: float = 2.0, seed: int = 1):
    """Labels and softmax probabilities of a classifier that is right most of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def _accuracy_rows(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Batched accuracy: one resample per row."""
    return (t == p).mean(axis=1)


def _right_on(n: int, n_right: int, n_classes: int = 4):
    """Labels and predictions that agree on exactly the first ``n_right`` images."""
    y = np.arange(n) % n_classes
    pred = y.copy()
    pred[n_right:] = (y[n_right:] + 1) % n_classes
    return y, pred


@pytest.fixture(scope="module")
def metrics():
    y, probs = _predictions(400)
    return classification_metrics(y, probs, LABELS)


# ----------------------------------------------------------------------------------
# Point metrics keep their meaning
# ----------------------------------------------------------------------------------


def test_point_metrics_match_sklearn(metrics):
    y, probs = _predictions(400)
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3])
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert metrics["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert [metrics["per_class"][label]["recall"] for label in LABELS] == pytest.approx(recall)
    assert [metrics["per_class"][label]["support"] for label in LABELS] == support.tolist()
    assert metrics["labels"] == LABELS and metrics["n_test"] == 400


def _balanced_accuracy(y_true, y_pred) -> float:
    """scikit-learn's, without its warning about predicted classes the truth lacks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(y_true, y_pred)


@pytest.mark.parametrize("case", ["all classes", "class absent from the truth", "one class"])
def test_balanced_accuracy_is_sklearns(case):
    y, probs = _predictions(300)
    keep = {"all classes": y >= 0, "class absent from the truth": y != 2, "one class": y == 1}[case]
    m = classification_metrics(y[keep], probs[keep], LABELS, n_resamples=100)
    assert m["balanced_accuracy"] == pytest.approx(_balanced_accuracy(y[keep], probs[keep].argmax(axis=1)))


def test_balanced_accuracy_interval_is_a_bootstrap_over_the_same_resamples():
    y, probs = _predictions(300)
    m = classification_metrics(y, probs, LABELS, n_resamples=200)
    one_by_one = bootstrap_ci(y, probs.argmax(axis=1), _balanced_accuracy, n_resamples=200, batched=False)
    assert list(one_by_one) == pytest.approx(m["balanced_accuracy_ci"])
    low, high = m["balanced_accuracy_ci"]
    assert low < m["balanced_accuracy"] < high


def test_balanced_accuracy_differs_from_accuracy_on_a_skewed_mix():
    y = np.array([0] * 90 + [1] * 10)
    probs = np.eye(2)[np.zeros(100, dtype=int)]  # always class 0
    m = classification_metrics(y, probs, ["a", "b"], n_resamples=50)
    assert m["accuracy"] == pytest.approx(0.9) and m["balanced_accuracy"] == pytest.approx(0.5)


def test_leak_free_metrics_are_the_metrics_of_the_kept_images():
    y, probs = _predictions(200)
    keep = np.arange(200) % 3 != 0
    leak = leak_free_metrics(y, probs, LABELS, keep, definition="no twin", n_resamples=100)
    direct = classification_metrics(y[keep], probs[keep], LABELS, n_resamples=100)
    assert leak["n_test"] == keep.sum() and leak["n_excluded"] == (~keep).sum() and leak["definition"] == "no twin"
    for key in ("accuracy", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1_ci", "per_class",
                "confusion_matrix"):
        assert leak[key] == direct[key], key
    assert {stat for stats in leak["per_class"].values() for stat in stats} >= {"support", "recall"}


def test_leak_free_metrics_with_no_image_left():
    y, probs = _predictions(20)
    assert leak_free_metrics(y, probs, LABELS, np.zeros(20, bool), definition="d") == \
        {"definition": "d", "n_excluded": 20, "n_test": 0}


def test_leak_free_mask_of_the_wrong_length_is_refused():
    y, probs = _predictions(20)
    with pytest.raises(ValueError, match="keep must have shape"):
        leak_free_metrics(y, probs, LABELS, np.ones(19, bool), definition="d")


def test_bootstrap_settings_are_recorded(metrics):
    assert metrics["bootstrap"] == {"n_resamples": 1000, "confidence": 0.95, "seed": 0}


# ----------------------------------------------------------------------------------
# Bootstrap intervals
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["accuracy", "balanced_accuracy", "macro_f1"])
def test_interval_contains_point_estimate(metrics, key):
    low, high = metrics[f"{key}_ci"]
    assert low < metrics[key] < high


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("key", ["f1", "recall"])
def test_per_class_interval_contains_point_estimate(metrics, label, key):
    stats = metrics["per_class"][label]
    low, high = stats[f"{key}_ci"]
    assert low <= stats[key] <= high and low < high


def test_interval_narrows_with_more_data():
    small = bootstrap_ci(*_right_on(100, 80), _accuracy_rows)
    large = bootstrap_ci(*_right_on(1600, 1280), _accuracy_rows)
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_interval_is_reproducible_with_the_seed():
    y, pred = _right_on(300, 240)
    assert bootstrap_ci(y, pred, _accuracy_rows, seed=7) == bootstrap_ci(y, pred, _accuracy_rows, seed=7)


def test_interval_differs_with_another_seed():
    y, pred = _right_on(300, 240)
    assert bootstrap_ci(y, pred, _accuracy_rows, seed=0) != bootstrap_ci(y, pred, _accuracy_rows, seed=1)


def test_higher_confidence_gives_a_wider_interval():
    y, pred = _right_on(300, 240)
    low90, high90 = bootstrap_ci(y, pred, _accuracy_rows, confidence=0.90)
    low99, high99 = bootstrap_ci(y, pred, _accuracy_rows, confidence=0.99)
    assert low99 < low90 and high90 < high99


def test_metrics_and_bootstrap_ci_share_resamples(metrics):
    y, probs = _predictions(400)
    assert list(bootstrap_ci(y, probs.argmax(axis=1), _accuracy_rows)) == metrics["accuracy_ci"]


def test_unbatched_metric_gives_the_batched_interval():
    y, pred = _right_on(60, 45)
    batched = bootstrap_ci(y, pred, _accuracy_rows, n_resamples=200)
    one_by_one = bootstrap_ci(y, pred, accuracy_score, n_resamples=200, batched=False)
    assert one_by_one == pytest.approx(batched)


def test_metric_of_the_wrong_shape_is_refused():
    y, pred = _right_on(50, 40)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_ci(y, pred, lambda t, p: t == p)


def test_class_absent_from_the_test_set_has_no_recall_interval():
    y, probs = _predictions(200, n_classes=4)
    keep = y != 3  # the class is still predicted sometimes, so its F1 (0) is defined
    m = classification_metrics(y[keep], probs[keep], LABELS, n_resamples=100)
    assert m["per_class"]["pituitary"]["recall_ci"] == [None, None]
    assert m["per_class"]["pituitary"]["f1_ci"] == [0.0, 0.0]


# ----------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------


def test_ece_is_zero_for_confident_correct_predictions():
    y = np.arange(40) % 4
    assert expected_calibration_error(y, np.eye(4)[y]) == 0.0


@pytest.mark.parametrize("confidence, n_right", [(0.7, 5), (0.7, 7), (0.55, 10), (0.9, 2)])
def test_ece_in_one_bin_is_the_confidence_accuracy_gap(confidence, n_right):
    n = 10
    probs = np.tile([confidence, 1 - confidence], (n, 1))
    y = np.where(np.arange(n) < n_right, 0, 1)
    assert expected_calibration_error(y, probs) == pytest.approx(abs(confidence - n_right / n))


def test_reliability_bins_add_up():
    y, probs = _predictions(300)
    bins = reliability_bins(y, probs)
    assert sum(bins["count"]) == 300
    assert {len(v) for v in bins.values()} == {15}
    assert bins["bin_lower"][0] == 0.0 and bins["bin_upper"][-1] == 1.0


def test_empty_bins_have_no_confidence_or_accuracy():
    y = np.arange(40) % 4
    bins = reliability_bins(y, np.eye(4)[y])
    assert bins["count"][:-1] == [0] * 14 and bins["count"][-1] == 40
    assert bins["confidence"][:-1] == [None] * 14 and bins["accuracy"][-1] == 1.0


def test_ece_is_the_weighted_gap_of_the_reliability_bins():
    y, probs = _predictions(300)
    bins = reliability_bins(y, probs)
    gaps = [c * abs(conf - acc) for c, conf, acc in zip(bins["count"], bins["confidence"], bins["accuracy"]) if c]
    assert expected_calibration_error(y, probs) == pytest.approx(sum(gaps) / 300)


def test_logits_are_refused():
    y, probs = _predictions(20)
    with pytest.raises(ValueError, match="softmax"):
        expected_calibration_error(y, np.log(probs))


# ----------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------


def test_macro_auc_matches_sklearn(metrics):
    y, probs = _predictions(400)
    assert metrics["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


@pytest.mark.parametrize("k", range(len(LABELS)))
def test_class_auc_matches_sklearn(metrics, k):
    y, probs = _predictions(400)
    assert metrics["roc_auc"][LABELS[k]] == pytest.approx(roc_auc_score(y == k, probs[:, k]))


@pytest.mark.parametrize("max_points", [2, 10, 200])
def test_curves_are_thinned_and_keep_their_ends(max_points):
    y, probs = _predictions(2000, skill=0.5)
    for curve in roc_curves(y, probs, LABELS, max_points=max_points).values():
        assert len(curve["fpr"]) == len(curve["tpr"]) <= max_points
        assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
        assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)


def test_curve_is_monotone_after_thinning():
    y, probs = _predictions(2000, skill=0.5)
    curve = roc_curves(y, probs, LABELS, max_points=20)["glioma"]
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)


def test_absent_class_has_no_auc():
    y, probs = _predictions(300)
    keep = y != 2
    m = classification_metrics(y[keep], probs[keep], LABELS, n_resamples=50)
    assert m["roc_auc"]["notumor"] is None
    assert m["roc_curves"]["notumor"] == {"fpr": [], "tpr": [], "auc": None}
    present = [m["roc_auc"][label] for label in LABELS if label != "notumor"]
    assert m["roc_auc_macro"] == pytest.approx(np.mean(present))


def test_single_class_test_set_has_no_auc():
    y, probs = _predictions(100)
    keep = y == 1
    m = classification_metrics(y[keep], probs[keep], LABELS, n_resamples=50)
    assert m["roc_auc_macro"] is None
    assert set(m["roc_auc"].values()) == {None}


# ----------------------------------------------------------------------------------
# Serialisation and the leaderboard row
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["typical", "class absent", "one class", "tiny"])
def test_metrics_are_strict_json(case):
    y, probs = _predictions(300)
    keep = {"typical": y >= 0, "class absent": y != 0, "one class": y == 3, "tiny": np.arange(300) < 3}[case]
    m = classification_metrics(y[keep], probs[keep], LABELS, n_resamples=100)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_leaderboard_row(metrics):
    row = leaderboard_row(metrics)
    expected = ["backbone", "status", "tier", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1",
                "macro_f1_ci_low", "macro_f1_ci_high"]
    expected += [f"{key}_{label}" for label in LABELS for key in ("recall", "f1")]
    expected += ["roc_auc_macro", "ece", "params", "train_s", "image_size", "infer_ms_per_image",
                 "infer_images_per_s", "error"]
    assert list(row) == expected == leaderboard_columns(LABELS)
    assert row["accuracy_ci_low"] == metrics["accuracy_ci"][0]
    assert row["f1_notumor"] == metrics["per_class"]["notumor"]["f1"]


def test_leaderboard_row_of_an_old_metrics_file():
    old = {"accuracy": 0.9, "macro_f1": 0.8, "labels": ["a"], "n_test": 3,
           "per_class": {"a": {"precision": 1.0, "recall": 0.9, "f1": 0.8, "support": 3}}}
    row = leaderboard_row(old)
    assert row["accuracy_ci_low"] is None and row["ece"] is None and row["recall_a"] == 0.9


def test_leaderboard_row_takes_run_facts_from_the_manifest(metrics):
    manifest = {"backbone": "mobilenetv2", "status": "completed", "params": 1234,
                "timings": {"train_s": 5.5}, "config": {"image_size": 64}}
    row = leaderboard_row(metrics, manifest, tier=1)
    assert (row["backbone"], row["params"], row["train_s"], row["image_size"], row["tier"]) == \
        ("mobilenetv2", 1234, 5.5, 64, 1)


def test_named_figures_flattens_intervals_per_class_and_label_tables(metrics):
    figures = named_figures(metrics)
    assert figures["accuracy_ci_high"] == metrics["accuracy_ci"][1]
    assert figures["recall_glioma_ci_low"] == metrics["per_class"]["glioma"]["recall_ci"][0]
    assert figures["roc_auc_glioma"] == metrics["roc_auc"]["glioma"]
    assert not any(name.startswith("bootstrap") for name in figures)


def test_leaderboard_sort_key_puts_tiers_then_accuracy_then_failures_last():
    rows = [{"backbone": "a", "status": "failed"}, {"backbone": "b", "status": "completed", "tier": 2, "accuracy": .9},
            {"backbone": "c", "status": "completed", "tier": 1, "accuracy": .8},
            {"backbone": "d", "status": "completed", "tier": 1, "accuracy": .85}]
    assert [r["backbone"] for r in sorted(rows, key=leaderboard_sort_key)] == ["d", "c", "b", "a"]
