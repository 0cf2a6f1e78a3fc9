"""The registry, each backbone's in-model preprocessing, fine-tuning and weights files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from backbones import (
    BackboneSpec,
    create_backbone,
    expand_backbones,
    get_spec,
    is_backbone,
    list_backbones,
    register_backbone,
)

# The reference backbones get every test here; the rest of the zoo is tested in test_zoo.py.
BACKBONES = expand_backbones("reference")

# What Keras's own preprocess_input does for each registered backbone.
KERAS_PREPROCESS = {
    "efficientnetb0": "keras.applications.efficientnet",
    "resnet50": "keras.applications.resnet50",
    "mobilenetv2": "keras.applications.mobilenet_v2",
}


def test_reference_backbones_are_registered():
    assert BACKBONES == ["efficientnetb0", "resnet50", "mobilenetv2"]
    assert list_backbones("mobilenetv2*") == ["mobilenetv2"]
    assert is_backbone("resnet50") and not is_backbone("vgg99")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="efficientnetb0, .*mobilenetv2, .*resnet50"):
        get_spec("vgg99")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(lambda: BackboneSpec("resnet50", "keras.applications:ResNet50", 224, "caffe", 2048, "x.h5"))


def test_mobilenet_weights_file_follows_input_size():
    spec = get_spec("mobilenetv2")
    assert spec.weights_filename(128).endswith("_1.0_128_no_top.h5")
    assert spec.weights_filename(150).endswith("_1.0_224_no_top.h5")


def test_listing_does_not_import_tensorflow():
    code = ("import sys; from suite.cli import main; main(['list']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in BACKBONES:
        assert name in out.stdout


@pytest.mark.slow  # builds a full model
@pytest.mark.parametrize("name", BACKBONES)
def test_preprocessing_inside_model_matches_keras(name):
    """The layer the suite puts in front of the backbone computes Keras's preprocess_input."""
    import importlib

    from suite.model import preprocessing_layer

    x = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    expected = importlib.import_module(KERAS_PREPROCESS[name]).preprocess_input(x.copy())
    layer = preprocessing_layer(get_spec(name).preprocessing)
    got = x if layer is None else np.asarray(layer(x))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", BACKBONES)
def test_feature_width_matches_spec(name):
    backbone = create_backbone(name, input_size=32, weights=None)
    assert backbone.output_shape[-1] == get_spec(name).feature_width


@pytest.mark.slow  # builds a full model
@pytest.mark.parametrize("name", BACKBONES)
def test_weights_file_is_loaded(name, tmp_path):
    """--weights PATH: a weights file the test writes itself ends up in the model."""
    import keras

    from suite.config import RunConfig
    from suite.model import build_model
    from suite.weights import resolve_weights

    keras.utils.set_random_seed(123)
    source = create_backbone(name, input_size=32, weights=None)
    path = tmp_path / f"{name}.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(999)  # a different initialisation, which the file must override
    choice = resolve_weights(get_spec(name), str(path), 32)
    assert choice.source == f"file:{path}"
    config = RunConfig(backbone=name, image_size=32, weights=str(path))
    model = build_model(get_spec(name), config, 4, choice.argument)
    loaded = next(layer for layer in model.layers if layer.name == source.name)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("finetune,trainable", [("all", "all"), ("head", "none"), ("top:5", "some")])
def test_finetune_modes(finetune, trainable):
    from suite.config import RunConfig
    from suite.model import build_model

    spec = get_spec("mobilenetv2")
    model = build_model(spec, RunConfig(backbone=spec.name, image_size=32, finetune=finetune), 4, None)
    backbone = model.get_layer(next(layer.name for layer in model.layers if layer.name.startswith("mobilenetv2")))
    n = len(backbone.trainable_weights)
    total = len([w for w in backbone.weights if "moving" not in w.path])
    expected = {"all": n == total, "none": n == 0, "some": 0 < n < total}[trainable]
    assert expected, (finetune, n, total)
    assert len(model.trainable_weights) >= 2  # the classifier head always trains


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.slow
def test_batchnorm_adapts_fast_from_random_initialisation(name, tmp_path):
    """Random init: every BatchNorm uses the fast momentum; a weights file keeps the application's own."""
    import keras

    from suite.config import RunConfig
    from suite.model import SCRATCH_BN_MOMENTUM, build_model

    spec = get_spec(name)
    config = RunConfig(backbone=name, image_size=32)

    def momenta(model):
        backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        return {layer.momentum for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert momenta(build_model(spec, config, 4, None)) == {SCRATCH_BN_MOMENTUM}
    path = tmp_path / "w.weights.h5"
    create_backbone(name, input_size=32, weights=None).save_weights(path)
    assert SCRATCH_BN_MOMENTUM not in momenta(build_model(spec, config, 4, str(path)))
