"""Write a realistic output folder for the comparison reporter: runs, a comparison, and clutter.

``build_comparison(root)`` lays out, under ``root/out``:

* three completed run folders (``efficientnetb0``, ``mobilenetv2`` and a backbone named
  ``<script>alert(1)</script>``) with every metric the comparison report reads;
* one failed run folder (``resnet50``: an error, no metrics);
* the comparison folder (``comparison.json``, ``leaderboard.csv/json``, ``gradcam.npz``);
* an evaluation folder, an older run without a report, a half-written run folder, a
  folder that is not ours and a stray file, for the index.

The test images (small synthetic slices, real PNGs) live in ``root/data``.

``build_every_kind(root)`` adds a folder of every other kind from hand-written records (as
the suite writes them, without training): a cross-validation, a finished search, a search
still running and a dataset audit.

``build_seeded_comparison(root)`` writes a comparison trained under three seeds
(``suite compare --seeds 3``): three replicate run folders per backbone (one replicate of
``resnet50`` failed), the per-backbone and per-seed leaderboards, and pairwise tests by the
bootstrap over images and seeds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

EVIL = "<script>alert(1)</script>"
LABELS = ["glioma", "meningioma", "notumor", EVIL]
FAILED_ERROR = "ResourceExhaustedError: OOM when allocating tensor <shape [32, 2048, 7, 7]> & more"
SPLIT = "sha256:split-0001"
COMPARE_DIR = "20261127-171900-compare"

# backbone -> (folder, created, accuracy, CI, latency ms, tier); resnet50 failed.
BACKBONES = {
    "efficientnetb0": ("20261127-170500-efficientnetb0", "2026-11-27T17:05:00+01:00", 0.975, (0.871, 0.996), 7.8, 1),
    EVIL: ("20261127-171000-evil", "2026-11-27T17:10:00+01:00", 0.95, (0.835, 0.986), 12.5, 1),
    "mobilenetv2": ("20261127-170000-mobilenetv2", "2026-11-27T17:00:00+01:00", 0.90, (0.769, 0.960), 4.1, 2),
}
FAILED = ("resnet50", "20261127-171500-resnet50", "2026-11-27T17:15:00+01:00")

# Worded as suite.stats writes them.
SENTENCES = {
    ("efficientnetb0", "mobilenetv2"): "efficientnetb0 is better than mobilenetv2 (p = 0.012, Holm-corrected "
                                       "McNemar; 0.975 vs 0.900 accuracy)",
    ("efficientnetb0", EVIL): f"efficientnetb0 and {EVIL} are statistically tied (p = 1.00, Holm-corrected McNemar)",
    (EVIL, "mobilenetv2"): f"{EVIL} and mobilenetv2 are statistically tied (p = 0.060, Holm-corrected McNemar)",
}
IMAGE_SIZE = {"efficientnetb0": 224, EVIL: 240, "mobilenetv2": 224}
PAIR_P = {("efficientnetb0", "mobilenetv2"): (0.004, 0.012, True),
          ("efficientnetb0", EVIL): (0.62, 1.0, False),
          (EVIL, "mobilenetv2"): (0.03, 0.06, False)}

N_PER_CLASS = 10


# ----------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------


def slice_image(class_index: int, seed: int, size: int = 128) -> np.ndarray:
    """A greyscale 'scan': a noisy head-shaped ellipse with a bright blob for tumour classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    head = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
    img = np.where(head, 90 + 40 * np.sin(9 * xx) * np.cos(7 * yy), 8) + rng.normal(0, 8, (size, size))
    if class_index != 2:
        cy, cx = [(0.35, 0.35), (0.3, 0.65), None, (0.65, 0.6)][class_index]
        img += 140 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.006))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(data_dir: Path, per_class: int = 2) -> list[tuple[Path, int]]:
    """Write ``per_class`` PNG slices per class; returns ``(path, class index)`` pairs."""
    items = []
    for c in range(len(LABELS)):
        folder = data_dir / ["glioma", "meningioma", "no tumour", "odd class"][c]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            path = folder / f"Te-{c}_{k:04d} (scan).png"
            Image.fromarray(slice_image(c, seed=10 * c + k)).save(path)
            items.append((path, c))
    return items


# ----------------------------------------------------------------------------------
# One run folder
# ----------------------------------------------------------------------------------


def _confusion(n_errors: int) -> list[list[int]]:
    n = len(LABELS)
    matrix = [[N_PER_CLASS if i == j else 0 for j in range(n)] for i in range(n)]
    for e in range(n_errors):
        row = e % n
        matrix[row][row] -= 1
        matrix[row][(row + 1) % n] += 1
    return matrix


