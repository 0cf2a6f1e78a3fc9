"""`suite export`: artifacts per format, reloaded by their own runtimes, parity with model.keras, honest records."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from suite import export, runs
from suite.cli import main
from suite.errors import SuiteError

FORMATS = export.format_names()


# -- the engine's pieces, without a model --------------------------------------------------------------

def test_parity_counts_agreement_and_tells_a_tie_from_a_wrong_class():
    reference = np.array([[0.7, 0.2, 0.1], [0.50004, 0.49996, 0.0], [0.6, 0.4, 0.0]], dtype=np.float32)
    swapped = reference.copy()
    swapped[1] = [0.49996, 0.50004, 0.0]  # within 1e-4 of model.keras: the top-1 swap is a tie
    result = export.parity(reference, swapped, atol=1e-4)
    assert (result["top1_agree"], result["top1_ties"], result["top1_total"]) == (2, 1, 3)
    assert result["parity_ok"] and result["max_abs_diff"] <= 1e-4
    wrong = reference.copy()
    wrong[2] = [0.4, 0.6, 0.0]
    result = export.parity(reference, wrong, atol=1e-4)
    assert not result["parity_ok"] and result["top1_agree"] == 2 and result["top1_ties"] == 0
    assert "top-1 differs from model.keras on 1 of 3 images" in export.parity_failure(result)
    result = export.parity(reference, np.full_like(reference, np.nan))
    assert not result["parity_ok"] and result["max_abs_diff"] is None


def test_a_format_keras_cannot_make_under_the_backend_is_skipped_saying_so():
    why = export.get_format("litert").unavailable("jax")
    assert "under the jax backend" in why["reason"] and "KERAS_BACKEND=tensorflow" in why["reason"]


def test_a_missing_converter_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` now fails as if not installed
    why = export.get_format("onnx").unavailable("tensorflow")
    assert why["install"] == "pip install tf2onnx" and "tf2onnx" in why["reason"]


def test_an_unknown_format_lists_the_registered_ones():
    with pytest.raises(KeyError, match="choose from tf_saved_model, onnx, litert"):
        export.get_format("coreml")


def test_a_missing_run_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tmp_path / "absent"), "--format", "onnx"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "no such folder" in err


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp, "is not a run folder"),
    (lambda tmp: _manifest_only(tmp), "has no model.keras"),
])
def test_a_folder_that_is_no_finished_run_is_refused_before_anything_is_made(tmp_path, make, message):
    with pytest.raises(SuiteError, match=message):
        export.export_run(make(tmp_path))
    assert not (tmp_path / runs.EXPORT_DIR).exists()


def _manifest_only(folder: Path) -> Path:
    runs.write_manifest(folder, {"status": "completed", "config": {"image_size": 32}})
    return folder


@pytest.mark.slow
def test_onnx_of_a_model_holding_constant_tensors_is_redone_from_the_frozen_graph(tmp_path):
    """Keras's tf2onnx route leaves a Normalization layer's mean and variance (as EfficientNet holds them)
    as graph inputs; the export notices and converts the frozen graph, with one input named image."""
    import keras

    if keras.backend.backend() != "tensorflow" or export.get_format("onnx").unavailable("tensorflow"):
        pytest.skip("the tf2onnx route needs the TensorFlow backend and tf2onnx")
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 3000.0, 3000.0])(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    images = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    expected = model.predict(images, verbose=0)  # Keras exports only a model that has been called
    path = tmp_path / runs.ONNX_MODEL
    route = export.get_format("onnx").export(model, path)
    assert route and "frozen graph" in route
    probs = export.predict(export.get_format("onnx").load(path), images)
    assert export.parity(expected, probs)["parity_ok"]


# -- one real export of a tiny trained run, shared ------------------------------------------------------

@pytest.fixture(scope="module")
def run_copy(runs_by_backbone, tmp_path_factory) -> Path:
    """A copy of the tiny mobilenetv2 run, so exports land in a run folder no other test reads."""
    return Path(shutil.copytree(runs_by_backbone["mobilenetv2"], tmp_path_factory.mktemp("export") / "run"))


@pytest.fixture(scope="module")
def exported(run_copy) -> tuple[Path, dict]:
    """Every registered format, exported once into the default folder (RUN/export)."""
    return export.export_run(run_copy, progress=False)


@pytest.fixture(scope="module")
def sample(run_copy) -> tuple[np.ndarray, np.ndarray]:
    """A few of the run's test images, raw, and model.keras's probabilities for them."""
    run = runs.RunFolder(run_copy)
    _, images = export.run_test_images(run, progress=False)
    return images[:5], run.load_model().predict(images[:5], verbose=0)


def _installed(record: dict, name: str) -> dict:
    entry = record["formats"][name]
    if entry["status"] == "skipped":
        pytest.skip(f"{name} not exportable here: {entry['reason']}")
    return entry


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_each_installed_format_exports_reloads_and_matches_model_keras(exported, run_copy, sample, name):
    folder, record = exported
    entry = _installed(record, name)
    assert entry["status"] == "ok", entry["reason"]
    n_test = sum(1 for _ in csv.DictReader(open(run_copy / runs.PREDICTIONS, encoding="utf-8")))
    assert entry["parity_ok"] and entry["max_abs_diff"] <= export.PARITY_ATOL
    assert entry["top1_agree"] + entry["top1_ties"] == entry["top1_total"] == n_test == record["parity"]["images"]
    assert entry["latency_b1_ms"] > 0 and entry["latency_b32_ms"] > 0 and entry["versions"]
    # reloaded here on its own, on raw 0-255 float32 images, it answers as model.keras does
    images, expected = sample
    probs = export.predict(export.get_format(name).load(folder / entry["path"]), images)
    assert np.abs(probs - expected).max() <= export.PARITY_ATOL


@pytest.mark.slow
def test_export_json_and_labels_json_agree_with_the_folder(exported, run_copy):
    folder, record = exported
    assert folder == run_copy / runs.EXPORT_DIR
    on_disk = json.loads((folder / runs.EXPORT).read_text(encoding="utf-8"))
    assert on_disk["formats"] == json.loads(json.dumps(record["formats"]))
    ok = {name: e for name, e in on_disk["formats"].items() if e["status"] == "ok"}
    assert on_disk["status"] == "ok" and ok, on_disk
    assert {p.name for p in folder.iterdir()} == {runs.EXPORT, runs.EXPORT_LABELS} | {e["path"] for e in ok.values()}
    for entry in ok.values():
        assert export.size_bytes(folder / entry["path"]) == entry["size_bytes"] > 0
    labels = json.loads((folder / runs.EXPORT_LABELS).read_text(encoding="utf-8"))
    run = runs.RunFolder(run_copy)
    assert labels["labels"] == run.labels and labels["image_size"] == run.image_size == on_disk["image_size"]
    assert labels["input"]["dtype"] == "float32" and labels["input"]["range"] == [0, 255]
    assert labels["formats"] == {name: e["path"] for name, e in ok.items()}
    assert on_disk["reference"]["latency_b1_ms"] > 0
    assert [p.name for p in run_copy.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def _copying_exporter(artifact: Path):
    """An exporter that copies a finished artifact: the command's checks without a second conversion."""
    def copy(model, path):
        (shutil.copytree if artifact.is_dir() else shutil.copyfile)(artifact, path)
    return copy


