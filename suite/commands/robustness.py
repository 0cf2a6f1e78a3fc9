"""``suite robustness``: a trained run's accuracy under MRI corruptions, severity by severity.

run folder (model, labels, image size, its own test images) or ``--data DIR``'s test split ->
decode -> predict clean -> for each corruption of :mod:`suite.corruptions` and severity, corrupt
the decoded images in memory (files are never touched) and predict -> accuracy and macro-F1 per
cell, clean accuracy, mean corruption accuracy, relative robustness -> how much of the evaluated
data the run could have seen in training (each image checked against the run's record of its
training images) and the same figures on the images with no training twin -> robustness folder
(robustness.json, robustness.csv, the example strip, report.html).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from reports import finish
from suite import runs
from suite.commands import log
from suite.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from suite.data.decode import load_images
from suite.errors import DataError, SuiteError
from suite.io import write_bytes_atomic, write_csv_atomic, write_json_atomic

CHUNK = 256  # images corrupted and predicted at once: bounds memory at any test-set size
CSV_HEADER = ("corruption", "severity", "parameter", "accuracy", "macro_f1", "leak_free_accuracy")


def robustness(run_dir, *, data=None, out=None, severities: Sequence[int] = SEVERITIES, seed: int = 0,
               progress: bool = True, log: Callable[[str], None] = log) -> Path:
    """Score ``run_dir``'s model on its test split (or ``data``'s) under every corruption; return the new folder.

    Args:
        run_dir: a completed run folder.
        data: a dataset folder whose test split (else all of it) is evaluated instead of the run's own.
        out: where the robustness folder goes (default: beside the run).
        severities: the severities to evaluate (default: all five).
        seed: seeds every corruption's random draws (the same seed, the same corrupted images).
        progress: show decoding progress.
        log: where status lines go.

    Raises:
        SuiteError: the run is not a completed run with a model; DataError: no readable test image.
    """
    run = runs.RunFolder(run_dir)
    if run.status != "completed":
        raise SuiteError(f"{run.path} is not a completed run (status: {run.status}): nothing to evaluate")
    test = external_test(run, data, progress, log) if data else own_test(run, progress)
    runs.check_out_outside(out or run.path.parent, test["root"])
    decoded = load_images(test["paths"], run.image_size, progress=progress)
    ok = np.flatnonzero(decoded.ok)
    if not len(ok):
        raise DataError(f"none of the {len(test['paths'])} test images could be read")
    images, y_true = np.ascontiguousarray(decoded.images[ok]), test["y"][ok]
    unseen = None if test["twin"] is None else ~test["twin"][ok]
    model = run.load_model()
    record = evaluate_corruptions(model, images, y_true, run.labels, severities=severities, seed=seed,
                                  unseen=unseen, log=log)
    record.update(_provenance(run, test, len(ok), len(test["paths"]) - len(ok), seed))
    folder = runs.new_run_dir(out or run.path.parent, f"robustness-{run.backbone}")
    with runs.removed_on_error(folder):
        record["robustness_id"] = folder.name
        write_results(folder, record, example_strip(images, severities, seed))
    log(summary_line(record))
    finish(folder, log)
    return folder


# -- what is evaluated ----------------------------------------------------------------------------


def own_test(run: runs.RunFolder, progress: bool = False) -> dict:
    """The run's own test images and labels, from its ``predictions.csv``, each checked against its training images.

    Without a usable record of the training images, how much could have been seen is what the
    run's own ``--dedup`` check counted, and no image is known to be free of a twin.
    """
    from suite.contamination import check_evaluated

    path = run.path / runs.PREDICTIONS
    known = [(p, label) for p, label in run.test_images() if label in run.labels]
    if not known:
        raise SuiteError(f"{path} lists no test image of a class the model knows")
    root = Path(run.manifest.get("dataset", {}).get("root") or ".")
    paths = [p for p, _ in known]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the run's {len(paths)} test images are no longer where it read them "
                        f"(e.g. {missing[0]}); give the dataset with --data DIR")
    labels = [label for _, label in known]
    check = check_evaluated(run.path, paths, labels, progress=progress)
    seen = seen_in_own_split(run.manifest) if check.found is None else \
        seen_in_check(check.summary, "test images")
    return {"root": root, "paths": paths, "y": np.array([run.labels.index(label) for label in labels]),
            "what": "the run's own test split", "dataset": run.manifest.get("dataset", {}), "seen": seen,
            "twin": check.found}


def external_test(run: runs.RunFolder, data, progress: bool, log) -> dict:
    """``data``'s test split (else all of it), the classes the model knows, checked against the run's training set."""
    from suite.commands.evaluate import evaluation_index, select_entries
    from suite.contamination import check_evaluated

    index = evaluation_index(data)
    entries, split = select_entries(index, "auto")
    known = [e for e in entries if e.label in run.labels]
    if not known:
        raise DataError(f"none of the classes in {index.root} were seen by the model ({', '.join(run.labels)})")
    if len(known) < len(entries):
        log(f"note: {len(entries) - len(known)} images of classes the model never saw are left out")
    check = check_evaluated(run.path, [e.path for e in known], [e.label for e in known], progress=progress)
    return {"root": index.root, "paths": [e.path for e in known],
            "y": np.array([run.labels.index(e.label) for e in known]),
            "what": f"the {split} split of {index.root}" if split != "all" else f"all of {index.root}",
            "dataset": index.describe(), "seen": seen_in_check(check.summary, "evaluated images"),
            "twin": check.found}


def seen_in_own_split(manifest: dict) -> dict:
    """How much of a run's own test split could have been seen in training, as its duplicate check recorded it."""
    dedup = manifest.get("dedup") or {}
    mode, count, n = dedup.get("mode"), dedup.get("test_with_training_twin"), dedup.get("test_images")
    if not mode or mode == "off" or count is None or not n:
        return {"check": "not checked", "count": None, "n_evaluated": n, "fraction": None,
                "text": "not checked: the run was made with --dedup off, so how many of its test images have a "
                        "copy among its training images is unknown"}
    dropped = dedup.get("dropped_from_test") or 0
    text = (f"{count} of {n} test images ({count / n:.1%}) have an exact or near-duplicate among the run's "
            f"training or validation images (the run's --dedup {mode} check)")
    if dropped:
        text += f"; {dropped} of them were dropped from the test split, so the figures here exclude them"
    return {"check": f"run's dedup ({mode})", "count": int(count), "n_evaluated": int(n),
            "fraction": count / n, "dropped": int(dropped), "text": text}


