"""Audit a dataset folder: what it holds, what cannot be read, and what is duplicated.

``audit(index) -> dict`` computes, from a discovered dataset, what ``suite audit``
(``suite.commands.audit``) writes to ``audit.json`` and renders as ``audit.html``.

Duplicates come from :mod:`suite.data.duplicates`: *exact* means byte-identical files (equal
content digests), *near* means a perceptual-hash candidate confirmed on pixels (and not
exact). Clusters join both, transitively.

Leakage is measured from the official test split against the *reference* splits, i.e.
everything a model sees while it is developed: training and, where the dataset has one,
validation. ``cross_split_exact`` counts test images with a byte-identical reference
twin; ``cross_split_near`` those with an exact *or* confirmed-near reference twin (a
direct pair, so it is at least ``cross_split_exact``); ``cross_split_cluster`` those whose
cluster holds any reference image (chains included, so at least ``cross_split_near``).
A flat layout has no official test split: the figures are 0 and ``leakage.applicable``
is false.

With a patient-groups file (:mod:`suite.data.groups`), ``cross_split_group`` counts the test
images whose patient group also has images in the reference splits, with example pairs (a
reference image of the group beside the test image) and per class; ``groups`` summarises the
file against the dataset (listed paths that are not images, images without a group). Hidden
files and folders (:func:`suite.data.discover.is_hidden`) are among the skipped, counted in
``counts["hidden"]``.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from suite.data.decode import Log, load_images, stderr_line
from suite.data.discover import HIDDEN, DatasetIndex
from suite.data.duplicates import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOL,
    HASH_INPUT,
    HASH_SIZE,
    PIXEL_SIZE,
    clusters,
    find_duplicates,
)
from suite.data.groups import GroupFile, assign_groups, read_groups
from suite.runs import now_iso

MAX_EXAMPLES = 12  # example pairs kept per category
MAX_SIZES = 12  # most common exact image sizes listed; the rest are summed as "other"
REFERENCE_SPLITS = ("train", "val")
TEST_SPLIT = "test"
# Longest side of an image -> bucket; each bucket's lower bound in pixels.
SIZE_BUCKETS = ((0, "< 128 px"), (128, "128-255 px"), (256, "256-511 px"), (512, "512-1023 px"),
                (1024, "1024-2047 px"), (2048, "\u2265 2048 px"))


def audit(
    index: DatasetIndex,
    *,
    image_size: int = 64,
    threshold: int = DEFAULT_THRESHOLD,
    tol: float = DEFAULT_TOL,
    progress: bool = True,
    workers: int | None = None,
    examples: int = MAX_EXAMPLES,
    groups: GroupFile | str | Path | None = None,
    log: Log = stderr_line,
) -> dict:
    """Audit every file of a discovered dataset.

    Args:
        index: what :func:`suite.data.discover.discover` found.
        image_size: side of the decoded images the duplicate search works on
            (default 64; they come from, and go to, the image cache).
        threshold: Hamming distance of hash candidates (default
            :data:`suite.data.duplicates.DEFAULT_THRESHOLD`).
        tol: pixel tolerance that confirms a near duplicate (default
            :data:`suite.data.duplicates.DEFAULT_TOL`).
        progress: show a progress bar while decoding.
        workers: decoding processes (``None``: every core).
        examples: example pairs kept per category.
        groups: a patient-groups file (its path, or as :func:`suite.data.groups.read_groups`
            parsed it): adds ``cross_split_group``, ``groups`` and the ``cross_split_group``
            examples, and each class's ``group`` count in ``cross_split_by_class``.
        log: where a warning line goes (a cache entry that failed verification); default: stderr.

    Returns:
        A JSON-ready dict: ``dataset``, ``created``, ``settings``, ``counts``, ``headers``,
        ``skipped``, ``exact``, ``near``, ``clusters``, ``cross_split_exact``,
        ``cross_split_near``, ``cross_split_cluster``, ``cross_split_by_class``,
        ``leakage``, ``label_conflicts``, ``label_conflict_images``, ``examples``,
        ``files`` (one row per file, with its ``cluster`` id, and its ``group`` with a groups
        file), ``cache_hit`` and ``timings``; with a groups file also ``cross_split_group`` and
        ``groups``. Paths are relative to the dataset root. ``skipped`` lists the files that
        did not decode, then what discovery skipped (hidden names, link loops, folders named
        like images); ``counts["files"]`` counts both with the images, so it is
        ``images + len(skipped)``, and ``counts["hidden"]`` the hidden ones among them.
    """
    if groups is not None and not isinstance(groups, GroupFile):
        groups = read_groups(groups)  # a malformed file fails before anything is decoded
    started = time.perf_counter()
    entries = index.entries
    paths = [e.path for e in entries]
    decoded = load_images(paths, image_size, workers=workers, progress=progress, log=log)
    decoded_at = time.perf_counter()
    headers = [read_header(p) for p in paths]
    headers_at = time.perf_counter()
    ok = decoded.ok
    dup = find_duplicates(decoded.digests, decoded.images, valid=ok, threshold=threshold, tol=tol)
    dup_at = time.perf_counter()

    facts = _Facts(index, ok, dup, groups)
    result = {
        "dataset": index.describe(),
        "created": now_iso(),
        "settings": _settings(image_size, threshold, tol),
        "counts": _counts(index, ok),
        "headers": header_histograms(headers),
        "skipped": ([{**facts.file(i), "reason": r} for i, r in enumerate(decoded.reasons) if r is not None]
                    + [{"path": _relative(s.path, index.root), "split": s.split, "label": s.label, "reason": s.reason}
                       for s in index.skipped]),
        "exact": facts.pair_summary(dup["exact_pairs"]),
        "near": {"candidates": dup["candidates"], **facts.pair_summary(dup["near_pairs"])},
        "clusters": facts.cluster_summary(),
    }
    result["counts"]["hidden"] = sum(s.reason == HIDDEN for s in index.skipped)
    result.update(facts.leakage())
    result.update(facts.conflicts())
    result["examples"] = facts.examples(examples)
    result["files"] = [{**facts.file(i), "digest": d, "phash": f"{int(h):016x}", "cluster": int(c)}
                       for i, (d, h, c) in enumerate(zip(decoded.digests, dup["hashes"], dup["cluster"]))]
    if groups is not None:
        for row, name in zip(result["files"], facts.group_names):
            row["group"] = name
    result["cache_hit"] = decoded.cache_hit
    result["timings"] = {
        "decode_s": round(decoded_at - started, 3),
        "headers_s": round(headers_at - decoded_at, 3),
        "duplicates_s": round(dup_at - headers_at, 3),
        "total_s": round(time.perf_counter() - started, 3),
    }
    return result


# ----------------------------------------------------------------------------------
# File headers
# ----------------------------------------------------------------------------------


def read_header(path: str | Path) -> dict | None:
    """Width, height, mode and format from a file's header (pixels are not decoded).

    Returns:
        ``{"width", "height", "mode", "format"}``, or ``None`` if Pillow cannot open it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format or "unknown"}
    except Exception:  # noqa: BLE001 - not an image, or unreadable: the decoder records why
        return None


