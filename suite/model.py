"""One model builder for every backbone: raw RGB -> preprocessing -> backbone -> head."""

from __future__ import annotations

import contextlib

import numpy as np

from backbones import BackboneSpec, create_backbone
from suite.config import RunConfig
from suite.errors import ConfigError

HEAD_STEPS_PER_EXECUTION = 16
# ImageNet channel means, RGB order, 0-255 scale, as Keras's "caffe" mode subtracts them.
IMAGENET_MEAN = np.array([123.68, 116.779, 103.939], dtype=np.float32)
# Keras's "torch" mode (DenseNet) uses the torchvision statistics instead, on the 0-1 scale;
# here scaled by 255 so that one Normalization layer does the whole of it.
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def preprocessing_layer(mode: str):
    """The backbone's input scaling as a standard Keras layer (saved with the model).

    Returns ``None`` when the backbone scales its own input.
    """
    import keras

    if mode == "none":
        return None
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf", dtype="float32")
    if mode == "torch":
        return keras.layers.Normalization(
            mean=TORCH_MEAN, variance=TORCH_STD**2, name="preprocess_torch", dtype="float32"
        )
    if mode == "caffe":
        return _caffe_layer()
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def _caffe_layer():
    """RGB -> BGR and minus the BGR means, as one frozen 1x1 linear map.

    A plain Dense layer with fixed weights, so ``keras.saving.load_model`` needs no
    custom code to load a saved ResNet model.
    """
    import keras

    layer = keras.layers.Dense(3, name="preprocess_caffe", trainable=False, dtype="float32")
    layer.build((None, 3))
    flip = np.eye(3, dtype=np.float32)[::-1]  # x @ flip reverses the channel order
    layer.set_weights([flip, -IMAGENET_MEAN[::-1].copy()])
    return layer


def check_image_size(spec: BackboneSpec, image_size: int) -> None:
    """Fail with a message naming the backbone's minimum when it cannot take ``image_size`` px.

    Raises:
        ConfigError: ``image_size`` is below ``spec.min_input_size``.
    """
    problem = spec.input_size_problem(image_size)
    if problem:
        raise ConfigError(problem)


def augmentation_layers(kind: str, seed: int) -> list:
    """Random layers that act in training only (Keras turns them off at inference)."""
    import keras

    if kind == "none":
        return []
    return [
        keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"),
        keras.layers.RandomRotation(0.05, fill_mode="constant", seed=seed + 1, name="aug_rotate"),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2, name="aug_zoom"),
    ]


# From random initialisation, BatchNorm's moving statistics start far from the data's.
# With the applications' momentum (0.999 in MobileNetV2) they need thousands of steps to
# catch up, so for the first epochs validation runs on stale statistics and the best
# checkpoint is chosen on noise. A faster average fixes that; pretrained weights keep theirs.
SCRATCH_BN_MOMENTUM = 0.9


def set_bn_momentum(backbone, momentum: float) -> None:
    """Set the moving-average momentum of every BatchNormalization layer in ``backbone``."""
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def set_trainable(backbone, finetune: str) -> bool:
    """Freeze the backbone as ``finetune`` says; returns whether BatchNorm runs in training mode.

    ``head`` freezes everything; ``top:N`` unfreezes the last N layers but keeps their
    BatchNormalization statistics frozen, as Keras's fine-tuning guide advises.
    """
    import keras

    if finetune == "all":
        backbone.trainable = True
        return True
    if finetune == "head":
        backbone.trainable = False
        return False
    n = int(finetune.split(":")[1])
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        top = i >= len(backbone.layers) - n
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
    return False


