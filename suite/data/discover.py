"""Find the images of a dataset folder and map its class folders to labels.

Two layouts are understood:

* ``split``: ``DIR/Training/<class>/`` and ``DIR/Testing/<class>/`` (also ``Train``,
  ``Test``, ``train``, ``test``; an optional ``val``/``Validation`` folder is used as
  the validation set);
* ``flat``: ``DIR/<class>/``, which the suite splits itself.

Every file under a class folder is listed, whatever its name: deciding what is an
image is the decoder's job, so ``.DS_Store`` or a text file named ``.jpg`` is counted
and reported as skipped rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from suite.errors import DataError

CANONICAL_LABELS = ("glioma", "meningioma", "pituitary", "no_tumor")

LABEL_ALIASES = {
    "glioma": "glioma",
    "gliomas": "glioma",
    "glioma_tumor": "glioma",
    "glioma_tumour": "glioma",
    "meningioma": "meningioma",
    "meningiomas": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningioma_tumour": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_tumour": "pituitary",
    "pituitary_adenoma": "pituitary",
    "no_tumor": "no_tumor",
    "no_tumour": "no_tumor",
    "notumor": "no_tumor",
    "notumour": "no_tumor",
    "healthy": "no_tumor",
    "normal": "no_tumor",
}

SPLIT_ALIASES = {
    "training": "train",
    "train": "train",
    "testing": "test",
    "test": "test",
    "validation": "val",
    "valid": "val",
    "val": "val",
}

CARD_NAME = "dataset.json"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file found under a class folder."""

    path: Path
    label: str
    split: str  # "train", "val", "test", or "pool" for a flat layout
    class_dir: Path  # the class folder it was found under

    @property
    def folder(self) -> str:
        """The class folder's own name, as on disk."""
        return self.class_dir.name


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """What :func:`discover` found: files, labels and the dataset's card."""

    root: Path
    layout: str
    entries: tuple[Entry, ...]
    labels: tuple[str, ...]
    class_folders: dict[str, list[str]]
    card: dict

    @property
    def synthetic(self) -> bool:
        return bool(self.card.get("synthetic", False))

    @property
    def name(self) -> str:
        return str(self.card.get("name") or self.root.name)

    def describe(self) -> dict:
        """Plain-dict description for the manifest."""
        return {
            "root": str(self.root),
            "name": self.name,
            "synthetic": self.synthetic,
            "description": self.card.get("description"),
            "layout": self.layout,
            "labels": list(self.labels),
            "class_folders": self.class_folders,
        }


def canonical_label(folder_name: str) -> str:
    """Map a class folder's name to its canonical label; unknown names are kept."""
    key = re.sub(r"[\s\-]+", "_", folder_name.strip().lower())
    return LABEL_ALIASES.get(key, folder_name.strip())


def order_labels(labels) -> tuple[str, ...]:
    """Canonical labels first, in their fixed order, then the others sorted."""
    labels = set(labels)
    known = [label for label in CANONICAL_LABELS if label in labels]
    return tuple(known + sorted(labels - set(known)))


def discover(root: str | Path, *, check: bool = True) -> DatasetIndex:
    """List the dataset at ``root`` and (with ``check``) that it can be trained on.

    Evaluation passes ``check=False``: an external test set may hold one class only.

    Raises:
        DataError: no such folder, an empty class folder, fewer than two classes, or
            a test class that training lacks. The message names the folder.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    split_dirs = _split_dirs(root)
    if split_dirs:
        layout, entries = "split", _split_entries(root, split_dirs)
    else:
        layout, entries = "flat", _class_entries(root, "pool")
    labels = order_labels(e.label for e in entries)
    index = DatasetIndex(
        root=root,
        layout=layout,
        entries=tuple(entries),
        labels=labels,
        class_folders=_class_folders(entries),
        card=_read_card(root),
    )
    if check:
        check_classes(index)
    return index


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _visible_dirs(root):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(f"{root} has two {split} folders: {found[split].name} and {d.name}")
        found[split] = d
    if found and "train" not in found:
        raise DataError(f"{root} has {', '.join(p.name for p in found.values())} but no training folder")
    if found and "test" not in found:
        raise DataError(f"{root} has a training folder but no test folder (Testing/ or Test/)")
    return found


def _split_entries(root: Path, split_dirs: dict[str, Path]) -> list[Entry]:
    entries: list[Entry] = []
    for split, folder in sorted(split_dirs.items()):
        entries.extend(_class_entries(folder, split))
    return entries


def _class_entries(folder: Path, split: str) -> list[Entry]:
    class_dirs = _visible_dirs(folder)
    if not class_dirs:
        raise DataError(f"no class folders in {folder}: expected one sub-folder per class")
    entries: list[Entry] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file())
        if not files:
            raise DataError(f"class folder is empty: {class_dir}")
        label = canonical_label(class_dir.name)
        entries.extend(Entry(path=p, label=label, split=split, class_dir=class_dir) for p in files)
    return entries


def _class_folders(entries) -> dict[str, list[str]]:
    folders: dict[str, set[str]] = {}
    for e in entries:
        folders.setdefault(e.label, set()).add(e.folder)
    return {label: sorted(names) for label, names in sorted(folders.items())}


def _read_card(root: Path) -> dict:
    card = root / CARD_NAME
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the dataset card {card}: {exc}") from exc


def check_classes(index: DatasetIndex, entries=None) -> None:
    """Stop before training when the classes cannot make a classifier.

    Args:
        index: the discovered dataset (for its root and folder names).
        entries: the entries to check (default: all); the pipeline passes the
            decodable ones again after decoding.
    """
    entries = index.entries if entries is None else entries
    train_splits = ("train", "pool")
    train_labels = {e.label for e in entries if e.split in train_splits}
    if len(train_labels) < 2:
        raise DataError(
            f"{index.root} has a single class ({', '.join(sorted(train_labels)) or 'none'}): "
            "a classifier needs at least two class folders"
        )
    for e in entries:
        if e.split in ("test", "val") and e.label not in train_labels:
            raise DataError(
                f"class folder {e.class_dir} has no counterpart in the training set: "
                f"label {e.label!r} never appears in training"
            )


def check_readable(index: DatasetIndex, entries) -> None:
    """After decoding: every class folder must still hold at least one image.

    Args:
        index: the discovered dataset.
        entries: the entries that decoded.
    """
    kept = {e.class_dir for e in entries}
    for class_dir in sorted({e.class_dir for e in index.entries}):
        if class_dir not in kept:
            raise DataError(f"class folder has no readable images: {class_dir}")
    check_classes(index, entries)
