"""The folder format: every file the suite writes, the kinds of folder it makes, and how to read them.

Every command ends in a folder under ``--out``; this module is the one place that names
their files, tells one kind of folder from another, reads them back (``RunFolder``) and
checks that a resumed folder was made with the same settings. It imports neither Keras
nor TensorFlow, so the reporter and the gates can use it on any machine.

Folder kinds (``FOLDER_KINDS``, most specific first):
    comparison  comparison.json, leaderboard.csv/.json (with --seeds: leaderboard_seeds.csv/.json),
                gradcam.npz, report.html
    cv          cv.json, fold-K/ run folders (each with official_test_metrics.json), report.html
    tuning      search.json, tuning.json, keras_tuner/, tensorboard/, retrained run folders, report.html
    audit       audit.json, audit.html
    robustness  robustness.json, robustness.csv, robustness_examples.npz, report.html
    evaluation  manifest.json (kind "evaluation"), metrics.json, predictions.csv, contamination.csv,
                report.html
    run         manifest.json, metrics.json, predictions.csv, history.csv, model.keras, training_hashes.npz,
                calibration.json, logs/, report.html, and after ``suite export``: export/ (export.json,
                labels.json, saved_model/, model.onnx, model.tflite)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from suite.errors import SuiteError
from suite.io import read_json, write_json_atomic

# -- file names: each spelled here and nowhere else ------------------------------------------------
MANIFEST = "manifest.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
HISTORY = "history.csv"
MODEL = "model.keras"
LOGS = "logs"
REPORT = "report.html"
INDEX = "index.html"
COMPARISON = "comparison.json"
LEADERBOARD_JSON = "leaderboard.json"
LEADERBOARD_CSV = "leaderboard.csv"
SEEDS_JSON = "leaderboard_seeds.json"
SEEDS_CSV = "leaderboard_seeds.csv"
GRADCAM = "gradcam.npz"
CV = "cv.json"
OFFICIAL_TEST = "official_test_metrics.json"
TUNING = "tuning.json"
SEARCH = "search.json"
TRIAL = "suite_trial.json"
TRIAL_FOLD_HISTORY = "history_fold{k}.csv"  # a trial scored over folds: fold k's history.csv
TUNER_PROJECT = "keras_tuner"
AUDIT = "audit.json"
AUDIT_REPORT = "audit.html"
TRAINING_HASHES = "training_hashes.npz"  # what a run trained on, for contamination checks (suite.contamination)
CALIBRATION = "calibration.json"  # temperature and conformal thresholds fitted on val (suite.calibration)
CONTAMINATION = "contamination.csv"  # an evaluation's images that are copies of the run's training images
ROBUSTNESS = "robustness.json"  # a run's accuracy under each corruption x severity (suite robustness)
ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_EXAMPLES = "robustness_examples.npz"  # one test image at every severity of every corruption
LOCK = ".lock"
TENSORBOARD = "tensorboard"  # a tuning folder's TensorBoard event files: one folder per trial (HParams)
TENSORBOARD_EVENTS = "events.out.tfevents.suite"  # one per trial, rewritten when a trial reruns
# The default MLflow store beside the result folders of an output folder (--track mlflow, suite track).
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
# `suite export` (suite.export): RUN/export/ by default, one artifact per format, and what serving needs beside them
EXPORT_DIR = "export"
EXPORT = "export.json"
EXPORT_LABELS = "labels.json"
SAVED_MODEL = "saved_model"
ONNX_MODEL = "model.onnx"
LITERT_MODEL = "model.tflite"


def timestamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


def now_iso() -> str:
    """The local time with its offset, as every record's ``created`` and ``finished`` hold it."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def new_run_dir(out: str | Path, name: str) -> Path:
    """Make ``out/<timestamp>-<name>/``, adding ``-2``, ``-3``... if that exists."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{timestamp()}-{name}"
    for n in range(1, 1000):
        candidate = out / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise SuiteError(f"cannot make a new run folder under {out}")


def check_out_outside(out: str | Path, data_root: str | Path) -> None:
    """Refuse an output folder inside the dataset: its files would be read as data by the next run.

    Raises:
        SuiteError: ``out`` is ``data_root`` or lies below it.
    """
    out, data_root = Path(out).resolve(), Path(data_root).resolve()
    if out == data_root or data_root in out.parents:
        raise SuiteError(f"--out {out} is inside the dataset folder {data_root}: results written there would be "
                         "read as images by the next run; choose an output folder outside the dataset")


@contextlib.contextmanager
def removed_on_error(folder: Path) -> Iterator[Path]:
    """Remove ``folder`` (one this process has just made) if the block fails: no half-made result folder."""
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    return write_json_atomic(run_dir / MANIFEST, manifest)


def read_manifest(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / MANIFEST)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def is_completed_run(path: str | Path) -> bool:
    """A run folder whose manifest says ``completed`` and whose metrics are there."""
    path = Path(path)
    try:
        return read_manifest(path).get("status") == "completed" and (path / METRICS).is_file()
    except (OSError, ValueError, AttributeError):
        return False


# -- who is writing a folder --------------------------------------------------------------------------

def process_stamp() -> dict:
    """``{"pid", "host"}`` of this process: recorded in a manifest while it runs, and in locks."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_state(record: Mapping) -> str:
    """Whether the process that wrote ``record`` (with ``pid`` and ``host``) still runs.

    Returns:
        ``alive``; ``gone`` (same host, no such process: it was killed or crashed);
        ``elsewhere`` (another host: cannot tell); ``unknown`` (no pid recorded, as in
        folders made before pids were recorded).
    """
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or not host:
        return "unknown"
    if host != socket.gethostname():
        return "elsewhere"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # someone else's live process
        return "alive"
    return "alive"


