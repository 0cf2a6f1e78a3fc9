"""``suite evaluate``: score a finished run's model on another dataset (external validation).

run folder (model, labels, image size) + dataset -> decode -> predict -> metrics on the classes
the model knows, unseen classes counted apart -> contamination: which evaluated images are copies
of the run's own training images, and the metrics without them -> evaluation folder (manifest,
metrics, predictions, contamination, report).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from reports import finish
from suite import runs
from suite.commands import log
from suite.contamination import CSV_HEADER, Contamination, check_evaluated
from suite.data.decode import load_images
from suite.data.discover import CARD_NAME, SPLIT_ALIASES, DatasetIndex, discover, order_labels
from suite.errors import DataError
from suite.io import write_csv_atomic, write_json_atomic


def evaluation_index(data_dir) -> DatasetIndex:
    """``discover(data_dir, check=False)``, and also a folder holding only a test split (``DIR/Testing/<class>/``,
    as when only the test split was downloaded), which discovery refuses for want of a training folder.

    Raises:
        DataError: what discovery says about any other folder it cannot read.
    """
    try:
        return discover(data_dir, check=False)
    except DataError:
        root = Path(data_dir).expanduser().resolve()
        parts = _split_folders(root) if root.is_dir() else {}
        if not parts or "train" in parts:
            raise
        return _split_without_training(root, parts)


def _split_folders(root: Path) -> dict[str, Path]:
    found = {}
    for d in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split and d.is_dir() and not d.name.startswith("."):
            found.setdefault(split, d)
    return found


def _split_without_training(root: Path, parts: dict[str, Path]) -> DatasetIndex:
    """Each split folder read as a class-folder dataset of its own, its files put back under their split.

    A stopgap until ``discover(..., check=False)`` accepts a split layout without a training folder.
    """
    entries, skipped, folders = [], [], {}
    for split, folder in sorted(parts.items()):
        part = discover(folder, check=False)
        entries += [dataclasses.replace(e, split=split) for e in part.entries]
        skipped += [dataclasses.replace(s, split=split) for s in part.skipped]
        for label, names in part.class_folders.items():
            folders.setdefault(label, set()).update(names)
    card = root / CARD_NAME
    try:
        card = json.loads(card.read_text(encoding="utf-8")) if card.is_file() else {}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the dataset card {card}: {exc}") from exc
    return DatasetIndex(root=root, layout="split", entries=tuple(entries),
                        labels=order_labels(e.label for e in entries),
                        class_folders={label: sorted(names) for label, names in sorted(folders.items())},
                        card=card, skipped=tuple(skipped))


def select_entries(index, split: str):
    """The entries to score: ``auto`` takes a test split when there is one, else everything."""
    if split == "auto":
        split = "test" if any(e.split == "test" for e in index.entries) else "all"
    if split == "all":
        return list(index.entries), split
    chosen = [e for e in index.entries if e.split == split]
    if not chosen:
        raise DataError(f"{index.root} has no {split} split")
    return chosen, split


def unseen_summary(entries, labels, predicted) -> dict:
    """For classes the model never saw: how many images, and what it called them."""
    out: dict[str, dict] = {}
    for e, p in zip(entries, predicted):
        if e.label in labels:
            continue
        item = out.setdefault(e.label, {"n": 0, "predicted": Counter()})
        item["n"] += 1
        item["predicted"][p] += 1
    return {k: {"n": v["n"], "predicted": dict(v["predicted"])} for k, v in sorted(out.items())}


def evaluate_external(run_dir, data_dir, *, out=None, split: str = "auto", progress: bool = True,
                      log: Callable[[str], None] = log) -> Path:
    """Score ``run_dir``'s model on ``data_dir``; write and return an evaluation folder.

    Images of classes the model never saw are predicted and reported (how many, what
    they were called) but left out of the metrics, which only make sense on known classes.
    Every evaluated image is compared with the run's training and validation images
    (:mod:`suite.contamination`): ``metrics.json`` gains ``contamination`` and, when the
    check could run, ``leak_free`` (the metrics without the copies), and ``runs.CONTAMINATION``
    lists each copy with its training twin.
    """
    from suite.metrics import classification_metrics
    run = runs.RunFolder(run_dir)
    model, source, labels, size = run.load_model(), run.manifest, run.labels, run.image_size
    run_dir = run.path
    index = evaluation_index(data_dir)
    runs.check_out_outside(out or run_dir.parent, index.root)
    entries, split = select_entries(index, split)
    decoded = load_images([e.path for e in entries], size, progress=progress)
    ok = [i for i, r in enumerate(decoded.reasons) if r is None]
    kept = [entries[i] for i in ok]
    if not kept:
        raise DataError(f"no readable images in {index.root}")
    probs = model.predict(np.ascontiguousarray(decoded.images[ok]), verbose=0)
    predicted = [labels[int(i)] for i in probs.argmax(axis=1)]
    seen = np.array([e.label in labels for e in kept])
    if not seen.any():
        raise DataError(f"none of the classes in {index.root} were seen by the model ({', '.join(labels)})")
    y_true = np.array([labels.index(e.label) for e in kept if e.label in labels])
    metrics = classification_metrics(y_true, probs[seen], labels)
    metrics["unseen_classes"] = unseen_summary(kept, labels, predicted)
    contamination = _contamination(run_dir, kept, progress, log)
    metrics["contamination"] = contamination.summary
    if contamination.possible:
        metrics["leak_free"] = _leak_free(y_true, probs[seen], labels, ~contamination.found[seen])
    folder = runs.new_run_dir(out or run_dir.parent, f"evaluate-{source['backbone']}")
    skipped = [{"path": str(e.path), "reason": r} for e, r in zip(entries, decoded.reasons) if r is not None]
    _write_results(folder, metrics, contamination, kept, probs, labels)
    runs.write_manifest(folder, _manifest(folder, run_dir, source, index, split, metrics, skipped))
    finish(folder, log)
    return folder


def _write_results(folder: Path, metrics: dict, contamination: Contamination, kept, probs, labels) -> None:
    """``metrics.json``, ``predictions.csv`` and, when the check ran, ``contamination.csv``."""
    from suite.metrics import prediction_rows

    write_json_atomic(folder / runs.METRICS, metrics)
    if contamination.possible:
        write_csv_atomic(folder / runs.CONTAMINATION, CSV_HEADER, contamination.rows)
    header, rows = prediction_rows([e.path for e in kept], [0] * len(kept), probs, labels)
    for row, e in zip(rows, kept):
        row[1] = e.label  # the true label, possibly one the model never saw
    write_csv_atomic(folder / runs.PREDICTIONS, header, rows)


def _contamination(run_dir: Path, kept, progress: bool, log) -> Contamination:
    """Which evaluated images are copies of the run's training images; says so in one line."""
    result = check_evaluated(run_dir, [e.path for e in kept], [e.label for e in kept], progress=progress)
    summary = result.summary
    if not result.possible:
        log(f"warning: contamination check {summary['check']}")
    elif summary["count"]:
        log(f"warning: {summary['count']} of {summary['n_evaluated']} evaluated images ({summary['fraction']:.1%}) "
            f"are copies of the run's training or validation images (check: {summary['check']}); "
            "leak-free metrics leave them out")
    return result


