"""A trained model at work: inference latency and Grad-CAM class-activation maps."""

from __future__ import annotations

import statistics
import time

import numpy as np


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
