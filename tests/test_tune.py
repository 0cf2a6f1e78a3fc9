"""`suite tune`: a Keras Tuner search over the tiny data, its record, resume, CV scoring and the fast path."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from suite.cli import main
from suite.commands.tune import TuneSettings, plan_space
from suite.errors import SuiteError
from suite.search_space import DEFAULT_SPACE, SearchSpace, load_space
from suite.trials import TUNER_NAMES, HeadTrials

TINY_ARGS = ["--backbone", "mobilenetv2", "--image-size", "32", "--epochs", "1", "--weights", "none", "--quiet"]


def tune_cli(*args) -> tuple[int, Path | None, str]:
    """Run ``suite tune`` in this process: exit status, the folder it printed, what it logged."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["tune", *map(str, args)])
    lines = out.getvalue().strip().splitlines()
    return status, (Path(lines[-1]) if lines else None), err.getvalue()


def read(folder: Path, name: str = "tuning.json") -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def trial_files(folder: Path) -> dict[str, dict[str, int]]:
    """``{trial_id: {file name: mtime_ns}}`` of every file Keras Tuner and the suite keep per trial."""
    return {d.name.removeprefix("trial_"): {f.name: f.stat().st_mtime_ns for f in d.iterdir()}
            for d in sorted((folder / "keras_tuner").glob("trial_*"))}


# ----------------------------------------------------------------------------------
# Searches shared by several tests (each runs once per module)
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_search(tiny_data, tmp_path_factory) -> Path:
    """The full path: every trial builds and trains the whole model; fine-tuning is searched."""
    out = tmp_path_factory.mktemp("tune-full")
    status, folder, log = tune_cli("--data", tiny_data, "--out", out, *TINY_ARGS, "--tuner", "random",
                                   "--max-trials", 3, "--batch-size", 8)
    assert status == 0, log
    assert folder.parent == out
    return folder


@pytest.fixture(scope="module")
def resumed_search(tiny_data, tmp_path_factory) -> dict:
    """The fast path scored by validation macro-F1 over 2-fold CV, with a space file that fixes the
    batch size, narrows the learning rate and offers a dropout that fails; 2 trials, then resumed to 3.
    """
    root = tmp_path_factory.mktemp("tune-resume")
    space = root / "space.toml"
    space.write_text('[batch_size]\nvalue = 8\n\n[learning_rate]\nmin = 1e-3\nmax = 1e-2\nsampling = "log"\n\n'
                     '[dropout]\nvalues = [0.2, 1.5]\n', encoding="utf-8")
    common = ["--data", tiny_data, *TINY_ARGS, "--finetune", "head", "--cv", 2, "--space", space,
              "--objective", "val_macro_f1", "--out", root / "runs"]
    status, folder, log = tune_cli(*common, "--max-trials", 2)
    assert status == 0, log
    first = read(folder)
    before = trial_files(folder)
    cache_meta = Path(first["embeddings"]["path"]) / "meta.json"
    cache_mtime = cache_meta.stat().st_mtime_ns
    status, again, log2 = tune_cli(*common, "--resume", folder, "--max-trials", 3)
    assert status == 0, log2
    assert again == folder
    return {"folder": folder, "first": first, "second": read(folder), "before": before,
            "after": trial_files(folder), "cache_meta": cache_meta, "cache_mtime": cache_mtime,
            "log": log + log2, "resume_log": log2}


# ----------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------


def test_search_writes_tuning_json_and_report(full_search):
    tuning = read(full_search)
    assert full_search.name.endswith("-tune-mobilenetv2")
    assert tuning["status"] == "completed" and tuning["tuner"] == "random"
    assert tuning["objective"] == "val_accuracy" and tuning["fast_path"] is False
    trials = tuning["trials"]
    assert len(trials) == 3 and len({t["trial_id"] for t in trials}) == 3
    done = [t for t in trials if t["status"] == "COMPLETED"]
    assert done, trials
    assert tuning["best"]["score"] == max(t["score"] for t in done)
    assert tuning["best"]["trial_id"] in {t["trial_id"] for t in done}
    assert tuning["test_metrics"]["n_test"] == 16 and 0 <= tuning["test_metrics"]["accuracy"] <= 1
    assert tuning["data_fingerprint"] and tuning["backbone"] == "mobilenetv2"
    report = (full_search / "report.html").read_text(encoding="utf-8")
    assert "Best settings" in report and all(f">{t['trial_id']}<" in report for t in trials)
    assert not list(full_search.glob(".*.tmp*"))


