"""``suite tune``: a Keras Tuner search over one backbone's training settings, then the best retrained.

prepare (decode once) -> search space (defaults, then ``--space`` TOML, then run flags, which
fix a setting) -> oracle (random, bayesian, hyperband) -> trials (a ``RunConfig`` from the
trial's values -> one fold, or K stratified folds of the training pool -> fit -> the best
epoch's objective, averaged over folds) -> best values -> a normal run folder inside the
tuning folder (trained and tested as ``suite run`` would) -> ``tuning.json`` + ``report.html``.

Fast path: when fine-tuning is fixed to ``head`` the backbone is frozen in every trial, so
its pooled features are computed once (``suite.embeddings``, cached on disk) and each
trial trains only dropout + softmax on them, all trials on one compiled head model that is
reset to its initial state between them (``ReusableHead``). Augmentation cannot be searched
then: the features are of un-augmented images.

Distributed search is Keras Tuner's own: with ``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` set, the process whose tuner id
contains ``chief`` serves the oracle and, once the workers have run every trial, writes
``tuning.json`` and retrains the best; workers only run trials. All of them take
``--out`` as the tuning folder itself and must share it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reports import finish
from suite import runs
from suite.commands import log, resume_folder, run_flags, track_result, training_output
from suite.errors import SuiteError, stop_reason
from suite.io import read_json, write_json_atomic
from suite.search_space import DEFAULT_SPACE, SearchSpace
from suite.trials import (
    OBJECTIVES,
    TUNER_NAMES,
    HeadTrials,
    ImageTrials,
    best_of,
    collect_trials,
    run_search,
    values_text,
)

TEST_METRIC_KEYS = ("accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "per_class", "confusion_matrix",
                    "labels", "n_test", "roc_auc_macro", "ece")
FAST_PATH_NOTE = ("Fast path: the frozen backbone's pooled features were computed once, from un-augmented "
                  "images, and every trial trained only the head (dropout + softmax) on them; augmentation "
                  "was therefore not searched (fixed to none).")
HYPERBAND_NOTE = ("Hyperband: a trial promoted to more epochs trains from scratch for its tuner/epochs "
                  "rather than continuing its predecessor's checkpoint.")


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """How to search, as opposed to what a run computes (that is ``RunConfig``).

    Args:
        tuner: ``random``, ``bayesian`` or ``hyperband`` (Keras Tuner's oracles).
        max_trials: trials in all, counting those a resumed search already finished.
        objective: ``val_accuracy`` or ``val_macro_f1``, maximised.
        space: the search space before run flags fix settings (see ``suite.search_space``).
        resume: a tuning folder whose search continues (finished trials are kept, not rerun).
        cv: K to score each trial by the mean over K stratified folds of the training
            pool; ``None`` scores it on the validation split.
        fast_path: allow the cached-embeddings path when fine-tuning is fixed to ``head``.
        compare_default: also train the un-tuned settings, for a best-versus-default comparison.
        max_consecutive_failures: stop the search after this many failed trials in a row.
    """

    tuner: str = "random"
    max_trials: int = 10
    objective: str = "val_accuracy"
    space: SearchSpace = DEFAULT_SPACE
    resume: Path | None = None
    cv: int | None = None
    fast_path: bool = True
    compare_default: bool = False
    max_consecutive_failures: int = 3

    def __post_init__(self):
        if self.tuner not in TUNER_NAMES:
            raise ValueError(f"tuner must be one of {', '.join(TUNER_NAMES)}, got {self.tuner!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.max_trials < 1:
            raise ValueError(f"max_trials must be at least 1, got {self.max_trials}")
        if self.cv is not None and self.cv < 2:
            raise ValueError(f"cv needs at least 2 folds, got {self.cv}")
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")


def distributed_role(environ: Mapping[str, str] = os.environ) -> str:
    """``standalone``, ``chief`` or ``worker``, by Keras Tuner's own rule on its environment variables."""
    if "KERASTUNER_ORACLE_IP" not in environ:
        return "standalone"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if v not in environ]
    if missing:
        raise SuiteError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not: set all three")
    return "chief" if "chief" in environ["KERASTUNER_TUNER_ID"] else "worker"


# ----------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------