def _ci(value: float, width: float = 0.06) -> list[float]:
    return [round(max(0.0, value - width), 3), round(min(1.0, value + width / 2), 3)]


def metrics_for(accuracy: float, ci, latency_ms: float, quality: float) -> dict:
    """A ``metrics.json`` with every key the comparison report reads."""
    n = len(LABELS)
    matrix = _confusion(round((1 - accuracy) * n * N_PER_CLASS))
    per_class, f1s = {}, []
    for i, label in enumerate(LABELS):
        tp = matrix[i][i]
        recall = tp / sum(matrix[i])
        precision = tp / max(1, sum(row[i] for row in matrix))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": sum(matrix[i]), "f1_ci": _ci(f1, 0.12), "recall_ci": _ci(recall, 0.12)}
    k = 2 + 10 * quality
    fpr = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
    roc = {label: {"fpr": fpr, "tpr": [round(1 - (1 - x) ** (k + i), 4) for x in fpr],
                   "auc": round((k + i) / (k + i + 1), 4)} for i, label in enumerate(LABELS)}
    lower = [i / 10 for i in range(10)]
    confidence = [None] * 4 + [0.47, 0.55, 0.66, 0.75, 0.86, 0.97]
    observed = [None if c is None else round(c - 0.12 * (1 - quality), 3) for c in confidence]
    return {
        "accuracy": accuracy, "accuracy_ci": list(ci), "macro_f1": round(sum(f1s) / n, 4),
        "macro_f1_ci": _ci(sum(f1s) / n), "n_test": n * N_PER_CLASS, "labels": LABELS,
        "per_class": per_class, "confusion_matrix": matrix,
        "roc_auc_macro": round(sum(c["auc"] for c in roc.values()) / n, 4),
        "roc_auc": {label: c["auc"] for label, c in roc.items()}, "roc_curves": roc,
        "ece": round(0.12 * (1 - quality) * 0.8, 4),
        "reliability": {"bin_lower": lower, "bin_upper": [x + 0.1 for x in lower], "confidence": confidence,
                        "accuracy": observed, "count": [0] * 4 + [1, 2, 3, 4, 8, 22]},
        "infer_ms_per_image": latency_ms, "infer_images_per_s": round(1000 / latency_ms, 1),
    }


def manifest_for(backbone: str, folder: str, created: str, *, failed: bool = False,
                 split: str = SPLIT, kind: str | None = None) -> dict:
    manifest = {
        "schema": 1, "run_id": folder, "status": "failed" if failed else "completed",
        "error": FAILED_ERROR if failed else None, "created": created, "backbone": backbone,
        "config": {"backbone": backbone, "epochs": 5, "image_size": 224, "batch_size": 32, "seed": 42},
        "dataset": {"root": "/data/brain mri", "name": "phantom-4", "synthetic": True,
                    "description": "Synthetic ellipse phantoms with a bright blob per tumour class",
                    "layout": "split", "labels": LABELS},
        "split_fingerprint": split, "params": 2_257_984 if backbone == "mobilenetv2" else 4_049_571,
        "timings": {"data_s": 1.5, "train_s": 95.0},
    }
    if kind:
        manifest["kind"] = kind
    return manifest


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _history(quality: float, epochs: int = 6) -> list[dict]:
    return [{"epoch": e, "accuracy": round(0.5 + 0.08 * e * quality + 0.05 * e, 4), "loss": round(1.3 / (e + 1), 4),
             "val_accuracy": round(min(0.99, 0.45 + 0.09 * e * (0.5 + quality)), 4),
             "val_loss": round(1.4 / (e + 1) + 0.1 * (1 - quality), 4), "learning_rate": 1e-3}
            for e in range(epochs)]


def _prediction_rows(images: list[tuple[Path, int]], n_wrong: int) -> list[dict]:
    rows = []
    for k, (path, c) in enumerate(images):
        pred = (c + 1) % len(LABELS) if k < n_wrong else c
        probs = {f"p_{label}": (0.7 if i == pred else 0.1) for i, label in enumerate(LABELS)}
        rows.append({"path": str(path), "true": LABELS[c], "predicted": LABELS[pred], **probs})
    return rows


