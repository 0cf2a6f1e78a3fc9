"""Calibration and prediction sets: pure functions over arrays.

Two things a finished model's probabilities are missing, both fitted on the validation split
and checked on the test split:

* **Temperature scaling** (Guo et al. 2017): one scalar ``T`` divides the logits (here the
  log-probabilities, which differ from the network's logits by a per-image constant and so
  give the same softmax); ``T`` minimises the validation negative log-likelihood, found by a
  bounded 1-D search over ``log T``. ``T > 1`` softens an over-confident model, ``T < 1``
  sharpens an under-confident one; the predicted class never changes.
* **Split-conformal prediction sets** with RAPS, regularised adaptive prediction sets
  (Angelopoulos et al. 2021), **non-randomised**: a class's score is the probability of the
  classes ranked at or above it plus ``penalty`` for every rank past ``k_reg``; a set holds the
  classes whose score is within a threshold fitted on the validation split, and always the top
  class. The non-randomised variant is chosen because a set must be a property of the image:
  the same scan gives the same set every time (``suite predict``), and no set is empty. Its
  price is a coverage a little above the target (it is conservative), never below it in
  expectation on exchangeable data. The penalty is what keeps that price small: without it
  (plain APS, ``penalty=0``) a confident model's near-zero classes all fit under a threshold
  just below 1, and the sets of a 91%-accurate model on synthetic data hold two of four
  classes on average and cover 99% at a 90% target; with 0.01 past the first rank, the extra
  classes must earn their place.

The sets are computed on the raw probabilities, not the temperature-scaled ones, so the
conformal threshold does not depend on another parameter fitted on the same validation images.
Temperature scaling keeps the order of the classes, so a set is a top-k of either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from suite.metrics import N_BINS, expected_calibration_error, reliability_bins

SCHEMA = 1
MIN_VAL_IMAGES = 20
"""Fewer validation images than this skip calibration: below 19 the 95% conformal threshold is
unbounded (every set is every class), and ``T`` fitted on a handful of images is noise."""
COVERAGES = (0.90, 0.95)
DEFAULT_COVERAGE = 0.95
TEMPERATURE_BOUNDS = (0.05, 20.0)
PENALTY = 0.01
K_REG = 1
METHOD = "RAPS (regularised adaptive prediction sets), split-conformal, non-randomised, top class always in the set"
_EPS = 1e-12  # floor of a probability before its log: a zero probability would be -inf


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits for temperature scaling: ``log p`` (``p`` floored at 1e-12), float64, shape ``(n, k)``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (n, n_classes >= 2), got {probs.shape}")
    return np.log(np.clip(probs, _EPS, 1.0))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature``: the calibrated probabilities, shape ``(n, k)``.

    Args:
        logits: shape ``(n, k)``; log-probabilities from :func:`log_probs` will do.
        temperature: ``T > 0``; 1 leaves the probabilities as they were.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    y = np.asarray(y_true, dtype=np.int64)
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature ``T`` minimising the mean NLL of ``y_true`` under ``softmax(logits / T)``.

    A bounded scalar search (Brent's method in ``scipy.optimize.minimize_scalar``) over
    ``log T``; the NLL is convex in ``1 / T``, so the minimum found is the only one. A result
    at a bound means the data want a more extreme ``T`` than allowed.

    Args:
        logits: shape ``(n, k)`` (log-probabilities from :func:`log_probs` will do).
        y_true: integer labels, shape ``(n,)``.
        bounds: the range searched for ``T``. Defaults to ``(0.05, 20)``.

    Raises:
        ValueError: no images, or labels and logits that do not match.
    """
    from scipy.optimize import minimize_scalar

    logits, y_true = np.asarray(logits, dtype=np.float64), np.asarray(y_true, dtype=np.int64)
    _check(logits, y_true)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    found = minimize_scalar(lambda t: nll(logits, y_true, math.exp(t)), bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-6})
    best = float(math.exp(found.x))
    # the bounded search never evaluates the bounds themselves: take one if it is better
    return min((bounds[0], best, bounds[1]), key=lambda t: nll(logits, y_true, t))