def seen_in_check(summary: dict, what: str) -> dict:
    """The same, from the contamination check (:func:`suite.contamination.check_evaluated`) of ``what``."""
    count, n, fraction = summary.get("count"), summary.get("n_evaluated"), summary.get("fraction")
    if count is None:
        text = f"not checked: contamination check {summary.get('check')}"
    else:
        text = (f"{count} of {n} {what} ({fraction:.1%}) are exact or near copies of the run's training "
                f"or validation images (contamination check: {summary.get('check')})")
    return {"check": str(summary.get("check")), "count": count, "n_evaluated": n, "fraction": fraction,
            "text": text}


# -- the evaluation -------------------------------------------------------------------------------


def corrupted_batches(images: np.ndarray, name: str, severity: int, seed: int = 0):
    """``images`` under ``name`` at ``severity``, :data:`CHUNK` at a time (each chunk with its own seeded draws)."""
    for k, start in enumerate(range(0, len(images), CHUNK)):
        yield corrupt(images[start:start + CHUNK], name, severity, seed=seed, chunk=k)


def evaluate_corruptions(model, images: np.ndarray, y_true: np.ndarray, labels: Sequence[str], *,
                         severities: Sequence[int] = SEVERITIES, seed: int = 0, unseen: np.ndarray | None = None,
                         log=log) -> dict:
    """Clean and corrupted figures of ``model`` on ``images`` (``uint8`` NHWC) labelled ``y_true``.

    Args:
        unseen: per image, whether it has no exact or near copy among the run's training images;
            ``None`` when that is unknown (no leak-free figures then).

    Returns:
        ``clean`` and per corruption its ``results`` (one per severity: ``accuracy``,
        ``macro_f1``, ``accuracy_ci``, ``leak_free_accuracy``), ``mean_corruption_accuracy`` (the
        mean over every corruption x severity cell), ``relative_robustness`` (that over the clean
        accuracy), ``leak_free`` (the same on the unseen images), ``worst`` and ``timings``
        (seconds corrupting and predicting).
    """
    timings = {"corrupt_s": 0.0, "predict_s": 0.0}
    clean = _figures(_predict(model, [images], timings), y_true, labels, unseen)
    corruptions = []
    for c in CORRUPTIONS.values():
        log(f"robustness: {c.name}")
        results = []
        for s in severities:
            start = time.perf_counter()
            batches = list(corrupted_batches(images, c.name, s, seed))
            timings["corrupt_s"] += time.perf_counter() - start
            results.append({"severity": s, "parameter": c.value(s),
                            **_figures(_predict(model, batches, timings), y_true, labels, unseen)})
        corruptions.append({"name": c.name, "description": c.description, "parameter": c.parameter,
                            "values": list(c.values), "results": results,
                            "mean_accuracy": _mean([r["accuracy"] for r in results]),
                            "leak_free_mean_accuracy": _mean([r["leak_free_accuracy"] for r in results])})
    return {**summarise(clean, corruptions, unseen), "severities": list(severities),
            "timings": {k: round(v, 3) for k, v in timings.items()}}


