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
import datetime as dt
import functools
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from suite import runs
from suite.errors import SuiteError
from suite.io import read_json, write_json_atomic
from suite.search_space import DEFAULT_SPACE, SearchSpace

OBJECTIVES = ("val_accuracy", "val_macro_f1")
# --tuner NAME -> the Keras Tuner oracle class (in keras_tuner.oracles) that picks the trials.
ORACLES = {"random": "RandomSearchOracle", "bayesian": "BayesianOptimizationOracle", "hyperband": "HyperbandOracle"}
TUNER_NAMES = tuple(ORACLES)
TUNING_FILE = "tuning.json"
SEARCH_FILE = "search.json"  # what a resumed search must match
TRIAL_FILE = "suite_trial.json"  # per trial, beside Keras Tuner's trial.json
PROJECT = "keras_tuner"  # Keras Tuner's project folder inside the tuning folder
TEST_METRIC_KEYS = ("accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "per_class", "confusion_matrix",
                    "labels", "n_test", "roc_auc_macro", "ece")
FAST_PATH_NOTE = ("Fast path: the frozen backbone's pooled features were computed once, from un-augmented "
                  "images, and every trial trained only the head (dropout + softmax) on them; augmentation "
                  "was therefore not searched (fixed to none).")
HYPERBAND_NOTE = ("Hyperband: a trial promoted to more epochs trains from scratch for its tuner/epochs "
                  "rather than continuing its predecessor's checkpoint.")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    log: Callable[[str], None] = _log,
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
    from suite.pipeline import prepare

    role = distributed_role()
    prepared = prepare(flags, progress=progress, log=log)
    space, fast, notes = plan_space(settings, flags)
    if settings.tuner == "hyperband":
        notes.append(HYPERBAND_NOTE)
    folder = tuning_folder(flags, prepared.config, settings, role)
    identity = search_identity(prepared, settings, space, fast)
    if role != "worker":
        _check_or_write_search(folder, identity, settings.max_trials)
    for note in notes:
        log(f"note: {note}")
    runner = (HeadTrials if fast else ImageTrials)(prepared, settings.objective, settings.cv, space.names, log=log)
    previous = _read_previous(folder)
    if role != "worker":
        write_json_atomic(folder / TUNING_FILE, {**(previous or {}), **identity, "status": "running",
                                                 "notes": notes, "created": _now()})
    start = time.perf_counter()
    tuner, stopped = run_search(folder, settings, space, prepared.config, runner, log)
    search_s = time.perf_counter() - start
    if role == "worker":
        log(f"worker {os.environ['KERASTUNER_TUNER_ID']} done: the chief writes {folder / TUNING_FILE}")
        return folder
    trials = collect_trials(tuner.oracle, folder, settings.objective)
    tuning = {**identity, "schema": 1, "kind": "tuning", "tuning_id": folder.name, "created": _now(),
              "role": role, "notes": notes, "search_stopped": stopped, "search_s": round(search_s, 3),
              "embeddings": runner.describe(), "trials": trials, "n_trials": len(trials),
              "max_trials": settings.max_trials, "best": best_of(trials)}
    log(_best_sentence(tuning))
    tuning.update(_retrain(prepared, space, tuning, previous, folder, settings, log))
    tuning["finished"] = _now()
    write_json_atomic(folder / TUNING_FILE, tuning)
    _write_report(folder, log)
    return folder


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
        if not (folder / SEARCH_FILE).is_file():
            raise SuiteError(f"nothing to resume in {folder}: it has no {SEARCH_FILE} (not a tuning folder?)")
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
    for folder in sorted(Path(out).glob(f"*-tune-{backbone}*"), reverse=True):
        if (folder / SEARCH_FILE).is_file():
            return folder
    return None


def search_identity(prepared, settings: TuneSettings, space: SearchSpace, fast: bool) -> dict:
    """What a resumed search must share with the original (``max_trials`` may grow)."""
    fixed_config = {k: v for k, v in prepared.config.to_dict().items()
                    if k not in space.names and k not in ("out", "workers", "data")}
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
    path = folder / SEARCH_FILE
    if path.is_file():  # resuming, or a restarted chief
        old = read_json(path)
        changed = {k: {"was": old.get(k), "now": v} for k, v in identity.items()
                   if k != "dataset" and old.get(k) != v}
        if changed:
            raise SuiteError(f"cannot resume {folder}: settings differ from the original search "
                             f"(only --max-trials may change): {json.dumps(changed)}")
    write_json_atomic(path, {**identity, "max_trials": max_trials, "updated": _now()})