def tune(
    flags: Mapping[str, Any],
    settings: TuneSettings,
    *,
    progress: bool = True,
    log: Callable[[str], None] = log,
) -> Path:
    """Search, retrain the best settings, evaluate them on the test set; return the tuning folder.

    Args:
        flags: run settings as for ``suite run``; a searchable one that is given is fixed.
        settings: how to search.
        progress: show progress bars while decoding.
        log: one-line status messages.

    Raises:
        SuiteError: bad data, weights or settings, or a resume that does not match.
    """
    from suite.commands.run import prepare

    role = distributed_role()
    prepared = prepare(flags, progress=progress, log=log)
    space, fast, notes = plan_space(settings, flags)
    if settings.tuner == "hyperband":
        notes.append(HYPERBAND_NOTE)
    folder = tuning_folder(flags, prepared.config, settings, role)
    identity = search_identity(prepared, settings, space, fast)
    # chief and workers share their folder by design; a standalone search has it to itself
    lock = runs.folder_lock(folder, "tune") if role == "standalone" else contextlib.nullcontext()
    with lock:
        if role != "worker":
            _check_or_write_search(folder, identity, settings.max_trials)
        for note in notes:
            log(f"note: {note}")
        previous = _read_previous(folder)
        try:
            _search_and_retrain(prepared, settings, space, fast, identity, notes, previous, folder, role, log)
        except BaseException as exc:  # stopped: say so in tuning.json; --resume goes on from here
            if role != "worker":
                _save_stopped(folder, exc, log)
            raise
    if role != "worker":
        finish(folder, log)
    return folder


def _save_stopped(folder: Path, exc: BaseException, log) -> None:
    try:
        record = _read_previous(folder) or {}
        write_json_atomic(folder / runs.TUNING, {**record, "status": "failed", "error": stop_reason(exc)})
    except (SuiteError, OSError) as err:
        log(f"warning: {folder / runs.TUNING} could not be updated: {err}")


def _search_and_retrain(prepared, settings, space, fast, identity, notes, previous, folder, role, log) -> None:
    """Run the trials (resuming what is on record), then, unless a worker, retrain the best and write tuning.json."""
    runner = (HeadTrials if fast else ImageTrials)(prepared, settings.objective, settings.cv, space.names, log=log)
    if role != "worker":
        write_json_atomic(folder / runs.TUNING, {**(previous or {}), **identity, "status": "running", "error": None,
                                                 "notes": notes, "created": runs.now_iso()})
    start = time.perf_counter()
    tuner, stopped = run_search(folder, settings, space, prepared.config, runner, log)
    search_s = time.perf_counter() - start
    if role == "worker":
        log(f"worker {os.environ['KERASTUNER_TUNER_ID']} done: the chief writes {folder / runs.TUNING}")
        return
    trials = collect_trials(tuner.oracle, folder, settings.objective)
    tuning = {**identity, "schema": 1, "kind": "tuning", "tuning_id": folder.name, "created": runs.now_iso(),
              "role": role, "notes": notes, "search_stopped": stopped, "search_s": round(search_s, 3),
              "embeddings": runner.describe(), "trials": trials, "n_trials": len(trials),
              "max_trials": settings.max_trials, "best": best_of(trials)}
    log(_best_sentence(tuning))
    tuning.update(_retrain(prepared, space, tuning, previous, folder, settings, log))
    tuning["finished"] = runs.now_iso()
    write_json_atomic(folder / runs.TUNING, tuning)


def plan_space(settings: TuneSettings, flags: Mapping[str, Any]) -> tuple[SearchSpace, bool, list[str]]:
    """The space trials draw from, whether the fast path applies, and notes for the record.

    Run flags fix what they give. The fast path applies when fine-tuning is fixed to
    ``head`` (and ``settings.fast_path``); augmentation is then fixed to ``none``.

    Raises:
        SuiteError: the fast path with augmentation fixed to ``light``.
    """
    space = settings.space.fix_given(flags)
    fast = settings.fast_path and space.fixed("finetune") == "head"
    notes = []
    if fast:
        if space.fixed("augment") == "light":
            raise SuiteError("augmentation 'light' cannot be used on the fast path (features of un-augmented "
                             "images); pass --no-fast-path to train full models with augmentation")
        space = space.fix("augment", "none")
        notes.append(FAST_PATH_NOTE)
    return space, fast, notes


