"""Does an evaluated dataset hold a run's own training images? Exact and near twins, found against the run's record.

Public brain-MRI sets were assembled from one another (re-encoded, resized), so an "external"
test set can share a large part of its images with a run's training data. Every run records
what it trained and validated on (``runs.TRAINING_HASHES``, made by :func:`training_hashes`):
each image's content digest, perceptual hash, label, split and path relative to the dataset
root, the root itself, and the detector's settings. :func:`check_evaluated` compares every
evaluated image with that record, with the detector and settings of ``--dedup``
(:mod:`suite.data.duplicates`, on the same 64 px images):

* **exact**: the same content digest (byte-identical files);
* **near**: perceptual hashes at most ``threshold`` bits apart (10), confirmed on pixels (the
  normalised 64×64 grey images differ by at most ``tol``, 0.11, on average) when the training
  image is still at its recorded path with its recorded digest. Re-encoded (JPEG quality
  70-90) and resized copies score about 0.01-0.10 and are found;
* **near, on hashes alone**: when the training image is gone (the data moved, or the file
  changed since training) pixels cannot be compared, and a candidate counts only within
  :data:`HASH_ONLY_THRESHOLD` bits. Exact copies are still found by digest.

How the near candidates were checked is recorded as ``check``: ``pixels`` (every candidate
twin was found), ``hash-only`` (none was), ``mixed``, or ``not possible: <why>`` for a run
folder without the record (made before it was kept) or with a damaged one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from suite import runs
from suite.data import duplicates as dup
from suite.data.dataset import DEDUP_IMAGE_SIZE, PreparedData
from suite.data.decode import Log, load_images, stderr_line
from suite.errors import SuiteError
from suite.io import write_bytes_atomic

FORMAT = 1  # of the training-hashes file; bump when its arrays change meaning
REFERENCE_SPLITS = ("train", "val")
# Bits within which a candidate counts when the training image cannot be compared on pixels.
# Measured on the sartaj set, its 394 test images against its 2870 training images: the pixel-
# confirmed detector flags 259; hashes within 2 bits flag 260, the same 259 and one more (none
# missed); within 0 bits they miss 5, within 4 bits they add 7 that the pixels reject. (These
# hashes are even-spaced: a median threshold flips bits in pairs.) Of re-encoded (JPEG quality
# 70-90) and resized copies, about 94% lie within 2 bits of their original, 65% at 0.
HASH_ONLY_THRESHOLD = 2
CSV_HEADER = ("path", "label", "kind", "method", "hamming", "pixel_distance", "twin_path", "twin_label",
              "twin_split", "twin_on_disk")
_ARRAYS = ("paths", "labels", "splits", "digests", "hashes")


# ----------------------------------------------------------------------------------
# The run's record of its training images
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingHashes:
    """What a run trained and validated on, as far as a contamination check needs it.

    Attributes:
        root: the dataset folder the run read.
        paths: each image's path relative to ``root`` (POSIX; absolute if it lay outside).
        labels: each image's label.
        splits: ``train`` or ``val``.
        digests: content digests (:func:`suite.data.decode.file_digest`).
        hashes: uint64 perceptual hashes of the 64 px images (:func:`suite.data.duplicates.phashes`).
        settings: the detector's: ``threshold``, ``tol``, ``image_size``, ``hash``, ``pixel_check``.
    """

    root: Path
    paths: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    digests: np.ndarray
    hashes: np.ndarray
    settings: dict

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, row: int) -> Path:
        """Where training image ``row`` was read from."""
        return self.root / str(self.paths[row])

    def counts(self) -> dict[str, int]:
        return {split: int((self.splits == split).sum()) for split in REFERENCE_SPLITS}


def detector_settings() -> dict:
    """The settings of ``--dedup``'s detector, as a run records them."""
    return {
        "threshold": dup.DEFAULT_THRESHOLD,
        "tol": dup.DEFAULT_TOL,
        "image_size": DEDUP_IMAGE_SIZE,
        "hash": f"pHash: {dup.HASH_SIZE}x{dup.HASH_SIZE} lowest DCT frequencies of the {dup.HASH_INPUT}x"
                f"{dup.HASH_INPUT} grey image, thresholded at their median; 64 bits",
        "pixel_check": f"mean |z_a - z_b| of the {dup.PIXEL_SIZE}x{dup.PIXEL_SIZE} grey images, each at zero "
                       "mean and unit std, at most tol",
    }


