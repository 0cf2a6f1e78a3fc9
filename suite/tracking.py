"""Experiment tracking: finished result folders logged to MLflow, and a search's trials as TensorBoard HParams.

MLflow logging reads a folder the suite has finished (``--track mlflow`` on ``run``, ``compare``,
``cv`` and ``tune``, or ``suite track FOLDER`` at any later time) and never trains: reading
(:func:`read_folder`, which returns plain :class:`Record` values) is apart from logging
(:func:`log_record`). Per-epoch figures come from the run's ``history.csv`` rather than from a
live callback, so a resumed cross-validation or search logs every fold and trial whichever
process trained it, and a store that is down during training costs nothing but a later
``suite track``.

One MLflow run per result folder (``suite track`` skips a folder the experiment already holds in
full, tagged ``suite.logged``, unless told ``--again``): a comparison, cross-validation or search is a parent run
whose nested children are its backbones (each replicate with ``--seeds``), folds, or trials
and retrained runs. The store is ``$MLFLOW_TRACKING_URI``, else SQLite ``OUT/mlflow.db`` with
artifacts in ``OUT/mlartifacts`` (``OUT``: the folder the result folder is in). MLflow's
file store (``./mlruns``) is not used: MLflow 3 refuses it unless told otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from suite import runs
from suite.errors import ConfigError, SuiteError
from suite.io import read_json

TRACKERS = ("mlflow",)
LOGGED_TAG = "suite.logged"  # "complete" once a run, its files and its children are all in the store
INSTALL_HINT = 'pip install "mri-backbone-suite[track]" (or: pip install mlflow)'
# Files a run's MLflow run keeps as artifacts, when the folder has them.
RUN_ARTIFACTS = (runs.REPORT, runs.METRICS, runs.PREDICTIONS, runs.MODEL, runs.MANIFEST, runs.HISTORY,
                 runs.CALIBRATION, runs.CONTAMINATION, runs.OFFICIAL_TEST)
PARENT_ARTIFACTS = {
    "comparison": (runs.REPORT, runs.COMPARISON, runs.LEADERBOARD_CSV, runs.SEEDS_CSV),
    "cv": (runs.REPORT, runs.CV),
    "tuning": (runs.REPORT, runs.TUNING, runs.SEARCH),
}
# MLflow's limits (mlflow.utils.validation): a longer value is cut, a batch is split.
MAX_VALUE, MAX_BATCH_METRICS, MAX_BATCH_PARAMS = 6000, 1000, 100
_BAD_KEY_CHARS = re.compile(r"[^\w.\- ]")
# Per-epoch figures are logged as epoch_<column> (epoch_accuracy, epoch_val_loss): the final test
# figures have the plain names (accuracy is the test accuracy), as in metrics.json and the gates.
EPOCH_PREFIX = "epoch_"


@dataclasses.dataclass(frozen=True)
class Record:
    """What one MLflow run of a folder holds, read from the folder's files.

    Attributes:
        name: the MLflow run name (a backbone, ``fold-2``, ``trial 03``, the folder's name).
        params: settings, as MLflow params (strings).
        metrics: final figures (``accuracy``, ``accuracy_ci_low``, ``f1_glioma``, ...).
        history: per-epoch figures: ``{column: [(epoch, value), ...]}`` from ``history.csv``, logged
            as ``epoch_<column>`` with the epoch as step.
        tags: ``suite.kind``, ``suite.folder``, ``backbone``, ``status``, fingerprints, ...
        artifacts: files logged as they are.
        failed: the folder records a failure (the MLflow run ends ``FAILED``).
        children: nested runs.
    """

    name: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    history: Mapping[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    artifacts: tuple[Path, ...] = ()
    failed: bool = False
    children: tuple[Record, ...] = ()


# -- checking before any work --------------------------------------------------------------------------

def check_tracker(name: str) -> None:
    """Make sure ``--track name`` can log, before any training starts.

    Raises:
        ConfigError: an unknown tracker, or its package is not installed (naming the pip command).
    """
    if name not in TRACKERS:
        raise ConfigError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"--track mlflow needs MLflow, which is not installed: {INSTALL_HINT}") from None


# -- reading a folder -----------------------------------------------------------------------------------

def read_folder(path: str | Path) -> Record:
    """The record of a run, evaluation, comparison, cross-validation or tuning folder.

    Raises:
        SuiteError: a folder of another kind (an audit) or not the suite's.
    """
    path = Path(path)
    kind = runs.kind_of(path)
    readers = {"run": run_record, "evaluation": run_record, "comparison": comparison_record,
               "cv": cv_record, "tuning": tuning_record}
    if kind is None or kind.name not in readers:
        what = f"a folder of kind {kind.name}" if kind else "not a result folder of the suite"
        raise SuiteError(f"cannot track {path}: {what}; only {', '.join(readers)} folders can be tracked")
    return readers[kind.name](path)


def run_record(path: Path, name: str | None = None) -> Record:
    """A run or evaluation folder: its resolved configuration, history, metrics, tags and files."""
    run = runs.RunFolder(path)
    manifest = run.manifest
    metrics = _metrics_of(path / runs.METRICS)
    metrics.update({f"official_test_{k}": v for k, v in _metrics_of(path / runs.OFFICIAL_TEST).items()})
    for what, seconds in (manifest.get("timings") or {}).items():
        _put(metrics, f"time_{what}", seconds)
    _put(metrics, "n_params", manifest.get("params"))
    _put(metrics, "epochs_run", manifest.get("epochs_run"))
    dataset = manifest.get("dataset") or {}
    tags = {
        "suite.kind": manifest.get("kind") or "run",
        "suite.folder": str(path.resolve()),
        "suite.run_id": manifest.get("run_id") or path.name,
        "backbone": run.backbone,
        "status": run.status,
        "data_fingerprint": manifest.get("data_fingerprint"),
        "split_fingerprint": manifest.get("split_fingerprint"),
        "synthetic_data": manifest.get("synthetic_data", dataset.get("synthetic")),
        "dataset": dataset.get("name"),
        "backend": manifest.get("backend"),
        "error": manifest.get("error"),
    }
    return Record(name=name or run.backbone, params=_params(manifest.get("config") or {}), metrics=metrics,
                  history=_history(path / runs.HISTORY), tags=_tags(tags), artifacts=_files(path, RUN_ARTIFACTS),
                  failed=run.status != "completed")


def comparison_record(path: Path) -> Record:
    """A comparison: the shared settings, with one child per backbone (per replicate with seeds)."""
    comparison = read_json(path / runs.COMPARISON)
    children = []
    for member in comparison.get("runs", []):
        for entry in member.get("seeds") or [member]:
            name = member["backbone"] if not member.get("seeds") else f"{member['backbone']} r{entry['replicate']}"
            children.append(_member_record(path, entry, name, member["backbone"]))
    params = _params({**comparison.get("config", {}), "seeds": comparison.get("seeds", 1)})
    tags = {"suite.kind": "comparison", "suite.folder": str(path.resolve()), "suite.run_id": path.name,
            "split_fingerprint": comparison.get("split_fingerprint"),
            "dataset": (comparison.get("dataset") or {}).get("name"),
            "synthetic_data": (comparison.get("dataset") or {}).get("synthetic"),
            "backbones": ",".join(m["backbone"] for m in comparison.get("runs", []))}
    failed = any(m.get("status") != "completed" for m in comparison.get("runs", []))
    return Record(name=path.name, params=params, tags=_tags(tags),
                  artifacts=_files(path, PARENT_ARTIFACTS["comparison"]), failed=failed, children=tuple(children))


def _member_record(folder: Path, entry: Mapping, name: str, backbone: str) -> Record:
    """A comparison member's run; one without a run folder (it failed before making it) as its error alone."""
    run_dir = folder / entry["run_dir"] if entry.get("run_dir") else None
    if run_dir is not None and runs.is_run_dir(run_dir):
        return run_record(run_dir, name)
    return Record(name=name, tags=_tags({"suite.kind": "run", "backbone": backbone,
                                         "status": entry.get("status"), "error": entry.get("error")}), failed=True)


def cv_record(path: Path) -> Record:
    """A cross-validation: K, the settings and the figures across folds, with one child per fold."""
    cv = read_json(path / runs.CV)
    metrics: dict[str, float] = {}
    for name, mean in (cv.get("mean") or {}).items():
        _put(metrics, f"{name}_mean", mean)
        _put(metrics, f"{name}_std", (cv.get("std") or {}).get(name))
        low, high = ((cv.get("ci") or {}).get(name) or [None, None])[:2]
        _put(metrics, f"{name}_mean_ci_low", low)
        _put(metrics, f"{name}_mean_ci_high", high)
    _put(metrics, "n_completed", cv.get("n_completed"))
    children = []
    for fold in cv.get("folds", []):
        fold_dir = path / str(fold.get("run_dir"))
        if runs.is_run_dir(fold_dir):
            children.append(run_record(fold_dir, f"fold-{fold['fold']}"))
        else:
            children.append(Record(name=f"fold-{fold['fold']}", failed=True,
                                   tags=_tags({"status": fold.get("status"), "error": fold.get("error")})))
    tags = {"suite.kind": "cv", "suite.folder": str(path.resolve()), "suite.run_id": path.name,
            "backbone": cv.get("backbone"), "status": cv.get("status"), "error": cv.get("error"),
            "data_fingerprint": cv.get("data_fingerprint"),
            "dataset": (cv.get("dataset") or {}).get("name"),
            "synthetic_data": (cv.get("dataset") or {}).get("synthetic")}
    return Record(name=path.name, params=_params({**cv.get("config", {}), "k": cv.get("k")}), metrics=metrics,
                  tags=_tags(tags), artifacts=_files(path, PARENT_ARTIFACTS["cv"]),
                  failed=cv.get("status") != "completed", children=tuple(children))


def tuning_record(path: Path) -> Record:
    """A finished search: how it searched and its best, with one child per trial and per retrained run.

    Raises:
        SuiteError: the search has not written ``tuning.json`` yet.
    """
    if not (path / runs.TUNING).is_file():
        raise SuiteError(f"{path}: the search has not finished (no {runs.TUNING}); track it once it has")
    tuning = read_json(path / runs.TUNING)
    objective = tuning.get("objective", "score")
    children = [_trial_record(path, trial, objective) for trial in tuning.get("trials", [])]
    for role in ("best_run", "default_run"):
        entry = tuning.get(role) or {}
        run_dir = path / str(entry.get("run_dir"))
        if entry.get("run_dir") and runs.is_run_dir(run_dir):
            source = entry.get("source") or role
            children.append(run_record(run_dir, f"{role.removesuffix('_run')} ({source})"))
    metrics: dict[str, float] = {}
    _put(metrics, f"best_{objective}", (tuning.get("best") or {}).get("score"))
    _put(metrics, "n_trials", tuning.get("n_trials"))
    _put(metrics, "time_search_s", tuning.get("search_s"))
    from suite.metrics import named_figures

    metrics.update({f"test_{k}": v for k, v in named_figures(tuning.get("test_metrics") or {}).items()})
    settings = {k: tuning.get(k) for k in ("tuner", "objective", "cv", "fast_path", "max_trials")}
    space = {f"space.{k}": v for k, v in (tuning.get("space") or {}).items()}
    tags = {"suite.kind": "tuning", "suite.folder": str(path.resolve()), "suite.run_id": path.name,
            "backbone": tuning.get("backbone"), "status": tuning.get("status"), "error": tuning.get("error"),
            "data_fingerprint": tuning.get("data_fingerprint"), "split_fingerprint": tuning.get("split_fingerprint"),
            "dataset": (tuning.get("dataset") or {}).get("name"),
            "synthetic_data": (tuning.get("dataset") or {}).get("synthetic"),
            "best_trial": (tuning.get("best") or {}).get("trial_id")}
    return Record(name=path.name, params=_params({**tuning.get("config", {}), **settings, **space}),
                  metrics=metrics, tags=_tags(tags), artifacts=_files(path, PARENT_ARTIFACTS["tuning"]),
                  failed=tuning.get("status") != "completed", children=tuple(children))


def _trial_record(folder: Path, trial: Mapping, objective: str) -> Record:
    """One trial: its values as params, its score (and fold scores), each fold's per-epoch history."""
    trial_dir = folder / runs.TUNER_PROJECT / f"trial_{trial['trial_id']}"
    metrics: dict[str, float] = {}
    _put(metrics, objective, trial.get("score"))
    for k, score in enumerate(trial.get("fold_scores") or []):
        _put(metrics, f"{objective}_fold{k}", score)
    _put(metrics, "time_trial_s", trial.get("seconds"))
    _put(metrics, "n_params", trial.get("params"))
    history = _history(trial_dir / runs.HISTORY)
    for k, fold_history in enumerate(_fold_histories(trial_dir)):
        history.update({f"fold{k}_{name}": values for name, values in _history(fold_history).items()})
    tags = {"suite.kind": "trial", "trial_id": trial["trial_id"], "status": trial.get("status"),
            "error": trial.get("error")}
    return Record(name=f"trial {trial['trial_id']}", params=_params(trial.get("hyperparameters") or {}),
                  metrics=metrics, history=history, tags=_tags(tags), failed=trial.get("status") != "COMPLETED")


def _fold_histories(trial_dir: Path) -> list[Path]:
    """A trial's per-fold history files (scored over folds), in fold order; none for a single split."""
    paths = trial_dir.glob(runs.TRIAL_FOLD_HISTORY.format(k="*"))
    return sorted(paths, key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))