def write_run(out: Path, backbone: str, images, *, failed: bool = False) -> Path:
    """One run folder (completed with all files, or failed with manifest and history only)."""
    if failed:
        _, folder, created = FAILED
        run_dir = out / folder
        run_dir.mkdir()
        manifest = manifest_for(backbone, folder, created, failed=True)
        (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        _write_csv(run_dir / "history.csv", _history(0.1, epochs=1))
        return run_dir
    folder, created, accuracy, ci, latency, tier = BACKBONES[backbone]
    quality = {1: 0.8, 2: 0.4}[tier] + (0.1 if backbone == "efficientnetb0" else 0.0)
    run_dir = out / folder
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps(manifest_for(backbone, folder, created)), encoding="utf-8")
    (run_dir / "metrics.json").write_text(json.dumps(metrics_for(accuracy, ci, latency, quality)), encoding="utf-8")
    _write_csv(run_dir / "history.csv", _history(quality))
    _write_csv(run_dir / "predictions.csv", _prediction_rows(images, n_wrong=round(10 * (1 - accuracy))))
    return run_dir


# ----------------------------------------------------------------------------------
# The comparison folder
# ----------------------------------------------------------------------------------


def _leaderboard(runs: dict[str, Path]) -> list[dict]:
    rows = []
    for backbone, (_, _, accuracy, ci, latency, tier) in BACKBONES.items():
        metrics = json.loads((runs[backbone] / "metrics.json").read_text(encoding="utf-8"))
        row = {"backbone": backbone, "status": "completed", "tier": tier, "accuracy": accuracy,
               "accuracy_ci_low": ci[0], "accuracy_ci_high": ci[1], "macro_f1": metrics["macro_f1"],
               "macro_f1_ci_low": metrics["macro_f1_ci"][0], "macro_f1_ci_high": metrics["macro_f1_ci"][1]}
        row.update({f"recall_{label}": metrics["per_class"][label]["recall"] for label in LABELS})
        row.update({f"f1_{label}": metrics["per_class"][label]["f1"] for label in LABELS})
        row.update({"roc_auc_macro": metrics["roc_auc_macro"], "ece": metrics["ece"],
                    "params": 2_257_984 if backbone == "mobilenetv2" else 4_049_571, "train_s": 95.0,
                    "image_size": IMAGE_SIZE[backbone],
                    "infer_ms_per_image": latency, "infer_images_per_s": metrics["infer_images_per_s"],
                    "error": None})
        rows.append(row)
    failed = {key: None for key in rows[0]}
    failed.update({"backbone": FAILED[0], "status": "failed", "error": FAILED_ERROR})
    rows.append(failed)
    return rows


def _pairwise() -> list[dict]:
    tests = []
    for (a, b), (p, p_holm, significant) in PAIR_P.items():
        tests.append({"a": a, "b": b, "accuracy_a": BACKBONES[a][2], "accuracy_b": BACKBONES[b][2],
                      "only_a": 4 if significant else 2, "only_b": 0 if significant else 1,
                      "method": "exact", "p_value": p, "p_holm": p_holm, "significant": significant,
                      "winner": a if significant else None, "sentence": SENTENCES[(a, b)]})
    return tests


def _p_matrix() -> dict:
    names = list(BACKBONES)
    values = [[None if a == b else PAIR_P.get((a, b), PAIR_P.get((b, a), (None, None)))[1] for b in names]
              for a in names]
    return {"names": names, "values": values}


def _heat(center: tuple[float, float], sharp: float) -> np.ndarray:
    yy, xx = np.mgrid[0:7, 0:7] / 6
    heat = np.exp(-(((xx - center[1]) ** 2 + (yy - center[0]) ** 2) / (0.05 / sharp)))
    return (heat / heat.max()).astype(np.float32)


def write_gradcam(comp_dir: Path, images) -> dict:
    """``gradcam.npz`` for one image per class; mobilenetv2 gets the last image wrong."""
    sample = [images[2 * c] for c in range(len(LABELS))]
    centers = [(0.35, 0.35), (0.3, 0.65), (0.5, 0.5), (0.65, 0.6)]
    arrays = {}
    for backbone in BACKBONES:
        sharp = 2.0 if backbone == "efficientnetb0" else 1.0
        preds = [c for _, c in sample]
        if backbone == "mobilenetv2":
            preds[-1] = 0
        arrays[backbone] = np.stack([_heat(centers[c], sharp) for _, c in sample])
        arrays[f"{backbone}__pred"] = np.array(preds, dtype=np.int64)
        probs = np.full((len(sample), len(LABELS)), 0.05, dtype=np.float32)
        probs[np.arange(len(sample)), preds] = 0.85
        arrays[f"{backbone}__probs"] = probs
    np.savez_compressed(comp_dir / "gradcam.npz", **arrays)
    return {"file": "gradcam.npz", "paths": [str(p) for p, _ in sample],
            "true": [LABELS[c] for _, c in sample], "backbones": list(BACKBONES)}