def _read_previous(folder: Path) -> dict | None:
    try:
        return read_json(folder / TUNING_FILE)
    except (OSError, ValueError):
        return None


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------


def make_oracle(settings: TuneSettings, space: SearchSpace, config):
    """Keras Tuner's oracle for ``settings.tuner``, maximising ``settings.objective`` over ``space``."""
    import keras_tuner

    common = dict(
        objective=keras_tuner.Objective(settings.objective, "max"),
        hyperparameters=space.to_hyperparameters(),
        seed=config.seed + 1,  # Keras Tuner takes seed 0 for "no seed"
        max_consecutive_failed_trials=settings.max_consecutive_failures,
    )
    cls = getattr(keras_tuner.oracles, ORACLES[settings.tuner])
    if settings.tuner != "hyperband":
        return cls(max_trials=settings.max_trials, **common)
    # Hyperband takes no max_trials; without an iteration cap, the base Oracle's max_trials
    # ends the search as it does for the others. Its largest budget is the run's epochs.
    oracle = cls(max_epochs=config.epochs, factor=3, hyperband_iterations=None, **common)
    oracle.max_trials = settings.max_trials
    return oracle


@functools.cache
def _tuner_class():
    import keras_tuner

    class SuiteTuner(keras_tuner.Tuner):
        """A Keras Tuner whose trial is a :class:`TrialRunner` call; state in ``<folder>/keras_tuner``."""

        def __init__(self, oracle, runner: TrialRunner, **kwargs):
            self.runner = runner
            super().__init__(oracle=oracle, hypermodel=None, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            return self.runner.run(trial.trial_id, dict(trial.hyperparameters.values),
                                   Path(self.get_trial_dir(trial.trial_id)))

    return SuiteTuner


def make_tuner(folder: Path, settings: TuneSettings, space: SearchSpace, config, runner: TrialRunner):
    """The tuner over ``folder/keras_tuner``; an existing project there is reloaded, never overwritten."""
    with contextlib.redirect_stdout(sys.stderr):  # Keras Tuner prints; stdout is for the folder
        return _tuner_class()(make_oracle(settings, space, config), runner, directory=str(folder),
                              project_name=PROJECT, overwrite=False)


def run_search(folder, settings, space, config, runner, log) -> tuple[Any, str | None]:
    """Build the tuner and search; returns it and why the search stopped early (or ``None``)."""
    tuner = make_tuner(folder, settings, space, config, runner)
    done = len(tuner.oracle.trials) if hasattr(tuner.oracle, "trials") else 0
    if done:
        log(f"resuming: {done} trial(s) on record, {settings.max_trials} in all")
    try:
        with contextlib.redirect_stdout(sys.stderr), _frozen_heap():
            tuner.search(verbose=0)
    except RuntimeError as exc:
        # Keras Tuner's max_consecutive_failed_trials. It raises before saving that last trial's
        # end, so a resumed search retries it once; the record here holds it as failed.
        if "consecutive failures" not in str(exc):
            raise
        reason = str(exc).splitlines()[0]
        log(f"search stopped: {reason}")
        return tuner, reason
    return tuner, None


@contextlib.contextmanager
def _frozen_heap():
    """Keep what exists before the search out of every trial's garbage collection.

    Each trial starts with ``gc.collect()`` so that memory does not grow from trial to
    trial; with TensorFlow loaded a full collection walks a large heap (about half a second,
    as long as a whole fast-path trial). Freezing the objects alive now (modules, the data)
    leaves each collection only what the trials made.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# ----------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------


class TrialRunner:
    """Score a trial's settings: train on each fold, take the best epoch's objective, average.

    Subclasses say what a fold trains on (:meth:`fold_model_and_data`).

    Args:
        prepared: ``suite.pipeline.Prepared`` (its config is the base every trial changes).
        objective: ``val_accuracy`` or ``val_macro_f1``.
        cv: K folds of the training pool, or ``None`` for the train/validation split.
        searched: names of the settings a trial's values may set.
        log: one-line status messages.
    """

    fast_path = False

    def __init__(self, prepared, objective: str, cv: int | None, searched, *, log=_log):
        self.prepared, self.objective, self.cv, self.searched, self.log = prepared, objective, cv, set(searched), log
        self.folds_ = trial_folds(prepared.data, cv, prepared.config.seed,
                                  grouped=prepared.config.dedup == "group")
        self.n_classes_ = len(prepared.data.labels)

    def trial_config(self, values: Mapping[str, Any]):
        """The base config with a trial's values (``RunConfig`` checks them: a bad value fails the trial)."""
        config = dataclasses.replace(self.prepared.config,
                                     **{k: v for k, v in values.items() if k in self.searched})
        if "tuner/epochs" in values:  # Hyperband's budget for this trial
            config = dataclasses.replace(config, epochs=int(values["tuner/epochs"]))
        return config

    def run(self, trial_id: str, values: Mapping[str, Any], trial_dir: Path) -> dict:
        """Train and score one trial; returns the metrics for the oracle. Raises what the trial raised."""
        start = time.perf_counter()
        record = {"trial_id": trial_id, "hyperparameters": dict(values), "fast_path": self.fast_path,
                  "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"), "fold_scores": []}
        try:
            config = self.trial_config(values)
            for k, (train_rows, val_rows) in enumerate(self.folds_):
                name = "history.csv" if len(self.folds_) == 1 else f"history_fold{k}.csv"
                self.start_fold(k)
                score, record["params"] = self._fit_fold(config, train_rows, val_rows, trial_dir / name)
                record["fold_scores"].append(score)
            score = float(np.mean(record["fold_scores"]))
            record.update(status="COMPLETED", score=score)
            self.log(f"trial {trial_id}: {_values_text(values)} -> {self.objective} {score:.4f}"
                     f" ({time.perf_counter() - start:.1f} s)")
            metrics = {self.objective: score}
            if len(self.folds_) > 1:
                metrics.update({f"{self.objective}_fold{k}": s for k, s in enumerate(record["fold_scores"])})
            return metrics
        except Exception as exc:
            record.update(status="FAILED", error=f"{type(exc).__name__}: {exc}")
            self.log(f"trial {trial_id} failed: {record['error']}")
            raise
        finally:
            record["seconds"] = round(time.perf_counter() - start, 3)
            record["rss_mb"] = _rss_mb()
            write_json_atomic(trial_dir / TRIAL_FILE, record)

    def start_fold(self, k: int) -> None:
        """Before fold ``k`` of a trial: start from an empty Keras session.

        Garbage collected before a trial's first fold, so memory does not grow from trial to
        trial; between folds clearing the session is enough.
        """
        _clear_session(collect=k == 0)

    def _fit_fold(self, config, train_rows, val_rows, history_path: Path) -> tuple[float, int]:
        """The fold's best-epoch objective, and the trained model's parameter count."""
        import keras

        from suite.model import precision_scope
        from suite.train import HistoryCSV, ValidationMacroF1, schedule_callbacks

        with precision_scope(config.precision):
            keras.utils.set_random_seed(config.seed)
            model, train, val = self.fold_model_and_data(config, train_rows, val_rows)
            f1 = ValidationMacroF1(val[0], val[1], config.batch_size)
            callbacks = ([f1] if self.objective == "val_macro_f1" else []) + schedule_callbacks(config)
            history = self.fit(model, config, train, val, callbacks + [HistoryCSV(history_path)])
        per_epoch = f1.scores_ if self.objective == "val_macro_f1" else history.history["val_accuracy"]
        return float(np.max(per_epoch)), int(model.count_params())

    def fold_model_and_data(self, config, train_rows, val_rows):
        """``(compiled model, (x_train, y_train), (x_val, y_val))`` for one fold."""
        raise NotImplementedError

    def fit(self, model, config, train, val, callbacks):
        """Train ``model`` on one fold as a run does (``suite.train.fit``); returns the Keras ``History``."""
        from suite.train import fit

        return fit(model, config, train, val, callbacks, verbose=0)

    def describe(self) -> dict | None:
        return None