def _leak_free(y_true, probs, labels, keep) -> dict:
    from suite.metrics import leak_free_metrics

    return leak_free_metrics(y_true, probs, labels, keep, definition="evaluated images with no exact or near "
                             "twin among the run's training and validation images (suite.contamination)")


def _manifest(folder, run_dir, source, index, split, metrics, skipped) -> dict:
    warnings = [
        f"class {label!r} ({item['n']} images) was never seen by the model: predicted as "
        f"{item['predicted']}, left out of the metrics"
        for label, item in metrics["unseen_classes"].items()
    ]
    if index.synthetic:
        warnings.insert(0, "This evaluation used synthetic phantom data, not real MRI.")
    return {
        "schema": 1,
        "kind": "evaluation",
        "run_id": folder.name,
        "status": "completed",
        "error": None,
        "created": runs.now_iso(),
        "backbone": source["backbone"],
        "source_run": str(run_dir.resolve()),
        "config": {**source["config"], "evaluated_split": split},
        "seed": source.get("seed"),
        "dataset": index.describe(),
        "class_counts": {"test": dict(Counter(e.label for e in index.entries if split == "all" or e.split == split))},
        "skipped": skipped,
        "n_skipped": len(skipped),
        "weights": {"requested": "run", "source": f"run:{run_dir.name}", "warning": None},
        "warnings": warnings,
        "backend": source.get("backend"),
        "device": source.get("device"),
        "package_versions": source.get("package_versions", {}),
        "timings": {},
    }


def main(args) -> int:
    print(evaluate_external(args.run_dir, args.data, out=args.out, split=args.split, progress=not args.quiet))
    return 0