def _size_bucket(width: int, height: int) -> str:
    side = max(width, height)
    return [name for low, name in SIZE_BUCKETS if side >= low][-1]


def _histogram(values) -> list[dict]:
    """``[{"value", "count"}]``, most common first, ties by value."""
    counts = collections.Counter(values)
    return [{"value": v, "count": n} for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]


def header_histograms(headers: Sequence[dict | None]) -> dict:
    """Histograms of image size, size bucket, aspect, mode and format.

    Files without a readable header count as ``"unreadable"`` in every histogram. Sizes
    list the :data:`MAX_SIZES` most common ``width×height`` values, then ``"other"``.
    """
    bad = "unreadable"
    sizes = _histogram(f"{h['width']}\u00d7{h['height']}" if h else bad for h in headers)
    if len(sizes) > MAX_SIZES:
        rest = sizes[MAX_SIZES:]
        sizes = sizes[:MAX_SIZES] + [{"value": f"other ({len(rest)} sizes)", "count": sum(r["count"] for r in rest)}]

    def aspect(h):
        if not h:
            return bad
        return "square" if h["width"] == h["height"] else ("wider" if h["width"] > h["height"] else "taller")

    return {
        "size": sizes,
        "size_bucket": _histogram(_size_bucket(h["width"], h["height"]) if h else bad for h in headers),
        "aspect": _histogram(aspect(h) for h in headers),
        "mode": _histogram(h["mode"] if h else bad for h in headers),
        "format": _histogram(h["format"] if h else bad for h in headers),
    }


# ----------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------


def _settings(image_size: int, threshold: int, tol: float) -> dict:
    return {
        "image_size": image_size,
        "threshold": threshold,
        "tol": tol,
        "hash": f"pHash: {HASH_SIZE}\u00d7{HASH_SIZE} lowest DCT frequencies (DC included) of the "
                f"{HASH_INPUT}\u00d7{HASH_INPUT} grey image, thresholded at their median; 64 bits",
        "pixel_check": f"mean |z_a - z_b| of the {PIXEL_SIZE}\u00d7{PIXEL_SIZE} grey images, each at zero mean "
                       f"and unit std, at most tol",
        "reference_splits": list(REFERENCE_SPLITS),
    }