def training_hashes(data: PreparedData, *, workers: int | None = None, progress: bool = False,
                    log: Log = stderr_line) -> TrainingHashes:
    """The record of ``data``'s training and validation images.

    The 64 px images are read through the image cache with the dataset's whole file list, as
    ``--dedup`` reads them, so a run that looked for duplicates (or trains at 64 px) decodes
    nothing again.

    Args:
        data: the prepared (decoded, split) dataset of a run.
        workers: decoding threads (``None``: every core).
        progress: show a progress bar while decoding.
        log: where a warning line goes.
    """
    index = data.index
    decoded = load_images([e.path for e in index.entries], DEDUP_IMAGE_SIZE, workers=workers, progress=progress,
                          log=log)
    where = {e.path: i for i, e in enumerate(index.entries)}
    parts = data.split.parts()
    rows = np.concatenate([parts[split] for split in REFERENCE_SPLITS]).astype(np.int64)
    source = np.array([where[data.entries[r].path] for r in rows], dtype=np.int64)
    return TrainingHashes(
        root=index.root,
        paths=np.array([_relative(data.entries[r].path, index.root) for r in rows], dtype=str),
        labels=np.array([data.entries[r].label for r in rows], dtype=str),
        splits=np.repeat(np.array(REFERENCE_SPLITS), [len(parts[s]) for s in REFERENCE_SPLITS]),
        digests=np.array([decoded.digests[i] for i in source], dtype=str),
        hashes=dup.phashes(np.asarray(decoded.images[source])),
        settings=detector_settings(),
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def save_training_hashes(path: str | Path, record: TrainingHashes) -> Path:
    """Write ``record`` as one compressed ``.npz`` (atomically); returns ``path``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, format=np.array(FORMAT), root=np.array(str(record.root)),
                        settings=np.array(json.dumps(record.settings)),
                        **{name: getattr(record, name) for name in _ARRAYS})
    return write_bytes_atomic(path, buffer.getvalue())


def load_training_hashes(path: str | Path) -> TrainingHashes:
    """Read what :func:`save_training_hashes` wrote.

    Raises:
        SuiteError: the file cannot be read, or does not hold a record this version understands.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _ARRAYS}
            version, root, settings = int(npz["format"]), str(npz["root"]), json.loads(str(npz["settings"]))
    except (OSError, ValueError, KeyError) as exc:
        raise SuiteError(f"cannot read {path}: {exc}") from None
    if version > FORMAT:
        raise SuiteError(f"{path} is of format {version}, newer than this suite reads ({FORMAT}); update the suite")
    if len({len(a) for a in arrays.values()}) != 1 or arrays["hashes"].dtype != np.uint64:
        raise SuiteError(f"{path} is damaged: its arrays differ in length or type")
    return TrainingHashes(root=Path(root), settings=settings, **arrays)


# ----------------------------------------------------------------------------------
# Evaluated images against the record
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Twins:
    """Each evaluated image's training twin, where it has one (arrays over the evaluated images).

    Attributes:
        twin: row of the training record, -1 for none.
        kind: ``exact``, ``near`` or ``""``.
        method: how the twin was established: ``digest``, ``pixels``, ``hash`` or ``""``.
        hamming: perceptual-hash distance in bits to the twin (-1 for none).
        pixel_distance: the pixel score against the twin (0 for an exact copy; NaN when not measured).
        check: ``pixels``, ``hash-only`` or ``mixed`` (see the module docs).
        detail: how the check was made, in a sentence.
        twins_on_pixels: candidate training images found at their paths, unchanged, and compared on pixels.
        twins_gone: candidate training images gone from their paths, or changed since training.
    """

    twin: np.ndarray
    kind: np.ndarray
    method: np.ndarray
    hamming: np.ndarray
    pixel_distance: np.ndarray
    check: str
    detail: str
    twins_on_pixels: int
    twins_gone: int

    @property
    def found(self) -> np.ndarray:
        return self.kind != ""


