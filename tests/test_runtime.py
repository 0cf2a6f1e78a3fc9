"""Devices and speed: distribution strategies, the best-epoch checkpoint, TensorBoard logs, `suite bench`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from suite.cli import main
from suite.errors import SuiteError
from suite.runtime import resolve_strategy
from tests.imagegen import TINY_RUN

ROOT = Path(__file__).parents[1]


# ----------------------------------------------------------------------------------
# Strategy resolution
# ----------------------------------------------------------------------------------


def test_auto_strategy_follows_the_devices_and_the_cluster():
    assert resolve_strategy("auto", "tensorflow", 1, {}) == "none"
    assert resolve_strategy("auto", "tensorflow", 2, {}) == "mirrored"
    assert resolve_strategy("auto", "jax", 4, {}) == "mirrored"
    cluster = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker",
                                                                                     "index": 0}})}
    assert resolve_strategy("auto", "jax", 1, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) == "multiworker"
    with pytest.raises(SuiteError, match="multi-worker training with the TensorFlow backend"):
        resolve_strategy("auto", "tensorflow", 1, cluster)  # a TF_CONFIG cluster means multi-worker: refused
    assert resolve_strategy("auto", "torch", 2, {}) == "none"
    assert resolve_strategy("none", "tensorflow", 8, {}) == "none"


def test_multiworker_on_tensorflow_is_refused_naming_the_way_that_works():
    """Keras 3 cannot fit under MultiWorkerMirroredStrategy (two local workers fail in model.fit):
    the suite says so before making anything, explicit or picked by auto from TF_CONFIG."""
    cluster = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker",
                                                                                     "index": 0}})}
    for name, environ in (("multiworker", {}), ("auto", cluster)):
        with pytest.raises(SuiteError, match="keras-team/keras#20585.*KERAS_BACKEND=jax"):
            resolve_strategy(name, "tensorflow", 1, environ)
    assert resolve_strategy("multiworker", "jax", 1, {}) == "multiworker"


def test_cli_refuses_multiworker_on_tensorflow_before_any_run_folder(tmp_path, tiny_data, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), "--strategy", "multiworker"]) == 2
    assert "keras-team/keras#20585" in capsys.readouterr().err
    assert not out.exists()


def test_bad_strategies_are_refused_with_the_reason():
    with pytest.raises(SuiteError, match="unknown strategy"):
        resolve_strategy("horovod", "tensorflow", 1, {})
    with pytest.raises(SuiteError, match="tensorflow or jax"):
        resolve_strategy("mirrored", "torch", 2, {})
    with pytest.raises(SuiteError, match="not valid JSON"):
        resolve_strategy("auto", "tensorflow", 1, {"TF_CONFIG": "{oops"})


# ----------------------------------------------------------------------------------
# Mirrored training on two logical CPU devices
# ----------------------------------------------------------------------------------


def _history(run_dir: Path) -> dict:
    with open(run_dir / "history.csv", newline="") as f:
        return {k: float(v) for k, v in next(csv.DictReader(f)).items()}


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_trains_like_one_device(tmp_path, tiny_data):
    """The global batch is split over 2 replicas and their gradients combined: the epoch's loss
    equals one device's from the same seed. Dropout off and the backbone frozen, so the only
    difference left is the order of float additions (with a trained backbone, BatchNorm
    normalises each replica's half batch, as tf.distribute does, and the losses differ)."""
    from suite.commands.run import run

    recipe = ["--backbone", "mobilenetv2", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
              "--weights", "none", "--finetune", "head", "--dropout", "0", "--learning-rate", "0.05"]
    cmd = [sys.executable, "-m", "suite", "run", "--data", str(tiny_data), "--out", str(tmp_path / "mirrored"),
           "--strategy", "mirrored", "--cpu-devices", "2", "--quiet", *recipe]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    mirrored = Path(out.stdout.strip().splitlines()[-1])
    manifest = json.loads((mirrored / "manifest.json").read_text())
    assert manifest["strategy"] == "mirrored" and manifest["replicas"] == 2
    assert manifest["distribution"]["engine"] == "tf.distribute.MirroredStrategy"
    assert manifest["runtime"]["cpu_devices"] == 2 and manifest["status"] == "completed"

    single = run({"data": str(tiny_data), "out": str(tmp_path / "single"), "backbone": "mobilenetv2",
                  "image_size": 32, "epochs": 1, "batch_size": 8, "weights": "none", "finetune": "head",
                  "dropout": 0.0, "learning_rate": 0.05, "strategy": "none"}, progress=False, log=lambda m: None)
    assert json.loads((single / "manifest.json").read_text())["replicas"] == 1
    a, b = _history(mirrored), _history(single)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)


