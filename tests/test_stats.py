"""Tests for ``suite.stats``: McNemar, Holm, pairwise verdicts and leaderboard tiers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest, chi2

from suite.stats import format_p, holm, mcnemar, p_matrix, pairwise_tests, tie_groups


def _pair(only_a: int, only_b: int, both: int = 50, neither: int = 10):
    """Correctness arrays with the given discordant and concordant counts, shuffled alike."""
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    order = np.random.default_rng(3).permutation(a.size)
    return a[order], b[order]


def _right_on(n_right: int, n: int = 400, seed: int = 0) -> np.ndarray:
    """A model that is right on ``n_right`` of ``n`` images chosen at random."""
    correct = np.zeros(n, dtype=bool)
    correct[np.random.default_rng(seed).choice(n, n_right, replace=False)] = True
    return correct


# ----------------------------------------------------------------------------------
# McNemar
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("only_a, only_b", [(7, 2), (0, 5), (12, 12), (1, 0), (20, 4)])
def test_exact_mcnemar_matches_binomtest(only_a, only_b):
    result = mcnemar(*_pair(only_a, only_b))
    assert result["method"] == "exact"
    assert (result["only_a"], result["only_b"]) == (only_a, only_b)
    assert result["p_value"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)


@pytest.mark.parametrize("only_a, only_b", [(30, 10), (10, 40), (20, 5), (100, 80)])
def test_chi2_mcnemar_matches_hand_computation(only_a, only_b):
    result = mcnemar(*_pair(only_a, only_b))
    statistic = (abs(only_a - only_b) - 1) ** 2 / (only_a + only_b)
    assert result["method"] == "chi2"
    assert result["statistic"] == pytest.approx(statistic)
    assert result["p_value"] == pytest.approx(chi2.sf(statistic, 1))


@pytest.mark.parametrize("only_a, only_b, method", [(14, 10, "exact"), (15, 10, "chi2")])
def test_method_switches_at_25_discordant_pairs(only_a, only_b, method):
    assert mcnemar(*_pair(only_a, only_b))["method"] == method


def test_no_discordant_pair_gives_p_one():
    a, b = _pair(0, 0)
    assert mcnemar(a, b) == {"only_a": 0, "only_b": 0, "statistic": 0.0, "p_value": 1.0,
                             "method": "exact", "n": 60}


def test_equal_large_counts_give_p_one():
    assert mcnemar(*_pair(20, 20))["p_value"] == 1.0


def test_mcnemar_is_symmetric():
    a, b = _pair(30, 12)
    assert mcnemar(a, b)["p_value"] == mcnemar(b, a)["p_value"]


@pytest.mark.parametrize("a, b, match", [
    ([True, False], [True], "same images"),
    ([0, 2, 1], [1, 1, 0], "booleans"),
    ([[True]], [[True]], "1-D"),
])
def test_mcnemar_refuses_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        mcnemar(a, b)


# ----------------------------------------------------------------------------------
# Holm
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, adjusted", [
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
    ([0.01, 0.02, 0.03, 0.04], [0.04, 0.06, 0.06, 0.06]),
    ([0.5, 0.6], [1.0, 1.0]),
    ([0.02], [0.02]),
    ([], []),
])
def test_holm_matches_hand_worked_examples(raw, adjusted):
    assert holm(raw) == pytest.approx(adjusted)


def test_holm_keeps_the_order_of_the_raw_p_values():
    raw = np.random.default_rng(0).uniform(0, 0.2, 12)
    adjusted = np.array(holm(raw))
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1)


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [1.5], [-0.1]])
def test_holm_refuses_non_p_values(bad):
    with pytest.raises(ValueError):
        holm(bad)


# ----------------------------------------------------------------------------------
# Pairwise tests and sentences
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_models", [1, 2, 3, 5])
def test_every_unordered_pair_is_tested_once(n_models):
    correct = {f"m{i}": _right_on(300 + 10 * i, seed=i) for i in range(n_models)}
    tests = pairwise_tests(correct)
    names = list(correct)
    assert [(t["a"], t["b"]) for t in tests] == [
        (names[i], names[j]) for i in range(n_models) for j in range(i + 1, n_models)
    ]


def test_pairwise_fields_and_holm_correction():
    correct = {"a": _right_on(390), "b": _right_on(300, seed=1), "c": _right_on(305, seed=2)}
    tests = pairwise_tests(correct)
    assert [t["p_holm"] for t in tests] == pytest.approx(holm([t["p_value"] for t in tests]))
    first = tests[0]
    assert first["accuracy_a"] == pytest.approx(390 / 400) and first["accuracy_b"] == pytest.approx(300 / 400)
    assert first["significant"] and first["winner"] == "a"
    assert tests[2]["winner"] is None and not tests[2]["significant"]


def test_winner_is_the_more_accurate_model_in_either_order():
    tests = pairwise_tests({"weak": _right_on(300), "strong": _right_on(390, seed=1)})
    assert tests[0]["winner"] == "strong"
    assert tests[0]["sentence"] == (
        "strong is better than weak (p < 0.001, Holm-corrected McNemar; 0.975 vs 0.750 accuracy)"
    )


def test_tied_sentence():
    a, b = _pair(12, 10)
    (test,) = pairwise_tests({"efficientnetb0": a, "mobilenetv2": b})
    p = format_p(test["p_holm"])
    assert test["sentence"] == f"efficientnetb0 and mobilenetv2 are statistically tied ({p}, Holm-corrected McNemar)"


def test_alpha_decides_significance():
    a, b = _pair(30, 14)  # p about 0.02
    assert pairwise_tests({"a": a, "b": b}, alpha=0.05)[0]["significant"]
    assert not pairwise_tests({"a": a, "b": b}, alpha=0.01)[0]["significant"]


@pytest.mark.parametrize("p, text", [
    (0.41, "p = 0.41"), (0.1, "p = 0.10"), (0.032, "p = 0.032"), (0.003, "p = 0.003"),
    (0.001, "p = 0.001"), (0.0004, "p < 0.001"), (1.0, "p = 1.00"),
])
def test_format_p(p, text):
    assert format_p(p) == text


def test_pairwise_tests_are_strict_json():
    correct = {"a": _right_on(390), "b": _right_on(300, seed=1), "c": _right_on(300, seed=1)}
    tests = pairwise_tests(correct)
    assert json.loads(json.dumps(tests, allow_nan=False)) == tests


# ----------------------------------------------------------------------------------
# Tiers and the p-value matrix
# ----------------------------------------------------------------------------------


def test_identical_models_share_a_tier_below_a_clearly_better_one():
    correct = {"b": _right_on(300, seed=1), "a": _right_on(390), "b_copy": _right_on(300, seed=1)}
    accuracy = {name: float(c.mean()) for name, c in correct.items()}
    assert tie_groups(accuracy, pairwise_tests(correct)) == {"a": 1, "b": 2, "b_copy": 2}


def test_indistinguishable_models_are_all_tier_one():
    a, b = _pair(11, 9)
    correct = {"a": a, "b": b, "a_copy": a.copy()}
    accuracy = {name: float(c.mean()) for name, c in correct.items()}
    assert set(tie_groups(accuracy, pairwise_tests(correct)).values()) == {1}


def test_tiers_need_every_pair_tested():
    tests = pairwise_tests({"a": _right_on(390), "b": _right_on(300, seed=1)})
    with pytest.raises(ValueError, match="no test between"):
        tie_groups({"a": 0.975, "b": 0.75, "c": 0.5}, tests)


def test_p_matrix_is_symmetric_with_an_empty_diagonal():
    correct = {"a": _right_on(390), "b": _right_on(300, seed=1), "c": _right_on(310, seed=2)}
    tests = pairwise_tests(correct)
    names = ["c", "a", "b"]
    matrix = p_matrix(names, tests)
    assert [matrix[i][i] for i in range(3)] == [None] * 3
    assert all(matrix[i][j] == matrix[j][i] for i in range(3) for j in range(3))
    assert matrix[1][2] == tests[0]["p_holm"]  # a vs b