class ImageTrials(TrialRunner):
    """Every trial builds and trains the full model (backbone + head) on the images."""

    def fold_model_and_data(self, config, train_rows, val_rows):
        from suite.model import build_model

        p = self.prepared
        model = build_model(p.spec, config, self.n_classes_, p.weights.argument)
        return model, _images(p.data, train_rows), _images(p.data, val_rows)


class HeadTrials(TrialRunner):
    """Every trial trains only the head on the frozen backbone's cached features (the fast path).

    One compiled head (:class:`ReusableHead`) serves every trial and fold: building, compiling
    and tracing a fresh one would cost several times the training itself.
    """

    fast_path = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embeddings_ = None
        self.heads_ = {}  # (feature width, dtype policy, seed) -> ReusableHead

    def embeddings(self, policy: str):
        """The training pool's features: computed (or memory-mapped from the cache) on first use."""
        from suite.embeddings import load_or_compute

        if self.embeddings_ is None:
            pool = np.unique(np.concatenate([rows for fold in self.folds_ for rows in fold]))
            self.embeddings_ = load_or_compute(self.prepared, pool, policy, log=self.log)
        return self.embeddings_

    def run(self, trial_id: str, values: Mapping[str, Any], trial_dir: Path) -> dict:
        """As :meth:`TrialRunner.run`; after a failure the next trial builds a new head."""
        try:
            return super().run(trial_id, values, trial_dir)
        except Exception:
            self.heads_.clear()  # a trial that failed mid-fit may leave its head in any state
            raise

    def start_fold(self, k: int) -> None:
        """Before fold ``k`` of a trial: garbage collected before the first, but the session kept.

        The session holds the reused head. What the last trial left (its datasets) is freed
        by the collection, which takes milliseconds over the heap made since the search began.
        """
        if k == 0:
            gc.collect()

    def fold_model_and_data(self, config, train_rows, val_rows):
        import keras

        policy = keras.config.dtype_policy().name
        emb = self.embeddings(policy)
        y = self.prepared.data.y
        model = self.head(emb.width, policy, config)
        return model, (emb.take(train_rows), y[train_rows]), (emb.take(val_rows), y[val_rows])

    def fit(self, model, config, train, val, callbacks):
        """Train as a run does, from ``tf.data`` pipelines over the features (TensorFlow backend).

        The same epochs, batch size, examples in a new random order every epoch and validation
        after each; but Keras's generic pipeline from arrays, built anew at every fit, costs
        more than training a head, so the fast path feeds it a lean one (:func:`_feature_datasets`).
        """
        import keras

        if keras.backend.backend() != "tensorflow":
            return super().fit(model, config, train, val, callbacks)
        train_data, val_data = _feature_datasets(train, val, config.batch_size, config.seed,
                                                 model.output_shape[-1])
        return model.fit(train_data, epochs=config.epochs, validation_data=val_data, callbacks=callbacks,
                         shuffle=False, verbose=0)  # the dataset shuffles itself

    def head(self, n_features: int, policy: str, config):
        """The compiled head for ``config``, in the state a freshly built one would have."""
        key = (n_features, policy, config.seed)
        if key not in self.heads_:
            self.heads_[key] = ReusableHead(n_features, config, self.n_classes_)
        return self.heads_[key].reset(config)

    def describe(self) -> dict | None:
        return self.embeddings_.describe() if self.embeddings_ is not None else None


