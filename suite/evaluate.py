"""Predictions to metrics: pure functions over arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: integer labels, shape ``(n,)``.
        probs: class probabilities, shape ``(n, len(labels))``.
        labels: class names, in column order.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    y_pred = np.asarray(probs).argmax(axis=1)
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
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


def prediction_rows(paths, y_true, probs, labels) -> tuple[list[str], list[list]]:
    """Header and rows of ``predictions.csv``: path, true, predicted, one probability per class."""
    header = ["path", "true", "predicted"] + [f"p_{label}" for label in labels]
    rows = [
        [str(p), labels[t], labels[int(np.argmax(pr))]] + [f"{v:.6f}" for v in pr]
        for p, t, pr in zip(paths, y_true, probs)
    ]
    return header, rows