@pytest.mark.slow
def test_cpu_devices_after_the_backend_started_is_a_clear_error(tmp_path, tiny_data):
    """In this process TensorFlow runs already, on one CPU device: asking for two must say so."""
    import tensorflow as tf

    from suite.commands.run import run

    tf.constant(1.0)  # the runtime has started
    with pytest.raises(SuiteError, match="--cpu-devices"):
        run({"data": str(tiny_data), "out": str(tmp_path), "backbone": "mobilenetv2", **TINY_RUN,
             "cpu_devices": 3}, progress=False, log=lambda m: None)


# ----------------------------------------------------------------------------------
# The best-epoch checkpoint
# ----------------------------------------------------------------------------------


def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


@pytest.mark.slow
def test_checkpoint_holds_the_best_epoch_even_when_writes_are_deferred(tmp_path):
    """With no write budget mid-training, only the first improvement is written at once; the
    file still ends up holding the best epoch's weights, not the last epoch's."""
    import keras

    from suite.train import BestCheckpoint

    model, path = _tiny_model(), tmp_path / "model.keras"
    checkpoint = BestCheckpoint(path, max_overhead=0.0)
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    weights = {}
    for epoch, score in enumerate([0.3, 0.6, 0.5, 0.4]):
        model.set_weights([np.full_like(w, epoch + 1) for w in model.get_weights()])
        weights[epoch + 1] = model.get_weights()
        checkpoint.on_epoch_end(epoch, {"val_accuracy": score})
    assert checkpoint.writes_ == 1 and checkpoint.saved_epoch_ == 1  # epoch 2 was deferred
    checkpoint.on_train_end()
    assert checkpoint.best_epoch_ == 2 and checkpoint.saved_epoch_ == 2 and checkpoint.writes_ == 2
    saved = keras.saving.load_model(path).get_weights()
    assert all(np.array_equal(s, w) for s, w in zip(saved, weights[2]))
    assert all(np.array_equal(s, w) for s, w in zip(model.get_weights(), weights[4]))  # training state kept
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_training_that_fails_midway_keeps_its_best_epoch(tmp_path):
    import keras

    from suite.config import RunConfig
    from suite.train import BestCheckpoint, fit

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("disk full")

    model, path = _tiny_model(), tmp_path / "model.keras"
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(16, 3)).astype("float32"), np.arange(16) % 2
    checkpoint = BestCheckpoint(path, max_overhead=0.0)
    with pytest.raises(RuntimeError, match="disk full"):
        fit(model, RunConfig(epochs=5, batch_size=8), (x, y), (x, y), [checkpoint, Crash()], verbose=0)
    assert path.is_file() and checkpoint.saved_epoch_ == checkpoint.best_epoch_


def test_tensorboard_logs_hold_epoch_scalars_for_train_and_validation(runs_by_backbone):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs_by_backbone["mobilenetv2"]
    for part, tags in (("train", {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}),
                       ("validation", {"epoch_loss", "epoch_accuracy"})):
        events = EventAccumulator(str(run_dir / "logs" / part), size_guidance={"tensors": 0}).Reload()
        assert tags <= set(events.Tags()["tensors"]), part
        assert [e.step for e in events.Tensors("epoch_loss")] == [0]


# ----------------------------------------------------------------------------------
# suite bench
# ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_prints_one_json_object_with_both_loops(capsys):
    args = ["bench", "--backbone", "mobilenetv2", "--image-size", "32", "--batch-size", "8", "--steps", "3",
            "--epochs", "2", "--rounds", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # nothing but the JSON on stdout
    for key in ("suite_train_ips", "bare_fit_train_ips", "ratio", "infer_ips", "infer_ms_per_image", "device",
                "backend", "warmup_s"):
        assert key in result, key
    assert result["suite_train_ips"] > 0 and result["bare_fit_train_ips"] > 0
    assert result["ratio"] == pytest.approx(result["suite_train_ips"] / result["bare_fit_train_ips"], abs=2e-3)
    assert result["ratio_fastest_epochs"] > 0 and len(result["epoch_train_s"]["suite"]) == 1
    assert result["train_images"] == 24 and result["timed_epochs_per_side"] == 1
    assert result["backend"] == "tensorflow" and result["replicas"] == 1
    assert result["checkpoint"][0]["writes"] >= 1
    assert "bench: suite round 1" in captured.err


def test_bench_refuses_a_run_without_timed_epochs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--backbone", "mobilenetv2", "--epochs", "1"])
    assert exit_.value.code == 2
    assert "warm-up" in capsys.readouterr().err.strip().splitlines()[-1]


def test_tensorflow_retracing_notice_is_dropped_and_other_warnings_kept(caplog):
    import logging

    from suite.runtime import start_backend

    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("TensorFlow's logger")
    start_backend()
    logger = logging.getLogger("tensorflow")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        logger.warning("5 out of the last 5 calls to <function f> triggered tf.function retracing. Tracing is ...")
        logger.warning("something a user should see")
    assert [r.getMessage() for r in caplog.records] == ["something a user should see"]