def find_twins(digests: Sequence[str], images: np.ndarray, record: TrainingHashes, *,
               valid: np.ndarray | None = None, workers: int | None = None, progress: bool = False,
               log: Log = stderr_line) -> Twins:
    """Find each evaluated image's exact or near twin among a run's training and validation images.

    Args:
        digests: content digest of each evaluated file.
        images: the evaluated images at the record's ``image_size`` (64 px), one row per digest.
        record: the run's training hashes.
        valid: rows that hold a decoded image (default: all); the others have no twin.
        workers, progress, log: for decoding the candidate training images (see
            :func:`suite.data.decode.load_images`).
    """
    n, threshold, tol = len(digests), int(record.settings["threshold"]), float(record.settings["tol"])
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    rows = np.flatnonzero(valid)
    hashes = np.zeros(n, dtype=np.uint64)
    hashes[rows] = dup.phashes(np.asarray(images[rows]))
    out = {"twin": np.full(n, -1, dtype=np.int64), "kind": np.full(n, "", dtype="<U5"),
           "method": np.full(n, "", dtype="<U6"), "hamming": np.full(n, -1, dtype=np.int64),
           "pixel_distance": np.full(n, np.nan)}
    _exact(out, digests, rows, hashes, record)
    rest = rows[out["twin"][rows] < 0]
    pairs = dup.cross_pairs(hashes[rest], record.hashes, threshold)
    pairs[:, 0] = rest[pairs[:, 0]]
    distance = dup.hamming(hashes[pairs[:, 0]], record.hashes[pairs[:, 1]]).astype(np.int64)
    needed = np.unique(pairs[:, 1])
    found, twin_images = _twin_images(record, needed, workers, progress, log)
    on_pixels = np.isin(pairs[:, 1], found)
    score = np.full(len(pairs), np.nan)
    score[on_pixels] = _pixel_scores(images, pairs[on_pixels], found, twin_images)
    confirmed = on_pixels & np.isfinite(score) & (score <= tol)
    by_hash = ~on_pixels & (distance <= HASH_ONLY_THRESHOLD)
    by_hash[by_hash] = ~_flat(images, pairs[by_hash, 0])
    _near(out, pairs, distance, score, confirmed, by_hash)
    check, detail = _how_checked(record, len(needed), len(found), threshold, tol)
    return Twins(**out, check=check, detail=detail, twins_on_pixels=len(found), twins_gone=len(needed) - len(found))


def _exact(out: dict, digests, rows, hashes, record: TrainingHashes) -> None:
    first: dict[str, int] = {}
    for j, digest in enumerate(record.digests.tolist()):
        first.setdefault(digest, j)
    for i in rows:
        j = first.get(digests[i])
        if j is not None:
            out["twin"][i], out["kind"][i], out["method"][i], out["pixel_distance"][i] = j, "exact", "digest", 0.0
    exact = np.flatnonzero(out["kind"] == "exact")
    out["hamming"][exact] = dup.hamming(hashes[exact], record.hashes[out["twin"][exact]])


def _twin_images(record: TrainingHashes, rows: np.ndarray, workers, progress, log) -> tuple[np.ndarray, np.ndarray]:
    """The record's ``rows`` still at their paths with their recorded digests, and their 64 px images."""
    size = int(record.settings["image_size"])
    rows = rows[np.array([record.file(j).is_file() for j in rows], dtype=bool)]
    if not len(rows):
        return rows, np.empty((0, size, size, 3), dtype=np.uint8)
    decoded = load_images([record.file(j) for j in rows], size, workers=workers, progress=progress, log=log)
    same = decoded.ok & (np.array(decoded.digests) == record.digests[rows])
    return rows[same], np.asarray(decoded.images[np.flatnonzero(same)])


