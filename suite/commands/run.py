"""``suite run``: one backbone, one dataset, one complete run folder; ``prepare`` and ``execute`` serve cv and tune too.

data folder -> discover -> decode/cache -> split -> build model -> fit -> evaluate
-> run folder (manifest, history, metrics, predictions, model, logs) -> report.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from backbones import BackboneSpec, get_spec
from reports import finish
from suite import runs
from suite.cluster import if_cluster_lost, is_lead_process, joined
from suite.commands import log as _log
from suite.commands import run_flags, track_result, training_output
from suite.config import RunConfig, resolve_config
from suite.data.dataset import PreparedData, prepare_data
from suite.data.discover import discover
from suite.errors import DiskFull, stop_reason
from suite.io import write_csv_atomic, write_json_atomic
from suite.model import check_image_size
from suite.runtime import configure_process, split_batch
from suite.weights import WeightsChoice, resolve_weights


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything decided before training: backbone, configuration, weights, data."""

    spec: BackboneSpec
    config: RunConfig
    weights: WeightsChoice
    data: PreparedData


def prepare(
    flags: Mapping[str, Any],
    *,
    progress: bool = True,
    log: Callable[[str], None] = _log,
) -> Prepared:
    """Resolve the configuration, the weights and the data of a run; no folder is made yet.

    Args:
        flags: user settings (see ``RunConfig``); missing or ``None`` ones are resolved
            from the dataset's card and the reference defaults.
        progress: show progress bars.
        log: where one-line status messages go.

    Raises:
        SuiteError: bad data or unavailable weights.
    """
    spec = get_spec(flags.get("backbone") or RunConfig.backbone)
    index = discover(flags.get("data") or _phantom_root(log, progress))
    config = resolve_config({**flags, "backbone": spec.name}, index.card)
    runs.check_out_outside(config.out, index.root)
    check_image_size(spec, config.image_size)  # before any data work: a backbone's minimum input size
    configure_process(config.cpu_devices, config.strategy)  # before anything starts the backend; may refuse
    if joined() is not None:
        split_batch(config.batch_size, joined().processes)  # refuse an uneven global batch before any work
    weights = resolve_weights(spec, config.weights, config.image_size)
    if weights.warning:
        log(f"warning: {weights.warning}")
    log(f"data: {index.root} ({len(index.entries)} files, labels {', '.join(index.labels)})")
    data = prepare_data(
        index,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        workers=config.workers,
        progress=progress,
        pool_splits=config.pool_splits,
        dedup=config.dedup,
        groups=config.groups,
        log=log,
    )
    log(f"data ready in {data.seconds:.1f}s (cache {'hit' if data.cache_hit else 'miss'}, "
        f"{len(data.skipped)} skipped)")
    return Prepared(spec, config, weights, data)


def execute(
    prepared: Prepared,
    run_dir: Path,
    *,
    log: Callable[[str], None] = _log,
    raise_errors: bool = True,
) -> Path:
    """Train, evaluate and report into ``run_dir`` (an existing, empty folder).

    Args:
        prepared: from :func:`prepare` (its data's split decides train/val/test).
        run_dir: the run folder.
        log: where one-line status messages go.
        raise_errors: re-raise a training failure (default); when false, the failure is
            recorded in the manifest and the run folder is returned.
    """
    spec, config, weights, data = prepared.spec, prepared.config, prepared.weights, prepared.data
    manifest = initial_manifest(run_dir, config, data, weights)
    runs.write_manifest(run_dir, manifest)

    def lost(message: str) -> None:  # the process ends at once: record why first
        runs.write_manifest(run_dir, {**manifest, "status": "failed", "error": message, "finished": runs.now_iso()})

    try:
        with if_cluster_lost(lost):
            _write_training_hashes(data, run_dir, log)
            _train_and_evaluate(spec, config, data, weights, run_dir, manifest, log)
    except DiskFull as exc:  # the next backbone or fold would meet the same full disk: stop
        manifest.update(status="failed", error=stop_reason(exc))
        raise
    except Exception as exc:
        manifest.update(status="failed", error=stop_reason(exc))
        if raise_errors:
            raise
        log(f"error: {spec.name} failed: {manifest['error']}")
    except BaseException as exc:  # interrupted or terminated: record it, then stop
        manifest.update(status="failed", error=stop_reason(exc))
        raise
    finally:
        manifest["finished"] = runs.now_iso()
        _save_manifest(run_dir, manifest, log)
        finish(run_dir, log)
    return run_dir


def _save_manifest(run_dir: Path, manifest: dict, log) -> None:
    """Write the final manifest; on a full disk, say so rather than hide the run's own error."""
    try:
        runs.write_manifest(run_dir, manifest)
    except (DiskFull, OSError) as exc:
        log(f"warning: {run_dir / runs.MANIFEST} could not be updated: {exc}")