def build_model(spec: BackboneSpec, config: RunConfig, n_classes: int, weights: str | None):
    """Build and compile the classifier.

    The model takes raw RGB images with values 0-255 (any numeric dtype) and returns
    class probabilities; the backbone's own preprocessing is inside it.

    Args:
        spec: the backbone's registry entry.
        config: the run's configuration (image size, dropout, finetune, augment, lr).
        n_classes: width of the softmax.
        weights: the constructor's ``weights`` argument (see ``suite.weights``).
    """
    import keras

    size = config.image_size
    check_image_size(spec, size)
    inputs = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    x = inputs
    for layer in augmentation_layers(config.augment, config.training_seed):
        x = layer(x)
    pre = preprocessing_layer(spec.preprocessing)
    if pre is not None:
        x = pre(x)
    backbone = create_backbone(spec.name, input_size=size, weights=weights)
    if weights is None:
        set_bn_momentum(backbone, SCRATCH_BN_MOMENTUM)
    bn_training = set_trainable(backbone, config.finetune)
    x = backbone(x, training=None if bn_training else False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    for layer in classifier_head(config, n_classes):
        x = layer(x)
    model = keras.Model(inputs, x, name=f"{spec.name}_classifier")
    return compile_classifier(model, config)


def classifier_head(config: RunConfig, n_classes: int) -> list:
    """The layers after the pooled features: dropout, then the softmax classifier.

    Shared by :func:`build_model` and :func:`build_head_model`, so a head trained on cached
    features has the same layers (and layer names) as the head of the full model.
    """
    import keras

    return [
        keras.layers.Dropout(config.dropout, seed=config.training_seed, name="dropout"),
        # The softmax stays in float32 under mixed precision, for stable probabilities.
        keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs"),
    ]


def compile_classifier(model, config: RunConfig, *, steps_per_execution: int = 1):
    """Compile with Adam at ``config.learning_rate``, cross-entropy and accuracy; returns ``model``."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def build_feature_extractor(spec: BackboneSpec, config: RunConfig, weights: str | None):
    """Raw RGB -> preprocessing -> frozen backbone -> global average pooling, uncompiled.

    The layers are made in :func:`build_model`'s order, so with random initialisation and
    the same seed the backbone's weights are the same as the full model's.

    Args:
        spec: the backbone's registry entry.
        config: image size (augmentation is ignored: features are of un-augmented images).
        weights: the constructor's ``weights`` argument (see ``suite.weights``).
    """
    import keras

    size = config.image_size
    check_image_size(spec, size)
    inputs = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    x = inputs
    pre = preprocessing_layer(spec.preprocessing)
    if pre is not None:
        x = pre(x)
    backbone = create_backbone(spec.name, input_size=size, weights=weights)
    set_trainable(backbone, "head")
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    return keras.Model(inputs, x, name=f"{spec.name}_features")


def build_head_model(n_features: int, config: RunConfig, n_classes: int, *, dropout=None):
    """The classifier head alone, on pooled backbone features, compiled.

    Args:
        n_features: width of the feature vectors.
        config: dropout, seed and learning rate.
        n_classes: width of the softmax.
        dropout: a layer to use in place of the head's ``Dropout`` (``suite tune`` passes one
            whose rate it can change between trials); default ``None``, Keras's own.
    """
    import keras

    inputs = keras.Input(shape=(n_features,), name="features", dtype="float32")
    x = inputs
    layers = classifier_head(config, n_classes)
    if dropout is not None:
        layers[0] = dropout
    for layer in layers:
        x = layer(x)
    # A step of this tiny model costs less than dispatching it: run several per call.
    return compile_classifier(keras.Model(inputs, x, name="head"), config,
                              steps_per_execution=HEAD_STEPS_PER_EXECUTION)


@contextlib.contextmanager
def precision_scope(precision: str):
    """Set the dtype policy ``precision`` asks for on this machine; restore the previous one after.

    Yields:
        The policy name used (see :func:`set_precision`).
    """
    import keras

    from suite.runtime import accelerators

    previous = keras.config.dtype_policy()
    try:
        yield set_precision(precision, bool(accelerators()))
    finally:
        keras.config.set_dtype_policy(previous)


def set_precision(precision: str, on_accelerator: bool) -> str:
    """Set Keras's global dtype policy; returns the policy name used.

    ``auto`` means mixed bfloat16 on a GPU and float32 on a CPU.
    """
    import keras

    policy = {
        "fp32": "float32",
        "bf16": "mixed_bfloat16",
        "fp16": "mixed_float16",
        "auto": "mixed_bfloat16" if on_accelerator else "float32",
    }[precision]
    keras.config.set_dtype_policy(policy)
    return policy
