"""--weights auto|imagenet: offline behaviour and the messages users see."""

from __future__ import annotations

import pytest

from backbones import get_spec
from suite.errors import WeightsError
from suite.weights import keras_cache_dir, resolve_weights


def test_imagenet_unavailable_fails_fast_naming_file_and_folder():
    with pytest.raises(WeightsError) as err:
        resolve_weights(get_spec("efficientnetb0"), "imagenet", 64)
    message = str(err.value)
    assert "efficientnetb0_notop.h5" in message and str(keras_cache_dir()) in message


def test_auto_falls_back_to_random_with_a_warning():
    choice = resolve_weights(get_spec("mobilenetv2"), "auto", 64)
    assert choice.argument is None and choice.source == "random"
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in choice.warning


def test_cached_imagenet_file_is_used_without_download():
    spec = get_spec("resnet50")
    path = keras_cache_dir() / spec.weights_filename(150)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")
    try:
        choice = resolve_weights(spec, "auto", 150)
    finally:
        path.unlink()
    assert choice.argument == "imagenet" and choice.warning is None


def test_missing_weights_file():
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(get_spec("resnet50"), "/nonexistent/w.weights.h5", 64)