def run(
    flags: Mapping[str, Any],
    *,
    progress: bool = True,
    log: Callable[[str], None] = _log,
    raise_errors: bool = True,
) -> Path | None:
    """Train and evaluate one backbone; return the finished run folder ``<out>/<timestamp>-<backbone>``.

    Bad data or unavailable weights raise ``SuiteError`` before any run folder is made.
    See :func:`prepare` and :func:`execute` for the arguments.

    In a multi-worker run every process trains and evaluates the same way, and only process 0
    keeps a run folder: the others work in a temporary folder, removed at the end, and return ``None``.
    """
    prepared = prepare(flags, progress=progress, log=log)
    if not is_lead_process():
        with tempfile.TemporaryDirectory(prefix="suite-worker-") as scratch:
            run_dir = Path(scratch) / prepared.spec.name  # its parent gets the folder's index, removed too
            run_dir.mkdir()
            execute(prepared, run_dir, log=log, raise_errors=raise_errors)
        log(f"process {joined().process_id} of {joined().processes} done; process 0 keeps the run folder")
        return None
    run_dir = runs.new_run_dir(prepared.config.out, prepared.spec.name)
    return execute(prepared, run_dir, log=log, raise_errors=raise_errors)


def _phantom_root(log, progress: bool) -> Path:
    from suite.data.phantom import default_phantom_dir, ensure_phantom

    if not default_phantom_dir().is_dir():
        log(f"no --data given: generating the synthetic phantom dataset into {default_phantom_dir()}")
    return ensure_phantom(progress=progress)


def initial_manifest(run_dir: Path, config: RunConfig, data: PreparedData, weights: WeightsChoice) -> dict:
    """The manifest as it stands before training; completed as the run goes on."""
    from suite.runtime import backend, describe_device, package_versions

    warnings = [weights.warning] if weights.warning else []
    notice = ("SYNTHETIC DATA: this run used the synthetic phantom dataset, not real MRI; its figures say "
              "nothing about clinical performance.") if data.index.synthetic else None
    return {
        "schema": 1,
        "run_id": run_dir.name,
        "status": "running",
        "error": None,
        **runs.process_stamp(),
        "created": runs.now_iso(),
        "backbone": config.backbone,
        "config": config.to_dict(),
        "seed": config.seed,
        "dataset": data.index.describe(),
        "synthetic_data": data.index.synthetic,
        "data_notice": notice,
        "data_fingerprint": data.data_fingerprint,
        "split_fingerprint": data.split_fingerprint,
        "class_counts": data.class_counts(),
        "cache_hit": data.cache_hit,
        "dedup": data.dedup,
        "skipped": list(data.skipped),
        "n_skipped": len(data.skipped),
        "weights": weights.describe(),
        "warnings": warnings,
        "backend": backend(),
        "device": describe_device(),
        "package_versions": package_versions(),
        "timings": {"data_s": round(data.seconds, 3)},
    }


def _train_and_evaluate(spec, config, data, weights, run_dir, manifest, log) -> None:
    import keras

    from suite.inference import time_inference
    from suite.metrics import classification_metrics, prediction_rows
    from suite.model import set_precision
    from suite.runtime import accelerators

    manifest["runtime"] = configure_process(config.cpu_devices, config.strategy)
    keras.backend.clear_session()
    previous_policy = keras.config.dtype_policy()
    manifest["precision_policy"] = set_precision(config.precision, bool(accelerators()))
    try:
        _train(spec, config, data, weights, run_dir, manifest, log)
        start = time.perf_counter()
        best = keras.saving.load_model(run_dir / runs.MODEL)
        x_test, y_test = data.arrays("test")
        probs = best.predict(x_test, batch_size=config.batch_size, verbose=0)
        metrics = classification_metrics(y_test, probs, data.labels)
        if data.cluster is not None:
            metrics["leak_free"] = leak_free_metrics(data, y_test, probs)
        metrics["calibration"] = _calibrate(best, config, data, y_test, probs, run_dir, log)
        manifest["timings"]["eval_s"] = round(time.perf_counter() - start, 3)
        metrics.update(time_inference(best, x_test[: config.batch_size]))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    write_json_atomic(run_dir / runs.METRICS, metrics)
    header, rows = prediction_rows(data.paths("test"), y_test, probs, data.labels)
    write_csv_atomic(run_dir / runs.PREDICTIONS, header, rows)
    manifest["status"] = "completed"
    log(f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['n_test']} images")