class ReusableHead:
    """One compiled head model (``suite.model.build_head_model``) that every trial trains in turn.

    Built once, seeded by ``config.seed``; its dropout rate is a variable
    (:func:`variable_rate_dropout`), so the traced training step serves every rate, and a batch
    size is only a shape the trace already leaves open. :meth:`reset` puts back every variable
    of the model and its optimizer as they were when built (weights, dropout seed state, Adam's
    step count and moments), then sets the trial's dropout rate and learning rate: a trial
    trains as it would on a model built for it, whichever trials came before.

    Args:
        n_features: width of the feature vectors.
        config: seed and dtype policy of every trial it will serve.
        n_classes: width of the softmax.
    """

    def __init__(self, n_features: int, config, n_classes: int):
        import keras

        from suite.model import build_head_model

        keras.utils.set_random_seed(config.seed)  # the initial weights depend on the seed alone
        dropout = variable_rate_dropout(config.dropout, config.seed)
        self.model = build_head_model(n_features, config, n_classes, dropout=dropout)
        self.model.optimizer.build(self.model.trainable_variables)
        variables = [*self.model.variables, *self.model.optimizer.variables]
        self.initial_ = [(v, keras.ops.convert_to_numpy(v)) for v in variables]

    def reset(self, config):
        """The model as built, with ``config``'s dropout rate and learning rate; returns it."""
        for variable, value in self.initial_:
            variable.assign(value)
        self.model.get_layer("dropout").rate.assign(config.dropout)
        self.model.optimizer.learning_rate = config.learning_rate
        return self.model