def _metrics_of(path: Path) -> dict[str, float]:
    """A metrics file's figures by their flat names (``suite.metrics.named_figures``), leak-free ones
    as ``leak_free_<figure>``; empty when there is no such file."""
    if not path.is_file():
        return {}
    from suite.metrics import named_figures

    metrics = read_json(path)
    figures = named_figures(metrics)
    if isinstance(metrics.get("leak_free"), Mapping):
        figures.update({f"leak_free_{k}": v for k, v in named_figures(metrics["leak_free"]).items()})
    return {k: v for k, v in figures.items() if math.isfinite(v)}


def _history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{column: [(epoch, value), ...]}`` of a ``history.csv`` (epochs as it numbers them, from 1)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[tuple[int, float]]] = {}
    for n, row in enumerate(rows, start=1):
        epoch = int(float(row.get("epoch") or n))
        for column, value in row.items():
            if column == "epoch" or value in (None, ""):
                continue
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                out.setdefault(column, []).append((epoch, number))
    return out


def _put(metrics: dict, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return
    metrics[name] = float(value)


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    return {key: _text(value) for key, value in values.items()}


def _tags(values: Mapping[str, Any]) -> dict[str, str]:
    """Tags as strings; unknown (``None``) ones left out; booleans as ``true``/``false``."""
    return {key: _text(value) for key, value in values.items() if value is not None}


def _text(value) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "\u2026"


def _files(folder: Path, names) -> tuple[Path, ...]:
    return tuple(folder / name for name in names if (folder / name).is_file())


def key(name: str) -> str:
    """A figure's name as MLflow takes it: letters, digits, ``_ - . `` and space; anything else ``_``."""
    return _BAD_KEY_CHARS.sub("_", name)


# -- logging to MLflow -----------------------------------------------------------------------------------

def tracking_uri(folder: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else SQLite ``mlflow.db`` in the folder the result folder is in."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder.resolve().parent / runs.MLFLOW_DB)}"


def track_folder(folder: str | Path, *, experiment: str | None = None) -> str:
    """Log a finished result folder to MLflow; returns the (parent) MLflow run id.

    Args:
        folder: a run, evaluation, comparison, cross-validation or tuning folder.
        experiment: the MLflow experiment (default: the folder's kind: ``run``, ``comparison``, ``cv``,
            ``tuning``), made if missing.

    Raises:
        SuiteError: not a folder that can be tracked.
        Exception: whatever MLflow raises (store unreachable, ...).
    """
    return track_unless_logged(folder, experiment=experiment, again=True)[0]


def track_unless_logged(folder: str | Path, *, experiment: str | None = None,
                        again: bool = False) -> tuple[str, bool]:
    """:func:`track_folder`, unless the experiment already holds the folder in full (:func:`find_logged`)
    and ``again`` is false; returns the MLflow run id and whether it was there already. The folder is
    read, and the store opened, once."""
    folder = Path(folder)
    record = read_folder(folder)
    with _quiet_mlflow():
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(folder)
        client = MlflowClient(tracking_uri=uri)
        name = experiment or record.tags.get("suite.kind", "run")
        logged = None if again else _logged_run(client, name, record)
        if logged:
            return logged, True
        return log_record(client, _experiment_id(client, name, uri), record), False


def track_or_warn(folder: Path, *, experiment: str | None = None, log: Callable[[str], None]) -> str | None:
    """:func:`track_folder`, with any failure said in one warning line: the folder itself is complete."""
    try:
        run_id = track_folder(folder, experiment=experiment)
    except Exception as exc:  # a tracking store problem must not turn finished work into an error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log(f"warning: MLflow tracking failed ({type(exc).__name__}: {first}); the results are complete in "
            f"{folder}; log them later with: python -m suite track {folder}")
        return None
    log(f"tracked in MLflow: run {run_id} at {tracking_uri(Path(folder))}")
    return run_id


def find_logged(folder: str | Path, *, experiment: str | None = None) -> str | None:
    """The MLflow run that already holds ``folder`` in full in the experiment (see :func:`track_folder`), if any.

    Only a top-level run of the same folder whose logging finished (tag :data:`LOGGED_TAG`) counts:
    an attempt that stopped half-way is logged again.
    """
    folder = Path(folder)
    record = read_folder(folder)
    with _quiet_mlflow():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri(folder))
        return _logged_run(client, experiment or record.tags.get("suite.kind", "run"), record)


