"""The callbacks every backbone trains with, and the fit itself."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from suite import runs
from suite.config import RunConfig
from suite.io import atomic_target, write_csv_atomic
from suite.runtime import has_tensorflow

HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate", "seconds")


def _callback_base():
    import keras

    return keras.callbacks.Callback


class HistoryCSV(_callback_base()):
    """Rewrite ``history.csv`` atomically after every epoch, so a crash keeps what was learned."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def on_train_begin(self, logs=None):
        self.rows_ = []
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import keras

        logs = dict(logs or {})
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        logs["seconds"] = time.perf_counter() - self._start
        self.rows_.append([epoch + 1] + [_number(logs.get(c)) for c in HISTORY_COLUMNS[1:]])
        write_csv_atomic(self.path, HISTORY_COLUMNS, self.rows_)


def _number(value):
    return "" if value is None else float(value)


class BestCheckpoint(_callback_base()):
    """Keep the best epoch by ``val_accuracy`` and write it to ``model.keras``.

    Keras's ``ModelCheckpoint`` writes the whole model at every improving epoch: seconds for
    EfficientNetB0 on a small CPU, a large share of a short epoch. Here every improvement is
    copied in memory (milliseconds) and written to disk only when the training time since the
    last write is at least ``1 / max_overhead`` times that write's cost, so writing takes at
    most ``max_overhead`` of training time. The best epoch is always written when training
    ends, or by :meth:`flush` when it stops on an error: the file on disk is a best-so-far
    epoch while training runs and the best one after.

    Args:
        path: the ``.keras`` file.
        monitor: the logged figure to maximise.
        max_overhead: largest share of training time spent writing checkpoints mid-training.
    """

    def __init__(self, path: str | Path, monitor: str = "val_accuracy", max_overhead: float = 0.05):
        super().__init__()
        self.path, self.monitor, self.max_overhead = Path(path), monitor, max_overhead

    def on_train_begin(self, logs=None):
        self.best_, self.best_epoch_, self.weights_ = -np.inf, None, None
        self.saved_epoch_, self.writes_, self.write_s_ = None, 0, 0.0
        self._last_cost, self._last_end = 0.0, time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not float(value) > self.best_:
            return
        self.best_, self.best_epoch_ = float(value), epoch + 1
        self.weights_ = [np.array(w, copy=True) for w in self.model.get_weights()]
        if self._last_cost <= self.max_overhead * (time.perf_counter() - self._last_end):
            self._write()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self) -> None:
        """Write the best epoch if the file does not hold it yet."""
        if self.weights_ is None or self.saved_epoch_ == self.best_epoch_:
            return
        current = self.model.get_weights()
        self.model.set_weights(self.weights_)
        try:
            self._write()
        finally:
            self.model.set_weights(current)

    def _write(self) -> None:
        start = time.perf_counter()
        with atomic_target(self.path, expected_bytes=4 * self.model.count_params()) as tmp:
            self.model.save(tmp, overwrite=True)
        self._last_end = time.perf_counter()
        self._last_cost = self._last_end - start
        self.write_s_ += self._last_cost
        self.writes_ += 1
        self.saved_epoch_ = self.best_epoch_

    def describe(self) -> dict:
        return {"monitor": self.monitor, "best": self.best_, "best_epoch": self.best_epoch_,
                "writes": self.writes_, "write_s": round(self.write_s_, 3)}