def status_of(manifest: Mapping) -> str:
    """The manifest's status, with a ``running`` whose process is gone told apart: ``stopped``."""
    status = str(manifest.get("status") or "unknown")
    if status == "running" and process_state(manifest) == "gone":
        return "stopped"
    return status


def status_text(manifest: Mapping) -> str:
    """A line on a run's status for a person: why it failed, or that its process is gone."""
    status = status_of(manifest)
    if status == "failed":
        return f"failed: {manifest.get('error') or 'no error recorded'}"
    if status == "stopped":
        return (f"stopped: still marked running, but its process ({manifest.get('pid')} on {manifest.get('host')}) "
                "is gone (killed, or the machine went down)")
    if status == "running":
        where = {"alive": "its process is alive", "elsewhere": f"on {manifest.get('host')}, cannot tell if alive"}
        return f"running ({where.get(process_state(manifest), 'no process recorded')})"
    return status


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold ``folder/.lock`` (this process's pid and host) while ``command`` works in ``folder``.

    A second process that wants the folder is refused, naming the holder. A lock left by a
    process that is gone (killed, crashed) is taken over. The lock is removed on the way out.

    Raises:
        SuiteError: another live process (or one on another host) holds the folder.
    """
    path = Path(folder) / LOCK
    record = {**process_stamp(), "command": command, "since": now_iso()}
    while not _create_with(path, record):
        holder = _read_lock(path)
        if holder is None:  # released meanwhile: try again
            continue
        if process_state(holder) != "gone":
            raise SuiteError(f"{folder} is in use by process {holder.get('pid')} on {holder.get('host')} "
                             f"({holder.get('command')}, since {holder.get('since')}); wait for it to finish "
                             "or stop it, then run again")
        path.unlink(missing_ok=True)  # its process is gone: take the lock over
    try:
        yield path
    finally:
        if _read_lock(path) == record:
            path.unlink(missing_ok=True)


def _create_with(path: Path, record: dict) -> bool:
    """Make ``path`` holding ``record`` in one step (a hard link cannot replace a file); False if it exists."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    """The lock's record; None once it is gone; ``{}`` (no pid: treated as held) when unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


# -- folder kinds -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FolderKind:
    """One kind of folder the suite writes.

    Attributes:
        name: ``run``, ``comparison``, ``cv``, ...
        marker: the file whose presence makes a folder of this kind.
        report: ``"module:function"`` writing the kind's report from the folder (imported late,
            so listing kinds loads nothing heavy); returns the report's path.
        index_entry: ``"module:function"`` giving the kind's row in ``index.html``.
        report_file: the report's file name inside the folder.
        manifest_kind: for kinds sharing ``manifest.json``, the manifest's ``kind`` value.
    """

    name: str
    marker: str
    report: str
    index_entry: str
    report_file: str = REPORT
    manifest_kind: str | None = None

    def matches(self, path: Path) -> bool:
        if not (path / self.marker).is_file():
            return False
        if self.marker != MANIFEST:
            return True
        return _manifest_kind(path) == self.manifest_kind

    def write_report(self, path: str | Path) -> Path:
        return _resolve(self.report)(Path(path))

    def entry(self, path: str | Path) -> dict:
        return _resolve(self.index_entry)(Path(path))


FOLDER_KINDS: dict[str, FolderKind] = {}


def register_kind(kind: FolderKind) -> FolderKind:
    """Add a folder kind; its name must be new. Kinds are tried in registration order."""
    if kind.name in FOLDER_KINDS:
        raise ValueError(f"folder kind {kind.name!r} is registered already")
    FOLDER_KINDS[kind.name] = kind
    return kind


def _manifest_kind(path: Path) -> str | None:
    """``evaluation`` for an evaluation's manifest, ``None`` for a run's (or an unreadable one)."""
    try:
        kind = read_manifest(path).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind != "run" else None


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


for _kind in (
    FolderKind("comparison", COMPARISON, "reports.comparison:write_comparison_report",
               "reports.index:comparison_entry"),
    FolderKind("cv", CV, "reports.cv:write_cv_report", "reports.index:cv_entry"),
    FolderKind("tuning", SEARCH, "reports.tuning:write_tuning_report", "reports.index:tuning_entry"),
    FolderKind("audit", AUDIT, "reports.audit:write_audit_report", "reports.index:audit_entry",
               report_file=AUDIT_REPORT),
    FolderKind("robustness", ROBUSTNESS, "reports.robustness:write_robustness_report",
               "reports.index:robustness_entry"),
    FolderKind("evaluation", MANIFEST, "reports.run:write_run_report", "reports.index:run_entry",
               manifest_kind="evaluation"),
    FolderKind("run", MANIFEST, "reports.run:write_run_report", "reports.index:run_entry"),
):
    register_kind(_kind)


def kind_of(path: str | Path) -> FolderKind | None:
    """The kind of folder ``path`` is, or ``None`` for a folder the suite did not write."""
    path = Path(path)
    if not path.is_dir():
        return None
    return next((k for k in FOLDER_KINDS.values() if k.matches(path)), None)


def kind_names() -> list[str]:
    return list(FOLDER_KINDS)


def latest_folder(out: str | Path, kind: str, name: str,
                  accept: Callable[[Path], bool] = lambda p: True) -> Path | None:
    """The newest ``<out>/<timestamp>-<name>*`` folder of ``kind`` that ``accept`` takes (for a bare ``--resume``)."""
    for folder in sorted(Path(out).glob(f"*-{name}*"), reverse=True):
        if FOLDER_KINDS[kind].matches(folder) and accept(folder):
            return folder
    return None


# -- reading a run folder ---------------------------------------------------------------------------

class RunFolder:
    """A run or evaluation folder, read back: what its manifest says, its metrics, its model.

    Args:
        path: the folder (it must hold ``manifest.json``).

    Raises:
        SuiteError: no manifest, or one that cannot be read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            manifest = read_manifest(self.path)
        except FileNotFoundError:
            raise SuiteError(f"{self.path} is not a run folder (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise SuiteError(f"cannot read {self.path / MANIFEST}: {exc}") from None
        if not isinstance(manifest, dict):
            raise SuiteError(f"{self.path / MANIFEST} holds no JSON object")
        self.manifest = manifest

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.manifest.get("dataset", {}).get("labels", [])]

    def test_images(self) -> list[tuple[Path, str]]:
        """``(path, true label)`` of each test image the run scored, from its ``predictions.csv``; a relative
        path is taken under the run's dataset root.

        Raises:
            SuiteError: no ``predictions.csv`` (the run did not finish testing), or one that cannot be read.
        """
        import csv

        table = self.path / PREDICTIONS
        try:
            with open(table, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("path")]
        except FileNotFoundError:
            raise SuiteError(f"{self.path} has no {PREDICTIONS}: the run did not finish testing") from None
        except (OSError, ValueError) as exc:
            raise SuiteError(f"cannot read the run's test images from {table}: {exc}") from None
        root = Path(self.manifest.get("dataset", {}).get("root") or ".")
        return [(Path(r["path"]) if Path(r["path"]).is_absolute() else root / r["path"], str(r.get("true")))
                for r in rows]

    @property
    def image_size(self) -> int:
        return int(self.manifest["config"]["image_size"])

    @property
    def backbone(self) -> str:
        return self.manifest.get("backbone") or self.manifest.get("config", {}).get("backbone", "unknown")

    @property
    def status(self) -> str:
        return str(self.manifest.get("status") or "unknown")

    @property
    def config(self) -> dict:
        return dict(self.manifest.get("config", {}))

    def metrics(self) -> dict:
        return read_json(self.path / METRICS)

    @property
    def training_hashes(self) -> Path | None:
        """The run's record of its training and validation images; ``None`` for a run made before it was kept."""
        path = self.path / TRAINING_HASHES
        return path if path.is_file() else None

    def load_model(self):
        """The best checkpoint, as Keras loads it (safe mode on: a file holding code, such as a
        ``Lambda`` layer, is refused rather than run).

        Raises:
            SuiteError: no model file, or one Keras cannot or will not load.
        """
        import keras

        path = self.path / MODEL
        if not path.is_file():
            raise SuiteError(f"{self.path} has no {MODEL}: the run did not finish training")
        try:
            return keras.saving.load_model(path)
        except Exception as exc:  # safe-mode refusal (ValueError), a damaged zip, unknown layers, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SuiteError(f"cannot load {path}: {first}") from None


# -- resuming -------------------------------------------------------------------------------------------

def check_resume(folder: Path, stored: Mapping[str, Any], current: Mapping[str, Any],
                 *, may_change: tuple[str, ...] = ()) -> None:
    """Refuse to resume ``folder`` when the settings it was made with differ from today's.

    Both identities are compared key by key, nested mappings (a resolved ``RunConfig``)
    setting by setting, after a JSON round trip (tuples read back as lists).

    Raises:
        SuiteError: naming each changed setting with its old and new value.
    """
    old, new = _flat(_as_json(stored)), _flat(_as_json(current))
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
               and not any(k == m or k.startswith(m + ".") for m in may_change)]
    if changed:
        detail = "; ".join(f"{k}: was {_show(old.get(k))}, now {_show(new.get(k))}" for k in changed)
        raise SuiteError(f"cannot resume {folder}: settings differ from the original ({detail}); "
                         f"start a new one or resume with the original settings")


def _as_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _flat(identity: Mapping) -> dict[str, Any]:
    """A nested ``config`` mapping's settings named on their own, beside the other keys."""
    out = {k: v for k, v in identity.items() if k != "config"}
    out.update(identity.get("config") or {})
    return out


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)