def _logged_run(client, experiment: str, record: Record) -> str | None:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    run_id = record.tags.get("suite.run_id", "")
    query = f"tags.`suite.run_id` = '{run_id}'" if run_id and "'" not in run_id else ""
    for candidate in client.search_runs([found.experiment_id], query, max_results=1000):
        tags = candidate.data.tags
        if (tags.get("suite.folder") == record.tags.get("suite.folder") and tags.get(LOGGED_TAG) == "complete"
                and "mlflow.parentRunId" not in tags):
            return candidate.info.run_id
    return None


def _experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, made if missing (see :func:`artifact_location`)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(uri))


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the database for a SQLite store (``mlartifacts``;
    MLflow's own default, ``./mlruns``, depends on the current directory); a server decides for itself."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / runs.MLFLOW_ARTIFACTS).as_uri()


def log_record(client, experiment_id: str, record: Record, parent_id: str | None = None) -> str:
    """Create one MLflow run for ``record`` (nested under ``parent_id``), then its children; returns its id."""

    tags = dict(record.tags)
    if parent_id is not None:
        tags["mlflow.parentRunId"] = parent_id
    run_id = client.create_run(experiment_id, run_name=record.name, tags=tags).info.run_id
    try:
        _log_contents(client, run_id, record)
        for child in record.children:
            log_record(client, experiment_id, child, run_id)
        client.set_tag(run_id, LOGGED_TAG, "complete")
    except BaseException:
        with contextlib.suppress(Exception):  # not left "running" in the store; the first error is the one told
            client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FAILED" if record.failed else "FINISHED")
    return run_id


def _log_contents(client, run_id: str, record: Record) -> None:
    """Params, metrics (final ones at step 0, per-epoch ones at their epoch) and artifacts, in MLflow's batch sizes."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(key(k), v) for k, v in record.params.items()]
    metrics = [Metric(key(k), v, now, 0) for k, v in record.metrics.items()]
    metrics += [Metric(key(f"{EPOCH_PREFIX}{k}"), v, now, step) for k, values in record.history.items()
                for step, v in values]
    for start in range(0, len(params), MAX_BATCH_PARAMS):
        client.log_batch(run_id, params=params[start:start + MAX_BATCH_PARAMS])
    for start in range(0, len(metrics), MAX_BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH_METRICS])
    for path in record.artifacts:
        client.log_artifact(run_id, str(path))


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's own start-up chatter (database migrations, deprecations) off the terminal while logging."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# -- TensorBoard HParams of a search's trials -----------------------------------------------------------

def write_trial_events(logdir: Path, trial_id: str, values: Mapping[str, Any], trial_dir: Path,
                       objective: str) -> Path:
    """Write one trial to ``logdir`` (its own TensorBoard run) for the HParams dashboard; returns the file
    (one file, replaced when a resumed search reruns the trial).

    The trial's values as HParams, its score under the objective's name, and each fold's
    per-epoch figures as ``epoch_<name>`` (``fold<k>/epoch_<name>`` when scored over folds),
    read from the files the trial left in ``trial_dir``. Written with TensorBoard's record
    format but without TensorFlow (TensorBoard's own writer would import it), so it costs
    milliseconds under every Keras backend.
    """
    import io

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from tensorboard.summary.writer.record_writer import RecordWriter

    from suite.io import write_bytes_atomic

    record = _read_or_empty(trial_dir / runs.TRIAL)
    hparams = {k: v for k, v in values.items() if isinstance(v, bool | int | float | str)}
    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2"),
              Event(wall_time=now, step=0, summary=hp.hparams_pb(hparams, trial_id=trial_id,
                                                                 start_time_secs=int(now)))]
    if record.get("status") == "COMPLETED" and record.get("score") is not None:
        events.append(Event(wall_time=now, step=0, summary=scalar_pb(objective, float(record["score"]))))
    histories = ([(f"fold{k}/", p) for k, p in enumerate(_fold_histories(trial_dir))]
                 or [("", trial_dir / runs.HISTORY)])
    for prefix, path in histories:
        for name, points in _history(path).items():
            events += [Event(wall_time=now, step=epoch, summary=scalar_pb(f"{prefix}{EPOCH_PREFIX}{name}", value))
                       for epoch, value in points]
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for event in events:
        writer.write(event.SerializeToString())
    logdir.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(logdir / runs.TENSORBOARD_EVENTS, buffer.getvalue())


def _read_or_empty(path: Path) -> dict:
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
