"""From a dataset folder to train/validation/test arrays: discover, decode, split."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import numpy as np

from suite.data.cache import DETECTOR_VERSION, cached_clusters, duplicates_key
from suite.data.decode import DECODE_VERSION, Log, load_images, stderr_line
from suite.data.discover import DatasetIndex, Entry, check_readable
from suite.data.duplicates import DEFAULT_THRESHOLD, DEFAULT_TOL
from suite.data.groups import GroupFile, assign_groups, merge_units, read_groups, shared_with
from suite.data.splits import Split, make_split, split_fingerprint


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A decoded, split dataset.

    Attributes:
        index: what discovery found.
        entries: the files that decoded, one per row of ``images``.
        images: ``(n, size, size, 3)`` uint8 RGB (memory-mapped).
        y: integer label of each row, indexing ``labels``.
        split: row indices of train, validation and test.
        skipped: ``{"path", "reason"}`` for every file that did not decode, then everything
            discovery skipped (link loops, folders named like images, ...).
        data_fingerprint: digest of every file's path, label, split and content, and of the
            groups file's content when there is one.
        split_fingerprint: digest of which file went to which part.
        cache_hit: the images came from the cache, nothing was decoded.
        seconds: wall time of the whole data stage.
        cluster: duplicate-cluster id of each row (``None`` with ``dedup="off"``).
        dedup: what the leakage firewall found and did (see :func:`apply_dedup`), and with a
            groups file its summary under ``"groups"`` (see :func:`group_summary`).
        group: patient-group id of each row (``None`` without a groups file; an image the file
            does not list is a group of its own).
        unit: what no split or fold straddles: the patient group, joined with the duplicate
            cluster under ``dedup="group"`` (``None`` when neither applies).
    """

    index: DatasetIndex
    entries: tuple[Entry, ...]
    images: np.ndarray
    y: np.ndarray
    split: Split
    skipped: tuple[dict, ...]
    data_fingerprint: str
    split_fingerprint: str
    cache_hit: bool
    seconds: float
    cluster: np.ndarray | None = None
    dedup: dict | None = None
    group: np.ndarray | None = None
    unit: np.ndarray | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.index.labels

    def arrays(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """In-memory ``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        rows = self.split.parts()[part]
        return take_rows(self.images, rows), self.y[rows]

    def leak_free_test(self) -> np.ndarray:
        """Boolean mask over the test rows: no exact or near twin in training or validation."""
        if self.cluster is None:
            return np.ones(len(self.split.test), dtype=bool)
        seen = set(self.cluster[np.concatenate([self.split.train, self.split.val])].tolist())
        return np.array([self.cluster[r] not in seen for r in self.split.test], dtype=bool)

    def paths(self, part: str) -> list[Path]:
        return [self.entries[i].path for i in self.split.parts()[part]]

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for part, rows in self.split.parts().items():
            found = np.bincount(self.y[rows], minlength=len(self.labels))
            counts[part] = {label: int(n) for label, n in zip(self.labels, found)}
        return counts


def prepare_data(
    index: DatasetIndex,
    *,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
    pool_splits: bool = False,
    dedup: str = "off",
    groups: str | Path | None = None,
    dedup_threshold: int = DEFAULT_THRESHOLD,
    dedup_tol: float = DEFAULT_TOL,
    log: Log = stderr_line,
) -> PreparedData:
    """Decode (or load from cache) and split a discovered dataset.

    Args:
        pool_splits: ignore official Training/Testing folders and split everything at
            random (the reference protocol); by default an official test split is kept.
        dedup: the leakage firewall: ``off``; ``report`` (find exact and near duplicates
            so metrics can be given on leak-free test images too); ``group`` (a duplicate
            cluster never straddles train, validation and test); ``drop`` (test images
            with a training twin are removed). The duplicate analysis is cached
            (:mod:`suite.data.cache`).
        groups: a patient-groups CSV file (:mod:`suite.data.groups`): a group never straddles
            train, validation and test, and training images that share a group with an official
            test (or validation) folder leave training. Under ``dedup="group"`` groups and
            duplicate clusters join (union).
        dedup_threshold, dedup_tol: the duplicate detector's hash threshold and pixel tolerance
            (default: :data:`suite.data.duplicates.DEFAULT_THRESHOLD`, ``DEFAULT_TOL``).
        log: where a warning line goes (a cache entry that failed verification); default: stderr.

    Raises:
        DataError: a class folder whose files all fail to decode, a class too small to split, or
            a malformed groups file; the message names it.
    """
    start = time.perf_counter()
    group_file = None if groups is None else read_groups(groups)  # a malformed file fails before decoding
    paths = [e.path for e in index.entries]
    decoded = load_images(paths, image_size, workers=workers, progress=progress, log=log)
    ok = decoded.ok
    kept = tuple(e for e, good in zip(index.entries, ok) if good)
    check_readable(index, kept)
    rows = np.flatnonzero(ok)
    y = np.array([index.labels.index(e.label) for e in kept], dtype=np.int64)
    official = np.array(["pool" if pool_splits else e.split for e in index.entries])
    cluster, dedup_hit = None, False
    if dedup != "off":
        split_settings = {"seed": int(seed), "val_fraction": float(val_fraction),
                          "test_fraction": float(test_fraction), "pool_splits": bool(pool_splits)}
        cluster, dedup_hit = duplicate_clusters(
            index, decoded.digests, ok, workers, progress, log, mode=dedup, threshold=dedup_threshold,
            tol=dedup_tol, split=split_settings, splits=official)
        cluster = cluster[rows]
    rel_all = _relpaths(paths, index.root)
    rel = [rel_all[i] for i in rows]
    keys = [f"{r}\t{decoded.digests[i]}" for r, i in zip(rel, rows)]
    group, group_info = (None, None) if group_file is None else assign_groups(group_file, rel)
    unit = _units(len(kept), group, cluster if dedup == "group" else None)
    split = make_split(np.array([e.label for e in kept]), official[rows], val_fraction=val_fraction,
                       test_fraction=test_fraction, seed=seed, groups=unit)
    summary = None
    if cluster is not None:
        split, summary = apply_dedup(split, cluster, dedup, n_kept=len(kept))
        summary["cache_hit"] = dedup_hit
    if group is not None:
        summary = {**(summary or {"mode": dedup}),
                   "groups": {**group_info, **group_summary(group, official[rows], split)}}
    # Rows of unreadable files stay in the cached array; select the readable ones lazily.
    images = decoded.images if ok.all() else _RowView(decoded.images, rows)
    return PreparedData(
        index=index,
        entries=kept,
        images=images,
        y=y,
        split=split,
        skipped=_skipped(index, decoded.reasons),
        data_fingerprint=_data_fingerprint(index, rel_all, decoded.digests, group_file),
        split_fingerprint=split_fingerprint(split, keys),
        cache_hit=decoded.cache_hit,
        seconds=time.perf_counter() - start,
        cluster=cluster,
        dedup=summary,
        group=group,
        unit=unit,
    )


DEDUP_IMAGE_SIZE = 64  # duplicates are judged on 64 px images (see suite.data.duplicates)


def duplicate_clusters(
    index: DatasetIndex,
    digests,
    ok,
    workers,
    progress,
    log: Log = stderr_line,
    *,
    mode: str = "report",
    threshold: int = DEFAULT_THRESHOLD,
    tol: float = DEFAULT_TOL,
    split: dict | None = None,
    splits=None,
) -> tuple[np.ndarray, bool]:
    """Cluster id (exact or near duplicates) for every discovered file, from 64 px images, and whether
    it came from the cache (:func:`suite.data.cache.cached_clusters`; on a hit no image is read).

    Args:
        mode: the ``--dedup`` mode, part of the cache key.
        threshold, tol: the detector's settings.
        split: the split's settings (seed, fractions, pooling), part of the cache key.
        splits: each discovered file's official split, part of the cache key.
    """
    from suite.data.duplicates import find_duplicates

    settings = {"threshold": int(threshold), "tol": float(tol), "image_size": DEDUP_IMAGE_SIZE,
                "detector": DETECTOR_VERSION, "decoder": DECODE_VERSION, "mode": mode}
    split = dict(split or {})
    splits = [str(s) for s in (splits if splits is not None else (e.split for e in index.entries))]
    key = duplicates_key(digests, ok, settings, split, splits)

    def compute() -> dict:
        small = load_images([e.path for e in index.entries], DEDUP_IMAGE_SIZE, workers=workers, progress=progress,
                            log=log)
        return find_duplicates(list(digests), small.images, valid=ok, threshold=threshold, tol=tol)

    return cached_clusters(key, len(index.entries), settings, split, compute, log)


def _units(n: int, group: np.ndarray | None, cluster: np.ndarray | None) -> np.ndarray | None:
    """What no split may straddle: patient groups, duplicate clusters, or both joined (union)."""
    if group is None or cluster is None:
        return group if cluster is None else cluster
    return merge_units(n, group, cluster)


def group_summary(group: np.ndarray, splits: np.ndarray, split: Split) -> dict:
    """How the patient groups met the split.

    Returns:
        ``removed_from_training``: images of an official training folder whose group also has
        images in the official test or validation folder (they leave training, as a duplicate
        cluster's training copies do under ``dedup="group"``); ``groups_across_parts``: groups
        with images in more than one of train, validation and test (0 unless something is wrong).
    """
    training = np.flatnonzero(splits == "train")
    fixed = np.flatnonzero(np.isin(splits, ("test", "val")))
    parts = [set(group[rows].tolist()) for rows in split.parts().values()]
    across = (parts[0] & parts[1]) | (parts[0] & parts[2]) | (parts[1] & parts[2])
    return {"removed_from_training": int(shared_with(group, training, fixed).sum()),
            "groups_across_parts": len(across)}


def apply_dedup(split: Split, cluster: np.ndarray, mode: str, *, n_kept: int) -> tuple[Split, dict]:
    """Drop leaking test images (``drop``) and summarise what the firewall found."""
    seen = set(cluster[np.concatenate([split.train, split.val])].tolist())
    twinned = np.array([cluster[r] in seen for r in split.test], dtype=bool)
    summary = {
        "mode": mode,
        "clusters_with_duplicates": int((np.bincount(cluster) > 1).sum()),
        "images_in_duplicate_clusters": int(np.isin(cluster, np.flatnonzero(np.bincount(cluster) > 1)).sum()),
        "test_with_training_twin": int(twinned.sum()),
        "test_images": int(len(split.test)),
        "removed_from_training": int(n_kept - len(split.train) - len(split.val) - len(split.test)),
        "dropped_from_test": 0,
    }
    if mode == "drop":
        summary["dropped_from_test"] = int(twinned.sum())
        split = Split(train=split.train, val=split.val, test=split.test[~twinned])
    return split, summary


class _RowView:
    """Index a memory-mapped array through a row map without copying it whole."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self._array, self._rows = array, rows
        self.shape = (len(rows),) + array.shape[1:]
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, item):
        return self._array[self._rows[item]]


def _relpaths(paths, root: Path) -> list[str]:
    """``path.relative_to(root).as_posix()``, else ``path.as_posix()``, for each path, as string work: it runs
    for every file of every run, and Path.relative_to cost 15 ms of a 120 ms cached run of the real data."""
    prefix = os.path.join(str(root), "")
    out = []
    for path in paths:
        text = str(path)
        out.append(text[len(prefix):].replace(os.sep, "/") if text.startswith(prefix) else path.as_posix())
    return out


def _skipped(index: DatasetIndex, reasons) -> tuple[dict, ...]:
    undecoded = [{"path": str(e.path), "reason": r} for e, r in zip(index.entries, reasons) if r is not None]
    return tuple(undecoded + [s.describe() for s in index.skipped])


def _data_fingerprint(index: DatasetIndex, rel: list[str], digests, group_file: GroupFile | None = None) -> str:
    h = hashlib.sha256()
    for e, r, d in zip(index.entries, rel, digests):
        # surrogateescape: a name the OS allowed but UTF-8 cannot spell hashes as its own bytes
        h.update(f"{e.split}\t{e.label}\t{r}\t{d}\n".encode("utf-8", "surrogateescape"))
    if group_file is not None:  # without one the fingerprint is what it always was
        h.update(f"groups\t{group_file.digest}\n".encode())
    return h.hexdigest()[:16]


def take_rows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of the (memory-mapped) image cache as one contiguous in-memory array, for training."""
    return np.ascontiguousarray(images[np.asarray(rows)])