def test_best_settings_are_retrained_as_a_normal_run(full_search):
    tuning = read(full_search)
    run_dir = full_search / tuning["best_run"]["run_dir"]
    manifest = read(run_dir, "manifest.json")
    assert manifest["status"] == "completed"
    for name, value in tuning["best"]["hyperparameters"].items():
        assert manifest["config"][name] == value, name
    assert (run_dir / "model.keras").is_file() and (run_dir / "report.html").is_file()
    assert read(run_dir, "metrics.json")["accuracy"] == tuning["test_metrics"]["accuracy"]


def test_every_trial_is_a_tensorboard_hparams_session(full_search):
    """``tensorboard --logdir TUNING/tensorboard`` shows the search: read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    trials = read(full_search)["trials"]
    logdirs = sorted((full_search / "tensorboard").iterdir())
    assert [d.name for d in logdirs] == [f"trial_{t['trial_id']}" for t in trials]
    for logdir, trial in zip(logdirs, trials):
        events = EventAccumulator(str(logdir))
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert start.group_name == trial["trial_id"]
        assert set(start.hparams) == set(trial["hyperparameters"])
        assert start.hparams["learning_rate"].number_value == pytest.approx(trial["hyperparameters"]["learning_rate"])
        if trial["status"] == "COMPLETED":
            (score,) = events.Tensors("val_accuracy")
            assert score.tensor_proto.float_val[0] == pytest.approx(trial["score"], abs=1e-6)
            assert len(events.Tensors("epoch_val_accuracy")) == 1  # one epoch a trial here


def test_a_run_flag_fixes_its_setting(full_search):
    tuning = read(full_search)
    assert tuning["space"]["batch_size"] == {"value": 8}
    assert {t["hyperparameters"]["batch_size"] for t in tuning["trials"]} == {8}


def test_space_file_is_respected_in_every_trial(resumed_search):
    tuning = resumed_search["second"]
    assert tuning["space"]["dropout"] == {"values": [0.2, 1.5]}
    for trial in tuning["trials"]:
        values = trial["hyperparameters"]
        assert values["batch_size"] == 8
        assert 1e-3 <= values["learning_rate"] <= 1e-2
        assert values["dropout"] in (0.2, 1.5)


def test_a_failing_trial_is_recorded_and_the_search_goes_on(resumed_search):
    folder, tuning = resumed_search["folder"], resumed_search["first"]
    trials = sorted(tuning["trials"], key=lambda t: int(t["trial_id"]))
    assert len(trials) == 2
    failed = [t for t in trials if t["status"] == "FAILED"]
    assert failed and all(t["hyperparameters"]["dropout"] == 1.5 for t in failed)
    assert all("dropout must be in [0, 1)" in t["error"] and t["score"] is None for t in failed)
    completed = [t for t in trials if t["status"] == "COMPLETED"]
    assert completed and all(t["hyperparameters"]["dropout"] == 0.2 for t in completed)
    assert int(failed[0]["trial_id"]) < max(int(t["trial_id"]) for t in completed), "search went on"
    assert tuning["status"] == "completed" and tuning["test_metrics"] is not None
    assert "dropout must be in [0, 1)" in (folder / "report.html").read_text(encoding="utf-8")


def test_report_compares_best_with_default_and_escapes_text(full_search, tmp_path):
    """The comparison section from a record that has default metrics (the distributed test makes one for real)."""
    from reports.tuning import write_tuning_report

    tuning = read(full_search)
    tuning["default_test_metrics"] = {**tuning["test_metrics"], "accuracy": 0.125, "accuracy_ci": [0.0, 0.3]}
    tuning["default_hyperparameters"] = {"learning_rate": 1e-3, "dropout": 0.5, "batch_size": 8}
    tuning["trials"][0].update(status="FAILED", score=None, error="ValueError: <script>alert(1)</script>")
    (tmp_path / "tuning.json").write_text(json.dumps(tuning), encoding="utf-8")
    html = write_tuning_report(tmp_path).read_text(encoding="utf-8")
    assert "Best versus default settings" in html and "0.125 [0.000, 0.300]" in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html


# ----------------------------------------------------------------------------------
# Resume, cross-validated scoring, the fast path
# ----------------------------------------------------------------------------------


def test_resume_runs_only_the_missing_trials(resumed_search):
    before, after = resumed_search["before"], resumed_search["after"]
    assert len(before) == 2 and len(after) == 3
    for trial_id, files in before.items():
        assert after[trial_id] == files, f"trial {trial_id} was rewritten"
    ids = [t["trial_id"] for t in resumed_search["second"]["trials"]]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3
    assert {t["trial_id"] for t in resumed_search["first"]["trials"]} <= set(ids)
    assert "resuming: 2 trial(s) on record" in resumed_search["resume_log"]


def test_resume_refuses_changed_settings(resumed_search, tiny_data):
    status, _, log = tune_cli("--data", tiny_data, *TINY_ARGS, "--finetune", "head", "--cv", 2,
                              "--objective", "val_accuracy", "--resume", resumed_search["folder"])
    assert "space" in log  # no --space this time: the space differs too
    assert status == 2 and "settings differ" in log and "objective" in log


def test_cv_scores_a_trial_by_the_mean_of_its_folds(resumed_search):
    tuning = resumed_search["second"]
    assert tuning["cv"] == 2 and tuning["objective"] == "val_macro_f1"
    completed = [t for t in tuning["trials"] if t["status"] == "COMPLETED"]
    assert len(completed) >= 2
    for trial in completed:
        assert len(trial["fold_scores"]) == 2
        assert trial["score"] == pytest.approx(np.mean(trial["fold_scores"]))
        assert all(0 <= s <= 1 for s in trial["fold_scores"])


def test_fast_path_caches_embeddings_and_trains_only_the_head(resumed_search):
    first, second = resumed_search["first"], resumed_search["second"]
    assert first["fast_path"] and second["fast_path"]
    assert second["embeddings"]["cache_hit"] is True
    assert second["embeddings"]["key"] == first["embeddings"]["key"]
    assert resumed_search["cache_meta"].stat().st_mtime_ns == resumed_search["cache_mtime"]
    assert "embeddings: cache hit" in resumed_search["resume_log"]
    width, n_classes = second["embeddings"]["width"], len(second["labels"])
    for trial in second["trials"]:
        assert trial["hyperparameters"]["augment"] == "none"
        if trial["status"] == "COMPLETED":
            # The dense layer, and the dropout rate the reused head holds as a variable.
            assert trial["params"] == (width + 1) * n_classes + 1, "a trial model holds more than the head"
    assert any("augmentation" in note for note in second["notes"])
    best = read(resumed_search["folder"] / second["best_run"]["run_dir"], "manifest.json")
    assert best["status"] == "completed" and best["params"] > 100 * (width + 1) * n_classes  # a full model


@pytest.mark.slow
def test_cached_features_are_the_full_models_pooled_features(tiny_data):
    """Same seed, same weights: the fast path's features (as cached) are what the full model's head sees."""
    import keras

    from backbones import get_spec
    from suite.commands.run import prepare
    from suite.embeddings import load_or_compute
    from suite.model import build_feature_extractor, build_model

    prepared = prepare({"data": str(tiny_data), "backbone": "mobilenetv2", "image_size": 32, "weights": "none",
                        "finetune": "head"}, progress=False, log=lambda m: None)
    spec, config, x = get_spec("mobilenetv2"), prepared.config, prepared.data.arrays("val")[0]
    keras.utils.set_random_seed(config.seed)
    full = build_model(spec, config, 4, None)
    pooled = keras.Model(full.inputs, full.get_layer("pool").output).predict(x, verbose=0)
    keras.utils.set_random_seed(config.seed)
    features = build_feature_extractor(spec, config, None).predict(x, verbose=0)
    assert np.abs(pooled).max() > 0
    np.testing.assert_allclose(features, pooled, rtol=1e-4, atol=0)
    cached = load_or_compute(prepared, np.sort(prepared.data.split.val), "float32", log=lambda m: None)
    # computed from a graph with the weights folded in as constants: equal to float rounding
    np.testing.assert_allclose(cached.take(prepared.data.split.val), pooled, rtol=1e-4,
                               atol=1e-5 * np.abs(pooled).max())


HEAD_TRIAL = {"learning_rate": 3e-3, "dropout": 0.0, "batch_size": 8, "finetune": "head", "augment": "none"}


@pytest.fixture(scope="module")
def head_trials(tiny_data):
    """A factory of fast-path trial runners over the tiny data (2 epochs per trial).

    A randomly initialised backbone's pooled features of the tiny images are all but zero, so
    a head would learn nothing from them and every setting would score alike. The runners get
    features a head can learn from instead: a class signal in noise, for the same rows.
    """
    from suite.commands.run import prepare
    from suite.embeddings import Embeddings

    flags = {"data": str(tiny_data), "backbone": "mobilenetv2", "image_size": 32, "weights": "none",
             "finetune": "head", "epochs": 2}
    prepared = prepare(flags, progress=False, log=lambda m: None)
    space, _, _ = plan_space(TuneSettings(), flags)
    rows = np.union1d(prepared.data.split.train, prepared.data.split.val)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(rows), 32)).astype(np.float32)
    features[np.arange(len(rows)), prepared.data.y[rows]] += 1.5
    embeddings = Embeddings(features, rows, Path("synthetic"), "synthetic", cache_hit=True, seconds=0.0)

    def make(cls=HeadTrials):
        runner = cls(prepared, "val_accuracy", None, space.names, log=lambda m: None)
        runner.embeddings_ = embeddings
        return runner

    return make


def history(trial_dir: Path) -> np.ndarray:
    """A trial's ``history.csv`` without its timing column."""
    table = np.genfromtxt(trial_dir / "history.csv", delimiter=",", names=True)
    return np.array([table[c] for c in table.dtype.names if c != "seconds"])


