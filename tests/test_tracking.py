"""Experiment tracking: result folders logged to a real local MLflow store and read back with
``MlflowClient``; a search's trials as TensorBoard HParams events, read back with TensorBoard's reader."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from suite import tracking
from suite.cli import main
from suite.errors import SuiteError
from tests.comparefixture import BACKBONES, EVIL, FAILED, build_every_kind
from tests.imagegen import TINY_RUN


def cli(*args) -> tuple[int, str, str]:
    """Run the suite in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


# Tests that log to a store are slow: making a SQLite store's tables takes MLflow several seconds
# (once per module), importing it two; what a store would receive is checked in the quick tier on
# the records alone.


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: an experiment per test, the tables made once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(store_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return MlflowClient(tracking_uri=store_uri)


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory) -> dict:
    """Hand-written comparison, CV, search and audit folders (tests/comparefixture.py): nothing trains."""
    return build_every_kind(tmp_path_factory.mktemp("kinds"))


def children(client, parent_id: str) -> dict:
    run = client.get_run(parent_id)
    found = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in found}


def artifacts(client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def test_records_hold_what_a_store_receives(every_kind):
    """Reading is apart from logging: the records of a comparison, a CV and a search, without a store."""
    comp = tracking.read_folder(every_kind["comp"])
    assert {c.name for c in comp.children} == {*BACKBONES, FAILED[0]}
    run = next(c for c in comp.children if c.name == "mobilenetv2")
    assert (run.metrics["accuracy"], run.metrics["accuracy_ci_low"]) == (0.90, 0.769)
    assert len(run.history["val_accuracy"]) == 6 and run.tags["synthetic_data"] == "true"
    assert [c.failed for c in comp.children if c.name == FAILED[0]] == [True] and comp.failed
    cv = tracking.read_folder(every_kind["cv"])
    assert [c.name for c in cv.children] == ["fold-1", "fold-2"] and cv.params["k"] == "2"
    search = tracking.read_folder(every_kind["tuning"])
    assert [c.name for c in search.children] == ["trial 00", "trial 01", "trial 02", "best (trial 02)"]
    assert search.children[1].failed and search.metrics["best_val_accuracy"] == 0.875


@pytest.mark.slow
def test_a_comparison_is_a_parent_run_with_one_child_per_backbone(client, every_kind):
    parent_id = tracking.track_folder(every_kind["comp"], experiment="compare-fixture")
    parent = client.get_run(parent_id)
    assert parent.info.run_name == every_kind["comp"].name
    assert parent.data.params["seeds"] == "1"
    assert {"comparison.json", "leaderboard.csv"} <= artifacts(client, parent_id)
    kids = children(client, parent_id)
    assert set(kids) == {*BACKBONES, FAILED[0]}
    for name, (folder, _, accuracy, ci, _, _) in BACKBONES.items():
        metrics = kids[name].data.metrics
        assert (metrics["accuracy"], metrics["accuracy_ci_low"], metrics["accuracy_ci_high"]) == (accuracy, *ci)
        assert kids[name].info.status == "FINISHED"
        assert kids[name].data.tags["suite.folder"].endswith(folder)
    # a label outside MLflow's key alphabet is still logged, its figures under a cleaned name
    assert "f1__script_alert_1___script_" in kids[EVIL].data.metrics
    failed = kids[FAILED[0]]
    assert failed.info.status == "FAILED" and "OOM" in failed.data.tags["error"]
    assert "accuracy" not in failed.data.metrics


@pytest.mark.slow
def test_a_run_logs_settings_history_metrics_tags_and_files(client, every_kind):
    run_dir = every_kind["out"] / BACKBONES["mobilenetv2"][0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    run_id = tracking.track_folder(run_dir, experiment="one-run")
    run = client.get_run(run_id)
    assert {k: run.data.params[k] for k in manifest["config"]} == {k: str(v) for k, v in manifest["config"].items()}
    history = client.get_metric_history(run_id, "epoch_val_accuracy")
    assert [m.step for m in history] == list(range(6)) and len(history) == 6  # one value per epoch
    assert len(client.get_metric_history(run_id, "accuracy")) == 1  # the test accuracy, apart from epoch_accuracy
    assert {"macro_f1", "macro_f1_ci_low", "f1_glioma", "f1_glioma_ci_high"} <= set(run.data.metrics)
    tags = run.data.tags
    assert (tags["backbone"], tags["split_fingerprint"], tags["synthetic_data"]) == ("mobilenetv2",
                                                                                      "sha256:split-0001", "true")
    assert {"metrics.json", "predictions.csv", "manifest.json", "history.csv"} <= artifacts(client, run_id)


@pytest.mark.slow
def test_cv_folds_and_search_trials_are_nested(client, every_kind):
    cv_id = tracking.track_folder(every_kind["cv"], experiment="nested")
    assert set(children(client, cv_id)) == {"fold-1", "fold-2"}
    assert client.get_run(cv_id).data.metrics["accuracy_mean"] == pytest.approx(0.925)
    assert "official_test_accuracy" in children(client, cv_id)["fold-2"].data.metrics

    tune_id = tracking.track_folder(every_kind["tuning"], experiment="nested")
    kids = children(client, tune_id)
    assert set(kids) == {"trial 00", "trial 01", "trial 02", "best (trial 02)"}
    assert kids["trial 02"].data.metrics["val_accuracy"] == 0.875
    assert kids["trial 02"].data.params["dropout"] == "0.2"
    assert kids["trial 01"].info.status == "FAILED"
    assert client.get_run(tune_id).data.metrics["best_val_accuracy"] == 0.875


@pytest.mark.slow
def test_track_command_logs_folders_and_refuses_what_it_cannot(client, every_kind):
    status, out, err = cli("track", every_kind["evaluation"], "--experiment", "afterwards")
    assert status == 0, err
    first = out.strip()
    assert client.get_run(first).data.tags["suite.kind"] == "evaluation"
    assert client.get_run(first).data.tags[tracking.LOGGED_TAG] == "complete"
    experiment = client.get_run(first).info.experiment_id
    status, out, err = cli("track", every_kind["evaluation"], "--experiment", "afterwards")
    assert (status, out.strip()) == (0, first) and "already logged in full" in err  # not logged twice
    assert len(client.search_runs([experiment])) == 1
    status, out, err = cli("track", every_kind["evaluation"], "--experiment", "afterwards", "--again")
    assert status == 0 and out.strip() != first and len(client.search_runs([experiment])) == 2
    half = client.create_run(experiment, tags={"suite.run_id": every_kind["evaluation"].name,  # a stopped attempt
                                               "suite.folder": str(every_kind["evaluation"].resolve())})
    assert tracking.find_logged(every_kind["evaluation"], experiment="afterwards") in {first, out.strip()}
    assert tracking.find_logged(every_kind["evaluation"], experiment="elsewhere") is None
    assert half.info.run_id != tracking.find_logged(every_kind["evaluation"], experiment="afterwards")
    status, out, err = cli("track", every_kind["cv"], every_kind["audit"])
    assert status == 2 and out == ""  # checked before anything is logged
    assert err.startswith("error: cannot track") and "kind audit" in err and len(err.splitlines()) == 1
    status, _, err = cli("track", every_kind["search"])  # still running: nothing to log yet
    assert status == 2 and "has not finished" in err


@pytest.mark.slow  # importing MLflow and trying the store: seconds
def test_an_unreachable_store_is_one_warning_and_keeps_the_folder(every_kind, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")  # the store's folder cannot be made
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    lines = []
    run_dir = every_kind["out"] / BACKBONES["efficientnetb0"][0]
    before = sorted(p.name for p in run_dir.iterdir())
    assert tracking.track_or_warn(run_dir, log=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("warning: MLflow tracking failed")
    assert f"python -m suite track {run_dir}" in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == before


@pytest.mark.parametrize("command", ["run", "compare", "cv", "tune"])
def test_without_mlflow_track_fails_before_training_with_the_install_command(command, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    status, out, err = cli(command, "--track", "mlflow", "--out", tmp_path / "runs", "--epochs", "1")
    assert status == 2 and out == ""
    assert 'pip install "mri-backbone-suite[track]"' in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_experiment_without_track_is_refused(tmp_path):
    status, _, err = cli("run", "--experiment", "x", "--out", tmp_path)
    assert status == 2 and "--track mlflow" in err


def test_track_is_not_a_run_setting():
    from suite.config import RunConfig

    # resuming with or without --track is allowed because a run's identity never holds it
    assert "track" not in RunConfig().identity() and "experiment" not in RunConfig().identity()


def read_events(path: Path) -> list:
    """The events of a TensorBoard file, parsed from its record format (length, CRC, data, CRC) without
    TensorFlow, which TensorBoard's own readers import (seconds; the tune tests read with them)."""
    import struct

    from tensorboard.compat.proto.event_pb2 import Event

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        events.append(Event.FromString(data[at + 12:at + 12 + length]))
        at += 12 + length + 4
    return events


def test_trial_events_hold_hparams_and_scores(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    had_tensorflow = "tensorflow" in sys.modules
    trial_dir = tmp_path / "keras_tuner" / "trial_07"
    trial_dir.mkdir(parents=True)
    (trial_dir / "suite_trial.json").write_text(json.dumps({"status": "COMPLETED", "score": 0.75}))
    (trial_dir / "history.csv").write_text("epoch,accuracy,loss,val_accuracy\n1,0.5,1.2,0.6\n2,0.7,0.9,0.75\n")
    path = tracking.write_trial_events(tmp_path / "tensorboard" / "trial_07", "07",
                                       {"learning_rate": 0.003, "finetune": "head", "tuner/epochs": 2},
                                       trial_dir, "val_accuracy")
    assert had_tensorflow or "tensorflow" not in sys.modules  # written without TensorFlow
    assert path.name.startswith("events.out.tfevents.")
    values = [(e.step, v) for e in read_events(path) for v in e.summary.value]
    (start,) = [plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                for _, v in values if v.metadata.plugin_data.plugin_name == "hparams"]
    hparams = start.session_start_info.hparams
    assert hparams["learning_rate"].number_value == 0.003 and hparams["finetune"].string_value == "head"
    assert start.session_start_info.group_name == "07"
    steps = {}
    for step, v in values:
        steps.setdefault(v.tag, []).append(step)
    assert steps["val_accuracy"] == [0] and steps["epoch_val_accuracy"] == steps["epoch_loss"] == [1, 2]


@pytest.mark.slow
def test_run_track_mlflow_end_to_end_in_the_default_store(tiny_data, tmp_path, monkeypatch):
    """The one CLI test that trains: a tiny run, logged to OUT/mlflow.db with its model."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "runs"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items()]
    status, stdout, err = cli("run", "--data", tiny_data, "--out", out, "--backbone", "mobilenetv2", *flags, "--quiet",
                              "--track", "mlflow")
    assert status == 0, err
    run_dir = Path(stdout.strip())
    assert "tracked in MLflow" in err
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert run.info.status == "FINISHED" and run.data.tags["backbone"] == manifest["backbone"]
    assert run.data.metrics["accuracy"] == json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == manifest["epochs_run"]
    assert {"model.keras", "report.html", "metrics.json", "predictions.csv"} <= artifacts(client, run.info.run_id)
    assert (out / "mlartifacts").is_dir()


def test_a_trained_comparison_logs_every_backbone_with_its_model(client, comparison):
    """The shared trained comparison (no training of its own): a child per backbone, each with its model."""
    comp = json.loads((comparison / "comparison.json").read_text())
    parent_id = tracking.track_folder(comparison, experiment="trained")
    kids = children(client, parent_id)
    assert set(kids) == {r["backbone"] for r in comp["runs"]}
    for r in comp["runs"]:
        run_dir = comparison / r["run_dir"]
        child = kids[r["backbone"]]
        assert child.data.metrics["accuracy"] == json.loads((run_dir / "metrics.json").read_text())["accuracy"]
        epochs = json.loads((run_dir / "manifest.json").read_text())["epochs_run"]
        assert len(client.get_metric_history(child.info.run_id, "epoch_val_accuracy")) == epochs
        assert "model.keras" in artifacts(client, child.info.run_id)


def test_read_folder_refuses_a_folder_that_is_not_ours(tmp_path):
    with pytest.raises(SuiteError, match="not a result folder"):
        tracking.read_folder(tmp_path)
