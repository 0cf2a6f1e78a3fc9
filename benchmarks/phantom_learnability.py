"""Is the phantom dataset learnable, but not trivially? Measure it.

Two numbers, on the Testing split of a phantom dataset:

* a MobileNetV2 trained from random initialisation at 64x64 px with the suite's
  reference recipe (one run per model seed) should score high (>= 0.90);
* logistic regression on standardised raw 32x32 greyscale pixels should score low
  (<= 0.70): the lesions must not be findable by position or brightness alone.

Prints one JSON object on stdout; progress goes to stderr.

Two diagnostics come with the CNN figure, because the reference recipe cannot show
what the data allows: Keras's MobileNetV2 averages its BatchNorm statistics with
momentum 0.999 (over ~1000 steps), and 12 epochs of 2160 images are only 816 steps,
so from random initialisation its inference-mode outputs are the same for every image
and validation accuracy stays at chance (even on trivially separable shapes), which
in turn makes ReduceLROnPlateau cut the learning rate every other epoch.

* ``cnn_bn_recalibrated_test_accuracy``: the last epoch's weights with BatchNorm
  statistics re-estimated on the training images;
* ``--bn-momentum``: BatchNorm momentum, 0.9 by default as in the suite's own from-scratch
  training (``suite.model.SCRATCH_BN_MOMENTUM``); ``--bn-momentum 0.999`` shows the stock
  recipe's failure.

    python benchmarks/phantom_learnability.py                 # generates into a temp dir
    python benchmarks/phantom_learnability.py --data DIR --seeds 0 1 2 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from suite.data.phantom import CLASSES, generate_phantom  # noqa: E402

CNN_SIZE = 64
LOGREG_SIZE = 32
BATCH_SIZE = 32
VAL_FRACTION = 0.1
SPLIT_SEED = 0


def load_split(root: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Greyscale images of one split resized (bilinear) to ``size``, and their labels."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.png")):
            with Image.open(path) as im:
                im = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(im))
            labels.append(label)
    return np.stack(images), np.array(labels)


def logreg_accuracy(root: Path) -> float:
    """Test accuracy of logistic regression on standardised raw pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = load_split(root, "Training", LOGREG_SIZE)
    x_test, y_test = load_split(root, "Testing", LOGREG_SIZE)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000))
    model.fit(x_train.reshape(len(x_train), -1).astype(np.float64), y_train)
    return float(model.score(x_test.reshape(len(x_test), -1).astype(np.float64), y_test))


def build_mobilenetv2(keras, bn_momentum: float | None = None):
    """The reference model: MobileNetV2 from scratch, pooled, dropout, softmax head.

    Args:
        keras: the imported module.
        bn_momentum: override of the BatchNormalization momentum (Keras's MobileNetV2
            uses 0.999); ``None`` keeps the reference recipe.
    """
    inputs = keras.Input((CNN_SIZE, CNN_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(CNN_SIZE, CNN_SIZE, 3)
    )
    if bn_momentum is not None:
        for layer in _batchnorms(keras, backbone):
            layer.momentum = bn_momentum
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def cnn_accuracy(train, test, seed: int, epochs: int, bn_momentum: float | None = None) -> dict:
    """Train the reference recipe once and evaluate its best-validation weights on Testing.

    Args:
        train: ``(images, labels)`` of the Training split at ``CNN_SIZE``.
        test: the same for Testing.
        seed: model seed (initialisation, shuffling, dropout).
        epochs: epochs to train.
        bn_momentum: see :func:`build_mobilenetv2`.
    """
    import keras
    from sklearn.model_selection import train_test_split

    (x, y), (x_test, y_test) = train, test
    x_tr, x_val, y_tr, y_val = train_test_split(
        x, y, test_size=VAL_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    keras.utils.set_random_seed(seed)
    model = build_mobilenetv2(keras, bn_momentum)
    best = _keep_best(keras)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_accuracy", factor=0.3, patience=2, min_delta=0.001
    )
    start = time.perf_counter()
    model.fit(
        _rgb(x_tr), _onehot(y_tr),
        validation_data=(_rgb(x_val), _onehot(y_val)),
        batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0, callbacks=[plateau, best],
    )
    seconds = time.perf_counter() - start
    recalibrated = _recalibrate_batchnorm(keras, model, _rgb(x_tr))
    recalibrated_acc = float(np.mean(_predict(recalibrated, x_test) == y_test))
    model.set_weights(best.best_weights)
    predicted = _predict(model, x_test)
    return {
        "test_accuracy": float(np.mean(predicted == y_test)),
        "bn_recalibrated_test_accuracy": recalibrated_acc,
        "confusion": _confusion(y_test, predicted),
        "best_epoch": best.best_epoch + 1,
        "val_accuracy": [round(a, 4) for a in best.history],
        "train_seconds": round(seconds, 1),
    }


def _predict(model, grey: np.ndarray) -> np.ndarray:
    return model.predict(_rgb(grey), batch_size=128, verbose=0).argmax(axis=1)


def _recalibrate_batchnorm(keras, model, x: np.ndarray, batch: int = 128):
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``x``.

    Diagnostic only, not part of the recipe: Keras's MobileNetV2 averages them with
    momentum 0.999, i.e. over about 1000 steps, while 12 epochs of this dataset are
    816 steps, so the recipe's own statistics are still far from the trained weights'.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for k, start in enumerate(range(0, len(x), batch)):
        for layer in _batchnorms(keras, copy):
            layer.momentum = k / (k + 1)  # a running mean over the batches seen so far
        copy(x[start : start + batch], training=True)
    return copy


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1).astype("float32")