def run_trial(runner, trial_id: str, values: dict, root: Path) -> tuple[float, np.ndarray]:
    trial_dir = root / trial_id
    trial_dir.mkdir()
    return runner.run(trial_id, values, trial_dir)["val_accuracy"], history(trial_dir)


OTHER_TRIALS = ({"dropout": 0.5}, {"batch_size": 16, "learning_rate": 1e-2}, {"dropout": 0.3, "batch_size": 4})


def test_a_reused_head_trains_as_a_fresh_one(head_trials, tmp_path):
    """One head serves every trial: whatever trained it before, a trial learns as on a new head."""
    runner = head_trials()
    first, first_history = run_trial(runner, "0", HEAD_TRIAL, tmp_path)
    for k, other in enumerate(OTHER_TRIALS):
        other_score, other_history = run_trial(runner, f"other{k}", {**HEAD_TRIAL, **other}, tmp_path)
        assert other_history.shape == first_history.shape and 0 <= other_score <= 1
        assert not np.array_equal(other_history, first_history), f"{other} changed nothing"
        again, again_history = run_trial(runner, f"again{k}", HEAD_TRIAL, tmp_path)
        assert again == first, f"after {other}"
        np.testing.assert_array_equal(again_history, first_history)
    fresh, fresh_history = run_trial(head_trials(), "fresh", HEAD_TRIAL, tmp_path)
    assert len(runner.heads_) == 1, "the trials did not share one head"
    assert fresh == first
    np.testing.assert_array_equal(fresh_history, first_history)


