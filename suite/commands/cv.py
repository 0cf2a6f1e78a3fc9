"""``suite cv``: stratified K-fold cross-validation over the training pool, resumable.

prepare (decode once) -> K disjoint stratified folds of the training pool -> per fold a
full run folder (train on K-1 folds minus a validation slice, test on the held-out fold;
the official test split, when there is one, is scored separately and never trained on)
-> cv.json (per-fold metrics, mean, std, a t-interval across folds) -> report.html.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from reports import finish
from suite import runs
from suite.commands import log, resume_folder, run_flags, track_result, training_output
from suite.config import PLACEMENT_FIELDS
from suite.data.splits import Split, split_fingerprint, stratified_holdout
from suite.errors import SuiteError, stop_reason
from suite.io import read_json, write_json_atomic
from suite.metrics import named_figures

# The figures cv.json aggregates over folds (names as suite.metrics.named_figures gives them).
FOLD_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "n_test")
PER_CLASS_FIGURES = ("recall", "f1", "support")
# Of the leak-free test images (with --dedup report), named "leak_free_<figure>".
LEAK_FREE_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "n_test")
LEAK_FREE_PER_CLASS = ("support", "recall")


def fold_splits(
    labels: np.ndarray, pool: np.ndarray, k: int, *, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> list[Split]:
    """K stratified, seeded, disjoint folds of ``pool``; each held-out fold is that split's test set.

    Args:
        labels: label of every row.
        pool: rows the folds cover (the training pool).
        k: number of folds.
        val_fraction: share of the remaining rows held out for validation (checkpointing).
        seed: the same seed gives the same folds.
        groups: unit ids (duplicate clusters, patient groups, or both joined); when given, a
            unit never straddles folds (nor a fold's train/validation parts).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from suite.data.splits import grouped_holdout

    smallest = np.bincount(np.unique(labels[pool], return_inverse=True)[1]).min()
    if smallest < k:
        raise SuiteError(f"{k} folds need at least {k} images per class; the smallest class has {smallest}")
    rng = np.random.default_rng(seed)
    if groups is None:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(pool, labels[pool])
    else:
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
            pool, labels[pool], groups[pool])
    splits = []
    for rest, held in folds:
        if groups is None:
            train, val = stratified_holdout(labels, pool[rest], val_fraction, rng, "validation")
        else:
            train, val = grouped_holdout(labels, pool[rest], groups, val_fraction, rng, "validation")
        splits.append(Split(train=train, val=val, test=np.sort(pool[held])))
    return splits


def cv_splits(data, k: int, *, val_fraction: float, seed: int) -> tuple[list[Split], np.ndarray]:
    """The K folds of a prepared dataset's training pool, and the official test rows kept out of them.

    The pool is every row but the official test split (a flat layout has none). With units
    (``data.unit``: patient groups from ``--groups``, joined with duplicate clusters under
    ``--dedup group``), a unit never straddles folds, and pool images whose unit has an
    official test image leave the pool.

    Returns:
        ``(splits, official_test)``: one :class:`Split` per fold, and the official test rows.
    """
    labels = np.array([e.label for e in data.entries])
    official_test = data.split.test if data.index.layout == "split" else np.array([], dtype=int)
    pool = np.setdiff1d(np.arange(len(labels)), official_test)
    groups = data.unit  # None when there are neither patient groups nor --dedup group
    if groups is not None:  # training twins and same-patient images of official test images leave the pool
        pool = pool[~np.isin(groups[pool], groups[official_test])]
    return fold_splits(labels, pool, k, val_fraction=val_fraction, seed=seed, groups=groups), official_test