class EpochTensorBoard(_callback_base()):
    """TensorBoard scalars once per epoch, in Keras's layout and tag names.

    ``logs/train`` and ``logs/validation`` hold ``epoch_loss``, ``epoch_accuracy`` and
    ``epoch_learning_rate`` as ``keras.callbacks.TensorBoard`` writes them. Unlike that
    callback it has no per-batch hook: a per-batch hook makes Keras wait for every step's
    result (under JAX it cost seconds per epoch), and it writes no graph (a full trace).
    Needs TensorFlow installed (for ``tf.summary``), whatever the Keras backend.
    """

    def __init__(self, log_dir: str | Path):
        super().__init__()
        self.log_dir = Path(log_dir)

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._writers = {part: tf.summary.create_file_writer(str(self.log_dir / part))
                         for part in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        import keras
        import tensorflow as tf

        logs = dict(logs or {})
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        for name, value in logs.items():
            part, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            with self._writers[part].as_default(step=epoch):
                tf.summary.scalar(f"epoch_{tag}", float(value))
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()


class EpochClock(_callback_base()):
    """Wall seconds of each epoch, split into training (steps and callbacks) and validation.

    Put it last in the callback list, so that its epoch end comes after every other callback's.
    """

    def on_train_begin(self, logs=None):
        self.train_s_, self.val_s_ = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._val = time.perf_counter(), 0.0

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()

    def on_test_end(self, logs=None):
        self._val += time.perf_counter() - self._test

    def on_epoch_end(self, epoch, logs=None):
        self.train_s_.append(time.perf_counter() - self._epoch - self._val)
        self.val_s_.append(self._val)


def make_callbacks(config: RunConfig, run_dir: Path) -> tuple[list, list[str]]:
    """The callback list shared by every backbone, and any warnings about it.

    TensorBoard logs, the best checkpoint by ``val_accuracy`` (``model.keras``, see
    :class:`BestCheckpoint`), ReduceLROnPlateau as in the reference recipe, the CSV history,
    and early stopping when ``config.early_stopping`` is set.
    """
    schedule = schedule_callbacks(config, verbose=1)
    callbacks = [
        BestCheckpoint(run_dir / runs.MODEL, monitor="val_accuracy"),
        schedule[0],
        HistoryCSV(run_dir / runs.HISTORY),
    ]
    warnings = []
    if has_tensorflow():
        callbacks.append(EpochTensorBoard(run_dir / runs.LOGS))
    else:
        warnings.append("TensorBoard logs were not written: the TensorBoard callback needs TensorFlow.")
    return callbacks + schedule[1:], warnings


def schedule_callbacks(config: RunConfig, *, verbose: int = 0) -> list:
    """The callbacks that change how training goes, as every run has them.

    ReduceLROnPlateau on ``val_accuracy`` as in the reference recipe, then early stopping
    when ``config.early_stopping`` is set. Tuning trials train with these alone, so a
    trial learns the way the run that retrains its settings will.
    """
    import keras

    callbacks = [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_accuracy", mode="max", factor=0.3, patience=2, min_delta=0.001, verbose=verbose
        ),
    ]
    if config.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=config.early_stopping, min_delta=0.001
            )
        )
    return callbacks


class ValidationMacroF1(_callback_base()):
    """Add ``val_macro_f1`` (macro-averaged F1 on the validation set) to each epoch's logs.

    Place it before the callbacks that read the logs (history, checkpoints, Keras Tuner).

    Args:
        x: validation inputs.
        y: integer labels.
        batch_size: prediction batch size.
    """

    def __init__(self, x, y, batch_size: int = 32):
        super().__init__()
        self.x, self.y, self.batch_size = x, np.asarray(y), batch_size

    def on_train_begin(self, logs=None):
        self.scores_ = []

    def on_epoch_end(self, epoch, logs=None):
        from sklearn.metrics import f1_score

        probs = self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
        score = float(f1_score(self.y, probs.argmax(axis=1), average="macro", zero_division=0))
        self.scores_.append(score)
        if logs is not None:
            logs["val_macro_f1"] = score


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[y]


def fit(model, config: RunConfig, train, val, callbacks, *, verbose: int | str = "auto",
        batch_size: int | None = None):
    """Train on in-memory arrays, the way a bare ``model.fit`` would (no slower).

    Args:
        model: a compiled Keras model.
        config: epochs and batch size.
        train: ``(x, y)`` uint8 images and integer labels.
        val: the same for validation.
        callbacks: from :func:`make_callbacks`.
        batch_size: the batch this process feeds (default: ``config.batch_size``; in a
            multi-worker run, its share of the global batch).

    Returns:
        The Keras ``History``.
    """
    n_classes = model.output_shape[-1]
    (x_train, y_train), (x_val, y_val) = train, val
    try:
        return model.fit(
            x_train,
            one_hot(y_train, n_classes),
            batch_size=batch_size or config.batch_size,
            epochs=config.epochs,
            validation_data=(x_val, one_hot(y_val, n_classes)),
            callbacks=callbacks,
            shuffle=True,
            verbose=verbose,
        )
    finally:  # training stopped early (error, interrupt): keep the best epoch so far
        for callback in callbacks:
            if isinstance(callback, BestCheckpoint) and hasattr(callback, "weights_"):
                callback.flush()
