"""Backbone embeddings, computed once and cached: the fast path of ``suite tune``.

With the backbone frozen (``finetune=head``) a trial only trains dropout and a softmax on
the backbone's pooled features, and those features do not depend on the trial. So they
are computed once per (data, split, backbone, weights, image size, precision), on
un-augmented images with the backbone's own preprocessing, written to
``cache_dir()/embeddings/<key>/`` and memory-mapped by every later trial and search.

Layout of one entry: ``features.npy`` (float32, one row per image of the training pool),
``rows.npy`` (the dataset rows those are, ascending) and ``meta.json`` (what the key covers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from suite.data.cache import cache_dir
from suite.io import write_json_atomic

EMBEDDINGS_VERSION = 1  # bump when what a feature vector means changes
EMBED_BATCH = 64  # images per forward pass while computing


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Cached pooled features of some dataset rows.

    Attributes:
        features: ``(len(rows), width)`` float32, memory-mapped.
        rows: the dataset rows, ascending; ``features[i]`` belongs to ``rows[i]``.
        path: the cache entry's folder.
        key: the cache key (the folder's name).
        cache_hit: nothing had to be computed.
        seconds: wall time to load or compute them.
    """

    features: np.ndarray
    rows: np.ndarray
    path: Path
    key: str
    cache_hit: bool
    seconds: float

    @property
    def width(self) -> int:
        return int(self.features.shape[1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Features of dataset ``rows`` (each must be cached), in that order, in memory."""
        pos = np.searchsorted(self.rows, rows)
        if np.any(pos >= len(self.rows)) or np.any(self.rows[np.minimum(pos, len(self.rows) - 1)] != rows):
            raise KeyError("some rows have no cached features")
        return np.asarray(self.features[pos])

    def describe(self) -> dict:
        return {"key": self.key, "path": str(self.path), "cache_hit": self.cache_hit,
                "seconds": round(self.seconds, 3), "n": int(len(self.rows)), "width": self.width}


def embeddings_folder() -> Path:
    return cache_dir() / "embeddings"


def embedding_identity(prepared, policy: str) -> dict:
    """What decides the features, as plain values; the cache key is its digest.

    The seed counts only with random initialisation, where it decides the backbone's weights.
    """
    import keras

    config, weights = prepared.config, prepared.weights
    source = weights.source
    if weights.argument and Path(weights.argument).is_file():
        st = Path(weights.argument).stat()
        source = f"{source}|{st.st_size}|{st.st_mtime_ns}"
    return {
        "version": EMBEDDINGS_VERSION,
        "data_fingerprint": prepared.data.data_fingerprint,
        "split_fingerprint": prepared.data.split_fingerprint,
        "backbone": prepared.spec.name,
        "preprocessing": prepared.spec.preprocessing,
        "weights": source,
        "seed": config.seed if weights.source == "random" else None,
        "image_size": config.image_size,
        "precision": policy,
        "backend": keras.backend.backend(),
    }


def embedding_key(identity: dict) -> str:
    return hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=12).hexdigest()


def load_or_compute(prepared, rows: np.ndarray, policy: str, *, log=print) -> Embeddings:
    """The pooled features of dataset ``rows`` under ``prepared``'s backbone, from the cache if there.

    Args:
        prepared: ``suite.commands.run.Prepared`` (backbone, config, weights, data).
        rows: ascending dataset rows to embed (the training pool).
        policy: the Keras dtype policy in force (part of the key).
        log: one-line status messages.
    """
    start = time.perf_counter()
    identity = {**embedding_identity(prepared, policy), "n_rows": int(len(rows))}
    key = embedding_key(identity)
    folder = embeddings_folder() / key
    hit = (folder / "meta.json").is_file()
    if not hit:
        log(f"embeddings: computing {len(rows)} feature vectors with {prepared.spec.name} "
            f"(once; cached in {folder})")
        _compute_into(folder, prepared, rows, identity)
    else:
        log(f"embeddings: cache hit ({folder})")
    cached_rows = np.load(folder / "rows.npy")
    if not np.array_equal(cached_rows, rows):
        raise RuntimeError(f"the embedding cache entry {folder} holds other rows; delete it and rerun")
    features = np.load(folder / "features.npy", mmap_mode="r")
    return Embeddings(features, cached_rows, folder, key, hit, time.perf_counter() - start)


def _compute_into(folder: Path, prepared, rows: np.ndarray, identity: dict) -> None:
    """Compute into a private folder, then rename it into place (a concurrent writer may win)."""
    import keras

    from suite.model import build_feature_extractor

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _clear_session_keeping_policy()
        keras.utils.set_random_seed(prepared.config.seed)  # as build_model does: same random backbone
        model = build_feature_extractor(prepared.spec, prepared.config, prepared.weights.argument)
        width = int(model.output_shape[-1])
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32,
                                        shape=(len(rows), width))
        forward = _forward(model, (EMBED_BATCH, *prepared.data.images.shape[1:]))
        for s, batch in _batches(prepared.data.images, rows, EMBED_BATCH):
            out[s:s + EMBED_BATCH] = forward(batch)[:len(rows) - s]
        out.flush()
        del out, model
        np.save(tmp / "rows.npy", np.asarray(rows, dtype=np.int64))
        write_json_atomic(tmp / "meta.json", {**identity, "width": width})
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent writer's finished entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _clear_session_keeping_policy()


def _forward(model, batch_shape: tuple):
    """A function from one batch of uint8 images (of ``batch_shape``) to their features, as numpy.

    On TensorFlow the model's weights are frozen into the traced graph as constants, so that
    TensorFlow's graph optimiser folds the arithmetic on them (each batch normalisation's
    scale and shift, for one) out of the per-image work: about a quarter less time per image
    on a CPU, the same features to float rounding. Elsewhere, or should TensorFlow move its
    converter, ``model.predict_on_batch``.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch
    import tensorflow as tf

    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError:
        return model.predict_on_batch
    traced = tf.function(lambda x: model(x, training=False))
    frozen = convert_variables_to_constants_v2(traced.get_concrete_function(tf.TensorSpec(batch_shape, tf.uint8)))
    return lambda batch: frozen(tf.constant(batch))[0].numpy()


def _batches(images, rows: np.ndarray, size: int):
    """``(start, images[rows[start:start + size]])``, the last batch padded with zeros to ``size``.

    Every batch has one shape, so the forward pass is traced once; the batches are fed one by
    one rather than by ``predict``, whose ``tf.data`` threads would compete with the model for
    a small machine's cores.
    """
    for s in range(0, len(rows), size):
        batch = images[rows[s:s + size]]
        if len(batch) < size:
            batch = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])
        yield s, batch


def _clear_session_keeping_policy() -> None:
    """``keras.backend.clear_session()``, which also resets the dtype policy: put it back.

    The features are computed (and keyed) under the policy in force.
    """
    import keras

    policy = keras.config.dtype_policy()
    keras.backend.clear_session()
    keras.config.set_dtype_policy(policy)