def summarise(clean: dict, corruptions: list[dict], unseen: np.ndarray | None = None) -> dict:
    """The headline figures of a table of results: mean corruption accuracy, relative robustness, worst,
    and the first two again on the images with no training twin (``leak_free``; ``None`` when unknown)."""
    mean = _mean([r["accuracy"] for c in corruptions for r in c["results"]])
    worst = min(corruptions, key=lambda c: c["mean_accuracy"], default=None)
    leak_free_mean = _mean([r["leak_free_accuracy"] for c in corruptions for r in c["results"]])
    leak_free = None if unseen is None else {
        "n_images": int(np.count_nonzero(unseen)), "clean_accuracy": clean["leak_free_accuracy"],
        "mean_corruption_accuracy": leak_free_mean, "relative_robustness": _ratio(leak_free_mean,
                                                                                  clean["leak_free_accuracy"]),
        "definition": "the evaluated images with no exact or near copy among the run's training or validation "
                      "images"}
    return {"clean": clean, "corruptions": corruptions, "mean_corruption_accuracy": mean,
            "relative_robustness": _ratio(mean, clean["accuracy"]), "leak_free": leak_free,
            "leak_free_mean_corruption_accuracy": leak_free_mean,
            "worst": {"corruption": worst["name"], "mean_accuracy": worst["mean_accuracy"]} if worst else None}


def _mean(values: list) -> float | None:
    """The mean, or ``None`` when there is nothing or any value is unknown."""
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _predict(model, batches, timings: dict) -> np.ndarray:
    start = time.perf_counter()
    probs = np.concatenate([np.asarray(model.predict_on_batch(b)) for b in batches])
    timings["predict_s"] += time.perf_counter() - start
    return probs


def _figures(probs: np.ndarray, y_true: np.ndarray, labels, unseen: np.ndarray | None = None) -> dict:
    from suite.metrics import classification_metrics

    m = classification_metrics(y_true, probs, labels, n_resamples=200)
    hits = probs.argmax(axis=1) == y_true
    leak_free = float(hits[unseen].mean()) if unseen is not None and unseen.any() else None
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "accuracy_ci": m["accuracy_ci"],
            "n_test": m["n_test"], "leak_free_accuracy": leak_free}


def example_strip(images: np.ndarray, severities: Sequence[int], seed: int = 0) -> dict:
    """One test image (the one of median brightness) clean and at each severity of each corruption.

    Returns:
        ``{"index": image index, "<corruption>": uint8 (1 + len(severities), h, w, c)}``.
    """
    i = int(np.argsort(images.reshape(len(images), -1).mean(axis=1))[len(images) // 2])
    one = images[i:i + 1]
    strips = {name: np.concatenate([one] + [corrupt(one, name, s, seed=seed) for s in severities])
              for name in CORRUPTIONS}
    return {"index": np.array(i), **strips}


# -- the folder -----------------------------------------------------------------------------------


def _provenance(run: runs.RunFolder, test: dict, n: int, n_unreadable: int, seed: int) -> dict:
    from suite.runtime import backend

    return {"schema": 1, "kind": "robustness", "created": runs.now_iso(), "backbone": run.backbone,
            "source_run": str(run.path.resolve()), "image_size": run.image_size, "labels": run.labels,
            "evaluated": test["what"], "dataset": test["dataset"], "n_images": n, "n_unreadable": n_unreadable,
            "seen_in_training": test["seen"], "seed": seed, "backend": backend(),
            "synthetic_data": bool(test["dataset"].get("synthetic"))}


def write_results(folder: Path, record: dict, strip: dict) -> None:
    """``robustness.json`` (written last: it marks the folder), ``robustness.csv`` and the example strip."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **strip)
    write_bytes_atomic(folder / runs.ROBUSTNESS_EXAMPLES, buffer.getvalue())
    record["examples"] = {"file": runs.ROBUSTNESS_EXAMPLES, "image_index": int(strip["index"])}
    write_csv_atomic(folder / runs.ROBUSTNESS_CSV, CSV_HEADER, csv_rows(record))
    write_json_atomic(folder / runs.ROBUSTNESS, record)


def csv_rows(record: dict) -> list[list]:
    """The clean row (severity 0) and one row per corruption x severity."""
    clean = record["clean"]
    rows = [["clean", 0, "", clean["accuracy"], clean["macro_f1"], _blank(clean["leak_free_accuracy"])]]
    rows += [[c["name"], r["severity"], r["parameter"], r["accuracy"], r["macro_f1"], _blank(r["leak_free_accuracy"])]
             for c in record["corruptions"] for r in c["results"]]
    return rows


def _blank(value):
    return "" if value is None else value


def summary_line(record: dict) -> str:
    def show(x, digits=4):
        return "n/a" if x is None else f"{x:.{digits}f}"

    worst, leak_free = record.get("worst") or {}, record.get("leak_free")
    line = (f"clean accuracy {show(record['clean']['accuracy'])}, mean corruption accuracy "
            f"{show(record['mean_corruption_accuracy'])}, relative robustness "
            f"{show(record['relative_robustness'], 3)}; worst: {worst.get('corruption')} "
            f"({show(worst.get('mean_accuracy'))}); seen in training: {record['seen_in_training']['text']}")
    if leak_free:
        line += (f"; on the {leak_free['n_images']} images with no training twin: clean accuracy "
                 f"{show(leak_free['clean_accuracy'])}, mean corruption accuracy "
                 f"{show(leak_free['mean_corruption_accuracy'])}")
    return line


def main(args) -> int:
    print(robustness(args.run_dir, data=args.data, out=args.out, severities=args.severities or SEVERITIES,
                     seed=args.seed, progress=not args.quiet))
    return 0