def _pixel_scores(images, pairs: np.ndarray, found: np.ndarray, twin_images: np.ndarray) -> np.ndarray:
    """:func:`suite.data.duplicates.pixel_distance` of (evaluated, training) pairs, from two image sets."""
    if not len(pairs):
        return np.empty(0)
    evaluated = np.unique(pairs[:, 0])
    both = np.concatenate([np.asarray(images[evaluated]), twin_images])
    local = np.stack([np.searchsorted(evaluated, pairs[:, 0]),
                      len(evaluated) + np.searchsorted(found, pairs[:, 1])], axis=1)
    return dup.pixel_distance(both, local)


def _flat(images, rows: np.ndarray) -> np.ndarray:
    """Whether each row's image is flat: no content to compare, never a near twin (as in ``--dedup``)."""
    unique, where = np.unique(rows, return_inverse=True)
    if not len(unique):
        return np.zeros(len(rows), dtype=bool)
    _, std = dup.normalised(np.asarray(images[unique]))
    return (std < dup.FLAT_STD)[where]


def _near(out: dict, pairs, distance, score, confirmed, by_hash) -> None:
    """Each evaluated image's best near twin: confirmed on pixels (lowest score) before hash-only (fewest bits)."""
    accepted = np.flatnonzero(confirmed | by_hash)
    order = accepted[np.lexsort((np.where(confirmed, score, distance)[accepted], ~confirmed[accepted]))]
    for k in order:
        i = pairs[k, 0]
        if out["twin"][i] >= 0:
            continue
        out["twin"][i], out["kind"][i], out["hamming"][i] = pairs[k, 1], "near", distance[k]
        out["method"][i] = "pixels" if confirmed[k] else "hash"
        out["pixel_distance"][i] = score[k]


def _how_checked(record: TrainingHashes, needed: int, found: int, threshold: int, tol: float) -> tuple[str, str]:
    """``check`` and ``detail`` (see :class:`Twins`) from how many candidate training images were found."""
    exact = "exact copies by content digest"
    pixels = (f"near candidates (perceptual hashes within {threshold} bits) confirmed on pixels (tolerance "
              f"{tol:g}) against the training images under {record.root}")
    hashes = f"near twins on perceptual hashes alone (within {HASH_ONLY_THRESHOLD} bits)"
    gone = f"the training images are no longer at their recorded paths under {record.root}"
    if found == needed and (needed or record.root.is_dir()):
        return "pixels", f"{exact}; {pixels}"
    if found == 0:
        return "hash-only", f"{gone} (moved, deleted or changed since training): {exact}; {hashes}"
    return "mixed", (f"{needed - found} of {needed} candidate training images are no longer at their recorded "
                     f"paths under {record.root}: {exact}; {hashes} for those; {pixels} for the others")


# ----------------------------------------------------------------------------------
# What an evaluation records
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Contamination:
    """The outcome of :func:`check_evaluated`.

    Attributes:
        summary: ``metrics.json``'s ``contamination`` (see :func:`summarise`).
        found: per evaluated image, whether it has a training twin; ``None`` when the check was
            not possible.
        rows: the rows of ``runs.CONTAMINATION`` (:data:`CSV_HEADER`); ``None`` when not possible.
    """

    summary: dict
    found: np.ndarray | None
    rows: list[list] | None

    @property
    def possible(self) -> bool:
        return self.found is not None


def check_evaluated(run_dir: str | Path, paths: Sequence[Path], labels: Sequence[str], *,
                    workers: int | None = None, progress: bool = False, log: Log = stderr_line) -> Contamination:
    """Compare the evaluated images ``paths`` (labelled ``labels``) with run ``run_dir``'s training images.

    A run folder without a training record (made before it was kept), or with one that cannot
    be read, gives a ``check`` of ``not possible: <why>`` and no per-image result.
    """
    run = runs.RunFolder(run_dir)
    if run.training_hashes is None:
        return not_possible(f"the run folder has no {runs.TRAINING_HASHES} (it was made before runs recorded "
                            "their training images)", labels)
    try:
        record = load_training_hashes(run.training_hashes)
    except SuiteError as exc:
        return not_possible(str(exc), labels)
    decoded = load_images(list(paths), int(record.settings["image_size"]), workers=workers, progress=progress,
                          log=log)
    twins = find_twins(decoded.digests, decoded.images, record, valid=decoded.ok, workers=workers,
                       progress=progress, log=log)
    return Contamination(summarise(twins, labels, record), twins.found, csv_rows(paths, labels, twins, record))


