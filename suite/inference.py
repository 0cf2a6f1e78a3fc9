"""A trained model at work: predictions with calibration, inference latency and Grad-CAM class-activation maps."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import numpy as np

from suite import runs


class Predictor:
    """A finished run's model, loaded once, predicting images given as files or in memory.

    ``suite predict`` and ``suite serve`` both answer through :meth:`predict`, so a file gets the
    same JSON from either. The model is used under a lock: one process may share a predictor
    between threads (a web server's workers), one prediction at a time.

    Args:
        run_dir: a finished run folder (its ``model.keras``, labels, image size and, where fitted,
            ``calibration.json``).

    Raises:
        SuiteError: not a run folder, or no model that can be loaded.
    """

    def __init__(self, run_dir: str | Path):
        self.run = runs.RunFolder(run_dir)
        self.labels, self.image_size = self.run.labels, self.run.image_size
        self.model = self.run.load_model()
        self.calibration, self.calibration_note = _calibration(self.run.path)
        self._lock = threading.Lock()

    def decode(self, source) -> tuple[np.ndarray | None, str | None]:
        """One image (a path or a binary file object) as the model's input, or ``None`` and why not."""
        from suite.data.decode import _decode_task

        return _decode_task((source, self.image_size))

    def predict(self, items) -> list[dict]:
        """Predicted class and every class probability for each ``(name, source)`` pair.

        A source is a path or a binary file object. With the run's ``calibration.json`` fitted,
        each image also gets ``calibrated_probabilities`` (temperature-scaled) and
        ``prediction_set`` (the classes of its 95% conformal set, most probable first) and
        ``calibration`` says what was applied; without one, ``calibration`` says why there is
        none. A source that cannot be decoded gets an ``error`` entry instead of a prediction.
        """
        results, images, where = [], [], []
        for name, source in items:
            arr, reason = self.decode(source)
            results.append({"path": str(name), "error": reason} if reason else {"path": str(name)})
            if arr is not None:
                images.append(arr)
                where.append(len(results) - 1)
        if images:
            with self._lock:
                probs = self.model.predict(np.stack(images), verbose=0)
            for i, pr in zip(where, probs):
                results[i]["predicted"] = self.labels[int(np.argmax(pr))]
                results[i]["probabilities"] = {label: round(float(v), 6) for label, v in zip(self.labels, pr)}
            if self.calibration is not None:
                _add_calibrated(results, where, np.asarray(probs), self.labels, self.calibration)
        for r in results:
            if "error" not in r:
                r["calibration"] = self.calibration_note
        return results

    def warm_up(self) -> None:
        """One prediction and one heat-map on a blank image, so the first real request is not the slow one."""
        blank = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
        with self._lock:
            self.model.predict(blank, verbose=0)
        self.heat_map(blank[0], self.labels[0])

    def heat_map(self, image: np.ndarray, label: str) -> np.ndarray:
        """The Grad-CAM map (feature-map resolution, values in [0, 1]) of ``label`` on one decoded image."""
        with self._lock:
            return class_activation_maps(self.model, image[None], [self.labels.index(label)])[0]


def _calibration(run_dir: Path) -> tuple[dict | None, dict]:
    """The run's fitted calibration record (or ``None``) and the note each prediction carries about it."""
    from suite import calibration
    from suite.io import read_json

    path = run_dir / runs.CALIBRATION
    if not path.is_file():
        return None, {"applied": False, "reason": f"the run has no {runs.CALIBRATION} (made before calibration "
                                                  "was kept, or it did not finish)"}
    record = read_json(path)
    level = calibration.level(record) if isinstance(record, dict) else None
    if level is None:
        reason = record.get("reason") if isinstance(record, dict) else None
        return None, {"applied": False, "reason": f"calibration was skipped: {reason or 'no 95% level recorded'}"}
    return record, {"applied": True, "temperature": record["temperature"], "set_coverage_target": level["target"],
                    "set_test_coverage": level["coverage"], "method": record["conformal"]["method"]}


def _add_calibrated(results: list[dict], where: list[int], probs: np.ndarray, labels, record: dict) -> None:
    """Temperature-scaled probabilities and the 95% prediction set (on the raw probabilities, as fitted)."""
    from suite import calibration

    level, conformal = calibration.level(record), record["conformal"]
    scaled = calibration.apply_temperature(calibration.log_probs(probs), record["temperature"])
    sets = calibration.prediction_sets(probs, level["threshold"], conformal["penalty"], conformal["k_reg"])
    for i, pr, cal, members in zip(where, probs, scaled, sets):
        results[i]["calibrated_probabilities"] = {label: round(float(v), 6) for label, v in zip(labels, cal)}
        order = np.argsort(-pr, kind="stable")
        results[i]["prediction_set"] = [labels[k] for k in order if members[k]]


def time_inference(model, x: np.ndarray, *, single_calls: int = 20, batch_size: int = 32, batch_calls: int = 3) -> dict:
    """Latency at batch 1 and throughput at ``batch_size``, after warm-up (never mixed in).

    Args:
        model: a Keras model taking ``x``-shaped images.
        x: sample images, at least one; repeated to fill a batch when fewer.
    """
    one = x[:1]
    batch = np.resize(x, (batch_size,) + x.shape[1:]).astype(x.dtype)
    for _ in range(3):
        model.predict_on_batch(one)
    model.predict_on_batch(batch)
    single = [_seconds(model.predict_on_batch, one) for _ in range(single_calls)]
    batched = [_seconds(model.predict_on_batch, batch) for _ in range(batch_calls)]
    return {
        "infer_ms_per_image": round(1000 * statistics.median(single), 3),
        "infer_images_per_s": round(batch_size / statistics.median(batched), 2),
    }


def _seconds(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def class_activation_maps(model, x: np.ndarray, class_ids) -> np.ndarray:
    """Grad-CAM heat-maps on the backbone's last feature map, one per image, in [0, 1].

    With a GlobalAveragePooling -> Dense head, the gradient of a class score with
    respect to the feature map is the class's Dense weights divided by the map's
    area, so Grad-CAM reduces exactly to ``relu(sum_k w_kc * A_k)`` (CAM). Computing
    it in closed form keeps it backend-agnostic: no gradient tape needed.

    Args:
        model: a classifier built by ``suite.model.build_model``.
        x: raw RGB images, ``(n, size, size, 3)``.
        class_ids: the class to explain for each image (e.g. the predicted one).
    """
    features = np.asarray(feature_maps(model, x), dtype=np.float32)
    kernel = np.asarray(model.get_layer("probs").get_weights()[0], dtype=np.float32)
    cams = np.einsum("nhwk,nk->nhw", features, kernel[:, np.asarray(class_ids)].T)
    cams = np.maximum(cams, 0)
    peak = cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
    return np.divide(cams, peak, out=np.zeros_like(cams), where=peak > 0)


def feature_maps(model, x: np.ndarray):
    """Run the model's layers up to its pooling layer, in inference mode."""
    import keras

    out = keras.ops.convert_to_tensor(np.asarray(x, dtype="float32"))
    for layer in model.layers[1:]:
        if layer.name == "pool":
            return keras.ops.convert_to_numpy(out)
        out = layer(out, training=False)
    raise ValueError("the model has no layer named 'pool': was it built by suite.model.build_model?")