def summarise(values: list[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and a Student-t interval across folds."""
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * std / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return {"mean": mean, "std": std, "ci": [mean - half, mean + half]}


def fold_figures(metrics: Mapping) -> dict:
    """The figures cv.json aggregates: accuracy, balanced accuracy, macro-F1, test images, per-class recall,
    F1 and support; with leak-free metrics (``--dedup report``) the same as ``leak_free_<figure>``: accuracy,
    balanced accuracy, macro-F1, test images and per-class support and recall (a class with no leak-free
    image has no recall). Figures a metrics file lacks (written before they were kept) are left out."""
    figures = named_figures(metrics)
    names = [*FOLD_FIGURES, *(f"{stat}_{label}" for label in metrics["per_class"] for stat in PER_CLASS_FIGURES)]
    out = {name: figures[name] for name in names if name in figures}
    leak = metrics.get("leak_free")
    if isinstance(leak, Mapping):
        leak_figures = named_figures({k: v for k, v in leak.items() if k != "per_class"})
        out.update({f"leak_free_{name}": leak_figures[name] for name in LEAK_FREE_FIGURES if name in leak_figures})
        for label, stats in (leak.get("per_class") or {}).items():
            out.update({f"leak_free_{stat}_{label}": float(stats[stat]) for stat in LEAK_FREE_PER_CLASS
                        if stat == "support" or stats["support"]})
    return out


def aggregate(folds: list[dict], key: str = "metrics") -> dict:
    """``{"mean": {...}, "std": {...}, "ci": {...}}`` over the folds' ``key`` figures.

    A figure some folds lack (a leak-free recall where a fold kept no image of the class) is
    summarised over the folds that have it, and ``n_folds`` (``{figure: folds}``) says over how many.
    """
    names = list(dict.fromkeys(name for f in folds for name in f[key]))
    values = {name: [f[key][name] for f in folds if name in f[key]] for name in names}
    stats = {name: summarise(v) for name, v in values.items()}
    out = {part: {name: s[part] for name, s in stats.items()} for part in ("mean", "std", "ci")}
    partial = {name: len(v) for name, v in values.items() if len(v) < len(folds)}
    return {**out, "n_folds": partial} if partial else out


def cross_validate(
    flags: Mapping,
    folds: int,
    *,
    resume: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or resume) a K-fold cross-validation; return the CV folder.

    Args:
        flags: run settings, as for ``suite run``.
        folds: K (at least 2).
        resume: an existing CV folder: completed folds are kept, the rest are run.
    """
    from suite.commands.run import prepare

    if folds < 2:
        raise SuiteError(f"cross-validation needs at least 2 folds, got {folds}")
    prepared = prepare(flags, progress=progress, log=log)
    data, config = prepared.data, prepared.config
    splits, official_test = cv_splits(data, folds, val_fraction=config.val_fraction, seed=config.seed)
    cv_dir = _cv_folder(resume, config, prepared.spec.name)
    with runs.folder_lock(cv_dir, "cv"):
        plan = _plan(cv_dir, config, data, folds, resume is not None)
        write_json_atomic(cv_dir / runs.CV, _with_summary(plan))  # a killed CV can resume from here on
        try:
            _run_folds(prepared, cv_dir, plan, splits, official_test, log)
        except BaseException as exc:  # stopped (signal, full disk, ...): say so; --resume goes on from here
            plan.update(status="failed", error=stop_reason(exc))
            _save(cv_dir, plan, log)
            raise
        plan["status"] = "completed" if all(f["status"] == "completed" for f in plan["folds"]) else "failed"
        write_json_atomic(cv_dir / runs.CV, _with_summary(plan))
    finish(cv_dir, log)
    return cv_dir


def _run_folds(prepared, cv_dir: Path, plan: dict, splits, official_test, log) -> None:
    keys = [str(e.path) for e in prepared.data.entries]
    for k, split in enumerate(splits, start=1):
        record = _run_fold(prepared, cv_dir, k, split, keys, official_test, log)
        plan["folds"] = [f for f in plan["folds"] if f["fold"] != k] + [record]
        plan["folds"].sort(key=lambda f: f["fold"])
        write_json_atomic(cv_dir / runs.CV, _with_summary(plan))


def _save(cv_dir: Path, plan: dict, log) -> None:
    try:
        write_json_atomic(cv_dir / runs.CV, _with_summary(plan))
    except (SuiteError, OSError) as exc:
        log(f"warning: {cv_dir / runs.CV} could not be updated: {exc}")


def _cv_folder(resume: Path | None, config, backbone: str) -> Path:
    if resume is None:
        return runs.new_run_dir(config.out, f"cv-{backbone}")
    if not (resume / runs.CV).is_file():
        raise SuiteError(f"{resume} is not a cross-validation folder (no {runs.CV})")
    return resume


def _plan(cv_dir: Path, config, data, folds: int, resuming: bool) -> dict:
    """The CV's identity; on resume it must match the folder's, or folds would be trained two ways.

    The identity is the whole resolved configuration but where things are written and read
    (``RunConfig.identity``), K and the data's fingerprint.
    """
    identity = {"backbone": config.backbone, "k": folds, "seed": config.seed,
                "data_fingerprint": data.data_fingerprint, "image_size": config.image_size,
                "epochs": config.epochs}
    if resuming:
        old = read_json(cv_dir / runs.CV)
        stored = {"k": old.get("k"), "data_fingerprint": old.get("data_fingerprint"),
                  "config": {n: v for n, v in old.get("config", {}).items() if n not in PLACEMENT_FIELDS}}
        runs.check_resume(cv_dir, stored, {"k": folds, "data_fingerprint": data.data_fingerprint,
                                           "config": config.identity()})
        return {**old, "status": "running", "error": None, "resumed": old.get("resumed", 0) + 1}
    return {"schema": 1, "kind": "cv", "cv_id": cv_dir.name, "status": "running", "created": runs.now_iso(),
            "config": config.to_dict(), "dataset": data.index.describe(), "labels": list(data.labels),
            "folds": [], **identity}


def _run_fold(prepared, cv_dir: Path, k: int, split: Split, keys, official_test, log) -> dict:
    from suite.commands.run import execute

    fold_dir = cv_dir / f"fold-{k}"
    if _completed(fold_dir):
        log(f"fold {k}: already completed, kept")
        return _fold_record(k, fold_dir)
    if fold_dir.exists():  # left by a killed run: keep it aside, never delete what a user has
        fold_dir.rename(cv_dir / f"fold-{k}.incomplete-{runs.timestamp()}")
    fold_dir.mkdir()
    data = dataclasses.replace(prepared.data, split=split, split_fingerprint=split_fingerprint(split, keys))
    log(f"fold {k}: training on {len(split.train)}, validating on {len(split.val)}, testing on {len(split.test)}")
    execute(dataclasses.replace(prepared, data=data), fold_dir, log=log, raise_errors=False)
    if len(official_test) and _completed(fold_dir):
        _score_official_test(fold_dir, prepared, official_test)
    return _fold_record(k, fold_dir)


def _completed(fold_dir: Path) -> bool:
    return runs.is_completed_run(fold_dir)


def _score_official_test(fold_dir: Path, prepared, rows) -> None:
    from suite.metrics import classification_metrics
    model = runs.RunFolder(fold_dir).load_model()
    x = np.ascontiguousarray(prepared.data.images[rows])
    probs = model.predict(x, batch_size=prepared.config.batch_size, verbose=0)
    write_json_atomic(fold_dir / runs.OFFICIAL_TEST, classification_metrics(prepared.data.y[rows], probs,
                                                                       prepared.data.labels))


def _fold_record(k: int, fold_dir: Path) -> dict:
    manifest = runs.read_manifest(fold_dir)
    record = {"fold": k, "run_dir": fold_dir.name, "status": manifest["status"], "error": manifest.get("error"),
              "split_fingerprint": manifest["split_fingerprint"]}
    if manifest["status"] == "completed":
        record["metrics"] = fold_figures(read_json(fold_dir / runs.METRICS))
        if (fold_dir / runs.OFFICIAL_TEST).is_file():
            record["official_test"] = fold_figures(read_json(fold_dir / runs.OFFICIAL_TEST))
    return record


def _with_summary(plan: dict) -> dict:
    done = [f for f in plan["folds"] if f["status"] == "completed"]
    summary = {**plan, "n_completed": len(done)}
    if done:
        summary.update(aggregate(done))
        with_test = [f for f in done if "official_test" in f]
        if with_test:
            summary["official_test"] = aggregate(with_test, "official_test")
    return summary


def latest_unfinished(out: Path, backbone: str) -> Path | None:
    """The newest CV folder of ``backbone`` under ``out`` that did not complete."""
    return runs.latest_folder(out, "cv", f"cv-{backbone}",
                              lambda folder: read_json(folder / runs.CV).get("status") != "completed")


def main(args) -> int:
    from suite.runtime import refuse_multiworker

    refuse_multiworker(args.strategy, "suite cv")
    resume = resume_folder(args, latest_unfinished, "unfinished cross-validation")
    with training_output():
        folder = cross_validate(run_flags(args), args.folds, resume=resume, progress=not args.quiet, log=log)
    print(folder)
    track_result(args, folder)
    return 0
