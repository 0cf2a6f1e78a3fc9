"""``suite evaluate``: score a finished run's model on another dataset (external validation).

run folder (model, labels, image size) + dataset -> decode -> predict -> metrics on the classes
the model knows, unseen classes counted apart -> evaluation folder (manifest, metrics, predictions, report).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from reports import finish
from suite import runs
from suite.commands import log
from suite.data.decode import load_images
from suite.data.discover import discover
from suite.errors import DataError
from suite.io import write_csv_atomic, write_json_atomic


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
    """
    from suite.metrics import classification_metrics, prediction_rows
    run = runs.RunFolder(run_dir)
    model, source, labels, size = run.load_model(), run.manifest, run.labels, run.image_size
    run_dir = run.path
    index = discover(data_dir, check=False)
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
    folder = runs.new_run_dir(out or run_dir.parent, f"evaluate-{source['backbone']}")
    skipped = [{"path": str(e.path), "reason": r} for e, r in zip(entries, decoded.reasons) if r is not None]
    write_json_atomic(folder / runs.METRICS, metrics)
    header, rows = prediction_rows([e.path for e in kept], [0] * len(kept), probs, labels)
    for row, e in zip(rows, kept):
        row[1] = e.label  # the true label, possibly one the model never saw
    write_csv_atomic(folder / runs.PREDICTIONS, header, rows)
    runs.write_manifest(folder, _manifest(folder, run_dir, source, index, split, metrics, skipped))
    finish(folder, log)
    return folder


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