def _feature_datasets(train, val, batch_size: int, seed: int, n_classes: int):
    """``(training, validation)`` ``tf.data`` datasets of ``(features, one-hot labels)`` batches.

    The training set is reshuffled at every epoch (a full permutation, as Keras shuffles
    arrays), from ``seed``: a new dataset replays the same orders, so a trial is repeatable.
    """
    import tensorflow as tf

    from suite.train import one_hot

    (x, y), (x_val, y_val) = train, val
    training = (tf.data.Dataset.from_tensor_slices((x, one_hot(y, n_classes)))
                .shuffle(len(y), seed=seed, reshuffle_each_iteration=True).batch(batch_size))
    validation = tf.data.Dataset.from_tensor_slices((x_val, one_hot(y_val, n_classes))).batch(batch_size)
    return training, validation


def variable_rate_dropout(rate: float, seed: int, name: str = "dropout"):
    """A dropout layer whose rate is a non-trainable variable (``layer.rate.assign(0.3)``).

    Keras's ``Dropout`` bakes its rate into a traced step; this one reads it at every step.
    The mask is drawn as Keras's is (uniform noise from the layer's own seed generator, kept
    where it is at least the rate, the kept values scaled by ``1 / (1 - rate)``); at rate 0
    it passes its input through unchanged.
    """
    return _variable_rate_dropout_class()(rate, seed=seed, name=name)


@functools.cache
def _variable_rate_dropout_class():
    import keras

    class VariableRateDropout(keras.layers.Layer):
        def __init__(self, rate: float, seed: int, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.rate = self.add_weight(shape=(), initializer=keras.initializers.Constant(rate),
                                        trainable=False, name="rate")

        def call(self, inputs, training=False):
            if not training:
                return inputs
            rate = keras.ops.cast(self.rate, inputs.dtype)
            noise = keras.random.uniform(keras.ops.shape(inputs), dtype=inputs.dtype, seed=self.seed_generator)
            return keras.ops.where(noise >= rate, inputs / (1 - rate), keras.ops.zeros_like(inputs))

        def compute_output_shape(self, input_shape):
            return input_shape

    return VariableRateDropout


def trial_folds(data, cv: int | None, seed: int, *, grouped: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_rows, val_rows)]``: the run's train/validation split, or K stratified folds of their union.

    The test split is never among them.

    Args:
        data: the prepared data.
        cv: K, or ``None`` for the run's own split.
        seed: seeds the folds (``StratifiedKFold(shuffle=True, random_state=seed)``).
        grouped: keep each duplicate cluster inside one fold (``--dedup group``), as ``suite cv`` does.

    Raises:
        SuiteError: a class with fewer images than folds.
    """
    if cv is None:
        return [(data.split.train, data.split.val)]
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    pool = np.union1d(data.split.train, data.split.val)
    smallest = int(np.bincount(data.y[pool]).min())
    if smallest < cv:
        raise SuiteError(f"--cv {cv} needs at least {cv} training images per class; the smallest class has "
                         f"{smallest}")
    clusters = getattr(data, "cluster", None)
    if grouped and clusters is not None:
        folds = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed).split(
            pool, data.y[pool], clusters[pool])
    else:
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed).split(pool, data.y[pool])
    return [(pool[train], pool[held]) for train, held in folds]


def _clear_session(collect: bool) -> None:
    """``keras.backend.clear_session``; with ``collect`` it also runs ``gc.collect()``.

    A collection walks the whole heap (about half a second with TensorFlow loaded), so it
    runs once per trial rather than per fold.
    """
    import keras

    keras.backend.clear_session(free_memory=collect)  # free_memory=True is gc.collect()


def _images(data, rows) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(data.images[rows]), data.y[rows]


def _values_text(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items() if not k.startswith("tuner/"))


def _rss_mb() -> float | None:
    """This process's resident memory now (Linux), to show it does not grow from trial to trial."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------


