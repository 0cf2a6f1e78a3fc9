"""The whole zoo: every spec is sane, selections expand, and each non-reference backbone builds,
preprocesses like Keras, trains, saves and reloads in a fresh process.

The reference backbones have their own, fuller tests in test_backbones.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from backbones import PREPROCESSING_MODES, expand_backbones, get_spec, list_backbones
from suite.cli import main

ALL = expand_backbones("all")
REFERENCE = expand_backbones("reference")
ZOO = [n for n in ALL if n not in REFERENCE]


# --- quick: the specs themselves ------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_spec_fields_are_sane(name):
    s = get_spec(name)
    assert s.name == name == s.name.lower()
    assert s.family and s.family == s.family.lower()
    assert s.family == name or s.family not in ALL, "a family named like another backbone hides it"
    module, attr = s.constructor.split(":")
    assert module == "keras.applications" and attr.lower() == name
    assert 32 <= s.min_input_size <= s.input_size <= 600
    assert s.preprocessing in PREPROCESSING_MODES
    assert s.feature_width > 0
    assert s.weights_file.endswith(".h5") and ("notop" in s.weights_file or "no_top" in s.weights_file)
    assert "{size}" not in s.weights_filename(s.input_size)
    assert s.params_m is not None and 1 < s.params_m < 200
    assert s.top1 is not None and 60 < s.top1 < 90


def test_registry_order_groups_families():
    families = [get_spec(n).family for n in ALL]
    seen = []
    for family in families:
        if not seen or seen[-1] != family:
            assert family not in seen, f"family {family} is split in the registry"
            seen.append(family)


@pytest.mark.parametrize("selection,expected", [
    ("efficientnet*", ["efficientnetb0", "efficientnetb1", "efficientnetb2", "efficientnetb3",
                       "efficientnetv2b0", "efficientnetv2b1", "efficientnetv2s"]),
    ("efficientnet", ["efficientnetb0", "efficientnetb1", "efficientnetb2", "efficientnetb3"]),
    ("convnext", ["convnexttiny", "convnextsmall"]),
    ("vgg16,convnext", ["convnexttiny", "convnextsmall", "vgg16"]),  # registry order, not the given one
    ("mobilenet,mobilenetv2", ["mobilenetv2", "mobilenetv3small", "mobilenetv3large"]),  # overlap once
    ("resnet*", ["resnet50", "resnet101", "resnet50v2"]),
    ("ResNet50", ["resnet50"]),
    ("reference", ["efficientnetb0", "resnet50", "mobilenetv2"]),
    (" all ", ALL),
])
def test_selection_expands_in_registry_order(selection, expected):
    assert expand_backbones(selection) == expected


def test_all_is_every_registered_backbone():
    assert sorted(ALL) == list_backbones() and len(ALL) >= 19


@pytest.mark.parametrize("selection", ["nope", "efficientnet*,vit*", "resnet5"])
def test_selection_matching_nothing_lists_the_names(selection):
    with pytest.raises(KeyError) as err:
        expand_backbones(selection)
    message = err.value.args[0]
    assert "matches no backbone" in message and "families: " in message
    for name in ALL:
        assert name in message


@pytest.mark.parametrize("selection", ["", " , ", "vgg16,VGG16"])
def test_empty_or_repeated_selection_is_an_error(selection):
    with pytest.raises(ValueError):
        expand_backbones(selection)


def test_backbones_flag_expands_and_rejects(capsys):
    from suite.cli import build_parser

    args = build_parser().parse_args(["compare", "--backbones", "convnext,vgg*"])
    assert args.backbones == ("convnexttiny", "convnextsmall", "vgg16")
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--backbones", "transformer*"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'transformer*' matches no backbone" in err and "efficientnetv2s" in err


def test_listing_shows_every_backbone_with_its_columns_without_tensorflow():
    code = ("import sys; from suite.cli import main; rc = main(['list']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'; "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "family", "params", "size", "top-1", "preprocessing", "features"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == ALL
    for name, row in rows.items():
        s = get_spec(name)
        assert row == [name, s.family, f"{s.params_m:.1f}M", str(s.input_size), f"{s.top1:.1f}%",
                       s.preprocessing, str(s.feature_width)]


def test_listing_a_family(capsys):
    assert main(["list", "convnext"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["convnexttiny",
                                                                                     "convnextsmall"]
    assert main(["list", "nothing*"]) == 1
    assert "matches no backbone" in capsys.readouterr().err


@pytest.mark.parametrize("name,size", [("xception", 70), ("inceptionv3", 74)])
def test_too_small_image_names_the_minimum(name, size):
    from backbones import create_backbone
    from suite.config import RunConfig
    from suite.errors import ConfigError
    from suite.model import build_model

    spec = get_spec(name)
    message = f"{name} needs images of at least {spec.min_input_size} px, got {size}"
    with pytest.raises(ConfigError, match=message):
        build_model(spec, RunConfig(backbone=name, image_size=size, weights="none"), 4, None)
    with pytest.raises(ValueError, match=message):
        create_backbone(name, input_size=size)


# --- slow: one build-train-save-reload per non-reference backbone ----------------------------

# Loads each saved model in a process that never imported the suite (as a user would) and prints
# its probabilities. One such process serves every backbone, so TensorFlow starts once, not 16 times.
_RELOADER = """
import sys, numpy as np, keras
for line in sys.stdin:
    model_path, x_path, out_path = line.split()
    try:
        m = keras.saving.load_model(model_path)
        np.save(out_path, np.asarray(m(np.load(x_path), training=False)))
        print("ok", flush=True)
    except Exception as exc:
        print("error", type(exc).__name__, str(exc).replace(chr(10), " ")[:500], flush=True)
    keras.backend.clear_session()
