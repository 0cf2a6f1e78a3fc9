"""Paired significance tests between models scored on the same test images.

Two models evaluated on the same images are paired: only the images where exactly one
of them is right say anything about which is better. McNemar's test uses exactly those,
Holm's step-down method keeps the chance of any false "better" across all pairs at
``alpha``, and :func:`tie_groups` turns the results into leaderboard tiers.

With several training seeds per model (``--seeds N``) a second source of variation enters:
the same backbone trained twice on the same split scores differently. McNemar's test sees
one model per side and so ignores it. :func:`seed_bootstrap` resamples both sources at once,
the test images (the same resample for both models: still paired on images) and, within each
model, its seeds, and reads the p-value off the distribution of the accuracy difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

EXACT_BELOW = 25
"""Fewer discordant pairs than this use the exact binomial test; the chi-square
approximation is poor for small counts."""


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test of two models' accuracy on the same images.

    Args:
        correct_a: whether model a got each image right, booleans (or 0/1), shape ``(n,)``.
        correct_b: the same for model b, same images in the same order.

    Returns:
        ``only_a`` (a right, b wrong), ``only_b``, ``statistic``, ``p_value`` (two-sided),
        ``method`` and ``n``. With fewer than 25 discordant pairs, ``method`` is
        ``"exact"``: a binomial test of ``only_a`` out of ``only_a + only_b`` at p = 0.5,
        whose ``statistic`` is ``min(only_a, only_b)``. Otherwise it is ``"chi2"``:
        ``(|only_a - only_b| - 1)^2 / (only_a + only_b)`` on 1 degree of freedom, the
        correction clipped at 0 so that equal counts give p = 1. No discordant pair at all
        gives p = 1.
    """
    from scipy.stats import binomtest, chi2

    a, b = _as_correct(correct_a, "correct_a"), _as_correct(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must cover the same images, got {a.shape} and {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    if discordant < EXACT_BELOW:
        method, statistic = "exact", float(min(only_a, only_b))
        p_value = binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    else:
        method = "chi2"
        statistic = max(abs(only_a - only_b) - 1, 0) ** 2 / discordant
        p_value = chi2.sf(statistic, df=1)
    return {"only_a": only_a, "only_b": only_b, "statistic": float(statistic),
            "p_value": float(p_value), "method": method, "n": int(a.size)}


SEED_METHOD = "bootstrap over test images (paired) and seeds"
N_BOOTSTRAP = 4000


def seed_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, *, n_resamples: int = N_BOOTSTRAP,
                   seed: int = 0, confidence: float = 0.95) -> dict:
    """Two-level bootstrap of the accuracy difference of two models trained under several seeds.

    Each resample draws the test images with replacement (one draw for both models, which
    keeps them paired on images) and, independently for each model, its seeds with
    replacement; the difference of mean accuracy over the drawn seeds and images is one
    sample. The two-sided p-value is twice the share of samples on the far side of zero.

    Args:
        correct_a: whether each seed of model a got each image right, shape ``(seeds_a, n)``.
        correct_b: the same for model b, shape ``(seeds_b, n)``, same images in the same order.
        n_resamples: bootstrap resamples. Defaults to 4000.
        seed: seed of the resampling.
        confidence: coverage of ``ci``.

    Returns:
        ``diff`` (accuracy a - b), ``ci`` of the difference, ``p_value``, ``method``, ``n``
        (images), ``seeds_a``, ``seeds_b``.
    """
    a, b = _as_seed_matrix(correct_a, "correct_a"), _as_seed_matrix(correct_b, "correct_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"correct_a and correct_b must cover the same images, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples) / n  # image resample, shared
    diffs = _seed_means(weights @ a.T, rng) - _seed_means(weights @ b.T, rng)
    p_value = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    tail = (1 - confidence) / 2
    return {"diff": float(a.mean() - b.mean()), "ci": [float(v) for v in np.quantile(diffs, [tail, 1 - tail])],
            "p_value": float(p_value), "method": SEED_METHOD, "n": int(n),
            "seeds_a": int(a.shape[0]), "seeds_b": int(b.shape[0])}


def _seed_means(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per resample, the mean over seeds drawn with replacement of ``per_seed`` (resamples x seeds)."""
    n_resamples, n_seeds = per_seed.shape
    drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    return np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)


def _as_seed_matrix(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise ValueError(f"{name} must be (seeds, images), got shape {values.shape}")
    return np.stack([_as_correct(row, name) for row in values]).astype(np.float64)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by ``m - i`` (i from 0), then a running
    maximum keeps the adjusted values in the same order as the raw ones, capped at 1.

    Args:
        p_values: raw p-values.

    Returns:
        Adjusted p-values; compare them with ``alpha`` directly.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p_values must be a flat sequence of numbers in [0, 1], got {p_values!r}")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(v) for v in adjusted]


def pairwise_tests(correct: Mapping[str, np.ndarray], alpha: float = 0.05) -> list[dict]:
    """A paired test for every pair of models, Holm-corrected across all pairs.

    McNemar's test when each model is one trained network; :func:`seed_bootstrap` when any
    model was trained under several seeds (its correctness is then ``(seeds, images)``).

    Args:
        correct: model name -> per-image correctness on the same test images, in the same order,
            shape ``(n,)``, or ``(seeds, n)`` for a model trained under several seeds.
        alpha: family-wise error rate. Defaults to 0.05.

    Returns:
        One dict per unordered pair, in the order of ``itertools.combinations`` over the
        mapping: ``a``, ``b``, ``accuracy_a``, ``accuracy_b``, ``method``, ``p_value`` (raw),
        ``p_holm``, ``significant`` (``p_holm < alpha``), ``winner`` (the more accurate name
        when significant, else ``None``) and ``sentence``; McNemar adds ``only_a`` and
        ``only_b``, the seed bootstrap ``diff_ci``, ``seeds_a`` and ``seeds_b``.
    """
    pairs = list(combinations(correct, 2))
    seeded = any(np.ndim(c) == 2 and np.shape(c)[0] > 1 for c in correct.values())
    test = seed_bootstrap if seeded else (lambda a, b: mcnemar(np.ravel(a), np.ravel(b)))
    raw = [test(correct[a], correct[b]) for a, b in pairs]
    adjusted = holm([r["p_value"] for r in raw])
    return [_pair_result(a, b, correct, r, p, alpha) for (a, b), r, p in zip(pairs, raw, adjusted)]


def tie_groups(accuracy: Mapping[str, float], tests: Sequence[dict]) -> dict[str, int]:
    """Leaderboard tiers: models not significantly different from a tier's leader share its tier.

    Models are sorted by accuracy, best first. Tier 1 is the best model and every model
    not significantly different from it; those are set aside and the best remaining model
    leads tier 2, and so on.

    This grouping is conservative: it never places a model below the leader of a tier
    unless the test says it is worse than that leader. The price is that members of one
    tier may still differ significantly from each other, and, because McNemar's power
    depends on how many images two models disagree on, a model can land in a lower tier
    than a less accurate one. Read a tier as "not shown worse than its leader", not as
    "equal".

    Args:
        accuracy: model name -> accuracy; every pair of these names must appear in ``tests``.
        tests: the output of :func:`pairwise_tests`.

    Returns:
        Model name -> tier, 1 being the best.
    """
    significant = _pair_lookup(tests, "significant")
    remaining = sorted(accuracy, key=lambda name: -accuracy[name])  # stable: ties keep input order
    tiers, tier = {}, 0
    while remaining:
        tier += 1
        leader = remaining[0]
        members = [m for m in remaining if m == leader or not _pair_value(significant, leader, m)]
        tiers.update((m, tier) for m in members)
        remaining = [m for m in remaining if m not in tiers]
    return tiers


def p_matrix(names: Sequence[str], tests: Sequence[dict]) -> list[list[float | None]]:
    """Symmetric matrix of Holm-corrected p-values, ``None`` on the diagonal.

    Args:
        names: models, in the row and column order wanted.
        tests: the output of :func:`pairwise_tests`, covering every pair of ``names``.
    """
    p_holm = _pair_lookup(tests, "p_holm")
    return [[None if a == b else _pair_value(p_holm, a, b) for b in names] for a in names]


def format_p(p: float) -> str:
    """``p < 0.001``, ``p = 0.003`` (three decimals below 0.1) or ``p = 0.41`` (two above)."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def _pair_result(a: str, b: str, correct: Mapping, raw: dict, p_holm: float, alpha: float) -> dict:
    """The record of one pair; see :func:`pairwise_tests`."""
    accuracy_a, accuracy_b = float(np.mean(correct[a])), float(np.mean(correct[b]))
    significant = p_holm < alpha
    winner = (a if accuracy_a > accuracy_b else b) if significant else None
    if "only_a" in raw:
        extra = {"only_a": raw["only_a"], "only_b": raw["only_b"]}
    else:
        extra = {"diff_ci": raw["ci"], "seeds_a": raw["seeds_a"], "seeds_b": raw["seeds_b"]}
    return {
        "a": a, "b": b, "accuracy_a": accuracy_a, "accuracy_b": accuracy_b, **extra, "method": raw["method"],
        "p_value": raw["p_value"], "p_holm": p_holm, "significant": bool(significant), "winner": winner,
        "sentence": _sentence(a, b, accuracy_a, accuracy_b, p_holm, winner, _test_name(raw["method"])),
    }


def _test_name(method: str) -> str:
    return "Holm-corrected bootstrap over images and seeds" if method == SEED_METHOD else "Holm-corrected McNemar"


def _sentence(a: str, b: str, accuracy_a: float, accuracy_b: float, p_holm: float, winner: str | None,
              test: str = "Holm-corrected McNemar") -> str:
    """Plain-English verdict on one pair."""
    if winner is None:
        return f"{a} and {b} are statistically tied ({format_p(p_holm)}, {test})"
    if winner == a:
        loser, acc_w, acc_l = b, accuracy_a, accuracy_b
    else:
        loser, acc_w, acc_l = a, accuracy_b, accuracy_a
    return (f"{winner} is better than {loser} ({format_p(p_holm)}, {test}; "
            f"{acc_w:.3f} vs {acc_l:.3f} accuracy)")


def _pair_lookup(tests: Sequence[dict], key: str) -> dict[frozenset, object]:
    """``{frozenset({a, b}): test[key]}`` so pairs can be looked up in either order."""
    return {frozenset((t["a"], t["b"])): t[key] for t in tests}


def _pair_value(lookup: dict, a: str, b: str):
    """The looked-up value of a pair; a missing pair is an error, not a silent tie."""
    try:
        return lookup[frozenset((a, b))]
    except KeyError:
        raise ValueError(f"no test between {a!r} and {b!r}; run pairwise_tests on every model") from None


def _as_correct(values, name: str) -> np.ndarray:
    """1-D booleans; refuses class labels passed by mistake for correctness."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans or 0/1 (is each prediction right?), not labels")
    return values.astype(bool)