def not_possible(why: str, labels: Sequence[str]) -> Contamination:
    """The record of a check that could not run, with the reason."""
    summary = {"check": f"not possible: {why}", "detail": "evaluated images were not compared with the run's "
               "training images: the figures may include copies of them", "n_evaluated": len(labels),
               "count": None, "fraction": None, "exact": None, "near": None, "by_class": {}, "twin_splits": {},
               "label_conflicts": None, "twins_on_pixels": None, "twins_gone": None,
               "settings": {"hash_only_threshold": HASH_ONLY_THRESHOLD}, "training": None}
    return Contamination(summary, None, None)


def summarise(twins: Twins, labels: Sequence[str], record: TrainingHashes) -> dict:
    """``metrics.json``'s ``contamination``: how many evaluated images are copies of training images, and how known.

    Returns:
        ``check``, ``detail``, ``n_evaluated``, ``count``, ``fraction``, ``exact``, ``near``,
        ``by_class`` (``{label: {n, count, fraction, exact, near}}``), ``twin_splits``
        (``{train, val}``: where the twins are), ``label_conflicts`` (twins filed under another
        label), ``twins_on_pixels``, ``twins_gone``, ``settings`` (``threshold``, ``tol``,
        ``image_size``, ``hash_only_threshold``) and ``training`` (the record's ``file``, ``root``,
        ``n_train``, ``n_val``, ``root_found``).
    """
    labels = np.asarray(labels, dtype=str)
    found, twin = twins.found, twins.twin
    twin_labels = record.labels[twin[found]] if found.any() else np.empty(0, dtype=str)
    return {
        "check": twins.check,
        "detail": twins.detail,
        **_counts(labels, twins.kind),
        "by_class": {str(label): _counts(labels[labels == label], twins.kind[labels == label])
                     for label in dict.fromkeys(labels.tolist())},
        "twin_splits": {split: int(n) for split, n in Counter(record.splits[twin[found]].tolist()).items()},
        "label_conflicts": int((twin_labels != labels[found]).sum()),
        "twins_on_pixels": twins.twins_on_pixels,
        "twins_gone": twins.twins_gone,
        "settings": {**{k: record.settings[k] for k in ("threshold", "tol", "image_size")},
                     "hash_only_threshold": HASH_ONLY_THRESHOLD},
        "training": {"file": runs.TRAINING_HASHES, "root": str(record.root), **{f"n_{k}": v for k, v in
                     record.counts().items()}, "root_found": record.root.is_dir()},
    }


def _counts(labels: np.ndarray, kind: np.ndarray) -> dict:
    n, count = len(labels), int((kind != "").sum())
    return {"n_evaluated": n, "count": count, "fraction": count / n if n else None,
            "exact": int((kind == "exact").sum()), "near": int((kind == "near").sum())}


def csv_rows(paths: Sequence[Path], labels: Sequence[str], twins: Twins, record: TrainingHashes) -> list[list]:
    """One row (:data:`CSV_HEADER`) per evaluated image with a training twin."""
    rows = []
    for i in np.flatnonzero(twins.found):
        j, distance = int(twins.twin[i]), float(twins.pixel_distance[i])
        rows.append([str(paths[i]), labels[i], twins.kind[i], twins.method[i], int(twins.hamming[i]),
                     "" if np.isnan(distance) else f"{distance:.4f}", str(record.file(j)), record.labels[j],
                     record.splits[j], "yes" if os.path.isfile(record.file(j)) else "no"])
    return rows