"""


@pytest.fixture(scope="module")
def reloader(tmp_path_factory):
    """``reload(model_path, x) -> probabilities`` computed in a fresh Python process."""
    folder = tmp_path_factory.mktemp("reloader")
    log = open(folder / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", _RELOADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True, cwd=folder, env={**os.environ, "PYTHONPATH": ""})

    def reload(model_path, x):
        x_path, out_path = model_path.with_suffix(".x.npy"), model_path.with_suffix(".p.npy")
        np.save(x_path, x)
        proc.stdin.write(f"{model_path} {x_path} {out_path}\n")
        proc.stdin.flush()
        answer = proc.stdout.readline().strip()
        assert answer == "ok", answer or (folder / "stderr.txt").read_text()[-3000:]
        return np.load(out_path)

    yield reload
    proc.stdin.close()
    proc.wait(timeout=60)
    log.close()


def _in_model_preprocessing(model, x):
    """What reaches the backbone at inference: the model's layers before it, applied to ``x``."""
    import keras

    out = x
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return np.asarray(out), layer
        if isinstance(layer, keras.layers.InputLayer) or layer.name.startswith("aug_"):
            continue  # augmentation is the identity at inference
        out = layer(out)
    raise AssertionError("no backbone in the model")


# Building and training all 16 (one eager step each) takes about 2.5 minutes of CPU: they run when asked, in
# their own tier, which CI runs after the suite (`--dist load`: spread one by one over the workers).
ZOO_ENV = "SUITE_ZOO"


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.skipif(not os.environ.get(ZOO_ENV), reason=f"the zoo tier (2.5 min; CI runs it): set {ZOO_ENV}=1")
@pytest.mark.parametrize("name", ZOO)
def test_zoo_backbone_builds_preprocesses_trains_saves_and_reloads(name, tmp_path, reloader):
    """At the smallest size the backbone takes, batch of 2, random initialisation."""
    import importlib

    import keras

    from suite.config import RunConfig
    from suite.model import build_model

    spec = get_spec(name)
    size = spec.min_input_size
    model = build_model(spec, RunConfig(backbone=name, image_size=size, weights="none"), 4, None)

    # Preprocessing inside the model is Keras's own preprocess_input for this application.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2, size, size, 3)).astype("float32")
    keras_module = importlib.import_module(spec.load_constructor().__module__)
    expected = np.asarray(keras_module.preprocess_input(x.copy()))
    got, backbone = _in_model_preprocessing(model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    if spec.preprocessing == "none":  # preprocess_input is a pass-through: the application scales itself
        own = [layer for layer in backbone.layers[:4]
               if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))]
        assert own, f"{name}: preprocessing 'none' but the application has no scaling layer of its own"
    assert backbone.output_shape[-1] == spec.feature_width

    # One training step moves the backbone's weights. Eagerly: tracing the step of a deep backbone costs a
    # minute on 2 cores, and the gradients are the same.
    model.run_eagerly = True
    y = keras.utils.to_categorical([0, 3], 4)
    before = [w.numpy().copy() for w in backbone.trainable_weights[:3]]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, backbone.trainable_weights[:3]))

    # Saved, reloaded in a fresh process: raw 0-255 RGB in, the same probabilities out.
    path = tmp_path / f"{name}.keras"
    model.save(path)
    probs = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(reloader(path, x), probs, atol=1e-5)