def test_a_reused_head_learns_as_a_keras_head(head_trials, tmp_path):
    """At dropout 0 the reused head computes what a head built by ``build_head_model`` computes."""
    import keras

    from suite.model import build_head_model
    from suite.train import HistoryCSV, schedule_callbacks

    runner = head_trials()
    run_trial(runner, "0", {**HEAD_TRIAL, "dropout": 0.4, "learning_rate": 1e-2}, tmp_path)
    _, reused = run_trial(runner, "1", HEAD_TRIAL, tmp_path)
    config = runner.trial_config(HEAD_TRIAL)
    (train_rows, val_rows), = runner.folds_
    emb, y = runner.embeddings_, runner.prepared.data.y
    keras.utils.set_random_seed(config.seed)
    model = build_head_model(emb.width, config, runner.n_classes_)
    (tmp_path / "keras").mkdir()
    runner.fit(model, config, (emb.take(train_rows), y[train_rows]), (emb.take(val_rows), y[val_rows]),
               schedule_callbacks(config) + [HistoryCSV(tmp_path / "keras" / "history.csv")])
    np.testing.assert_allclose(reused, history(tmp_path / "keras"), rtol=1e-6)


class SometimesInterrupted(HeadTrials):
    """Fast-path trials whose training an error stops after the first epoch while ``interrupt`` is set."""

    interrupt = False

    def fit(self, model, config, train, val, callbacks):
        import keras

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise RuntimeError("interrupted mid-training")

        return super().fit(model, config, train, val, callbacks + ([Interrupt()] if self.interrupt else []))


