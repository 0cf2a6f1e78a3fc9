"""`suite run` end to end: every backbone, a real tiny dataset, the complete run folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backbones import expand_backbones
from suite.cli import main
from suite.commands.run import run
from suite.errors import DataError
from tests.imagegen import TINY_RUN as TINY
from tests.imagegen import make_dataset

REFERENCE = sorted(expand_backbones("reference"))  # the backbones the shared comparison trains

RUN_FILES = ("manifest.json", "history.csv", "metrics.json", "predictions.csv", "model.keras", "report.html")
MANIFEST_KEYS = ("config", "data_fingerprint", "class_counts", "split_fingerprint", "skipped", "weights",
                 "backend", "device", "package_versions", "seed", "timings", "cache_hit", "dataset")


@pytest.mark.parametrize("name", REFERENCE)
def test_run_folder_is_complete(runs_by_backbone, name):
    run_dir = runs_by_backbone[name]
    assert run_dir.name.endswith(f"-{name}")
    for f in RUN_FILES:
        assert (run_dir / f).is_file(), f
    assert any((run_dir / "logs").rglob("*tfevents*")), "TensorBoard logs"
    assert not list(run_dir.glob(".*.tmp*")), "no temporary files left behind"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    for key in MANIFEST_KEYS:
        assert key in manifest, key
    assert set(manifest["timings"]) == {"data_s", "train_s", "eval_s"}
    assert manifest["class_counts"]["test"] == {"glioma": 4, "meningioma": 4, "pituitary": 4, "no_tumor": 4}
    assert manifest["weights"]["source"] == "random"


@pytest.mark.parametrize("name", REFERENCE)
def test_metrics_and_predictions_agree(runs_by_backbone, name):
    run_dir = runs_by_backbone[name]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = metrics["labels"]
    assert labels == ["glioma", "meningioma", "pituitary", "no_tumor"]
    assert list(rows[0]) == ["path", "true", "predicted"] + [f"p_{label}" for label in labels]
    assert metrics["n_test"] == len(rows) == 16
    accuracy = np.mean([r["true"] == r["predicted"] for r in rows])
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert np.array(metrics["confusion_matrix"]).sum() == 16
    for r in rows:
        assert sum(float(r[f"p_{label}"]) for label in labels) == pytest.approx(1, abs=1e-4)
        assert Path(r["path"]).is_file()
    assert set(metrics["per_class"]) == set(labels)


@pytest.mark.parametrize("name", REFERENCE)
def test_saved_model_predicts_raw_rgb_in_a_fresh_process(runs_by_backbone, name):
    """keras.saving.load_model alone (no suite import) loads it; raw 0-255 RGB in, same probabilities out."""
    run_dir = runs_by_backbone[name]
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    code = (
        "import sys, json, numpy as np, keras\n"
        "from PIL import Image\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "img = Image.open(sys.argv[2]).convert('RGB').resize((32, 32), Image.BILINEAR)\n"
        "x = np.asarray(img, dtype='uint8')[None]\n"
        "print(json.dumps(m.predict(x, verbose=0)[0].tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run_dir / "model.keras"), first["path"]],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""},
                         cwd=run_dir)
    probs = json.loads(out.stdout.strip().splitlines()[-1])
    labels = [k[2:] for k in first if k.startswith("p_")]
    expected = [float(first[f"p_{label}"]) for label in labels]
    np.testing.assert_allclose(probs, expected, atol=2e-3)


def test_same_seed_same_split_across_backbones(runs_by_backbone):
    prints = {json.loads((d / "manifest.json").read_text())["split_fingerprint"] for d in runs_by_backbone.values()}
    assert len(prints) == 1


@pytest.mark.slow
def test_skipped_files_are_listed_and_do_not_crash(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=6, n_test=2)
    (data / "Training" / "glioma_tumor" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data / "Training" / "no_tumor" / "readme (1).jpg").write_text("text named .jpg")
    run_dir = run({"data": str(data), "out": str(tmp_path / "runs"), "backbone": "mobilenetv2", **TINY},
                  progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    skipped = {Path(s["path"]).name for s in manifest["skipped"]}
    assert skipped == {".DS_Store", "readme (1).jpg"}
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "readme (1).jpg" in report


def test_bad_data_stops_before_any_run_folder(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=3, n_test=1)
    (data / "Testing" / "astrocytoma").mkdir()
    some_image = next((data / "Testing" / "no_tumor").iterdir())
    (data / "Testing" / "astrocytoma" / "x.png").write_bytes(some_image.read_bytes())
    out = tmp_path / "runs"
    with pytest.raises(DataError, match="astrocytoma"):
        run({"data": str(data), "out": str(out), **TINY}, progress=False)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_cli_prints_run_folder_last_and_reports_errors(tmp_path, tiny_data, capsys):
    out = tmp_path / "runs"
    args = ["run", "--data", str(tiny_data), "--out", str(out), "--backbone", "mobilenetv2", "--image-size", "32",
            "--epochs", "1", "--weights", "none", "--quiet", "--augment", "light", "--finetune", "top:10"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(last).is_dir() and Path(last).parent == out
    manifest = json.loads((Path(last) / "manifest.json").read_text())
    assert manifest["config"]["augment"] == "light" and manifest["config"]["finetune"] == "top:10"
    assert manifest["cache_hit"] is True  # the module's runs decoded this data already at 32 px
    assert main(["run", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


@pytest.mark.jax
@pytest.mark.slow
def test_jax_backend_smoke_and_compilation_cache(tmp_path, tiny_data):
    """The same command under KERAS_BACKEND=jax (GPU machines have JAX, not TensorFlow). Its
    compiled programs go to the persistent cache, where a second run would find them (checked
    by hand: every program a hit; a second run here would cost half a minute of CI)."""
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "SUITE_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "suite", "run", "--data", str(tiny_data), "--out", str(tmp_path),
           "--backbone", "mobilenetv2", "--image-size", "32", "--epochs", "1", "--weights", "none", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = Path(out.stdout.strip())  # stdout holds the run folder alone
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["backend"] == "jax" and manifest["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text())["n_test"] == 16
    compiled = manifest["compile"]
    assert compiled["persistent_cache_misses"] > 0 and compiled["compile_s"] > 0
    assert manifest["runtime"]["jax_compilation_cache"] == str(cache / "jax-compilation")
    assert len(list((cache / "jax-compilation").iterdir())) >= compiled["persistent_cache_misses"]


def _leaky_dataset(root: Path) -> Path:
    """Tiny data where one training image also sits, byte for byte, in the test set."""
    import shutil

    data = make_dataset(root, n_train=6, n_test=2)
    source = sorted((data / "Training" / "glioma_tumor").iterdir())[0]
    shutil.copy(source, data / "Testing" / "glioma_tumor" / f"copy of {source.name}")
    return data


@pytest.mark.slow
def test_leak_free_metrics_beside_the_full_ones(tmp_path):
    data = _leaky_dataset(tmp_path / "data")
    run_dir = run({"data": str(data), "out": str(tmp_path / "runs"), "backbone": "mobilenetv2", **TINY},
                  progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["dedup"]["mode"] == "report" and manifest["dedup"]["test_with_training_twin"] >= 1
    leak = metrics["leak_free"]
    assert leak["n_excluded"] >= 1 and leak["n_test"] == metrics["n_test"] - leak["n_excluded"]
    assert "leak-free" in (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("mode", ["drop", "group"])
def test_dedup_modes_remove_the_leak(tmp_path, mode):
    from suite.data.dataset import prepare_data
    from suite.data.discover import discover

    data = prepare_data(discover(_leaky_dataset(tmp_path / "data")), image_size=32, val_fraction=0.2,
                        test_fraction=0.2, seed=0, progress=False, dedup=mode)
    assert data.leak_free_test().all()  # no test image keeps a training twin
    if mode == "drop":
        assert data.dedup["dropped_from_test"] >= 1 and len(data.split.test) < 9
    else:
        # the official test set stays whole
        assert data.dedup["removed_from_training"] >= 1 and len(data.split.test) == 9