def tuning_folder(flags: Mapping[str, Any], config, settings: TuneSettings, role: str) -> Path:
    """Where the search lives.

    ``settings.resume`` when given (it must hold a search); else, for a distributed chief or
    worker, ``--out`` itself (all processes must agree on it, so no timestamp); else a new
    ``<out>/<timestamp>-tune-<backbone>``.
    """
    if settings.resume is not None:
        folder = Path(settings.resume)
        if not (folder / runs.SEARCH).is_file():
            raise SuiteError(f"nothing to resume in {folder}: it has no {runs.SEARCH} (not a tuning folder?)")
        return folder
    if role == "standalone":
        return runs.new_run_dir(config.out, f"tune-{config.backbone}")
    if not flags.get("out"):
        raise SuiteError(f"a distributed {role} needs --out DIR: the tuning folder every process shares")
    folder = Path(flags["out"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def latest_search(out: str | Path, backbone: str) -> Path | None:
    """The newest tuning folder of ``backbone`` under ``out`` (for a bare ``--resume``)."""
    return runs.latest_folder(out, "tuning", f"tune-{backbone}")


def search_identity(prepared, settings: TuneSettings, space: SearchSpace, fast: bool) -> dict:
    """What a resumed search must share with the original (``max_trials`` may grow)."""
    fixed_config = {k: v for k, v in prepared.config.identity().items() if k not in space.names}
    identity = {
        "backbone": prepared.spec.name,
        "tuner": settings.tuner,
        "objective": settings.objective,
        "cv": settings.cv,
        "fast_path": fast,
        "space": space.describe(),
        "config": fixed_config,
        "data_fingerprint": prepared.data.data_fingerprint,
        "split_fingerprint": prepared.data.split_fingerprint,
        "dataset": prepared.data.index.describe(),
        "labels": list(prepared.data.labels),
    }
    return json.loads(json.dumps(identity, default=str))  # tuples -> lists, as read back


def _check_or_write_search(folder: Path, identity: dict, max_trials: int) -> None:
    """Record what the search is; a folder that holds one already must hold this one."""
    path = folder / runs.SEARCH
    if path.is_file():  # resuming, or a restarted chief: only --max-trials may change
        old = read_json(path)
        runs.check_resume(folder, {k: old.get(k) for k in identity}, identity, may_change=("dataset",))
    write_json_atomic(path, {**identity, "max_trials": max_trials, "updated": runs.now_iso()})


def _read_previous(folder: Path) -> dict | None:
    try:
        return read_json(folder / runs.TUNING)
    except (OSError, ValueError):
        return None


def _best_sentence(tuning: dict) -> str:
    best = tuning["best"]
    if best is None:
        return f"no trial completed ({tuning['n_trials']} on record)"
    return (f"best trial {best['trial_id']}: {tuning['objective']} {best['score']:.4f} with "
            f"{values_text(best['hyperparameters'])}")


def _retrain(prepared, space: SearchSpace, tuning: dict, previous: dict | None, folder: Path,
             settings: TuneSettings, log) -> dict:
    """Train the best settings (and, if asked, the defaults) as normal runs; their test metrics."""
    if tuning["best"] is None:
        error = "no trial completed: nothing to retrain"
        log(f"error: {error}")
        return {"status": "failed", "error": error, "best_run": None, "test_metrics": None}
    best = tuning["best"]
    values = {k: v for k, v in best["hyperparameters"].items() if k in space.names}
    old = (previous or {}).get("best_run")
    out = {}
    out["best_run"], out["test_metrics"] = _train_run(prepared, values, "best", f"trial {best['trial_id']}",
                                                      old, folder, log)
    if settings.compare_default:
        # The reference recipe's values, except what the search itself was told to keep fixed.
        fixed = {p.name: p.fixed for p in space.params if p.fixed is not None}
        old = (previous or {}).get("default_run")
        out["default_run"], out["default_test_metrics"] = _train_run(prepared, fixed, "default", "defaults",
                                                                     old, folder, log)
        out["default_hyperparameters"] = {k: fixed.get(k, getattr(prepared.config, k)) for k in space.names}
    out["status"] = "completed" if out["test_metrics"] is not None else "failed"
    return out


def _train_run(prepared, values: dict, role: str, source: str, old: dict | None, folder: Path,
               log) -> tuple[dict, dict | None]:
    """A run folder inside ``folder`` with ``values`` applied: its record and headline test metrics.

    A resumed search whose best settings did not change keeps the run it already trained.
    """
    from suite.commands.run import execute

    if old and old.get("source") == source and runs.is_completed_run(folder / str(old.get("run_dir"))):
        log(f"{role} settings unchanged since the last search: keeping {old['run_dir']}")
        run_dir = folder / old["run_dir"]
    else:
        config = dataclasses.replace(prepared.config, **values, out=str(folder))
        run_dir = runs.new_run_dir(folder, f"{prepared.spec.name}-{role}")
        log(f"retraining the {role} settings into {run_dir}")
        execute(dataclasses.replace(prepared, config=config), run_dir, log=log, raise_errors=False)
    run = runs.RunFolder(run_dir)
    record = {"run_dir": run_dir.name, "source": source, "status": run.status,
              "error": run.manifest.get("error"), "config": run.config}
    if run.status != "completed":
        return record, None
    metrics = run.metrics()
    return record, {k: metrics[k] for k in TEST_METRIC_KEYS if k in metrics}


def main(args) -> int:
    from suite.runtime import refuse_multiworker

    refuse_multiworker(args.strategy, "suite tune")
    resume = resume_folder(args, latest_search, "tuning folder")
    settings = TuneSettings(tuner=args.tuner, max_trials=args.max_trials, objective=args.objective,
                            resume=resume, cv=args.cv, fast_path=args.fast_path,
                            compare_default=args.compare_default,
                            max_consecutive_failures=args.max_consecutive_failures,
                            **({"space": args.space} if args.space is not None else {}))
    with training_output():
        folder = tune(run_flags(args), settings, progress=not args.quiet, log=log)
    print(folder)
    if distributed_role() == "worker":
        return 0  # the chief logs the search
    track_result(args, folder)
    return 0 if read_json(folder / runs.TUNING).get("status") == "completed" else 1