def _onehot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype="float32")[labels]


def _batchnorms(keras, layer) -> list:
    """Every BatchNormalization layer in ``layer``, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [bn for sub in getattr(layer, "layers", []) for bn in _batchnorms(keras, sub)]


def _confusion(truth: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    """Rows: true class, columns: predicted class, in ``CLASSES`` order."""
    counts = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(counts, (truth, predicted), 1)
    return counts.tolist()


def _keep_best(keras):
    """A callback that remembers the weights of the best ``val_accuracy`` epoch."""

    class KeepBest(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.best_epoch, self.best_weights, self.history = -1.0, -1, None, []

        def on_epoch_end(self, epoch, logs=None):
            acc = float(logs["val_accuracy"])
            self.history.append(acc)
            print(
                f"  epoch {epoch + 1}: loss {logs['loss']:.3f} acc {logs['accuracy']:.3f} "
                f"val_acc {acc:.3f}",
                file=sys.stderr, flush=True,
            )
            if acc > self.best:  # the first of equal epochs, as ModelCheckpoint does
                self.best, self.best_epoch, self.best_weights = acc, epoch, self.model.get_weights()

    return KeepBest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="phantom dataset (default: generate one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="model seeds")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--no-cnn", action="store_true", help="only the logistic regression")
    parser.add_argument(
        "--bn-momentum", type=float, default=0.9,
        help="BatchNormalization momentum; default 0.9, what the suite uses from random initialisation "
             "(suite.model.SCRATCH_BN_MOMENTUM); 0.999 is Keras's stock MobileNetV2, which stays at chance here",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="phantom-") as tmp:
        root = args.data
        result = {}
        if root is None:
            start = time.perf_counter()
            root = generate_phantom(Path(tmp) / "phantom")
            result["generation_seconds"] = round(time.perf_counter() - start, 1)
        result["data"] = str(root)
        result["logreg_test_accuracy"] = logreg_accuracy(root)
        print(f"logreg test accuracy {result['logreg_test_accuracy']:.3f}", file=sys.stderr)
        runs = {}
        seeds = [] if args.no_cnn else args.seeds
        if seeds:
            train, test = (load_split(root, split, CNN_SIZE) for split in ("Training", "Testing"))
        for seed in seeds:
            print(f"MobileNetV2, seed {seed}", file=sys.stderr)
            runs[str(seed)] = cnn_accuracy(train, test, seed, args.epochs, args.bn_momentum)
            print(f"  test accuracy {runs[str(seed)]['test_accuracy']:.3f}", file=sys.stderr)
        result["cnn_test_accuracy"] = {s: r["test_accuracy"] for s, r in runs.items()}
        result["cnn_bn_recalibrated_test_accuracy"] = {
            s: r["bn_recalibrated_test_accuracy"] for s, r in runs.items()
        }
        result["cnn_runs"] = runs
        result["bn_momentum"] = args.bn_momentum or 0.999
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
