"""Patient groups: images of one patient (or one scan volume) that no split may separate.

``--groups FILE`` names a CSV file of two columns, an image's path relative to the dataset root
and the id of its group::

    path,group
    Training/glioma_tumor/gg (1).jpg,patient-017
    Testing/glioma_tumor/image(3).jpg,patient-017

The file is read as CSV (quote a path that holds a comma), UTF-8 (a byte-order mark is allowed;
bytes UTF-8 cannot spell stand for themselves, as in file names), with ``/`` between folders. A
first row ``path,group`` is a header; blank lines are ignored; whitespace around a field is
stripped. A path listed twice must name the same group both times.

What is not fatal, but counted and reported (:func:`assign_groups`): a listed path that is not an
image of the dataset (no such file, or a file that was skipped), and an image the file does not
list, which is a group of its own. What is fatal: a malformed file, as one ``DataError`` naming the
file and the line.

Groups and duplicate clusters combine by union (:func:`merge_units`): two images share a unit when
they share a patient or a duplicate cluster, transitively. The unit is what splits and folds keep
whole.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import posixpath
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from suite.errors import DataError

HEADER = ("path", "group")
EXAMPLES = 10  # paths listed per "missing" and "ungrouped" in a summary


@dataclasses.dataclass(frozen=True)
class GroupFile:
    """A parsed groups file.

    Attributes:
        path: the file as given.
        digest: BLAKE2b of its bytes (the data fingerprint includes it, so a resumed CV or search
            notices an edited file).
        groups: ``{relative path: group id}``.
        lines: ``{relative path: line number}`` where each path was first listed.
    """

    path: Path
    digest: str
    groups: dict[str, str]
    lines: dict[str, int]


def read_groups(path: str | Path) -> GroupFile:
    """Parse a groups file (see the module docstring).

    Raises:
        DataError: the file cannot be read, lists nothing, or a line is malformed (the message
            names the file and the line).
    """
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the groups file {path}: {exc.strerror or exc}") from None
    if b"\0" in raw:  # no file name holds one: a spreadsheet, or UTF-16 as Excel saves "Unicode text"
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise DataError(f"groups file {path}, line {line}: a NUL byte; expected a CSV file in UTF-8")
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    groups: dict[str, str] = {}
    lines: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    first = True
    try:
        for row in reader:
            line = reader.line_num
            fields = [f.strip() for f in row]
            if not any(fields):
                continue
            if first and tuple(f.lower() for f in fields) == HEADER:
                first = False
                continue
            first = False
            rel, group = _row(fields, line, path)
            if groups.get(rel, group) != group:
                raise DataError(f"groups file {path}, line {line}: {rel} is listed again in group {group!r}; "
                                f"line {lines[rel]} put it in group {groups[rel]!r}")
            groups.setdefault(rel, group)
            lines.setdefault(rel, line)
    except csv.Error as exc:
        raise DataError(f"groups file {path}, line {reader.line_num}: {exc}") from None
    if not groups:
        raise DataError(f"groups file {path} lists no images: expected lines of path,group "
                        "(the path relative to the dataset folder)")
    return GroupFile(path=path, digest=hashlib.blake2b(raw, digest_size=16).hexdigest(), groups=groups,
                     lines=lines)


def _row(fields: list[str], line: int, path: Path) -> tuple[str, str]:
    where = f"groups file {path}, line {line}"
    if len(fields) != 2:
        raise DataError(f"{where}: expected 2 fields (path,group), found {len(fields)}")
    rel, group = fields
    if not rel or not group:
        raise DataError(f"{where}: the {'path' if not rel else 'group'} is empty")
    if rel.startswith("/") or ".." in rel.split("/"):
        raise DataError(f"{where}: {rel} is not a path inside the dataset folder (give it relative to the "
                        "dataset folder, e.g. Training/glioma/scan.jpg)")
    return posixpath.normpath(rel), group


def assign_groups(group_file: GroupFile, rel_paths: Sequence[str], valid=None) -> tuple[np.ndarray, dict]:
    """The group of every row, and what the file and the dataset did not agree on.

    Args:
        group_file: from :func:`read_groups`.
        rel_paths: every row's path relative to the dataset root, ``/`` between folders.
        valid: rows that hold an image (default: all); the others are neither grouped nor
            counted, and a path listed for one of them counts as missing.

    Returns:
        ``(ids, summary)``: an int group id per row (a row the file does not list has an id of
        its own) and a JSON-ready summary: ``file``, ``digest``, ``listed`` (paths the file
        lists), ``groups`` (groups with at least one image), ``grouped_images``, ``largest``
        (images in the largest group), ``ungrouped`` (images the file does not list, each its
        own group) and ``missing`` (listed paths that are not images of the dataset: no such
        file, or a skipped one), with up to :data:`EXAMPLES` of each as ``*_examples``.
    """
    valid = np.ones(len(rel_paths), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    named: dict[str, int] = {}
    ids = np.full(len(rel_paths), -1, dtype=np.int64)
    found, ungrouped = set(), []
    for i, rel in enumerate(rel_paths):
        group = group_file.groups.get(rel) if valid[i] else None
        if group is not None:
            ids[i] = named.setdefault(group, len(named))
            found.add(rel)
        elif valid[i]:
            ungrouped.append(rel)
    alone = np.flatnonzero(ids < 0)
    ids[alone] = len(named) + np.arange(len(alone))
    missing = sorted((p for p in group_file.groups if p not in found), key=group_file.lines.get)
    sizes = np.bincount(ids[valid]) if valid.any() else np.zeros(0, dtype=np.int64)
    summary = {
        "file": str(group_file.path),
        "digest": group_file.digest,
        "listed": len(group_file.groups),
        "groups": len(named),
        "grouped_images": int(valid.sum()) - len(ungrouped),
        "largest": int(sizes[: len(named)].max()) if named else 0,
        "ungrouped": len(ungrouped),
        "ungrouped_examples": ungrouped[:EXAMPLES],
        "missing": len(missing),
        "missing_examples": missing[:EXAMPLES],
    }
    return ids, summary


def merge_units(n: int, *labelings: np.ndarray | None) -> np.ndarray:
    """Unit id of each of ``n`` rows: rows share a unit when they share an id in any of
    ``labelings`` (patient groups, duplicate clusters), transitively. ``None`` labelings are left out.

    Returns:
        ``(n,)`` int64 ids ``0..k-1``, numbered in order of each unit's first row.
    """
    from suite.data.duplicates import clusters

    pairs = [np.empty((0, 2), dtype=np.int64)]
    for ids in labelings:
        if ids is None:
            continue
        order = np.argsort(np.asarray(ids), kind="stable")
        same = np.asarray(ids)[order][1:] == np.asarray(ids)[order][:-1]
        pairs.append(np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64))
    return clusters(n, np.concatenate(pairs))


def shared_with(ids: np.ndarray, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Mask over ``rows``: the row's group has a member among ``others``."""
    return np.isin(ids[rows], ids[others])
