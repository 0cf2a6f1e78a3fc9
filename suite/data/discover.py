"""Find the images of a dataset folder and map its class folders to labels.

Two layouts are understood:

* ``split``: ``DIR/Training/<class>/`` and ``DIR/Testing/<class>/`` (also ``Train``,
  ``Test``, ``train``, ``test``; an optional ``val``/``Validation`` folder is used as
  the validation set);
* ``flat``: ``DIR/<class>/``, which the suite splits itself.

Every file under a class folder, in sub-folders too (links to folders followed), is listed
whatever its name, but for hidden ones: deciding what is an image is the decoder's job, so
``Thumbs.db`` or a text file named ``.jpg`` is counted and reported as skipped rather than
silently ignored. What is not a file to decode is listed in ``DatasetIndex.skipped`` with its
reason, never dropped silently: a symbolic link loop, a broken link, a folder named like an image
(``x.jpg/``, whose contents are not read), a device or FIFO, a folder that cannot be listed.

Hidden names are not data, at any depth: a name beginning with ``.`` (``.DS_Store``, the
``.ipynb_checkpoints/`` copies Jupyter leaves inside class folders, macOS's ``._scan.jpg``) and
``__MACOSX/`` (what unzipping a macOS archive leaves). Each is listed once among the skipped with
the reason ``hidden`` (:data:`HIDDEN`); a hidden folder's contents are not read, and a hidden
folder beside the class folders is not a class.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
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

# A folder under a class folder named with one of these suffixes is skipped, not read: whatever made it
# (an unpacked archive, a script that made a folder where it meant a file) did not mean an image folder,
# and a user reading the skipped list sees "x.jpg" where they expected an image.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff",
                            ".webp", ".pgm", ".ppm", ".pnm", ".pbm", ".jp2", ".j2k", ".dcm", ".dicom"})
SELF_LOOP = "symbolic link loop (the link leads back to itself); not followed"
HIDDEN = "hidden"  # the skip reason of a hidden name (see is_hidden)
MACOS_ARCHIVE_FOLDER = "__MACOSX"


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
class Skipped:
    """Something found under the dataset folder that is not a file to decode, and why."""

    path: Path
    reason: str
    split: str  # as for Entry
    label: str  # the class folder's label; "" outside any class folder

    def describe(self) -> dict:
        return {"path": str(self.path), "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """What :func:`discover` found: files, labels, the dataset's card, and what was skipped."""

    root: Path
    layout: str
    entries: tuple[Entry, ...]
    labels: tuple[str, ...]
    class_folders: dict[str, list[str]]
    card: dict
    skipped: tuple[Skipped, ...] = ()

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


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden, so never data: it begins with ``.`` or is ``__MACOSX``."""
    return name.startswith(".") or name == MACOS_ARCHIVE_FOLDER


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
    root = _dataset_root(root)
    split_dirs = _split_dirs(root)
    found = _Found()
    if split_dirs:
        layout = "split"
        _note_hidden(root, found)
        for split, folder in sorted(split_dirs.items()):
            _class_entries(folder, split, found, {_identity(root): root})
    else:
        layout = "flat"
        _class_entries(root, "pool", found, {})
    index = DatasetIndex(
        root=root,
        layout=layout,
        entries=tuple(found.entries),
        labels=order_labels(e.label for e in found.entries),
        class_folders=_class_folders(found.entries),
        card=_read_card(root),
        skipped=tuple(found.skipped),
    )
    if check:
        check_classes(index)
    return index


def _dataset_root(root: str | Path) -> Path:
    root = Path(root).expanduser().resolve()
    if root.is_dir():
        return root
    if not root.exists():
        raise DataError(f"dataset folder not found: {root}")
    what = "a file, not a folder" if root.is_file() else "not a folder"
    raise DataError(f"dataset path is {what}: {root} (give the folder that holds the class folders)")


@dataclasses.dataclass
class _Found:
    entries: list[Entry] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)


def _visible_dirs(folder: Path, found: _Found | None = None, split: str = "") -> list[Path]:
    """The sub-folders of ``folder`` that are not hidden (:func:`is_hidden`); a hidden file or folder and
    a link that loops onto itself are added to ``found.skipped``."""
    dirs = []
    for p in sorted(folder.iterdir()):
        if is_hidden(p.name):
            if found is not None:
                found.skipped.append(Skipped(p, HIDDEN, split, ""))
            continue
        if p.is_dir():
            dirs.append(p)
        elif found is not None and p.is_symlink() and _stat_errno(p) == errno.ELOOP:
            found.skipped.append(Skipped(p, SELF_LOOP, split, ""))
    return dirs


def _note_hidden(folder: Path, found: _Found) -> None:
    """Add the hidden files and folders directly in ``folder`` (the dataset root of a split layout,
    whose other files are not data either) to ``found.skipped``."""
    found.skipped.extend(Skipped(p, HIDDEN, "", "") for p in sorted(folder.iterdir()) if is_hidden(p.name))


def _stat_errno(path: Path) -> int | None:
    try:
        path.stat()
    except OSError as exc:
        return exc.errno
    return None


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


def _class_entries(folder: Path, split: str, found: _Found, above: dict) -> None:
    """Add the files of every class folder under ``folder`` to ``found``, and what was skipped.

    Args:
        above: ``{identity: path}`` of the folders above ``folder``, to tell a link loop.
    """
    above = {**above, _identity(folder): folder}
    class_dirs = []
    for d in _visible_dirs(folder, found, split):
        if _identity(d) in above:  # a link back up: a class "folder" holding the whole dataset
            found.skipped.append(Skipped(d, _loop_reason(above[_identity(d)]), split, ""))
        else:
            class_dirs.append(d)
    if not class_dirs:
        raise DataError(f"no class folders in {folder}: expected one sub-folder per class")
    for class_dir in class_dirs:
        label = canonical_label(class_dir.name)
        files, skipped = [], []
        for path, reason in walk_files(class_dir, above):
            if reason is None:
                files.append(Entry(path=path, label=label, split=split, class_dir=class_dir))
            else:
                skipped.append(Skipped(path, reason, split, label))
        if not files:
            raise DataError(_no_files_message(class_dir, skipped))
        found.entries.extend(files)
        found.skipped.extend(skipped)


def _no_files_message(class_dir: Path, skipped: list[Skipped]) -> str:
    if not skipped:
        return f"class folder is empty: {class_dir}"
    first = skipped[0]
    return (f"class folder has no files to read: {class_dir} ({len(skipped)} skipped; "
            f"{first.path.name!r}: {first.reason})")


def walk_files(top: Path, above: dict | None = None) -> Iterator[tuple[Path, str | None]]:
    """Every file under ``top`` (sub-folders and links to folders followed), in sorted path order,
    as ``(path, None)``; whatever is not a file to read as ``(path, reason)``, a hidden name
    (:func:`is_hidden`) as ``(path, HIDDEN)`` without entering it.

    Args:
        top: the folder to walk.
        above: ``{identity: path}`` of folders above ``top``: a link to one of them, or to a
            folder on the way down, is a loop.
    """
    # An explicit stack, not recursion: however deep the folders, no RecursionError.
    stack: list = []
    yield from _enter(stack, top, {**(above or {}), _identity(top): top})
    while stack:
        folder, children, ancestors = stack[-1]
        entry = next(children, None)
        if entry is None:
            stack.pop()
            continue
        path = folder / entry.name
        if is_hidden(entry.name):  # not data, and a hidden folder is not entered
            yield path, HIDDEN
            continue
        kind, detail = _classify(entry, ancestors)
        if kind == "dir":
            yield from _enter(stack, path, {**ancestors, detail: path})
        else:
            yield path, detail


def _enter(stack: list, folder: Path, ancestors: dict) -> Iterator[tuple[Path, str]]:
    """Push ``folder``'s entries (``os.DirEntry``, sorted by name) on ``stack``, or yield why it
    cannot be listed."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield folder, f"folder cannot be read: {exc.strerror or exc}"
        return
    stack.append((folder, iter(entries), ancestors))


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _classify(entry: os.DirEntry, ancestors: dict) -> tuple[str, object]:
    """``("file", None)``, ``("dir", identity)`` or ``("skip", reason)``."""
    try:
        if entry.is_file():  # follows links; for a plain file the listing says so, without a stat call
            return "file", None
        st = entry.stat()
    except OSError as exc:
        return "skip", _stat_problem(Path(entry.path), exc)
    if not stat.S_ISDIR(st.st_mode):
        return "skip", "not a regular file (a device, FIFO or socket)"
    identity = (st.st_dev, st.st_ino)
    if identity in ancestors:
        return "skip", _loop_reason(ancestors[identity])
    if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
        return "skip", "a folder named like an image file: not an image, and its contents are not read"
    return "dir", identity


def _stat_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return SELF_LOOP
    if exc.errno == errno.ENOENT and path.is_symlink():
        return "broken symbolic link (its target does not exist)"
    return f"cannot be read: {exc.strerror or exc}"


def _loop_reason(target: Path) -> str:
    return f"symbolic link loop: leads back to {target}, a folder above it; not followed"


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