def _calibrate(best, config, data, y_test, probs, run_dir, log) -> dict:
    """Fit temperature scaling and conformal thresholds on the validation split, check them on test,
    write ``calibration.json``; return its summary for ``metrics.json`` (:mod:`suite.calibration`)."""
    from suite import calibration

    x_val, y_val = data.arrays("val")
    val_probs = (best.predict(x_val, batch_size=config.batch_size, verbose=0)
                 if len(y_val) >= calibration.MIN_VAL_IMAGES else np.zeros((0, len(data.labels))))
    record = calibration.calibrate(val_probs, y_val, probs, y_test, data.labels)
    write_json_atomic(run_dir / runs.CALIBRATION, record)
    if record["status"] != "fitted":
        log(f"calibration skipped: {record['reason']}")
    else:
        at = calibration.level(record)
        log(f"calibration: T={record['temperature']:.3f}, test ECE {record['ece_test_before']:.4f} -> "
            f"{record['ece_test_after']:.4f}; 95% sets cover {at['coverage']:.3f} of test, "
            f"mean size {at['mean_set_size']:.2f}")
    return calibration.summary(record)


def _train(spec, config, data, weights, run_dir, manifest, log) -> None:
    """Build and fit under the run's distribution strategy; the best epoch ends in ``model.keras``."""
    import keras

    from suite.cluster import cluster_guard
    from suite.model import build_model
    from suite.runtime import COMPILE_MONITOR, distribution_scope, make_distribution
    from suite.train import BestCheckpoint, fit, make_callbacks

    dist = make_distribution(config.strategy)
    manifest.update(strategy=dist.name, replicas=dist.replicas, distribution=dist.describe())
    with cluster_guard(dist), distribution_scope(dist):
        keras.utils.set_random_seed(config.training_seed)
        model = build_model(spec, config, len(data.labels), weights.argument)
        manifest["params"] = int(model.count_params())
        callbacks, warnings = make_callbacks(config, run_dir)
        manifest["warnings"].extend(warnings)
        train, val = data.arrays("train"), data.arrays("val")
        log(f"training {spec.name} at {config.image_size}px on {len(train[1])} images "
            f"({len(val[1])} validation) for {config.epochs} epochs"
            + (f", {dist.name} over {dist.replicas} replicas" if dist.replicas > 1 else "")
            + (f" in {dist.processes} processes" if dist.processes > 1 else ""))
        COMPILE_MONITOR.reset()
        start = time.perf_counter()
        # Each process trains on its share of every global batch and validates on the whole split.
        history = fit(model, config, dist.share(*train), val, callbacks, verbose=1 if sys.stderr.isatty() else 2,
                      batch_size=dist.local_batch(config.batch_size))
    seconds = time.perf_counter() - start
    manifest["timings"]["train_s"] = round(seconds, 3)
    manifest["epochs_run"] = len(history.epoch)
    manifest["train_images_per_s"] = round(len(train[1]) * len(history.epoch) / seconds, 2)
    manifest["compile"] = compile_summary(COMPILE_MONITOR.snapshot(), run_dir / runs.HISTORY)
    manifest["checkpoint"] = next(c.describe() for c in callbacks if isinstance(c, BestCheckpoint))


def compile_summary(jax_events: dict | None, history_csv: Path) -> dict:
    """Compilation cost of a fit: JAX's own compile events where JAX runs, and for every backend
    the first epoch's extra seconds over the median later epoch (tracing, compiling, warm-up)."""
    import pandas as pd

    summary = dict(jax_events or {})
    seconds = pd.read_csv(history_csv)["seconds"].to_numpy() if history_csv.is_file() else []
    if len(seconds) >= 2:
        summary["first_epoch_overhead_s"] = round(float(seconds[0] - np.median(seconds[1:])), 3)
    return summary


def leak_free_metrics(data: PreparedData, y_test, probs) -> dict:
    """Metrics on the test images with no exact or near twin in training or validation
    (:func:`suite.metrics.leak_free_metrics`: with balanced accuracy and each class's support and recall)."""
    from suite.metrics import leak_free_metrics as on_images

    return on_images(y_test, probs, data.labels, data.leak_free_test(),
                     definition="test images with no exact or near-duplicate training or validation image "
                                "(suite.data.duplicates)")


def _write_training_hashes(data: PreparedData, run_dir: Path, log) -> None:
    """Record what the run trains and validates on, so ``suite evaluate`` can tell its copies elsewhere."""
    from suite.contamination import save_training_hashes, training_hashes

    save_training_hashes(run_dir / runs.TRAINING_HASHES, training_hashes(data, log=log))


def main(args) -> int:
    if args.seeds > 1:  # one backbone under several seeds: a comparison of its replicates
        from suite.commands.compare import compare, exit_status
        from suite.runtime import refuse_multiworker

        refuse_multiworker(args.strategy, "suite run --seeds")

        flags = run_flags(args)
        backbone = get_spec(flags.pop("backbone") or RunConfig.backbone).name
        with training_output():
            folder = compare(flags, [backbone], seeds=args.seeds, progress=not args.quiet, log=_log)
        print(folder)
        track_result(args, folder)
        return exit_status(folder)
    with training_output():
        run_dir = run(run_flags(args), progress=not args.quiet)
    if run_dir is not None:  # None: a process of a multi-worker run other than process 0
        print(run_dir)
        track_result(args, run_dir)
    return 0