def _counts(index: DatasetIndex, ok: np.ndarray) -> dict:
    by_split: dict[str, dict[str, int]] = {}
    images: dict[str, dict[str, int]] = {}
    for e, good in zip(index.entries, ok):
        by_split.setdefault(e.split, collections.Counter())[e.label] += 1
        images.setdefault(e.split, collections.Counter())[e.label] += int(good)
    order = {label: i for i, label in enumerate(index.labels)}

    def plain(d):
        return {s: {k: c[k] for k in sorted(c, key=order.get)} for s, c in d.items()}

    return {"files": len(index.entries) + len(index.skipped), "images": int(ok.sum()),
            "files_by_split_class": plain(by_split), "images_by_split_class": plain(images)}


class _Facts:
    """Per-row split, label and cluster, and the questions the audit asks of them."""

    def __init__(self, index: DatasetIndex, ok: np.ndarray, dup: dict, groups: GroupFile | None = None):
        self.index = index
        self.ok = ok
        self.dup = dup
        self.split = np.array([e.split for e in index.entries], dtype=object)
        self.label = np.array([e.label for e in index.entries], dtype=object)
        self.rel = [_relative(e.path, index.root) for e in index.entries]
        self.cluster = dup["cluster"]
        self.reference = np.isin(self.split, REFERENCE_SPLITS)
        self.test = (self.split == TEST_SPLIT) & ok
        self.applicable = index.layout == "split"
        self.group, self.group_summary, self.group_names = None, None, []
        if groups is not None:
            self.group, self.group_summary = assign_groups(groups, self.rel, valid=ok)
            self.group_names = [groups.groups.get(rel) if good else None for rel, good in zip(self.rel, ok)]

    def file(self, i: int) -> dict:
        return {"path": self.rel[i], "split": str(self.split[i]), "label": str(self.label[i])}

    def pair_summary(self, pairs: np.ndarray) -> dict:
        """Pair counts within each split and across splits, and the files involved."""
        same = self.split[pairs[:, 0]] == self.split[pairs[:, 1]]
        within = collections.Counter(self.split[pairs[same, 0]].tolist())
        sizes = np.bincount(clusters(len(self.split), pairs))
        groups, files = int((sizes > 1).sum()), int(sizes[sizes > 1].sum())
        return {
            "pairs": int(len(pairs)),
            "pairs_within": {s: within.get(s, 0) for s in _split_order(self.split)},
            "pairs_cross": int((~same).sum()),
            "groups": groups,
            "files": files,
            # every file of a group but one: what keeping one image per group would drop
            "redundant": files - groups,
        }

    def cluster_summary(self) -> dict:
        sizes = np.bincount(self.cluster)
        multi = sizes[sizes > 1]
        return {"count": int(len(multi)), "files": int(multi.sum()), "largest": int(multi.max()) if len(multi) else 0}

    def _twins(self, pairs: np.ndarray) -> np.ndarray:
        """Mask of test rows with a reference twin among ``pairs``."""
        mask = np.zeros(len(self.split), dtype=bool)
        for a, b in ((0, 1), (1, 0)):
            hit = self.test[pairs[:, a]] & self.reference[pairs[:, b]]
            mask[pairs[hit, a]] = True
        return mask

    def leakage(self) -> dict:
        exact, near = self.dup["exact_pairs"], self.dup["near_pairs"]
        exact_twin = self._twins(exact)
        near_twin = exact_twin | self._twins(near)
        ref_clusters = np.unique(self.cluster[self.reference & self.ok])
        cluster_twin = self.test & np.isin(self.cluster, ref_clusters)
        same_patient = self._same_patient()
        by_class = {}
        for label in self.index.labels:
            rows = self.test & (self.label == label)
            if rows.any():
                by_class[label] = {"test": int(rows.sum()), "exact": int((exact_twin & rows).sum()),
                                   "near": int((near_twin & rows).sum())}
                if same_patient is not None:
                    by_class[label]["group"] = int((same_patient & rows).sum())
        n_test = int(self.test.sum())
        if self.applicable:
            note = (f"{n_test} test images checked against the training"
                    f"{' and validation' if 'val' in set(self.split.tolist()) else ''} images.")
        else:
            note = ("Not applicable: a flat layout has no official test split, so nothing can leak "
                    "across splits yet (figures are 0). Group the suite's own splits by cluster.")
        found = {
            "cross_split_exact": int(exact_twin.sum()),
            "cross_split_near": int(near_twin.sum()),
            "cross_split_cluster": int(cluster_twin.sum()),
            "cross_split_by_class": by_class,
            "leakage": {"applicable": self.applicable, "test_images": n_test,
                        "reference_splits": list(REFERENCE_SPLITS), "note": note},
        }
        if same_patient is not None:
            found["cross_split_group"] = int(same_patient.sum())
            found["groups"] = {**self.group_summary, "test_sharing_group": int(same_patient.sum()),
                               "groups_across_splits": len(self._leaking_groups())}
        return found

    def _leaking_groups(self) -> set[int]:
        """Patient groups with images both in the test split and in a reference split."""
        if self.group is None or not self.applicable:
            return set()
        reference = set(self.group[self.reference & self.ok].tolist())
        return {g for g in self.group[self.test].tolist() if g in reference}

    def _same_patient(self) -> np.ndarray | None:
        """Mask of test rows whose patient group has an image in a reference split (``None`` without groups)."""
        if self.group is None:
            return None
        return self.test & np.isin(self.group, list(self._leaking_groups()))

    def _group_items(self) -> list[dict]:
        """One example per leaking test image: the group's first reference image beside it."""
        first_reference: dict[int, int] = {}
        for i in np.flatnonzero(self.reference & self.ok).tolist():
            first_reference.setdefault(int(self.group[i]), i)
        mask = self._same_patient()
        return [{"a": self.file(first_reference[int(self.group[t])]), "b": self.file(t), "kind": "group",
                 "group": self.group_names[t], "distance": None, "score": None}
                for t in np.flatnonzero(mask).tolist()]

    def conflicts(self) -> dict:
        """Clusters whose images carry more than one label."""
        labels_of: dict[int, set] = collections.defaultdict(set)
        for c, label in zip(self.cluster.tolist(), self.label.tolist()):
            labels_of[c].add(label)
        mixed = {c for c, labels in labels_of.items() if len(labels) > 1}
        return {"label_conflicts": len(mixed),
                "label_conflict_images": int(np.isin(self.cluster, list(mixed)).sum()) if mixed else 0}

    # --- examples -------------------------------------------------------------------

    def _pair_item(self, a: int, b: int, kind: str, score: float | None) -> dict:
        if self.test[a] and self.reference[b]:
            a, b = b, a  # the reference image on the left, the test image on the right
        hashes = self.dup["hashes"]
        return {"a": self.file(a), "b": self.file(b), "kind": kind,
                "distance": int(bin(int(hashes[a]) ^ int(hashes[b])).count("1")),
                "score": None if score is None else round(float(score), 4)}

    def _items(self, pairs: np.ndarray, kind: str, keep: np.ndarray, scores=None) -> list[dict]:
        rows = np.flatnonzero(keep)
        if scores is not None:
            rows = rows[np.argsort(scores[rows], kind="stable")]
        return [self._pair_item(int(pairs[r, 0]), int(pairs[r, 1]), kind,
                                None if scores is None else scores[r]) for r in rows]

    def _cross(self, pairs: np.ndarray) -> np.ndarray:
        a, b = pairs[:, 0], pairs[:, 1]
        return (self.test[a] & self.reference[b]) | (self.test[b] & self.reference[a])

    def examples(self, limit: int) -> dict:
        """Up to ``limit`` pairs per category, spread evenly over the category's pairs
        (near pairs sorted by pixel score, so the examples run from clearest to most
        borderline)."""
        exact, near, score = self.dup["exact_pairs"], self.dup["near_pairs"], self.dup["near_score"]
        same_e = self.split[exact[:, 0]] == self.split[exact[:, 1]]
        same_n = self.split[near[:, 0]] == self.split[near[:, 1]]
        conflict_e = self.label[exact[:, 0]] != self.label[exact[:, 1]]
        conflict_n = self.label[near[:, 0]] != self.label[near[:, 1]]
        found = {
            "cross_split_exact": self._items(exact, "exact", self._cross(exact)),
            "cross_split_near": self._items(near, "near", self._cross(near), score),
            "within_split_exact": self._items(exact, "exact", same_e),
            "within_split_near": self._items(near, "near", same_n, score),
            "label_conflicts": (self._items(exact, "exact", conflict_e)
                                + self._items(near, "near", conflict_n, score)),
        }
        if self.group is not None:
            found["cross_split_group"] = self._group_items()
        return {name: {"total": len(items), "shown": _spread(items, limit)} for name, items in found.items()}


def _spread(items: list, limit: int) -> list:
    """At most ``limit`` items, evenly spaced over the list (first and last included)."""
    if len(items) <= limit:
        return items
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in picks]


def _split_order(splits) -> list[str]:
    known = ("train", "val", "test", "pool")
    present = set(splits.tolist())
    return [s for s in known if s in present] + sorted(present - set(known))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def slug(name: str) -> str:
    """A dataset name as a safe folder-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"
