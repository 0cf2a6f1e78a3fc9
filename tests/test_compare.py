"""`suite compare`, `suite evaluate` and `suite predict` on real (tiny) trained models."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from backbones import expand_backbones
from suite.cli import main
from tests.imagegen import make_dataset

REFERENCE = sorted(expand_backbones("reference"))  # the backbones the shared comparison trains

LEADERBOARD_COLUMNS = ["backbone", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "macro_f1_ci_low",
                       "macro_f1_ci_high", "roc_auc_macro", "ece", "params", "train_s", "infer_ms_per_image",
                       "infer_images_per_s"]
LABELS = ["glioma", "meningioma", "pituitary", "no_tumor"]


def _leaderboard(comparison: Path) -> list[dict]:
    with open(comparison / "leaderboard.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_leaderboard_has_every_column_and_backbone(comparison):
    rows = _leaderboard(comparison)
    assert sorted(r["backbone"] for r in rows) == REFERENCE
    columns = set(rows[0])
    for column in LEADERBOARD_COLUMNS + [f"recall_{x}" for x in LABELS] + [f"f1_{x}" for x in LABELS]:
        assert column in columns, column
    assert json.loads((comparison / "leaderboard.json").read_text())[0]["backbone"] == rows[0]["backbone"]


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_confidence_intervals_contain_their_estimates(comparison, metric):
    for row in _leaderboard(comparison):
        low, point, high = (float(row[f"{metric}_ci_low"]), float(row[metric]), float(row[f"{metric}_ci_high"]))
        assert low <= point <= high, row["backbone"]


def test_every_pair_is_tested_on_the_same_split(comparison):
    comp = json.loads((comparison / "comparison.json").read_text())
    n = len(REFERENCE)
    assert len(comp["pairwise"]) == n * (n - 1) // 2
    assert comp["split_fingerprint"] is not None
    assert len(set(comp["split_fingerprints"].values())) == 1
    matrix = comp["p_matrix"]["values"]
    assert len(matrix) == n and all(matrix[i][i] is None for i in range(n))
    for test in comp["pairwise"]:
        assert 0 <= test["p_holm"] <= 1 and test["p_holm"] >= test["p_value"]
        assert test["a"] in test["sentence"] and test["b"] in test["sentence"]
    assert set(comp["tiers"]) == set(REFERENCE)


def test_gradcam_sample_is_shared_by_every_backbone(comparison):
    comp = json.loads((comparison / "comparison.json").read_text())
    heat = np.load(comparison / comp["gradcam"]["file"])
    n = len(comp["gradcam"]["paths"])
    assert n > 0
    for name in REFERENCE:
        maps = heat[name]
        assert maps.shape[0] == n and maps.min() >= 0 and maps.max() <= 1
        assert heat[f"{name}__probs"].shape == (n, 4)


def test_comparison_report_and_index_are_written(comparison):
    assert (comparison / "report.html").is_file()
    index = (comparison.parent / "index.html").read_text(encoding="utf-8")
    assert comparison.name in index


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the mismatched weights file
def test_a_failing_backbone_is_recorded_and_the_others_complete(tiny_data, tmp_path, capsys):
    """A weights file that fits one backbone and not the other: the second fails, the first completes."""
    from backbones import create_backbone

    weights = tmp_path / "mobilenetv2.weights.h5"
    create_backbone("mobilenetv2", input_size=32, weights=None).save_weights(weights)
    code = main(["compare", "--backbones", "mobilenetv2,resnet50", "--data", str(tiny_data),
                 "--out", str(tmp_path / "runs"), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--weights", str(weights), "--quiet"])
    assert code == 1  # after finishing the others, and saying which failed
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith("error: 1 of the backbones failed: resnet50 (")
    folder = Path(captured.out.strip().splitlines()[-1])
    rows = {r["backbone"]: r for r in _leaderboard(folder)}
    assert rows["mobilenetv2"]["status"] == "completed" and rows["mobilenetv2"]["accuracy"]
    assert rows["resnet50"]["status"] == "failed" and rows["resnet50"]["error"]
    assert "resnet50" in (folder / "report.html").read_text(encoding="utf-8")


def test_evaluate_on_a_second_dataset_with_an_unseen_class(runs_by_backbone, tmp_path, capsys):
    data = make_dataset(tmp_path / "external", layout="flat", folders=("Glioma", "no tumor", "astrocytoma"),
                        n_train=3, n_test=0, seed=7)
    run_dir = runs_by_backbone["mobilenetv2"]
    assert main(["evaluate", str(run_dir), "--data", str(data), "--out", str(tmp_path / "evals"), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n_test"] == 6  # glioma + no_tumor; the unseen class is reported, not scored
    assert metrics["unseen_classes"]["astrocytoma"]["n"] == 3
    assert sum(metrics["unseen_classes"]["astrocytoma"]["predicted"].values()) == 3
    assert metrics["per_class"]["glioma"]["support"] == 3
    assert (folder / "report.html").is_file() and (folder / "predictions.csv").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "evaluation" and "astrocytoma" in manifest["warnings"][0]


def test_predict_prints_every_class_probability(runs_by_backbone, tiny_data, tmp_path, capsys):
    image = next((tiny_data / "Testing" / "glioma_tumor").iterdir())
    copy = tmp_path / "scan (1) ü.png"
    shutil.copy(image, copy)
    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image")
    code = main(["predict", str(runs_by_backbone["resnet50"]), str(copy), str(junk), "--json"])
    results = json.loads(capsys.readouterr().out)
    assert code == 1  # one file could not be read
    assert results[0]["predicted"] in LABELS
    assert set(results[0]["probabilities"]) == set(LABELS)
    assert sum(results[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert "not an image" in results[1]["error"]


@pytest.mark.slow
def test_run_and_compare_give_the_same_flags_the_same_configuration(tiny_data, tmp_path):
    """No --image-size and no dataset card: both train at the reference 150 px, not the backbone's native 224."""
    flags = ["--epochs", "1", "--batch-size", "8", "--weights", "none", "--data", str(tiny_data), "--quiet"]
    assert main(["run", "--backbone", "mobilenetv2", "--out", str(tmp_path / "run"), *flags]) == 0
    assert main(["compare", "--backbones", "mobilenetv2", "--out", str(tmp_path / "compare"), *flags]) == 0
    configs = {}
    for side in ("run", "compare"):
        manifest = next((tmp_path / side).glob("*-mobilenetv2/manifest.json"))
        configs[side] = {k: v for k, v in json.loads(manifest.read_text())["config"].items() if k != "out"}
    assert configs["run"] == configs["compare"]
    assert configs["run"]["image_size"] == 150