def conformal_scores(probs: np.ndarray, penalty: float = PENALTY, k_reg: int = K_REG) -> np.ndarray:
    """Each class's RAPS score, shape ``(n, k)``: the total probability of the classes ranked at or
    above it, plus ``penalty`` for each rank past ``k_reg`` (``penalty=0`` gives plain APS).

    Classes are ranked by descending probability, ties by class index, so scores are reproducible.

    Args:
        probs: class probabilities, shape ``(n, k)``.
        penalty: the price of each rank past ``k_reg``. Defaults to 0.01.
        k_reg: how many top ranks go unpenalised. Defaults to 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    ranks = np.arange(1, probs.shape[1] + 1)
    cumulative = (np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
                  + penalty * np.maximum(0, ranks - k_reg))
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def conformal_threshold(probs: np.ndarray, y_true: np.ndarray, coverage: float = DEFAULT_COVERAGE,
                        penalty: float = PENALTY, k_reg: int = K_REG) -> float:
    """The split-conformal RAPS threshold for sets that hold the true class with probability >= ``coverage``.

    The ``ceil((n + 1) * coverage)``-th smallest of the calibration images' true-class scores.

    Args:
        probs: calibration (validation) probabilities, shape ``(n, k)``.
        y_true: their integer labels, shape ``(n,)``.
        coverage: the target, in ``(0, 1)``. Defaults to 0.95.
        penalty, k_reg: see :func:`conformal_scores`.

    Returns:
        The threshold; ``inf`` when there are too few images for the target (every set is
        then every class): fewer than ``coverage / (1 - coverage)`` of them.
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true, dtype=np.int64)
    _check(probs, y_true)
    n = len(y_true)
    rank = math.ceil((n + 1) * coverage - 1e-9)  # the 1e-9 keeps 0.95 * 20 from rounding up past 19
    if rank > n:
        return math.inf
    true_scores = conformal_scores(probs, penalty, k_reg)[np.arange(n), y_true]
    return float(np.sort(true_scores)[rank - 1])