@pytest.mark.slow
def test_broken_parity_fails_naming_the_format_and_a_missing_converter_is_a_recorded_skip(
        exported, monkeypatch, tmp_path, capsys):
    folder, record = exported
    name = next(n for n, e in record["formats"].items() if e["status"] == "ok" and n != "onnx")
    fmt = export.get_format(name)

    def perturbed(path):
        runner = fmt.load(path)
        return lambda x: runner(x) + 0.01
    monkeypatch.setitem(export.FORMATS, name, dataclasses.replace(
        fmt, export=_copying_exporter(folder / fmt.artifact), load=perturbed))
    for converter in ("tf2onnx", "jax2onnx"):  # importing either now fails, as if not installed
        monkeypatch.setitem(sys.modules, converter, None)
    out = tmp_path / "out"
    assert main(["export", str(folder.parent), "--format", name, "--format", "onnx", "--out", str(out),
                 "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert f"error: {name} export failed: parity failed" in captured.err and "error: onnx" not in captured.err
    formats = json.loads((out / runs.EXPORT).read_text(encoding="utf-8"))["formats"]
    broken, skipped = formats[name], formats["onnx"]
    assert broken["status"] == "failed" and broken["path"] is None and broken["max_abs_diff"] > export.PARITY_ATOL
    assert not (out / fmt.artifact).exists()
    assert skipped["status"] == "skipped" and skipped["install"].startswith("pip install ")
    assert "pip install" in skipped["reason"] and not (out / runs.ONNX_MODEL).exists()


@pytest.mark.slow
def test_a_stopped_export_leaves_the_earlier_one_and_nothing_half_made(exported, monkeypatch, tmp_path):
    folder, _ = exported
    out = tmp_path / "out"
    shutil.copytree(folder, out)
    before = sorted(p.name for p in out.iterdir())

    def interrupted(model, path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt
    fmt = export.get_format("onnx")
    monkeypatch.setitem(export.FORMATS, fmt.name, dataclasses.replace(fmt, export=interrupted))
    assert main(["export", str(folder.parent), "--format", fmt.name, "--out", str(out), "--quiet"]) == 130
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the half-made folder is gone
