"""The callbacks every backbone trains with, and the fit itself."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from suite.config import RunConfig
from suite.device import has_tensorflow
from suite.io import write_csv_atomic

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


def make_callbacks(config: RunConfig, run_dir: Path) -> tuple[list, list[str]]:
    """The callback list shared by every backbone, and any warnings about it.

    TensorBoard logs, the best checkpoint by ``val_accuracy`` (``model.keras``),
    ReduceLROnPlateau as in the reference recipe, the CSV history, and early
    stopping when ``config.early_stopping`` is set.
    """
    import keras

    schedule = schedule_callbacks(config, verbose=1)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "model.keras"), monitor="val_accuracy", mode="max", save_best_only=True
        ),
        schedule[0],
        HistoryCSV(run_dir / "history.csv"),
    ]
    warnings = []
    if has_tensorflow():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")))
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


def fit(model, config: RunConfig, train, val, callbacks, *, verbose: int | str = "auto"):
    """Train on in-memory arrays, the way a bare ``model.fit`` would (no slower).

    Args:
        model: a compiled Keras model.
        config: epochs and batch size.
        train: ``(x, y)`` uint8 images and integer labels.
        val: the same for validation.
        callbacks: from :func:`make_callbacks`.

    Returns:
        The Keras ``History``.
    """
    n_classes = model.output_shape[-1]
    (x_train, y_train), (x_val, y_val) = train, val
    return model.fit(
        x_train,
        one_hot(y_train, n_classes),
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(x_val, one_hot(y_val, n_classes)),
        callbacks=callbacks,
        shuffle=True,
        verbose=verbose,
    )
