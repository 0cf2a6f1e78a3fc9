"""Trials of a hyper-parameter search: Keras Tuner's oracle and tuner, what one trial trains, what is kept of it.

``suite.commands.tune`` plans the search; here a trial's values become a ``RunConfig``
(``TrialRunner.trial_config``), are trained on one or K folds of the training pool (full
models in ``ImageTrials``; only the head on cached features in ``HeadTrials``, the fast path)
and scored by the best epoch's objective; ``collect_trials`` reads every trial back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from suite import runs
from suite.errors import SuiteError
from suite.io import read_json, write_json_atomic
from suite.search_space import SearchSpace

OBJECTIVES = ("val_accuracy", "val_macro_f1")
# --tuner NAME -> the Keras Tuner oracle class (in keras_tuner.oracles) that picks the trials.
ORACLES = {"random": "RandomSearchOracle", "bayesian": "BayesianOptimizationOracle", "hyperband": "HyperbandOracle"}
TUNER_NAMES = tuple(ORACLES)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

# ----------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------


def make_oracle(settings, space: SearchSpace, config):
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
            values, trial_dir = dict(trial.hyperparameters.values), Path(self.get_trial_dir(trial.trial_id))
            try:
                return self.runner.run(trial.trial_id, values, trial_dir)
            finally:
                self._write_events(trial.trial_id, values, trial_dir)

        def _write_events(self, trial_id: str, values: dict, trial_dir: Path) -> None:
            """The trial for TensorBoard's HParams dashboard (``tensorboard --logdir <folder>/tensorboard``)."""
            from suite.tracking import write_trial_events

            try:
                write_trial_events(Path(self.directory) / runs.TENSORBOARD / f"trial_{trial_id}", trial_id,
                                   values, trial_dir, self.oracle.objective.name)
            except Exception as exc:  # a dashboard file must not fail the trial
                self.runner.log(f"warning: TensorBoard events of trial {trial_id} not written: {exc}")

    return SuiteTuner


def make_tuner(folder: Path, settings, space: SearchSpace, config, runner: TrialRunner):
    """The tuner over ``folder/keras_tuner``; an existing project there is reloaded, never overwritten."""
    with contextlib.redirect_stdout(sys.stderr):  # Keras Tuner prints; stdout is for the folder
        return _tuner_class()(make_oracle(settings, space, config), runner, directory=str(folder),
                              project_name=runs.TUNER_PROJECT, overwrite=False)


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
        prepared: ``suite.commands.run.Prepared`` (its config is the base every trial changes).
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
                name = runs.HISTORY if len(self.folds_) == 1 else runs.TRIAL_FOLD_HISTORY.format(k=k)
                self.start_fold(k)
                score, record["params"] = self._fit_fold(config, train_rows, val_rows, trial_dir / name)
                record["fold_scores"].append(score)
            score = float(np.mean(record["fold_scores"]))
            record.update(status="COMPLETED", score=score)
            self.log(f"trial {trial_id}: {values_text(values)} -> {self.objective} {score:.4f}"
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
            write_json_atomic(trial_dir / runs.TRIAL, record)

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
            Whatever it says, a unit of ``data.unit`` (patient groups from ``--groups``, joined with
            duplicate clusters under ``--dedup group``) is kept inside one fold.

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
    units = getattr(data, "unit", None)
    if units is None and grouped:
        units = getattr(data, "cluster", None)
    if units is not None:
        folds = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed).split(
            pool, data.y[pool], units[pool])
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


def values_text(values: Mapping[str, Any]) -> str:
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
        return read_json(folder / runs.TUNER_PROJECT / f"trial_{trial_id}" / runs.TRIAL)
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