def collect_trials(oracle, folder: Path, objective: str) -> list[dict]:
    """Every trial on record, in start order, from the oracle and each trial's own file."""
    trials = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda kv: kv[0]):
        own = _trial_file(folder, trial_id)
        folds = own.get("fold_scores") or _fold_metrics(trial, objective)
        error = own.get("error") or _last_line(trial.message)
        status = str(trial.status)
        trials.append({
            "trial_id": trial_id,
            "hyperparameters": dict(trial.hyperparameters.values),
            "score": None if trial.score is None or status != "COMPLETED" else float(trial.score),
            "status": status,
            "error": error if status != "COMPLETED" else None,
            "fold_scores": folds if status == "COMPLETED" else None,
            "seconds": own.get("seconds"),
            "rss_mb": own.get("rss_mb"),
            "tuner_id": own.get("tuner_id"),
            "params": own.get("params"),
        })
    return trials


def _trial_file(folder: Path, trial_id: str) -> dict:
    try:
        return read_json(folder / PROJECT / f"trial_{trial_id}" / TRIAL_FILE)
    except (OSError, ValueError):
        return {}


def _fold_metrics(trial, objective: str) -> list[float] | None:
    names = sorted((n for n in trial.metrics.metrics if n.startswith(f"{objective}_fold")),
                   key=lambda n: int(n.rsplit("fold", 1)[1]))
    return [float(trial.metrics.get_last_value(n)) for n in names] or None


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def best_of(trials: list[dict]) -> dict | None:
    """The completed trial with the highest score (the first such on a tie), or ``None``."""
    done = [t for t in trials if t["status"] == "COMPLETED" and t["score"] is not None]
    if not done:
        return None
    best = max(done, key=lambda t: t["score"])
    return {"trial_id": best["trial_id"], "hyperparameters": best["hyperparameters"], "score": best["score"]}


def _best_sentence(tuning: dict) -> str:
    best = tuning["best"]
    if best is None:
        return f"no trial completed ({tuning['n_trials']} on record)"
    return (f"best trial {best['trial_id']}: {tuning['objective']} {best['score']:.4f} with "
            f"{_values_text(best['hyperparameters'])}")


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
    from suite.pipeline import execute

    if old and old.get("source") == source and _completed(folder / str(old.get("run_dir"))):
        log(f"{role} settings unchanged since the last search: keeping {old['run_dir']}")
        run_dir = folder / old["run_dir"]
    else:
        config = dataclasses.replace(prepared.config, **values, out=str(folder))
        run_dir = runs.new_run_dir(folder, f"{prepared.spec.name}-{role}")
        log(f"retraining the {role} settings into {run_dir}")
        execute(dataclasses.replace(prepared, config=config), run_dir, log=log, raise_errors=False)
    manifest = runs.read_manifest(run_dir)
    record = {"run_dir": run_dir.name, "source": source, "status": manifest["status"],
              "error": manifest.get("error"), "config": manifest["config"]}
    if manifest["status"] != "completed":
        return record, None
    metrics = read_json(run_dir / runs.METRICS)
    return record, {k: metrics[k] for k in TEST_METRIC_KEYS if k in metrics}


def _completed(run_dir: Path) -> bool:
    return runs.is_run_dir(run_dir) and runs.read_manifest(run_dir)["status"] == "completed"


def _write_report(folder: Path, log) -> None:
    try:
        from reports.tuning import write_tuning_report

        write_tuning_report(folder)
    except Exception as exc:  # tuning.json is written; a report problem must not lose it
        log(f"warning: the tuning report could not be written: {type(exc).__name__}: {exc}")