def write_comparison(out: Path, runs: dict[str, Path], images) -> Path:
    comp_dir = out / COMPARE_DIR
    comp_dir.mkdir()
    entries = [{"backbone": b, "run_dir": f"../{runs[b].name}", "status": "completed", "error": None}
               for b in BACKBONES]
    entries.append({"backbone": FAILED[0], "run_dir": f"../{FAILED[1]}", "status": "failed", "error": FAILED_ERROR})
    comparison = {
        "schema": 1, "kind": "comparison", "comparison_id": COMPARE_DIR, "created": "2026-11-27T17:19:00+01:00",
        "config": {"epochs": 5, "image_size": 224, "batch_size": 32, "seed": 42, "alpha": 0.05,
                   "test": "mcnemar", "weights": "imagenet"},
        "dataset": {"root": "/data/brain mri", "name": "phantom-4", "synthetic": True,
                    "description": "Synthetic ellipse phantoms with a bright blob per tumour class",
                    "layout": "split", "labels": LABELS},
        "split_fingerprint": SPLIT, "split_fingerprints": {b: SPLIT for b in BACKBONES}, "labels": LABELS,
        "runs": entries, "pairwise": _pairwise(),
        "p_matrix": _p_matrix(), "tiers": {b: v[5] for b, v in BACKBONES.items()},
        "gradcam": write_gradcam(comp_dir, images),
    }
    (comp_dir / "comparison.json").write_text(json.dumps(comparison, indent=2), encoding="utf-8")
    rows = _leaderboard(runs)
    (comp_dir / "leaderboard.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    _write_csv(comp_dir / "leaderboard.csv", [{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    return comp_dir


def write_clutter(out: Path, images) -> dict[str, Path]:
    """Folders the index must cope with: an evaluation, an old run, a half-written run, junk."""
    evaluation = out / "20261127-180000-evaluate-efficientnetb0"
    evaluation.mkdir()
    manifest = manifest_for("efficientnetb0", evaluation.name, "2026-11-27T18:00:00+01:00", kind="evaluation")
    (evaluation / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (evaluation / "metrics.json").write_text(json.dumps({"accuracy": 0.9321, "accuracy_ci": [0.91, 0.95]}))
    old = out / "20261126-090000-densenet121"  # naive timestamp, a day earlier: no report written
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(
        manifest_for("densenet121", old.name, "2026-11-26T09:00:00")), encoding="utf-8")
    half = out / "20261127-175900-vgg16"
    half.mkdir()
    (half / "manifest.json").write_text('{"run_id": "20261127-1759', encoding="utf-8")
    foreign = out / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("not a run")
    (out / "README.txt").write_text("stray file")
    return {"evaluation": evaluation, "old": old, "half": half, "foreign": foreign}


def build_comparison(root: Path) -> dict:
    """Write the whole output folder under ``root``; returns the interesting paths."""
    images = write_images(root / "data")
    out = root / "out"
    out.mkdir()
    runs = {backbone: write_run(out, backbone, images) for backbone in BACKBONES}
    runs[FAILED[0]] = write_run(out, FAILED[0], images, failed=True)
    comp_dir = write_comparison(out, runs, images)
    return {"out": out, "comp": comp_dir, "runs": runs, "images": images, **write_clutter(out, images)}


# ----------------------------------------------------------------------------------
# The other folder kinds: cross-validation, tuning (finished and running), audit
# ----------------------------------------------------------------------------------
# Hand-written records with the fields suite.commands.cv, suite.commands.tune and
# suite.data.audit write, so every report and index entry can be checked without training.

CV_DIR = "20261127-181000-cv-efficientnetb0"
TUNE_DIR = "20261127-182000-tune-mobilenetv2"
SEARCH_DIR = "20261127-183000-tune-efficientnetb0"
AUDIT_DIR = "20261127-160000-audit-phantom-4"
DATASET = {"root": "/data/brain mri", "name": "phantom-4", "synthetic": True,
           "description": "Synthetic ellipse phantoms with a bright blob per tumour class", "layout": "split",
           "labels": LABELS, "class_folders": {label: [label] for label in LABELS}}


def _write_json(path: Path, record) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return path


def _fold_figures(metrics: dict) -> dict:
    """What suite.commands.cv.fold_figures keeps of a fold's metrics."""
    out = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    for label, m in metrics["per_class"].items():
        out[f"recall_{label}"] = m["recall"]
        out[f"f1_{label}"] = m["f1"]
    return out


def _summary(folds: list[dict], key: str) -> dict:
    """Mean, std and a (made-up but well-formed) interval per figure, as suite.commands.cv.aggregate writes."""
    names = list(folds[0][key])
    mean = {n: sum(f[key][n] for f in folds) / len(folds) for n in names}
    std = {n: 0.02 for n in names}
    return {"mean": mean, "std": std, "ci": {n: [mean[n] - 0.05, mean[n] + 0.05] for n in names}}


def write_cv(out: Path) -> Path:
    """A completed two-fold CV folder: ``cv.json`` and one run folder per fold (with official test metrics)."""
    cv_dir = out / CV_DIR
    folds = []
    for k, accuracy in ((1, 0.9), (2, 0.95)):
        fold_dir = cv_dir / f"fold-{k}"
        metrics = metrics_for(accuracy, _ci(accuracy), 7.8, 0.8)
        _write_json(fold_dir / "manifest.json", manifest_for("efficientnetb0", fold_dir.name, f"2026-11-27T18:1{k}:00"))
        _write_json(fold_dir / "metrics.json", metrics)
        _write_json(fold_dir / "official_test_metrics.json", metrics)
        folds.append({"fold": k, "run_dir": fold_dir.name, "status": "completed", "error": None,
                      "split_fingerprint": f"sha256:fold-{k}", "metrics": _fold_figures(metrics),
                      "official_test": _fold_figures(metrics)})
    cv = {"schema": 1, "kind": "cv", "cv_id": CV_DIR, "status": "completed", "created": "2026-11-27T18:10:00+01:00",
          "config": {"backbone": "efficientnetb0", "epochs": 5, "image_size": 224, "seed": 42}, "dataset": DATASET,
          "labels": LABELS, "folds": folds, "backbone": "efficientnetb0", "k": 2, "seed": 42,
          "data_fingerprint": "sha256:data", "image_size": 224, "epochs": 5, "n_completed": 2,
          **_summary(folds, "metrics"), "official_test": _summary(folds, "official_test")}
    _write_json(cv_dir / "cv.json", cv)
    return cv_dir


def search_identity(backbone: str) -> dict:
    """What ``search.json`` holds (suite.commands.tune.search_identity), less ``max_trials`` and ``updated``."""
    return {"backbone": backbone, "tuner": "random", "objective": "val_accuracy", "cv": None, "fast_path": True,
            "space": {"learning_rate": {"min": 0.0001, "max": 0.01, "sampling": "log"},
                      "dropout": {"values": [0.2, 1.5]}, "batch_size": {"value": 8}},
            "config": {"epochs": 2, "image_size": 224, "seed": 42}, "data_fingerprint": "sha256:data",
            "split_fingerprint": SPLIT, "dataset": DATASET, "labels": LABELS}


def _trial(trial_id: str, dropout: float, score: float | None) -> dict:
    failed = score is None
    return {"trial_id": trial_id, "hyperparameters": {"learning_rate": 0.001, "dropout": dropout, "batch_size": 8},
            "score": score, "status": "FAILED" if failed else "COMPLETED",
            "error": "ValueError: dropout must be in [0, 1), got 1.5" if failed else None,
            "fold_scores": None if failed else [score], "seconds": 12.5, "rss_mb": 900.0, "tuner_id": "tuner0",
            "params": 2_257_984}


def write_tuning(out: Path) -> Path:
    """A finished search: ``search.json``, ``tuning.json`` (three trials, one failed) and the retrained best run."""
    folder = out / TUNE_DIR
    identity = search_identity("mobilenetv2")
    _write_json(folder / "search.json", {**identity, "max_trials": 3, "updated": "2026-11-27T18:20:00+01:00"})
    trials = [_trial("00", 0.2, 0.8125), _trial("01", 1.5, None), _trial("02", 0.2, 0.875)]
    metrics = metrics_for(0.9, (0.769, 0.96), 4.1, 0.5)
    best_run = out / TUNE_DIR / "20261127-182500-mobilenetv2"
    _write_json(best_run / "manifest.json", manifest_for("mobilenetv2", best_run.name, "2026-11-27T18:25:00+01:00"))
    _write_json(best_run / "metrics.json", metrics)
    tuning = {**identity, "schema": 1, "kind": "tuning", "tuning_id": TUNE_DIR, "created": "2026-11-27T18:20:00+01:00",
              "role": "standalone", "notes": [], "search_stopped": None, "search_s": 40.2, "embeddings": None,
              "trials": trials, "n_trials": 3, "max_trials": 3,
              "best": {"trial_id": "02", "hyperparameters": trials[2]["hyperparameters"], "score": 0.875},
              "best_run": {"run_dir": best_run.name, "source": "trial 02", "status": "completed", "error": None,
                           "config": {"dropout": 0.2}},
              "test_metrics": {k: metrics[k] for k in ("accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci",
                                                       "labels", "n_test")},
              "status": "completed", "finished": "2026-11-27T18:27:00+01:00"}
    _write_json(folder / "tuning.json", tuning)
    return folder


def write_search(out: Path, *, started: bool = False) -> Path:
    """A search still running: ``search.json`` and one finished trial's own file; with ``started``, also
    the ``tuning.json`` a search writes when it starts (status ``running``, no trials)."""
    folder = out / SEARCH_DIR
    identity = search_identity("efficientnetb0")
    _write_json(folder / "search.json", {**identity, "max_trials": 10, "updated": "2026-11-27T18:30:00+01:00"})
    trial = {key: value for key, value in _trial("00", 0.2, 0.75).items() if key != "error"}
    _write_json(folder / "keras_tuner" / "trial_00" / "suite_trial.json", trial)
    if started:
        _write_json(folder / "tuning.json", {**identity, "status": "running", "notes": [],
                                             "created": "2026-11-27T18:30:00+01:00"})
    return folder


def audit_record(data_dir: Path, images) -> dict:
    """An ``audit.json`` as suite.data.audit writes it: one test image with a byte-identical training twin."""
    def file(i: int, split: str) -> dict:
        path, c = images[i]
        return {"path": path.relative_to(data_dir).as_posix(), "split": split, "label": LABELS[c]}

    pair = {"a": file(0, "train"), "b": file(1, "test"), "kind": "exact", "distance": 0, "score": None}
    by_split = {"train": {label: 1 for label in LABELS}, "test": {label: 1 for label in LABELS}}
    pairs = {"pairs": 1, "pairs_within": {"train": 0, "test": 0}, "pairs_cross": 1, "groups": 1, "files": 2,
             "redundant": 1}
    examples = {name: {"total": 0, "shown": []} for name in ("cross_split_near", "within_split_exact",
                                                              "within_split_near", "label_conflicts")}
    return {
        "dataset": {**DATASET, "root": str(data_dir)}, "created": "2026-11-27T16:00:00",
        "settings": {"image_size": 64, "threshold": 10, "tol": 0.1}, "counts": {
            "files": 8, "images": 8, "files_by_split_class": by_split, "images_by_split_class": by_split},
        "headers": {"size": [{"value": "128\u00d7128", "count": 8}],
                    "size_bucket": [{"value": "128-255 px", "count": 8}], "aspect": [{"value": "square", "count": 8}],
                    "mode": [{"value": "L", "count": 8}], "format": [{"value": "PNG", "count": 8}]},
        "skipped": [], "exact": pairs, "near": {"candidates": 3, **{key: 0 for key in pairs},
                                                "pairs_within": {"train": 0, "test": 0}},
        "clusters": {"count": 1, "files": 2, "largest": 2},
        "cross_split_exact": 1, "cross_split_near": 1, "cross_split_cluster": 1,
        "cross_split_by_class": {LABELS[0]: {"test": 1, "exact": 1, "near": 1}},
        "leakage": {"applicable": True, "test_images": 4, "reference_splits": ["train", "val"],
                    "note": "4 test images checked against the training images."},
        "label_conflicts": 0, "label_conflict_images": 0,
        "examples": {"cross_split_exact": {"total": 1, "shown": [pair]}, **examples},
        "files": [], "cache_hit": False, "timings": {"discover_s": 0.1, "decode_s": 0.5},
    }


def write_audit(out: Path, data_dir: Path, images) -> Path:
    """An audit folder holding only ``audit.json`` (its page is written by the report under test)."""
    folder = out / AUDIT_DIR
    _write_json(folder / "audit.json", audit_record(data_dir, images))
    return folder


def build_every_kind(root: Path) -> dict:
    """:func:`build_comparison`'s output folder plus a CV, a finished search, a running search and an audit."""
    paths = build_comparison(root)
    out = paths["out"]
    return {**paths, "cv": write_cv(out), "tuning": write_tuning(out), "search": write_search(out),
            "audit": write_audit(out, root / "data", paths["images"])}


# ----------------------------------------------------------------------------------
# A comparison trained under several seeds (suite compare --seeds 3)
# ----------------------------------------------------------------------------------
# Replicate k of a backbone trains with seed 42 + k on the split of seed 42. The leaderboards
# are made from the hand-written run files by suite.metrics' own row functions, as
# suite.commands.compare makes them.

SEEDED_DIR = "20261128-120000-compare"
N_SEEDS = 3
CONFIG_SEED = 42
BOOTSTRAP = "bootstrap over test images (paired) and seeds"  # suite.stats.SEED_METHOD
SEED_FAILED_ERROR = "ResourceExhaustedError: OOM in replicate 1 <seed 43>"
# backbone -> (accuracy of each replicate, None where it failed; latency ms; tier)
SEEDED = {
    "efficientnetb0": ([0.975, 0.95, 0.975], 7.8, 1),
    EVIL: ([0.95, 0.925, 0.975], 12.5, 1),
    "mobilenetv2": ([0.9, 0.875, 0.85], 4.1, 2),
    "resnet50": ([0.925, None, 0.9], 20.0, None),
}
# (a, b) -> p, Holm p, significant, CI of accuracy a - b; worded as suite.stats writes them.
SEEDED_P = {
    ("efficientnetb0", EVIL): (0.55, 0.55, False, [-0.025, 0.058]),
    ("efficientnetb0", "mobilenetv2"): (0.001, 0.003, True, [0.042, 0.142]),
    (EVIL, "mobilenetv2"): (0.012, 0.024, True, [0.017, 0.125]),
}
SEEDED_SENTENCES = {
    ("efficientnetb0", EVIL): f"efficientnetb0 and {EVIL} are statistically tied (p = 0.55, Holm-corrected "
                              "bootstrap over images and seeds)",
    ("efficientnetb0", "mobilenetv2"): "efficientnetb0 is better than mobilenetv2 (p = 0.003, Holm-corrected "
                                       "bootstrap over images and seeds; 0.967 vs 0.875 accuracy)",
    (EVIL, "mobilenetv2"): f"{EVIL} is better than mobilenetv2 (p = 0.024, Holm-corrected bootstrap over images "
                           "and seeds; 0.950 vs 0.875 accuracy)",
}


def seed_run_folder(backbone: str, replicate: int) -> str:
    """The run folder name of one replicate."""
    index = list(SEEDED).index(backbone)
    slug = "evil" if backbone == EVIL else backbone
    return f"20261128-11{index}{replicate}00-{slug}"


def write_seed_run(out: Path, backbone: str, replicate: int, images) -> Path:
    """One replicate's run folder: complete, or failed with manifest and history only."""
    accuracies, latency, _ = SEEDED[backbone]
    accuracy = accuracies[replicate]
    folder = seed_run_folder(backbone, replicate)
    run_dir = out / folder
    run_dir.mkdir()
    manifest = manifest_for(backbone, folder, f"2026-11-28T11:{replicate}0:00+01:00", failed=accuracy is None)
    manifest["config"].update(seed=CONFIG_SEED, replicate=replicate)
    if accuracy is None:
        manifest["error"] = SEED_FAILED_ERROR
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    quality = 0.4 + 0.5 * (accuracy or 0.0)
    _write_csv(run_dir / "history.csv", _history(quality, epochs=1 if accuracy is None else 6))
    if accuracy is not None:
        metrics = metrics_for(accuracy, _ci(accuracy, 0.1), latency + 0.2 * replicate, quality)
        (run_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
        _write_csv(run_dir / "predictions.csv", _prediction_rows(images, n_wrong=round(10 * (1 - accuracy))))
    return run_dir


def _seed_result(backbone: str, replicate: int, run_dir: Path) -> dict:
    failed = SEEDED[backbone][0][replicate] is None
    return {"replicate": replicate, "run_dir": f"../{run_dir.name}", "status": "failed" if failed else "completed",
            "error": SEED_FAILED_ERROR if failed else None}


def _seeded_entry(backbone: str, run_dirs: list[Path]) -> dict:
    """A ``runs`` entry as suite.commands.compare writes it: the first replicate, every replicate under seeds."""
    seeds = [_seed_result(backbone, k, run_dir) for k, run_dir in enumerate(run_dirs)]
    failed = [r for r in seeds if r["status"] != "completed"]
    return {"backbone": backbone, "run_dir": seeds[0]["run_dir"], "status": "failed" if failed else "completed",
            "error": failed[0]["error"] if failed else None, "seeds": seeds}


def _seeded_tables(entries: list[dict], comp_dir: Path) -> tuple[list[dict], list[dict]]:
    """The leaderboard (mean over seeds) and the per-seed leaderboard."""
    from suite.metrics import leaderboard_row, leaderboard_sort_key, seed_summary_row

    board, per_seed = [], []
    for entry in entries:
        rows = []
        for result in entry["seeds"]:
            run_dir = comp_dir / result["run_dir"]
            manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
            metrics_path = run_dir / "metrics.json"
            metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
            row = leaderboard_row(metrics, manifest, labels=LABELS, backbone=entry["backbone"],
                                  status=result["status"], error=result["error"])
            seed = CONFIG_SEED + result["replicate"] if result["status"] == "completed" else None  # as compare does
            per_seed.append({"replicate": result["replicate"], "training_seed": seed, **row})
            rows += [row] if result["status"] == "completed" else []
        board.append(seed_summary_row(rows, labels=LABELS, backbone=entry["backbone"], status=entry["status"],
                                      tier=SEEDED[entry["backbone"]][2], error=entry["error"]))
    return sorted(board, key=leaderboard_sort_key), per_seed


def _seeded_pairwise() -> list[dict]:
    tests = []
    for (a, b), (p, p_holm, significant, ci) in SEEDED_P.items():
        accuracy_a, accuracy_b = (sum(SEEDED[name][0]) / N_SEEDS for name in (a, b))
        tests.append({"a": a, "b": b, "accuracy_a": accuracy_a, "accuracy_b": accuracy_b, "diff_ci": ci,
                      "seeds_a": N_SEEDS, "seeds_b": N_SEEDS, "method": BOOTSTRAP, "p_value": p, "p_holm": p_holm,
                      "significant": significant, "winner": a if significant else None,
                      "sentence": SEEDED_SENTENCES[(a, b)]})
    return tests


def _write_table(comp_dir: Path, name: str, rows: list[dict], header: list[str]) -> None:
    (comp_dir / f"{name}.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    _write_csv(comp_dir / f"{name}.csv", [{k: ("" if row.get(k) is None else row.get(k)) for k in header}
                                          for row in rows])


def write_seeded_comparison(out: Path, runs: dict[str, list[Path]], images) -> Path:
    """The comparison folder of a ``--seeds 3`` comparison."""
    from suite.metrics import leaderboard_columns

    comp_dir = out / SEEDED_DIR
    comp_dir.mkdir()
    entries = [_seeded_entry(backbone, run_dirs) for backbone, run_dirs in runs.items()]
    completed = [e["backbone"] for e in entries if e["status"] == "completed"]
    comparison = {
        "schema": 1, "kind": "comparison", "comparison_id": SEEDED_DIR, "created": "2026-11-28T12:00:00+01:00",
        "config": {"epochs": 5, "image_size": 224, "batch_size": 32, "seed": CONFIG_SEED, "alpha": 0.05,
                   "weights": "imagenet"},
        "dataset": manifest_for("efficientnetb0", "x", "")["dataset"], "seeds": N_SEEDS,
        "split_fingerprint": SPLIT, "split_fingerprints": {b: SPLIT for b in runs}, "labels": LABELS,
        "runs": entries, "pairwise": _seeded_pairwise(),
        "p_matrix": {"names": completed, "values": [[None if a == b else SEEDED_P.get((a, b), SEEDED_P.get((b, a)))[1]
                                                     for b in completed] for a in completed]},
        "tiers": {b: SEEDED[b][2] for b in completed},
        "gradcam": write_gradcam(comp_dir, images),
    }
    (comp_dir / "comparison.json").write_text(json.dumps(comparison, indent=2), encoding="utf-8")
    board, per_seed = _seeded_tables(entries, comp_dir)
    _write_table(comp_dir, "leaderboard", board, leaderboard_columns(LABELS, seeds=True))
    _write_table(comp_dir, "leaderboard_seeds", per_seed, ["replicate", "training_seed", *leaderboard_columns(LABELS)])
    return comp_dir


def build_seeded_comparison(root: Path) -> dict:
    """Write a seeded comparison and its replicates' run folders under ``root``; returns the interesting paths.

    Returns:
        ``{"out", "comp", "runs": {backbone: [run folder of each replicate]}, "images"}``.
    """
    images = write_images(root / "data")
    out = root / "out"
    out.mkdir()
    runs = {backbone: [write_seed_run(out, backbone, k, images) for k in range(N_SEEDS)] for backbone in SEEDED}
    return {"out": out, "comp": write_seeded_comparison(out, runs, images), "runs": runs, "images": images}
