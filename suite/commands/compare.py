"""``suite compare``: every backbone under identical conditions, then a leaderboard that tells ties from wins.

backbones -> one ``pipeline.run`` each (same data, split, seed, callbacks, epochs)
-> paired McNemar tests on the same test images -> leaderboard + Grad-CAM sample
-> comparison folder (comparison.json, leaderboard.csv/.json, gradcam.npz, report.html).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from backbones import get_spec
from reports import finish
from suite import runs
from suite.commands import log, run_flags, training_output
from suite.errors import DataError, SuiteError
from suite.io import read_json, write_csv_atomic, write_json_atomic
from suite.metrics import leaderboard_columns, leaderboard_row, leaderboard_sort_key

GRADCAM_IMAGES = 8


def compare(flags: Mapping, backbones: Sequence[str], *, progress: bool = True, log: Callable = print) -> Path:
    """Run each backbone with the same flags and write the comparison folder.

    Every backbone gets the configuration ``suite run`` would give it with the same flags
    (the same image size included). A backbone that fails is recorded with its error; the
    others still complete.
    """
    from suite.commands.run import run

    results = []
    for name in backbones:
        spec = get_spec(name)
        try:
            run_dir = run({**flags, "backbone": spec.name}, progress=progress, log=log, raise_errors=False)
            results.append(_run_result(spec.name, run_dir))
        except DataError:
            raise  # the data is the same for every backbone: no point going on
        except (SuiteError, Exception) as exc:
            log(f"error: {spec.name} could not run: {exc}")
            results.append({"backbone": spec.name, "run_dir": None, "status": "failed",
                            "error": f"{type(exc).__name__}: {exc}"})
    out = Path(flags.get("out") or "runs")
    return write_comparison(out, results, log=log)


def _run_result(name: str, run_dir: Path) -> dict:
    run = runs.RunFolder(run_dir)
    return {"backbone": name, "run_dir": run_dir, "status": run.status, "error": run.manifest.get("error")}


def load_predictions(run_dir: Path) -> dict[str, tuple[str, str, list[float]]]:
    """``path -> (true, predicted, probabilities)`` from a run's predictions.csv."""
    with open(run_dir / runs.PREDICTIONS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    prob_cols = [c for c in rows[0] if c.startswith("p_")] if rows else []
    return {r["path"]: (r["true"], r["predicted"], [float(r[c]) for c in prob_cols]) for r in rows}


def write_comparison(out: Path, results: list[dict], *, log: Callable = print) -> Path:
    """Pairwise tests, leaderboard and Grad-CAM sample over finished runs; returns the folder."""
    from suite.stats import p_matrix, pairwise_tests, tie_groups

    done = [r for r in results if r["status"] == "completed"]
    folders = {r["backbone"]: runs.RunFolder(r["run_dir"]) for r in done}
    manifests = {name: run.manifest for name, run in folders.items()}
    metrics = {name: run.metrics() for name, run in folders.items()}
    correct, paths = _correctness(done)
    tests = pairwise_tests(correct) if len(correct) > 1 else []
    accuracy = {name: metrics[name]["accuracy"] for name in correct}
    tiers = tie_groups(accuracy, tests) if correct else {}
    folder = runs.new_run_dir(out, "compare")
    with runs.folder_lock(folder, "compare"):
        gradcam = _gradcam_sample(folder, done, paths, manifests, log)
        first = next(iter(manifests.values()), {})
        fingerprints = {m["split_fingerprint"] for m in manifests.values()}
        comparison = {
            "schema": 1,
            "kind": "comparison",
            "comparison_id": folder.name,
            "created": runs.now_iso(),
            "config": {k: v for k, v in first.get("config", {}).items() if k != "backbone"},
            "dataset": first.get("dataset", {}),
            "split_fingerprint": fingerprints.pop() if len(fingerprints) == 1 else None,
            "split_fingerprints": {name: m["split_fingerprint"] for name, m in manifests.items()},
            "labels": first.get("dataset", {}).get("labels", []),
            "runs": [_relative_result(r, folder) for r in results],
            "pairwise": tests,
            "p_matrix": {"names": list(correct), "values": p_matrix(list(correct), tests)},
            "tiers": tiers,
            "gradcam": gradcam,
        }
        rows = leaderboard(results, manifests, metrics, tiers, comparison["labels"])
        write_json_atomic(folder / runs.COMPARISON, comparison)
        write_json_atomic(folder / runs.LEADERBOARD_JSON, rows)
        header = leaderboard_columns(comparison["labels"])
        write_csv_atomic(folder / runs.LEADERBOARD_CSV, header, [[_cell(row.get(k)) for k in header] for row in rows])
    for t in tests:
        log(t["sentence"])
    finish(folder, log)
    return folder


def _short(text: str, limit: int = 160) -> str:
    """An error on one line, cut to ``limit`` characters (the report and manifest keep it whole)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _cell(value) -> str:
    return "" if value is None else value


def _relative_result(result: dict, folder: Path) -> dict:
    run_dir = result["run_dir"]
    rel = os.path.relpath(run_dir, folder) if run_dir else None
    return {**result, "run_dir": rel}


def _correctness(done: list[dict]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per backbone, right/wrong on each test image, aligned by path."""
    preds = {r["backbone"]: load_predictions(r["run_dir"]) for r in done}
    if not preds:
        return {}, []
    paths = sorted(set.intersection(*(set(p) for p in preds.values())))
    correct = {name: np.array([p[path][0] == p[path][1] for path in paths]) for name, p in preds.items()}
    return correct, paths


def leaderboard(results, manifests, metrics, tiers, labels) -> list[dict]:
    """One row per backbone, ordered by tier then accuracy; failed backbones last, with their error."""
    rows = [leaderboard_row(metrics.get(r["backbone"]), manifests.get(r["backbone"]), labels=labels,
                            backbone=r["backbone"], status=r["status"], tier=tiers.get(r["backbone"]),
                            error=r.get("error"))
            for r in results]
    return sorted(rows, key=leaderboard_sort_key)


def pick_gradcam_images(paths: list[str], preds: dict[str, dict], n: int, seed: int = 0) -> list[str]:
    """A fixed sample for every backbone: up to half that some model got wrong, the rest right for all."""
    rng = np.random.default_rng(seed)
    wrong = [p for p in paths if any(pr[p][0] != pr[p][1] for pr in preds.values())]
    right = [p for p in paths if p not in set(wrong)]
    n_wrong = min(len(wrong), max(n // 2, n - len(right)))
    chosen = list(rng.permutation(wrong)[:n_wrong]) + list(rng.permutation(right)[: n - n_wrong])
    return sorted(str(p) for p in chosen)


def _gradcam_sample(folder: Path, done, paths, manifests, log) -> dict | None:
    """Heat-maps of every backbone on the same test images, saved to gradcam.npz."""
    if not done or not paths:
        return None
    from suite.data.decode import decode_image
    from suite.inference import class_activation_maps

    preds = {r["backbone"]: load_predictions(r["run_dir"]) for r in done}
    sample = pick_gradcam_images(paths, preds, GRADCAM_IMAGES)
    arrays = {}
    for r in done:
        name = r["backbone"]
        try:
            run = runs.RunFolder(r["run_dir"])
            model = run.load_model()
            x = np.stack([decode_image(p, run.image_size) for p in sample])
            probs = model.predict(x, verbose=0)
            pred = probs.argmax(axis=1)
            arrays[name] = class_activation_maps(model, x, pred).astype(np.float32)
            arrays[f"{name}__pred"], arrays[f"{name}__probs"] = pred, probs.astype(np.float32)
        except Exception as exc:  # a heat-map problem must not sink the comparison
            log(f"warning: Grad-CAM for {name} failed: {type(exc).__name__}: {exc}")
    if not arrays:
        return None
    np.savez_compressed(folder / runs.GRADCAM, **arrays)
    true = [preds[done[0]["backbone"]][p][0] for p in sample]
    backbones = [r["backbone"] for r in done if r["backbone"] in arrays]
    return {"file": runs.GRADCAM, "paths": sample, "true": true, "backbones": backbones}


def main(args) -> int:
    from backbones import list_backbones

    flags = run_flags(args)
    flags.pop("backbone")
    with training_output():
        folder = compare(flags, args.backbones or tuple(list_backbones()), progress=not args.quiet, log=log)
    print(folder)
    failed = [r for r in read_json(folder / runs.COMPARISON)["runs"] if r["status"] != "completed"]
    if failed:
        names = "; ".join(f"{r['backbone']} ({_short(r.get('error') or r['status'])})" for r in failed)
        log(f"error: {len(failed)} of the backbones failed: {names}")
        return 1
    return 0