def _external_set(tiny_data: Path, root: Path) -> Path:
    """A test-only "external" dataset: 2 training images per class copied as they are, 2 new ones per class."""
    make_dataset(root / "new", n_train=1, n_test=2, seed=7)
    external = root / "External Set <b>"
    for folder in (tiny_data / "Training").iterdir():
        target = external / "Testing" / folder.name
        target.mkdir(parents=True)
        for path in sorted(folder.iterdir())[:2]:
            shutil.copy(path, target / f"copy-{path.name}")
        for path in sorted((root / "new" / "Testing" / folder.name).iterdir()):
            shutil.copy(path, target / f"new-{path.name}")
    return external


@pytest.mark.slow
def test_seeds_and_external_sets_in_one_comparison(tiny_data, tmp_path, capsys):
    """compare --backbones mobilenetv2,efficientnetb0 --external DIR --seeds 2 --robustness: per-seed,
    per-external and robustness columns, every replicate kept and gated, and the report renders in headless
    Chromium."""
    out = tmp_path / "runs"
    external = _external_set(tiny_data, tmp_path)
    code = main(["compare", "--backbones", "mobilenetv2,efficientnetb0", "--seeds", "2", "--data", str(tiny_data),
                 "--external", str(external), "--out", str(out), "--image-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--weights", "none", "--robustness", "--quiet"])
    assert code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    _check_external_columns(folder)
    _check_robustness_columns(folder)
    _check_report_renders(folder, tmp_path)
    comp = json.loads((folder / "comparison.json").read_text())
    assert comp["seeds"] == 2 and all(len(m["seeds"]) == 2 for m in comp["runs"])
    assert {t["method"] for t in comp["pairwise"]} == {"bootstrap over test images (paired) and seeds"}
    rows = json.loads((folder / "leaderboard.json").read_text())
    assert {r["n_seeds"] for r in rows} == {2} and all(r["accuracy_sd"] is not None for r in rows)
    per_seed = json.loads((folder / "leaderboard_seeds.json").read_text())
    assert sorted((r["backbone"], r["replicate"]) for r in per_seed) == [
        ("efficientnetb0", 0), ("efficientnetb0", 1), ("mobilenetv2", 0), ("mobilenetv2", 1)]
    configs = {}
    for member in comp["runs"]:
        for seed in member["seeds"]:
            config = json.loads(((folder / seed["run_dir"]) / "manifest.json").read_text())["config"]
            configs[(member["backbone"], seed["replicate"])] = config
            assert config["replicate"] == seed["replicate"] and config["seed"] == 0
    split = {json.loads(((folder / s["run_dir"]) / "manifest.json").read_text())["split_fingerprint"]
             for m in comp["runs"] for s in m["seeds"]}
    assert len(split) == 1  # one split for every seed and backbone
    assert main(["check", "--require", "accuracy>=0", str(folder)]) == 0
    assert "4 passed" in capsys.readouterr().out  # every replicate is gated


