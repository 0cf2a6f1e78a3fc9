"""Tests for ``suite.calibration``: synthetic arrays whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from suite import calibration
from suite.calibration import (
    apply_temperature,
    calibrate,
    conformal_scores,
    conformal_threshold,
    coverage_report,
    fit_temperature,
    log_probs,
    nll,
    prediction_sets,
)

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


def _sample(n: int, k: int, rng: np.random.Generator, *, sharpness: float = 2.0, true_t: float = 1.0):
    """Labels drawn from ``softmax(logits / true_t)``: ``true_t`` is the temperature that calibrates ``logits``."""
    logits = rng.normal(size=(n, k)) * sharpness
    probs = apply_temperature(logits, true_t)
    y = np.array([rng.choice(k, p=p) for p in probs])
    return logits, y


# -- temperature ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0, 4.0])
def test_fit_temperature_recovers_the_temperature_that_made_the_labels(true_t):
    logits, y = _sample(4000, 4, np.random.default_rng(0), true_t=true_t)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.12)


def test_over_confident_logits_get_t_above_one_and_lower_nll_and_ece():
    from suite.metrics import expected_calibration_error

    logits, y = _sample(3000, 4, np.random.default_rng(1), true_t=1.0)
    over = logits * 3.0  # the same ranking, three times too sure
    t = fit_temperature(over, y)
    assert t > 1.5
    assert nll(over, y, t) < nll(over, y)
    probs = apply_temperature(over, 1.0)
    assert expected_calibration_error(y, apply_temperature(over, t)) < expected_calibration_error(y, probs)


def test_under_confident_logits_get_t_below_one():
    logits, y = _sample(3000, 4, np.random.default_rng(2), true_t=1.0)
    assert fit_temperature(logits / 3.0, y) < 0.7


def test_fit_temperature_is_the_minimum_of_the_nll():
    logits, y = _sample(500, 3, np.random.default_rng(3), true_t=1.7)
    t = fit_temperature(logits, y)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 400))
    assert nll(logits, y, t) <= min(nll(logits, y, g) for g in grid) + 1e-9


def test_fit_temperature_stops_at_its_bounds():
    y = np.array([0, 1] * 50)
    wrong_but_sure = np.log(np.where(np.eye(2)[1 - y] > 0, 0.99, 0.01))  # always the other class
    assert fit_temperature(wrong_but_sure, y, bounds=(0.5, 3.0)) == 3.0


def test_log_probs_give_back_the_probabilities_at_t_one():
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    assert apply_temperature(log_probs(probs), 1.0) == pytest.approx(probs, abs=1e-9)


def test_temperature_keeps_the_predicted_class_and_sums_to_one():
    logits, _ = _sample(200, 5, np.random.default_rng(4))
    for t in (0.3, 1.0, 7.0):
        probs = apply_temperature(logits, t)
        assert np.array_equal(probs.argmax(1), logits.argmax(1))
        assert probs.sum(1) == pytest.approx(np.ones(200))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_apply_temperature_refuses_a_non_positive_t(bad):
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(np.zeros((2, 2)), bad)


# -- conformal -----------------------------------------------------------------------------------------------

def test_scores_are_the_cumulative_mass_down_to_each_class_plus_the_rank_penalty():
    probs = np.array([[0.1, 0.6, 0.3]])
    assert conformal_scores(probs, penalty=0.0) == pytest.approx(np.array([[1.0, 0.6, 0.9]]))
    assert conformal_scores(probs, penalty=0.1, k_reg=1) == pytest.approx(np.array([[1.2, 0.6, 1.0]]))


def test_conformal_threshold_is_the_right_order_statistic():
    probs = np.tile([[0.5, 0.3, 0.2]], (19, 1))  # true-class APS scores: 0.5, 0.8 or 1.0
    y = np.array([0] * 10 + [1] * 7 + [2] * 2)
    # (19 + 1) * 0.9 = 18: the 18th smallest score is 1.0 (scores: ten 0.5, seven 0.8, two 1.0)
    assert conformal_threshold(probs, y, 0.9, penalty=0.0) == pytest.approx(1.0)
    assert conformal_threshold(probs, y, 0.9, penalty=0.01) == pytest.approx(1.02)
    # (19 + 1) * 0.5 = 10: the 10th smallest is 0.5
    assert conformal_threshold(probs, y, 0.5) == pytest.approx(0.5)


def test_conformal_threshold_is_unbounded_with_too_few_images():
    probs = np.full((18, 2), 0.5)
    assert conformal_threshold(probs, np.zeros(18, dtype=int), 0.95) == math.inf
    assert math.isfinite(conformal_threshold(np.full((19, 2), 0.5), np.zeros(19, dtype=int), 0.95))


def test_prediction_sets_hold_the_top_class_and_grow_with_the_threshold():
    probs = np.array([[0.95, 0.03, 0.02], [0.4, 0.35, 0.25]])
    assert prediction_sets(probs, 0.5).tolist() == [[True, False, False], [True, False, False]]
    assert prediction_sets(probs, 0.8, penalty=0.0).tolist() == [[True, False, False], [True, True, False]]
    assert prediction_sets(probs, 0.8).tolist() == [[True, False, False], [True, True, False]]  # 0.75 + 0.01
    assert prediction_sets(probs, 0.985).tolist() == [[True, False, False], [True, True, False]]  # 0.98 + 0.01
    assert prediction_sets(probs, 0.995).tolist() == [[True, True, False], [True, True, False]]
    assert prediction_sets(probs, math.inf).all() and prediction_sets(probs, None).all()


@pytest.mark.parametrize("penalty", [0.0, 0.01])
@pytest.mark.parametrize("coverage", [0.90, 0.95])
def test_conformal_coverage_holds_on_exchangeable_data_over_many_seeds(coverage, penalty):
    covered = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        logits, y = _sample(600, 4, rng, sharpness=1.5, true_t=1.0)
        probs = apply_temperature(logits * 2.0, 1.0)  # a miscalibrated model: coverage must not care
        q = conformal_threshold(probs[:300], y[:300], coverage, penalty)
        covered.append(coverage_report(prediction_sets(probs[300:], q, penalty), y[300:], LABELS)["coverage"])
    assert np.mean(covered) >= coverage - 0.005
    assert np.mean(covered) <= coverage + 0.035  # conservative, not trivially so
    assert np.quantile(covered, 0.05) >= coverage - 0.05


def test_sets_shrink_as_the_model_improves():
    sizes = []
    for sharpness in (0.5, 1.5, 4.0, 8.0):
        logits, y = _sample(4000, 4, np.random.default_rng(5), sharpness=sharpness)
        probs = apply_temperature(logits, 1.0)
        q = conformal_threshold(probs[:2000], y[:2000], 0.9)
        sizes.append(coverage_report(prediction_sets(probs[2000:], q), y[2000:], LABELS)["mean_set_size"])
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]
    assert sizes[3] < 1.2  # a 91%-accurate model: mostly one class


def test_the_rank_penalty_keeps_a_confident_models_sets_small():
    logits, y = _sample(4000, 4, np.random.default_rng(5), sharpness=8.0)
    probs = apply_temperature(logits, 1.0)
    size = {}
    for penalty in (0.0, 0.01):
        q = conformal_threshold(probs[:2000], y[:2000], 0.9, penalty)
        size[penalty] = coverage_report(prediction_sets(probs[2000:], q, penalty), y[2000:], LABELS)["mean_set_size"]
    assert size[0.0] > 1.8 and size[0.01] < 1.2


def test_coverage_report_per_class_and_set_sizes():
    sets = np.array([[True, False, False, False], [True, True, False, False], [False, False, True, True],
                     [True, True, True, True]])
    y = np.array([0, 2, 2, 1])
    report = coverage_report(sets, y, LABELS)
    assert report["coverage"] == pytest.approx(0.75)
    assert report["per_class_coverage"] == {"glioma": 1.0, "meningioma": 1.0, "notumor": 0.5, "pituitary": None}
    assert report["mean_set_size"] == pytest.approx(9 / 4)
    assert report["set_size_counts"] == [1, 2, 0, 1]
    assert report["n"] == 4


# -- the record a run writes ------------------------------------------------------------------------------

def _split(n_val: int, seed: int = 6):
    logits, y = _sample(n_val + 800, 4, np.random.default_rng(seed), true_t=1.0)
    probs = apply_temperature(logits * 2.5, 1.0)  # over-confident
    return probs[:n_val], y[:n_val], probs[n_val:], y[n_val:]


def test_calibrate_writes_a_plain_json_record_with_both_levels():
    record = calibrate(*_split(400), LABELS)
    json.loads(json.dumps(record, allow_nan=False))
    assert record["status"] == "fitted" and record["reason"] is None
    assert record["temperature"] > 1.5
    assert record["nll_val_after"] < record["nll_val_before"]
    assert record["ece_test_after"] < record["ece_test_before"]
    assert sum(record["reliability_test_after"]["count"]) == record["n_test"] == 800
    assert [lv["target"] for lv in record["conformal"]["levels"]] == [0.90, 0.95]
    for lv in record["conformal"]["levels"]:
        assert lv["coverage"] >= lv["target"] - 0.04
        assert set(lv["per_class_coverage"]) == set(LABELS)
    summary = calibration.summary(record)
    assert set(summary) == {"status", "temperature", "ece_before", "ece_after", "coverage_90", "set_size_90",
                            "coverage_95", "set_size_95"}
    assert calibration.level(record, 0.95)["target"] == 0.95


@pytest.mark.parametrize("n_val, why", [(0, "no validation split"), (19, "only 19 validation images")])
def test_calibrate_skips_with_a_reason_when_validation_is_too_small(n_val, why):
    record = calibrate(*_split(n_val), LABELS)
    assert record["status"] == "skipped"
    assert why in record["reason"] and "at least 20" in record["reason"]
    assert calibration.summary(record) == {"status": "skipped", "reason": record["reason"]}
    assert calibration.level(record) is None


def test_calibrate_at_the_minimum_has_finite_thresholds():
    record = calibrate(*_split(20), LABELS)
    assert record["status"] == "fitted"
    assert all(lv["threshold"] is not None for lv in record["conformal"]["levels"])


# -- a run writes it, predict applies it -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("val_fraction, fitted", [(0.1, False), (0.6, True)])
def test_a_run_records_its_calibration_and_predict_applies_it(tiny_data, tmp_path, capsys, val_fraction, fitted):
    from suite import runs
    from suite.cli import main

    out = tmp_path / "runs"
    assert main(["run", "--data", str(tiny_data), "--backbone", "mobilenetv2", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--weights", "none", "--val-fraction", str(val_fraction), "--out", str(out),
                 "--quiet"]) == 0
    run_dir = next(out.glob("*-mobilenetv2"))
    record = json.loads((run_dir / runs.CALIBRATION).read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / runs.METRICS).read_text(encoding="utf-8"))
    assert record["status"] == ("fitted" if fitted else "skipped")
    assert metrics["calibration"] == calibration.summary(record)
    assert 'id="calibration"' in (run_dir / runs.REPORT).read_text(encoding="utf-8")
    image = next(p for p in (tiny_data / "Testing").rglob("*") if p.is_file())
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["calibration"]["applied"] is fitted
    if fitted:
        assert sum(result["calibrated_probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert result["prediction_set"][0] == result["predicted"]
    else:
        assert "calibrated_probabilities" not in result and "at least 20" in result["calibration"]["reason"]
