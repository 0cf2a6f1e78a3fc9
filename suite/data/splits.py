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
            raise DataError(  # str(): a numpy string's repr would read np.str_('glioma')
                f"class {str(label)!r} has {len(members)} image(s): at least 2 are needed "
                f"to hold some out for {what}"
            )
        members = rng.permutation(members)
        n_held = min(len(members) - 1, max(1, math.floor(len(members) * fraction + 0.5)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def grouped_holdout(labels: np.ndarray, rows: np.ndarray, groups: np.ndarray, fraction: float, rng, what: str):
    """Like :func:`stratified_holdout`, but whole groups (duplicate clusters, patient groups) move together.

    Each group counts for the label of its first row; per label, shuffled groups are
    held out until they cover ``fraction`` of that label's rows (at least one group).
    """
    units: dict[int, list[int]] = {}
    for r in rows:
        units.setdefault(int(groups[r]), []).append(int(r))
    by_label: dict[str, list[list[int]]] = {}
    for members in units.values():
        by_label.setdefault(str(labels[members[0]]), []).append(members)
    kept, held = [], []
    for label in sorted(by_label):
        members = by_label[label]
        if len(members) < 2:
            raise DataError(f"class {label!r} has {len(members)} group(s) once duplicates or patients are grouped: "
                            f"at least 2 are needed to hold some out for {what}")
        order = rng.permutation(len(members))
        target = max(1, math.floor(sum(len(m) for m in members) * fraction + 0.5))
        taken = 0
        for n, i in enumerate(order):
            last = n == len(order) - 1  # the kept part always keeps at least one group
            if taken < target and not last:
                held.extend(members[i])
                taken += len(members[i])
            else:
                kept.extend(members[i])
    return np.sort(np.array(kept, dtype=int)), np.sort(np.array(held, dtype=int))


def make_split(
    labels: np.ndarray,
    splits: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
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
        groups: the unit of each row (a duplicate cluster, a patient group, or both joined);
            when given, no unit straddles two parts: held-out parts take whole units, and
            training images whose unit has a member in an official test or validation
            folder leave training.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(labels))

    def holdout(part_rows, fraction, what):
        if groups is None:
            return stratified_holdout(labels, part_rows, fraction, rng, what)
        return grouped_holdout(labels, part_rows, groups, fraction, rng, what)

    pool = rows[splits == "pool"]
    if len(pool):
        train, test = holdout(pool, test_fraction, "testing")
    else:
        train, test = rows[splits == "train"], rows[splits == "test"]
    val = rows[splits == "val"]
    if groups is not None:  # official folders: their clusters leave training
        fixed = set(groups[test].tolist()) | set(groups[val].tolist())
        train = np.array([r for r in train if groups[r] not in fixed], dtype=int)
    if not len(val):
        train, val = holdout(train, val_fraction, "validation")
    return Split(train=train, val=val, test=test)


def split_fingerprint(split: Split, keys) -> str:
    """A digest of which image (by ``keys``, e.g. relative path + content digest) went where."""
    h = hashlib.sha256()
    for name, rows in split.parts().items():
        for key in sorted(keys[i] for i in rows):
            h.update(f"{name}\t{key}\n".encode("utf-8", "surrogateescape"))  # names UTF-8 cannot spell too
    return h.hexdigest()[:16]