def _check_external_columns(folder: Path) -> None:
    comp = json.loads((folder / "comparison.json").read_text())
    assert [e["name"] for e in comp["externals"]] == ["External Set <b>"]
    slug = comp["externals"][0]["slug"]
    assert slug == "external_set_b"
    with open(folder / "leaderboard.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    for figure in ("accuracy", "balanced_accuracy", "leak_free_accuracy", "contamination", "drop"):
        assert f"ext_{slug}_{figure}" in header
    rows = json.loads((folder / "leaderboard.json").read_text())
    for row in rows:
        assert row[f"ext_{slug}_contamination"] == pytest.approx(0.5)  # 8 copies among 16 images
    with open(folder / "leaderboard_seeds.csv", newline="", encoding="utf-8") as f:
        per_seed = list(csv.DictReader(f))
    assert len(per_seed) == 4 and all(r[f"ext_{slug}_accuracy"] for r in per_seed)


def _check_robustness_columns(folder: Path) -> None:
    """Every replicate scored under the corruptions; the leaderboard's cells are the mean of its replicates'."""
    from suite.metrics import ROBUSTNESS_COLUMNS

    comp = json.loads((folder / "comparison.json").read_text())
    rows = {r["backbone"]: r for r in json.loads((folder / "leaderboard.json").read_text())}
    for member in comp["runs"]:
        records = []
        for seed in member["seeds"]:
            scored = seed["robustness"]
            assert scored["error"] is None
            records.append(json.loads((folder / scored["folder"] / "robustness.json").read_text()))
            assert records[-1]["source_run"] == str((folder / seed["run_dir"]).resolve())
        for column in ROBUSTNESS_COLUMNS[:1]:
            expected = np.mean([r[column] for r in records])
            assert rows[member["backbone"]][column] == pytest.approx(expected)
        assert rows[member["backbone"]]["leak_free_mean_corruption_accuracy"] is not None
    assert 'id="robustness"' in (folder / "report.html").read_text(encoding="utf-8")


def _check_report_renders(folder: Path, tmp_path: Path) -> None:
    from tests.test_browser import CHROMIUM, _chromium

    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "External Set &lt;b&gt;" in html and "Seed spread" in html
    if CHROMIUM is None:
        pytest.skip("no chromium: the report was written but not opened in a browser")
    result = _chromium(tmp_path, folder / "report.html", "--virtual-time-budget=5000", "--dump-dom")
    assert 'id="external"' in result.stdout and 'id="seeds"' in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_run_with_seeds_compares_the_replicates_of_one_backbone(tiny_data, tmp_path, capsys):
    code = main(["run", "--backbone", "mobilenetv2", "--seeds", "2", "--data", str(tiny_data),
                 "--out", str(tmp_path / "runs"), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--weights", "none", "--quiet"])
    assert code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    comp = json.loads((folder / "comparison.json").read_text())
    assert [m["backbone"] for m in comp["runs"]] == ["mobilenetv2"] and len(comp["runs"][0]["seeds"]) == 2