def prediction_sets(probs: np.ndarray, threshold: float | None, penalty: float = PENALTY,
                    k_reg: int = K_REG) -> np.ndarray:
    """RAPS sets: boolean mask ``(n, k)``, the classes whose score is within ``threshold``, and the top class.

    Args:
        probs: class probabilities, shape ``(n, k)``.
        threshold: from :func:`conformal_threshold` (the same ``penalty`` and ``k_reg``); ``None``
            or ``inf`` (too few calibration images) gives every class.
        penalty, k_reg: see :func:`conformal_scores`.
    """
    probs = np.asarray(probs, dtype=np.float64)
    threshold = math.inf if threshold is None else threshold
    sets = conformal_scores(probs, penalty, k_reg) <= threshold
    sets[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return sets


def coverage_report(sets: np.ndarray, y_true: np.ndarray, labels: Sequence[str]) -> dict:
    """How often the sets hold the true class, overall and per class, and how large they are.

    Returns:
        ``coverage``, ``per_class_coverage`` (``{label: share or None}``: ``None`` for a class
        with no image), ``mean_set_size``, ``set_size_counts`` (``[sets of size 1, 2, ..., k]``)
        and ``n``.
    """
    sets, y_true = np.asarray(sets, dtype=bool), np.asarray(y_true, dtype=np.int64)
    n, k = sets.shape
    hit = sets[np.arange(n), y_true] if n else np.zeros(0, dtype=bool)
    sizes = sets.sum(axis=1)
    per_class = {}
    for i, label in enumerate(labels):
        mine = y_true == i
        per_class[str(label)] = float(hit[mine].mean()) if mine.any() else None
    return {
        "coverage": float(hit.mean()) if n else None,
        "per_class_coverage": per_class,
        "mean_set_size": float(sizes.mean()) if n else None,
        "set_size_counts": [int(c) for c in np.bincount(sizes, minlength=k + 1)[1:]],
        "n": int(n),
    }


def calibrate(val_probs: np.ndarray, y_val: np.ndarray, test_probs: np.ndarray, y_test: np.ndarray,
              labels: Sequence[str], coverages: Sequence[float] = COVERAGES,
              min_val: int = MIN_VAL_IMAGES) -> dict:
    """The calibration record of a run (what ``calibration.json`` holds): fitted on val, checked on test.

    Args:
        val_probs, y_val: the validation split's probabilities ``(n, k)`` and labels.
        test_probs, y_test: the test split's.
        labels: class names, in column order.
        coverages: conformal targets. Defaults to 0.90 and 0.95.
        min_val: fewer validation images skip calibration (see :data:`MIN_VAL_IMAGES`). Defaults to 20.

    Returns:
        The record of :func:`skipped` when there are too few validation images; else
        ``status`` "fitted", ``temperature``, ``temperature_bounds``, ``at_bound``,
        ``nll_val_before``/``_after``, ``ece_test_before``/``_after``, ``reliability_test_before``/
        ``_after`` (see :func:`suite.metrics.reliability_bins`), and ``conformal``: ``method``,
        ``scores_on``, ``default_coverage`` and ``levels``, one per target, each with ``target``,
        ``threshold`` and the test :func:`coverage_report`.
    """
    n_val = len(y_val)
    if n_val < min_val:
        why = "the run has no validation split" if n_val == 0 else f"only {n_val} validation images"
        return skipped(f"{why}; calibration needs at least {min_val}", n_val=n_val, n_test=len(y_test))
    val_logits, test_logits = log_probs(val_probs), log_probs(test_probs)
    temperature = fit_temperature(val_logits, y_val)
    calibrated = apply_temperature(test_logits, temperature)
    levels = []
    for target in sorted(coverages):
        threshold = conformal_threshold(val_probs, y_val, target)
        levels.append({"target": float(target), "threshold": threshold if math.isfinite(threshold) else None,
                       **coverage_report(prediction_sets(test_probs, threshold), y_test, labels)})
    return {
        "schema": SCHEMA,
        "status": "fitted",
        "reason": None,
        "n_val": int(n_val),
        "n_test": int(len(y_test)),
        "min_val": int(min_val),
        "temperature": temperature,
        "temperature_bounds": list(TEMPERATURE_BOUNDS),
        "at_bound": temperature in TEMPERATURE_BOUNDS,
        "nll_val_before": nll(val_logits, y_val),
        "nll_val_after": nll(val_logits, y_val, temperature),
        "ece_bins": N_BINS,
        "ece_test_before": expected_calibration_error(y_test, test_probs, N_BINS),
        "ece_test_after": expected_calibration_error(y_test, calibrated, N_BINS),
        "reliability_test_before": reliability_bins(y_test, test_probs, N_BINS),
        "reliability_test_after": reliability_bins(y_test, calibrated, N_BINS),
        "conformal": {"method": METHOD, "penalty": PENALTY, "k_reg": K_REG, "scores_on": "raw probabilities",
                      "default_coverage": DEFAULT_COVERAGE, "levels": levels},
    }


def skipped(reason: str, *, n_val: int = 0, n_test: int = 0) -> dict:
    """The calibration record of a run that was not calibrated, saying why."""
    return {"schema": SCHEMA, "status": "skipped", "reason": reason, "n_val": int(n_val), "n_test": int(n_test),
            "min_val": MIN_VAL_IMAGES}


def summary(record: Mapping) -> dict:
    """The ``calibration`` entry of ``metrics.json``: the headline figures of a calibration record."""
    if record.get("status") != "fitted":
        return {"status": record.get("status"), "reason": record.get("reason")}
    out = {"status": "fitted", "temperature": record["temperature"], "ece_before": record["ece_test_before"],
           "ece_after": record["ece_test_after"]}
    for level in record["conformal"]["levels"]:
        pct = round(100 * level["target"])
        out[f"coverage_{pct}"] = level["coverage"]
        out[f"set_size_{pct}"] = level["mean_set_size"]
    return out


def level(record: Mapping, target: float = DEFAULT_COVERAGE) -> Mapping | None:
    """The conformal level of ``record`` for ``target``, or ``None`` (not fitted, or not that target)."""
    levels = (record.get("conformal") or {}).get("levels") or []
    return next((lv for lv in levels if math.isclose(lv.get("target", -1), target)), None)


def _check(scores: np.ndarray, y_true: np.ndarray) -> None:
    if scores.ndim != 2 or len(scores) != len(y_true) or len(y_true) == 0:
        raise ValueError(f"need (n, k) scores and n labels with n > 0, got {scores.shape} and {y_true.shape}")
    if y_true.min() < 0 or y_true.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]})")
