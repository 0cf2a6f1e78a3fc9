"""``suite compare``: every backbone under identical conditions, then a leaderboard that tells ties from wins.

backbones (x seeds) -> one ``suite run`` each (same data, split, callbacks, epochs; with ``--seeds N``
the N replicates of a backbone differ only in their training seed) -> paired tests on the same test
images (McNemar; with seeds, a bootstrap over images and seeds) -> leaderboard (with seeds: mean and
SD over seeds, per-seed rows apart) + Grad-CAM sample -> comparison folder (comparison.json,
leaderboard.csv/.json, leaderboard_seeds.csv/.json, gradcam.npz, report.html).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from backbones import get_spec
from reports import finish
from suite import runs
from suite.commands import log, run_flags, track_result, training_output
from suite.errors import DataError, SuiteError
from suite.io import read_json, write_csv_atomic, write_json_atomic
from suite.metrics import (
    external_figures,
    leaderboard_columns,
    leaderboard_row,
    leaderboard_sort_key,
    robustness_figures,
    seed_summary_row,
)

GRADCAM_IMAGES = 8


def compare(flags: Mapping, backbones: Sequence[str], *, seeds: int = 1, externals: Sequence[Path] = (),
            robustness: bool = False, progress: bool = True, log: Callable = print) -> Path:
    """Run each backbone with the same flags (``seeds`` times) and write the comparison folder.

    Every backbone gets the configuration ``suite run`` would give it with the same flags
    (the same image size included). With ``seeds`` > 1, replicate k of every backbone is
    trained with ``replicate=k``: its training is seeded by seed + k while the split stays
    that of the seed. A backbone that fails is recorded with its error; the others still complete.
    Every completed run is then evaluated on every ``externals`` dataset (``suite evaluate``,
    contamination-aware), into evaluation folders beside the runs. With ``robustness``, every
    completed run is also scored under every corruption at every severity (``suite robustness``,
    into robustness folders beside the runs) and the leaderboard gains its headline figures.
    """
    if seeds < 1:
        raise SuiteError(f"--seeds must be at least 1, got {seeds}")
    out = Path(flags.get("out") or "runs")
    sets = external_sets(externals)
    for entry in sets:
        runs.check_out_outside(out, entry["path"])
    replicates = list(range(seeds)) if seeds > 1 else [flags.get("replicate") or 0]
    results = [_run_one(get_spec(name).name, flags, k, progress, log) for name in backbones for k in replicates]
    for r in _completed(results):
        r["externals"] = {e["slug"]: _evaluate(r, e, out, progress, log) for e in sets}
        if robustness:
            r["robustness"] = _robustness(r, out, progress, log)
    return write_comparison(out, results, seeds=seeds, externals=sets, robustness=robustness, log=log)


def external_sets(paths: Sequence[Path]) -> list[dict]:
    """``{"name", "slug", "path"}`` per external dataset: its card's name, else its folder's name;
    the slug names its leaderboard columns (``ext_<slug>_accuracy``) and is unique."""
    from suite.commands.evaluate import evaluation_index

    sets, slugs = [], set()
    for path in paths:
        path = Path(path)
        name = evaluation_index(path).name  # the card's name, else the folder's
        slug = base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "external"
        n = 1
        while slug in slugs:
            n += 1
            slug = f"{base}_{n}"
        slugs.add(slug)
        sets.append({"name": name, "slug": slug, "path": str(path)})
    return sets


def _evaluate(result: dict, external: dict, out: Path, progress: bool, log) -> dict:
    """One run on one external set: its evaluation folder and figures, or the error."""
    from suite.commands.evaluate import evaluate_external

    try:
        folder = evaluate_external(result["run_dir"], external["path"], out=out, progress=progress, log=log)
    except (SuiteError, OSError) as exc:
        log(f"error: {result['backbone']} could not be evaluated on {external['name']}: {exc}")
        return {"evaluation": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"evaluation": folder, "error": None}


def _robustness(result: dict, out: Path, progress: bool, log) -> dict:
    """One run under every corruption: its robustness folder, or the error."""
    from suite.commands.robustness import robustness

    try:
        folder = robustness(result["run_dir"], out=out, progress=progress, log=log)
    except (SuiteError, OSError) as exc:
        log(f"error: {result['backbone']} could not be scored under corruptions: {exc}")
        return {"folder": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"folder": folder, "error": None}


def _run_one(name: str, flags: Mapping, replicate: int, progress: bool, log) -> dict:
    """Train one (backbone, replicate); its result record, never raising but for bad data."""
    from suite.commands.run import run

    result = {"backbone": name, "replicate": replicate, "run_dir": None, "status": "failed", "error": None}
    try:
        run_dir = run({**flags, "backbone": name, "replicate": replicate}, progress=progress, log=log,
                      raise_errors=False)
    except DataError:
        raise  # the data is the same for every backbone: no point going on
    except Exception as exc:  # any failure of one backbone is recorded; the others still run
        log(f"error: {name} could not run: {exc}")
        return {**result, "error": f"{type(exc).__name__}: {exc}"}
    run = runs.RunFolder(run_dir)
    return {**result, "run_dir": run_dir, "status": run.status, "error": run.manifest.get("error")}


def load_predictions(run_dir: Path) -> dict[str, tuple[str, str, list[float]]]:
    """``path -> (true, predicted, probabilities)`` from a run's predictions.csv."""
    with open(run_dir / runs.PREDICTIONS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    prob_cols = [c for c in rows[0] if c.startswith("p_")] if rows else []
    return {r["path"]: (r["true"], r["predicted"], [float(r[c]) for c in prob_cols]) for r in rows}


def write_comparison(out: Path, results: list[dict], *, seeds: int = 1, externals: Sequence[dict] = (),
                     robustness: bool = False, log: Callable = print) -> Path:
    """Pairwise tests, leaderboard and Grad-CAM sample over finished runs; returns the folder.

    Args:
        out: where the comparison folder is made.
        results: one per (backbone, replicate): ``backbone``, ``replicate``, ``run_dir``,
            ``status``, ``error``.
        seeds: replicates per backbone (1: a plain comparison).
        externals: the external datasets (:func:`external_sets`); each result then has
            ``externals``: ``{slug: {"evaluation": folder or None, "error"}}``.
        robustness: each completed result has ``robustness``: ``{"folder": folder or None, "error"}``;
            the leaderboards gain ``suite.metrics.ROBUSTNESS_COLUMNS``.
    """
    from suite.stats import p_matrix, pairwise_tests, tie_groups

    members = _members(results)
    done = [m for m in members if m["status"] == "completed"]
    correct, paths = _correctness(results, members)
    tests = pairwise_tests(correct) if len(correct) > 1 else []
    tiers = tie_groups({name: float(np.mean(c)) for name, c in correct.items()}, tests) if correct else {}
    folder = runs.new_run_dir(out, "compare")
    with runs.folder_lock(folder, "compare"), runs.removed_on_error(folder):
        comparison = _record(folder, members, results, seeds, tests, tiers)
        comparison["externals"] = [{**e, "path": str(Path(e["path"]).resolve())} for e in externals]
        slugs = [e["slug"] for e in externals]
        comparison["robustness"] = robustness
        comparison["p_matrix"] = {"names": list(correct), "values": p_matrix(list(correct), tests)}
        comparison["gradcam"] = _gradcam_sample(folder, done, paths, log)
        rows = leaderboard(members, results, tiers, comparison["labels"], seeds, slugs, robustness)
        write_json_atomic(folder / runs.COMPARISON, comparison)
        _write_table(folder, runs.LEADERBOARD_JSON, runs.LEADERBOARD_CSV, rows,
                     leaderboard_columns(comparison["labels"], seeds=seeds > 1, externals=slugs,
                                         robustness=robustness))
        if seeds > 1:
            _write_table(folder, runs.SEEDS_JSON, runs.SEEDS_CSV,
                         seed_rows(results, comparison["labels"], slugs, robustness),
                         ["replicate", "training_seed", *leaderboard_columns(comparison["labels"], externals=slugs,
                                                                             robustness=robustness)])
    for t in tests:
        log(t["sentence"])
    finish(folder, log)
    return folder


def _members(results: list[dict]) -> list[dict]:
    """One entry per backbone: its first replicate's run (status ``completed`` only when every
    replicate completed), with every replicate under ``seeds``."""
    members = {}
    for r in results:
        member = members.setdefault(r["backbone"], {**r, "seeds": []})
        member["seeds"].append(r)
    for member in members.values():
        failed = [r for r in member["seeds"] if r["status"] != "completed"]
        if failed:
            member.update(status="failed", error=failed[0]["error"] or f"replicate {failed[0]['replicate']} "
                          f"ended {failed[0]['status']}")
        member["run"] = runs.RunFolder(member["run_dir"]) if member["status"] == "completed" else None
    return list(members.values())


def _record(folder: Path, members, results, seeds: int, tests, tiers) -> dict:
    """What comparison.json holds, but the p-value matrix and the Grad-CAM sample."""
    manifests = {m["backbone"]: m["run"].manifest for m in members if m["run"] is not None}
    first = next(iter(manifests.values()), {})
    fingerprints = {runs.RunFolder(r["run_dir"]).manifest["split_fingerprint"] for r in _completed(results)}
    return {
        "schema": 1,
        "kind": "comparison",
        "comparison_id": folder.name,
        "created": runs.now_iso(),
        "config": {k: v for k, v in first.get("config", {}).items() if k not in ("backbone", "replicate")},
        "dataset": first.get("dataset", {}),
        "seeds": seeds,
        "split_fingerprint": fingerprints.pop() if len(fingerprints) == 1 else None,
        "split_fingerprints": {name: m["split_fingerprint"] for name, m in manifests.items()},
        "labels": first.get("dataset", {}).get("labels", []),
        "runs": [_relative_member(m, folder) for m in members],
        "pairwise": tests,
        "tiers": tiers,
    }


def _completed(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"] == "completed"]


def _relative(run_dir, folder: Path) -> str | None:
    return os.path.relpath(run_dir, folder) if run_dir else None


def _relative_member(member: dict, folder: Path) -> dict:
    """A member as comparison.json lists it: paths relative to the comparison folder."""
    seeds = [{"replicate": r["replicate"], "run_dir": _relative(r["run_dir"], folder), "status": r["status"],
              "error": r["error"], **_relative_externals(r, folder), **_relative_robustness(r, folder)}
             for r in member["seeds"]]
    entry = {"backbone": member["backbone"], "run_dir": _relative(member["run_dir"], folder),
             "status": member["status"], "error": member["error"], **_relative_externals(member, folder),
             **_relative_robustness(member, folder)}
    return {**entry, "seeds": seeds} if len(seeds) > 1 else entry


def _relative_externals(result: dict, folder: Path) -> dict:
    """``{"externals": {slug: {"evaluation": relative folder, "error"}}}``, or nothing without external sets."""
    if not result.get("externals"):
        return {}
    return {"externals": {slug: {"evaluation": _relative(e["evaluation"], folder), "error": e["error"]}
                          for slug, e in result["externals"].items()}}


def _relative_robustness(result: dict, folder: Path) -> dict:
    """``{"robustness": {"folder": relative folder, "error"}}``, or nothing without ``--robustness``."""
    if not result.get("robustness"):
        return {}
    return {"robustness": {"folder": _relative(result["robustness"]["folder"], folder),
                           "error": result["robustness"]["error"]}}


def _write_table(folder: Path, json_name: str, csv_name: str, rows: list[dict], header: list[str]) -> None:
    write_json_atomic(folder / json_name, rows)
    write_csv_atomic(folder / csv_name, header, [[_cell(row.get(k)) for k in header] for row in rows])


def _short(text: str, limit: int = 160) -> str:
    """An error on one line, cut to ``limit`` characters (the report and manifest keep it whole)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _cell(value) -> str:
    return "" if value is None else value


def _correctness(results: list[dict], members: list[dict]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per backbone, right/wrong on each test image aligned by path: ``(n,)`` for one replicate,
    ``(replicates, n)`` for several. Backbones with a failed replicate are left out."""
    complete = {m["backbone"] for m in members if m["status"] == "completed"}
    preds = [(r["backbone"], load_predictions(r["run_dir"])) for r in _completed(results)
             if r["backbone"] in complete]
    if not preds:
        return {}, []
    paths = sorted(set.intersection(*(set(p) for _, p in preds)))
    rows: dict[str, list] = {}
    for name, p in preds:
        rows.setdefault(name, []).append([p[path][0] == p[path][1] for path in paths])
    correct = {name: np.array(r[0] if len(r) == 1 else r) for name, r in rows.items()}
    return correct, paths


def leaderboard(members: list[dict], results: list[dict], tiers, labels, seeds: int = 1,
                externals: Sequence[str] = (), robustness: bool = False) -> list[dict]:
    """One row per backbone, ordered by tier then accuracy; failed backbones last, with their error.

    With seeds, a backbone's row holds the mean over its replicates and the SD of accuracy and
    macro-F1 across them (see ``suite.metrics.seed_summary_row``); with external sets, the
    ``ext_<slug>_*`` figures of each (means over replicates with seeds); with ``robustness``, the
    robustness figures (likewise).
    """
    rows = []
    for m in members:
        given = {"backbone": m["backbone"], "status": m["status"], "tier": tiers.get(m["backbone"]),
                 "error": m["error"]}
        if seeds > 1:
            replicates = [_row(r, labels, externals, robustness) for r in m["seeds"] if r["status"] == "completed"]
            rows.append(seed_summary_row(replicates, labels=labels, externals=externals, robustness=robustness,
                                         **given))
        else:
            row = (_row(m, labels, externals, robustness) if m["status"] == "completed"
                   else leaderboard_row(None, labels=labels))
            rows.append({**row, **given})
    return sorted(rows, key=leaderboard_sort_key)


def _row(result: dict, labels, externals: Sequence[str] = (), robustness: bool = False) -> dict:
    """A completed run's leaderboard row, with its external-set figures and (``robustness``) its robustness ones."""
    run = runs.RunFolder(result["run_dir"])
    row = leaderboard_row(run.metrics(), run.manifest, labels=labels)
    for slug in externals:
        evaluation = (result.get("externals") or {}).get(slug, {}).get("evaluation")
        metrics = runs.RunFolder(evaluation).metrics() if evaluation else {}
        row.update(external_figures(slug, metrics, row.get("accuracy")))
    if robustness:
        folder = (result.get("robustness") or {}).get("folder")
        row.update(robustness_figures(read_json(Path(folder) / runs.ROBUSTNESS) if folder else {}))
    return row


def seed_rows(results: list[dict], labels, externals: Sequence[str] = (), robustness: bool = False) -> list[dict]:
    """One leaderboard row per (backbone, replicate), as run; failed replicates with their error."""
    rows = []
    for r in results:
        run = runs.RunFolder(r["run_dir"]) if r["run_dir"] else None  # a failed replicate may have one
        if r["status"] == "completed":
            row = _row(r, labels, externals, robustness)
        else:
            row = leaderboard_row(None, run.manifest if run else None, labels=labels)
        row.update(backbone=r["backbone"], status=r["status"], error=r["error"])
        seed = run.config.get("seed", 0) + r["replicate"] if run else None
        rows.append({"replicate": r["replicate"], "training_seed": seed, **row})
    return rows


def pick_gradcam_images(paths: list[str], preds: dict[str, dict], n: int, seed: int = 0) -> list[str]:
    """A fixed sample for every backbone: up to half that some model got wrong, the rest right for all."""
    rng = np.random.default_rng(seed)
    wrong = [p for p in paths if any(pr[p][0] != pr[p][1] for pr in preds.values())]
    right = [p for p in paths if p not in set(wrong)]
    n_wrong = min(len(wrong), max(n // 2, n - len(right)))
    chosen = list(rng.permutation(wrong)[:n_wrong]) + list(rng.permutation(right)[: n - n_wrong])
    return sorted(str(p) for p in chosen)


def _gradcam_sample(folder: Path, done, paths, log) -> dict | None:
    """Heat-maps of every backbone (its first replicate) on the same test images, saved to gradcam.npz."""
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
    from backbones import expand_backbones
    from suite.runtime import refuse_multiworker

    refuse_multiworker(args.strategy, "suite compare")
    flags = run_flags(args)
    flags.pop("backbone")
    with training_output():
        folder = compare(flags, args.backbones or tuple(expand_backbones("reference")), seeds=args.seeds,
                         externals=args.external, robustness=args.robustness, progress=not args.quiet, log=log)
    print(folder)
    track_result(args, folder)
    return exit_status(folder)


def exit_status(folder: Path) -> int:
    """1, saying which, when a backbone (any of its replicates) failed; else 0."""
    failed = [r for r in read_json(folder / runs.COMPARISON)["runs"] if r["status"] != "completed"]
    if failed:
        names = "; ".join(f"{r['backbone']} ({_short(r.get('error') or r['status'])})" for r in failed)
        log(f"error: {len(failed)} of the backbones failed: {names}")
        return 1
    return 0
