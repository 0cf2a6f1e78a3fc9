"""Stratified, seeded splits, and a fingerprint that says which image went where."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from suite.errors import DataError


@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices of the train, validation and test sets."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def stratified_holdout(labels: np.ndarray, rows: np.ndarray, fraction: float, rng, what: str):
    """Split ``rows`` in two, taking ``fraction`` of every class (at least one image each).

    Args:
        labels: label of every row of the dataset.
        rows: the rows to split.
        fraction: share of each class that goes to the held-out part.
        rng: ``numpy.random.Generator``.
        what: name of the held-out part, for error messages.

    Returns:
        ``(kept, held_out)`` sorted row arrays.
    """
    kept, held = [], []
    for label in np.unique(labels[rows]):
        members = rows[labels[rows] == label]
        if len(members) < 2:
            raise DataError(
                f"class {label!r} has {len(members)} image(s): at least 2 are needed "
                f"to hold some out for {what}"
            )
        members = rng.permutation(members)
        n_held = min(len(members) - 1, max(1, math.floor(len(members) * fraction + 0.5)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def make_split(
    labels: np.ndarray,
    splits: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Split:
    """Assign every row to train, validation or test.

    An official test split (rows marked ``"test"``) is the test set, untouched; an
    official ``"val"`` split is the validation set. Otherwise validation is a
    stratified ``val_fraction`` of training, and a single folder (rows marked
    ``"pool"``) first loses a stratified ``test_fraction`` to the test set.

    Args:
        labels: label of each row.
        splits: ``"train"``, ``"val"``, ``"test"`` or ``"pool"`` for each row.
        val_fraction: share of the training pool held out for validation.
        test_fraction: share of a single-folder dataset held out for testing.
        seed: the same seed gives the same split.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(labels))
    pool = rows[splits == "pool"]
    if len(pool):
        train, test = stratified_holdout(labels, pool, test_fraction, rng, "testing")
    else:
        train, test = rows[splits == "train"], rows[splits == "test"]
    val = rows[splits == "val"]
    if not len(val):
        train, val = stratified_holdout(labels, train, val_fraction, rng, "validation")
    return Split(train=train, val=val, test=test)


def split_fingerprint(split: Split, keys) -> str:
    """A digest of which image (by ``keys``, e.g. relative path + content digest) went where."""
    h = hashlib.sha256()
    for name, rows in split.parts().items():
        for key in sorted(keys[i] for i in rows):
            h.update(f"{name}\t{key}\n".encode())
    return h.hexdigest()[:16]