def test_a_trial_failing_mid_training_is_recorded_and_the_next_trains_as_before(head_trials, tmp_path):
    runner = head_trials(SometimesInterrupted)
    first, first_history = run_trial(runner, "0", HEAD_TRIAL, tmp_path)
    runner.interrupt = True
    with pytest.raises(RuntimeError, match="interrupted"):
        run_trial(runner, "1", {**HEAD_TRIAL, "learning_rate": 1e-2}, tmp_path)
    record = read(tmp_path / "1", "suite_trial.json")
    assert record["status"] == "FAILED" and "interrupted mid-training" in record["error"]
    runner.interrupt = False
    again, again_history = run_trial(runner, "2", HEAD_TRIAL, tmp_path)
    assert again == first
    np.testing.assert_array_equal(again_history, first_history)


def test_the_reused_heads_dropout_rate_is_a_variable():
    from suite.trials import variable_rate_dropout

    layer = variable_rate_dropout(0.0, seed=1)
    x = np.ones((200, 50), dtype="float32")
    np.testing.assert_array_equal(np.asarray(layer(x, training=True)), x)
    layer.rate.assign(0.25)
    out = np.asarray(layer(x, training=True))
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert abs((out == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


class ScoreByLearningRate:
    """A trial runner that trains nothing: the score peaks at a learning rate of 1e-3."""

    def run(self, trial_id, values, trial_dir):
        return {"val_accuracy": 1 - abs(np.log10(values["learning_rate"]) + 3) / 2}

    def log(self, message):
        raise AssertionError(f"unexpected warning: {message}")


@pytest.mark.parametrize("tuner", TUNER_NAMES)
def test_every_oracle_drives_the_suite_tuner(tuner, tmp_path):
    from suite.config import RunConfig
    from suite.trials import best_of, collect_trials, run_search

    settings = TuneSettings(tuner=tuner, max_trials=4)
    space, _, _ = plan_space(settings, {"finetune": "head", "batch_size": 8, "dropout": 0.2})
    config = RunConfig(epochs=3, finetune="head")
    tuner_obj, stopped = run_search(tmp_path, settings, space, config, ScoreByLearningRate(), lambda m: None)
    trials = collect_trials(tuner_obj.oracle, tmp_path, settings.objective)
    assert stopped is None and len(trials) == 4
    assert all(t["status"] == "COMPLETED" for t in trials)
    assert best_of(trials)["score"] == max(t["score"] for t in trials)
    if tuner == "hyperband":
        assert all(1 <= t["hyperparameters"]["tuner/epochs"] <= 3 for t in trials)


# ----------------------------------------------------------------------------------
# The search space and the plan (no training)
# ----------------------------------------------------------------------------------


def test_space_file_overrides_and_fixes(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[learning_rate]\nmin = 1e-4\nmax = 1e-2\nsampling = "log"\n[finetune]\nvalues = ["head", '
                    '"top:20"]\n[augment]\nvalue = "none"\n', encoding="utf-8")
    space = load_space(path)
    assert space["finetune"].values == ("head", "top:20") and space.fixed("augment") == "none"
    assert space["dropout"] == DEFAULT_SPACE["dropout"]
    hp = space.to_hyperparameters()
    assert {p.name for p in hp.space} == set(space.names)
    assert hp.values["augment"] == "none"


@pytest.mark.parametrize("text, message", [
    ('[momentum]\nvalue = 0.9\n', "searchable settings: learning_rate"),
    ('[finetune]\nmin = 1\nmax = 2\n', "unknown key"),
    ('[dropout]\nvalues = ["x"]\n', "expected float"),
    ('[learning_rate]\nmin = 0.0\nmax = 1e-2\nsampling = "log"\n', "needs min > 0"),
    ('[batch_size]\nmin = 64\nmax = 16\n', "min must be below max"),
    ('[dropout\n', "cannot read"),
])
def test_bad_space_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_space(path)


def test_fast_path_fixes_augmentation_and_refuses_light(tmp_path):
    space, fast, notes = plan_space(TuneSettings(), {"finetune": "head"})
    assert fast and space.fixed("augment") == "none" and notes
    space, fast, _ = plan_space(TuneSettings(fast_path=False), {"finetune": "head"})
    assert not fast and space.fixed("augment") is None
    assert plan_space(TuneSettings(), {})[1] is False  # fine-tuning searched: no fast path
    with pytest.raises(SuiteError, match="--no-fast-path"):
        plan_space(TuneSettings(), {"finetune": "head", "augment": "light"})


def test_search_space_is_declared_once():
    assert isinstance(DEFAULT_SPACE, SearchSpace)
    assert set(DEFAULT_SPACE.names) == {"learning_rate", "dropout", "finetune", "augment", "batch_size"}
    assert DEFAULT_SPACE.fix("batch_size", 16).fixed("batch_size") == 16
