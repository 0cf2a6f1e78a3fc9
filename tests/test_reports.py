"""Tests for the ``reports`` package: a fake run folder in, one HTML file out."""

from __future__ import annotations

import base64
import csv
import json
import pathlib
import re
import subprocess
import sys

import pytest

from reports import load_run, plots, render_run, run_context, toolkit, write_run_report
from suite.contamination import CSV_HEADER

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
LABELS = ["glioma", "meningioma", "notumor", EVIL]
DATA_PNG = "data:image/png;base64,"


# ----------------------------------------------------------------------------------
# Fixture: a realistic run folder
# ----------------------------------------------------------------------------------


def _write_image(path: pathlib.Path, shade: int) -> pathlib.Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (64, 48), color=shade)
    image.paste(255 - shade, (16, 12, 40, 36))
    image.save(path)
    return path


def _manifest(labels, *, synthetic, failed, warning):
    return {
        "run_id": "efficientnetb0-20240101-120000",
        "status": "failed" if failed else "completed",
        "error": "ValueError: <b>out of memory</b> & more" if failed else None,
        "created": "2024-01-01T12:00:00+00:00",
        "backbone": "efficientnetb0",
        "config": {
            "backbone": "efficientnetb0", "image_size": 224, "epochs": 3, "batch_size": 16,
            "learning_rate": 0.0001, "dropout": 0.2, "finetune": False, "augment": True,
            "val_fraction": 0.1, "seed": 42, "weights": "imagenet", "precision": "float32",
            "early_stopping": {"patience": 3, "monitor": "val_loss"},
        },
        "dataset": {
            "root": "/data/brain mri", "name": "brain-mri-4", "synthetic": synthetic,
            "description": "Random ellipse phantoms with a bright blob per class" if synthetic else None,
            "layout": "split", "labels": labels,
            "class_folders": {label: [label.capitalize(), f"{label}_tumor"] for label in labels},
        },
        "class_counts": {split: {label: n + i for i, label in enumerate(labels)}
                         for split, n in (("train", 40), ("val", 5), ("test", 10))},
        "data_fingerprint": "sha256:abc123",
        "split_fingerprint": "sha256:def456",
        "cache_hit": True,
        "skipped": [
            {"path": "/data/brain mri/Training/glioma/broken.jpg", "reason": "cannot identify image file"},
            {"path": f"/data/{EVIL}.png", "reason": "unreadable"},
        ],
        "weights": {"requested": "imagenet", "source": "random init",
                    "warning": "ImageNet weights unavailable offline; using random initialisation"
                    if warning else None},
        "warnings": ["class imbalance: notumor has 2x the images of glioma"],
        "backend": "tensorflow",
        "device": "CPU",
        "package_versions": {"keras": "3.10.0", "tensorflow": "2.18.0", "numpy": "1.26.4"},
        "seed": 42,
        "timings": {"data_s": 1.234, "train_s": 75.5, "eval_s": 0.9},
        "params": 4049571,
    }


def _metrics(labels):
    n = len(labels)
    matrix = [[8 if i == j else 1 if j == (i + 1) % n else 0 for j in range(n)] for i in range(n)]
    return {
        "accuracy": 0.8123, "macro_f1": 0.7999, "n_test": 9 * n, "labels": labels,
        "per_class": {label: {"precision": 0.8, "recall": 0.889, "f1": 0.842, "support": 9}
                      for label in labels},
        "confusion_matrix": matrix,
        "future_key": {"ignored": True},
    }


def _history(with_lr=True):
    rows = []
    for epoch in range(3):
        row = {"epoch": epoch, "accuracy": 0.5 + 0.1 * epoch, "loss": 1.2 - 0.3 * epoch,
               "val_accuracy": 0.45 + 0.1 * epoch, "val_loss": 1.3 - 0.25 * epoch}
        if with_lr:
            row["learning_rate"] = 1e-4 / (epoch + 1)
        rows.append(row)
    return rows


def _predictions(images_dir: pathlib.Path, labels):
    """Prediction rows: real images (odd names), a missing file, a corrupt file."""
    odd = _write_image(images_dir / "glioma" / "image (2) é.jpg", 80)
    plain = _write_image(images_dir / "meningioma" / "Te-me_0001.png", 140)
    right = _write_image(images_dir / "notumor" / "ok.png", 200)
    corrupt = images_dir / "notumor" / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    missing = images_dir / "gone" / "does not exist.jpg"
    evil_missing = images_dir / f"{EVIL}.png"  # '<script>alert(1)<' folder, never created

    def row(path, true, predicted, p_pred):
        rest = (1.0 - p_pred) / (len(labels) - 1)
        probs = {f"p_{label}": (p_pred if label == predicted else rest) for label in labels}
        return {"path": str(path), "true": true, "predicted": predicted, **probs}

    return [
        row(odd, "glioma", "meningioma", 0.91),
        row(plain, "meningioma", EVIL, 0.55),
        row(right, "notumor", "notumor", 0.99),
        row(corrupt, "notumor", "glioma", 0.40),
        row(missing, EVIL, "notumor", 0.75),
        row(evil_missing, "glioma", "notumor", 0.30),
    ]


def _write_csv(path: pathlib.Path, rows):
    fields = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def build_run(root: pathlib.Path, name="run", *, synthetic=True, failed=False, warning=True,
              labels=LABELS, predictions=None) -> pathlib.Path:
    """Write a run folder ``root/name`` (images under ``root/images_<name>``)."""
    run_dir = root / name
    run_dir.mkdir()
    manifest = _manifest(labels, synthetic=synthetic, failed=failed, warning=warning)
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    _write_csv(run_dir / "history.csv", _history()[:1] if failed else _history())
    if not failed:
        (run_dir / "metrics.json").write_text(json.dumps(_metrics(labels)), encoding="utf-8")
        rows = predictions if predictions is not None else _predictions(root / f"images_{name}", labels)
        _write_csv(run_dir / "predictions.csv", rows)
    return run_dir


@pytest.fixture
def make_run(tmp_path):
    """Factory writing a run folder under ``tmp_path``; returns its path."""
    return lambda name="run", **kwargs: build_run(tmp_path, name, **kwargs)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(run_dir, html) of the default synthetic, completed run (rendered once)."""
    run_dir = build_run(tmp_path_factory.mktemp("report"))
    path = write_run_report(run_dir)
    return run_dir, path.read_text(encoding="utf-8")


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


# ----------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------


def test_confusion_matrix_png_is_real_png_up_to_ten_classes():
    labels = [f"class-{i}" for i in range(10)]
    matrix = [[(5 if i == j else 1) for j in range(10)] for i in range(10)]
    assert plots.confusion_matrix_png(matrix, labels).startswith(PNG_MAGIC)
    # a zero row and math-like labels must not break it
    small = plots.confusion_matrix_png([[0, 0], [1, 2]], ["$x$", "a_b^c"], normalise=True)
    assert small.startswith(PNG_MAGIC)
    assert plots.row_fractions([[0, 0], [1, 3]]) == [[None, None], [0.25, 0.75]]


def test_confusion_matrix_png_rejects_mismatched_shape():
    with pytest.raises(ValueError):
        plots.confusion_matrix_png([[1, 2], [3, 4]], ["a", "b", "c"])


def test_training_curves_png_with_and_without_learning_rate():
    assert plots.training_curves_png(_history(with_lr=True)).startswith(PNG_MAGIC)
    assert len(plots.curve_panels(_history(with_lr=True))) == 3
    no_lr = _history(with_lr=False)
    assert [p["title"] for p in plots.curve_panels(no_lr)] == ["Accuracy", "Loss"]
    only_train = [{"epoch": 0, "accuracy": 0.5, "loss": 1.0}]
    assert plots.training_curves_png(only_train).startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        plots.training_curves_png([])
    with pytest.raises(ValueError):
        plots.training_curves_png([{"epoch": 0, "accuracy": None}])


def test_thumbnail_png_and_data_uri(tmp_path):
    path = _write_image(tmp_path / "a (1) é.jpg", 90)
    png = plots.thumbnail_png(path, size=32)
    assert png.startswith(PNG_MAGIC)
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as thumb:
        assert max(thumb.size) <= 32 and thumb.mode == "RGB"
    assert plots.thumbnail_png(tmp_path / "missing.png") is None
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert plots.thumbnail_png(tmp_path / "bad.png") is None
    uri = toolkit.data_uri(png)
    assert uri.startswith(DATA_PNG)
    assert base64.b64decode(uri[len(DATA_PNG):]) == png


def test_thumbnail_png_handles_16_bit_greyscale(tmp_path):
    from PIL import Image

    path = tmp_path / "deep.png"
    Image.new("I;16", (40, 40), color=4000).save(path)
    assert plots.thumbnail_png(path).startswith(PNG_MAGIC)


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def test_load_run_reads_all_files(make_run):
    run = load_run(make_run())
    assert run["manifest"]["backbone"] == "efficientnetb0"
    assert run["metrics"]["accuracy"] == pytest.approx(0.8123)
    assert run["history"][1]["val_loss"] == pytest.approx(1.05)
    first = run["predictions"][0]
    assert first["path"].endswith("image (2) é.jpg")
    assert first["probs"]["meningioma"] == pytest.approx(0.91)
    assert set(first["probs"]) == set(LABELS)
    assert run["problems"] == []


def test_load_run_tolerates_missing_optional_files(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "bare", "status": "completed"}))
    run = load_run(tmp_path)
    assert run["metrics"] is None and run["history"] == [] and run["predictions"] == []
    html = render_run(run_context(run))
    assert "bare" in html and "metrics.json is missing" in html


def test_load_run_notes_broken_optional_file(make_run):
    run_dir = make_run()
    (run_dir / "metrics.json").write_text("{not json")
    run = load_run(run_dir)
    assert run["metrics"] is None and "metrics.json" in run["problems"][0]
    assert "metrics.json could not be read" in render_run(run_context(run))


def test_load_run_requires_manifest(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path)


# ----------------------------------------------------------------------------------
# The written report
# ----------------------------------------------------------------------------------


def test_report_is_one_self_contained_file(report):
    run_dir, html = report
    assert (run_dir / "report.html").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "history.csv", "manifest.json", "metrics.json", "predictions.csv", "report.html"]
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html and "@import" not in html and "url(http" not in html
    assert "<script" not in html.lower()


def test_report_embeds_plots_and_thumbnails(report):
    _, html = report
    results = _section(html, "results")
    assert results.count(f'src="{DATA_PNG}') == 2  # confusion matrix + curves
    wrong = _section(html, "misclassified")
    # 5 wrong predictions; 2 readable images (the others are missing/corrupt)
    assert wrong.count(f'src="{DATA_PNG}') == 2
    assert wrong.count("image not readable") == 3
    for uri in re.findall(r'src="(data:image/png;base64,[^"]+)"', html):
        assert base64.b64decode(uri[len(DATA_PNG):]).startswith(PNG_MAGIC)


def test_misclassified_sorted_by_confidence_with_odd_names(report):
    _, html = report
    wrong = _section(html, "misclassified")
    order = [wrong.index(name) for name in
             ("image (2) é.jpg", "does not exist.jpg", "Te-me_0001.png", "corrupt.png")]
    assert order == sorted(order)
    assert "ok.png" not in wrong  # correctly classified
    assert "5 of 6 test images misclassified" in wrong
    assert "/gone/does not exist.jpg" in wrong  # placeholder shows the path


def test_misclassified_capped_at_24(make_run, tmp_path):
    rows = [{"path": str(tmp_path / f"missing_{i}.png"), "true": "a", "predicted": "b",
             "p_a": 1 - i / 100, "p_b": i / 100} for i in range(30)]
    run_dir = make_run(labels=["a", "b"], predictions=rows)
    context = run_context(load_run(run_dir))
    assert context["n_misclassified"] == 30 and len(context["misclassified"]) == 24
    assert context["misclassified"][0]["name"] == "missing_29.png"
    assert context["misclassified"][0]["confidence"] == "0.290"


def test_synthetic_banner_only_when_synthetic(make_run):
    synthetic = write_run_report(make_run("syn", synthetic=True)).read_text(encoding="utf-8")
    real = write_run_report(make_run("real", synthetic=False)).read_text(encoding="utf-8")
    assert "synthetic phantom data, not real mri" in synthetic.lower()
    assert "Random ellipse phantoms" in synthetic
    assert 'class="banner synthetic"' in synthetic
    assert "phantom" not in real.lower() and 'class="banner synthetic"' not in real
    # banners come before the results
    assert synthetic.index("banner synthetic") < synthetic.index('id="results"')


def test_weights_warning_and_other_warnings_shown(make_run):
    html = write_run_report(make_run()).read_text(encoding="utf-8")
    top = html[: html.index('id="results"')]
    assert "ImageNet weights unavailable offline" in top
    assert "class imbalance: notumor has 2x the images of glioma" in top
    quiet = write_run_report(make_run("quiet", warning=False)).read_text(encoding="utf-8")
    assert "ImageNet weights unavailable offline" not in quiet


def test_summary_tables(report):
    _, html = report
    summary = _section(html, "summary")
    for text in ("/data/brain mri", "brain-mri-4", "split", "random init", "early_stopping",
                 "learning_rate", "0.0001", "sha256:abc123", "sha256:def456", "1 min 16 s",
                 "4,049,571", "Meningioma, meningioma_tumor"):
        assert text in summary, text
    assert "81.2%" in html and "0.800" in html  # accuracy and macro F1
    packages = _section(html, "packages")
    assert "tensorflow" in packages and "2.18.0" in packages


def test_skipped_files_listed(report, make_run):
    _, html = report
    skipped = _section(html, "skipped")
    assert "Skipped files (2)" in skipped
    assert "/data/brain mri/Training/glioma/broken.jpg" in skipped
    assert "cannot identify image file" in skipped
    run_dir = make_run("noskip")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["skipped"] = []
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    clean = _section(write_run_report(run_dir).read_text(encoding="utf-8"), "skipped")
    assert "Skipped files (0)" in clean and "none" in clean


def test_data_is_escaped(report):
    _, html = report
    assert EVIL not in html
    assert "<script" not in html.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in _section(html, "results")  # class name in per-class table
    assert escaped in _section(html, "skipped")  # file name
    assert f"{escaped}.png" in _section(html, "misclassified")  # path of a missing image


def test_failed_run_renders_with_error(make_run):
    run_dir = make_run("failed", failed=True)
    html = write_run_report(run_dir).read_text(encoding="utf-8")
    assert 'class="badge failed"' in html
    top = html[: html.index('id="results"')]
    assert "Run failed" in top
    assert "ValueError: &lt;b&gt;out of memory&lt;/b&gt; &amp; more" in top
    assert "<b>out of memory</b>" not in html
    assert "the run failed before evaluation" in html
    assert "no predictions recorded" in html
    assert f'src="{DATA_PNG}' in html  # partial training curves still drawn


def test_rewrite_is_atomic_and_leaves_no_temp_files(make_run):
    run_dir = make_run()
    (run_dir / "report.html").write_text("old")
    path = write_run_report(run_dir)
    assert path == run_dir / "report.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_reporting_does_not_import_keras_or_tensorflow(make_run):
    run_dir = make_run()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import reports.run as r; r.write_run_report(sys.argv[2]);"
        "bad = sorted(m for m in ('tensorflow', 'keras', 'matplotlib.pyplot') if m in sys.modules);"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), str(run_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "report.html").is_file()


# ----------------------------------------------------------------------------------
# Leak-free figures and an evaluation's contamination
# ----------------------------------------------------------------------------------

TWO = ["glioma", "meningioma"]


def _with_leak_free(run_dir: pathlib.Path) -> dict:
    """Give a two-class run's metrics a leak-free part whose class mix differs wildly: no meningioma left."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics.update(balanced_accuracy=0.7012, balanced_accuracy_ci=[0.61, 0.79], accuracy_ci=[0.7, 0.9])
    metrics["per_class"] = {"glioma": {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 12},
                            "meningioma": {"precision": 0.6, "recall": 0.5, "f1": 0.55, "support": 6}}
    metrics["n_test"] = 18
    metrics["leak_free"] = {
        "definition": "test images with no exact or near-duplicate training or validation image", "n_excluded": 8,
        "n_test": 10, "accuracy": 0.6, "accuracy_ci": [0.3, 0.9], "balanced_accuracy": 0.6,
        "balanced_accuracy_ci": [0.3, 0.9], "macro_f1": 0.375, "macro_f1_ci": [0.2, 0.5],
        "per_class": {"glioma": {"precision": 1.0, "recall": 0.6, "f1": 0.75, "support": 10},
                      "meningioma": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}},
        "confusion_matrix": [[6, 4], [0, 0]]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return metrics


def test_leak_free_figures_show_balanced_accuracy_and_each_class_mix(make_run):
    run_dir = make_run(labels=TWO)
    _with_leak_free(run_dir)
    html = write_run_report(run_dir).read_text(encoding="utf-8")
    results = _section(html, "results")
    assert "balanced accuracy [95% CI]" in results and "0.701 [0.610, 0.790]" in results
    assert "0.600 [0.300, 0.900]" in results  # leak-free accuracy and balanced accuracy
    context = run_context(load_run(run_dir))["leakage"]
    assert context["per_class"] == [
        {"label": "glioma", "full_support": "12 (66.7%)", "full_recall": "0.900",
         "leak_free_support": "10 (100.0%)", "leak_free_recall": "0.600"},
        # no meningioma image is left: its recall is undefined, not 0
        {"label": "meningioma", "full_support": "6 (33.3%)", "full_recall": "0.500",
         "leak_free_support": "0", "leak_free_recall": toolkit.DASH}]
    assert "support, leak-free" in results


def test_leak_free_with_no_image_left_shows_no_figures(make_run):
    run_dir = make_run(labels=TWO)
    metrics = _with_leak_free(run_dir)
    metrics["leak_free"] = {"definition": "d", "n_excluded": 18, "n_test": 0}
    (run_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    leakage = run_context(load_run(run_dir))["leakage"]
    assert [row["name"] for row in leakage["rows"]] == ["images"]
    assert {row["leak_free_support"] for row in leakage["per_class"]} == {"0"}


def _evaluation(make_run, tmp_path, contamination: dict, rows: list[dict] | None) -> pathlib.Path:
    """An evaluation folder (from the run fixture) with a contamination record and, if given, its CSV."""
    run_dir = make_run("evaluation", labels=TWO)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "kind": "evaluation"}), encoding="utf-8")
    metrics = _with_leak_free(run_dir)
    metrics["contamination"] = contamination
    if contamination["count"] is None:  # not checked: no leak-free figures either
        del metrics["leak_free"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if rows is not None:
        with (run_dir / "contamination.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_HEADER)
            writer.writeheader()
            writer.writerows(rows)
    return run_dir


def _contamination(check="pixels", count=8, exact=3):
    return {"check": check, "detail": "exact copies by content digest; near candidates confirmed on pixels",
            "n_evaluated": 18, "count": count, "fraction": count / 18 if count is not None else None,
            "exact": exact, "near": None if count is None else count - exact,
            "by_class": {"glioma": {"n_evaluated": 12, "count": 2, "fraction": 2 / 12, "exact": 1, "near": 1},
                         "meningioma": {"n_evaluated": 6, "count": 6, "fraction": 1.0, "exact": 2, "near": 4}},
            "twin_splits": {"train": 7, "val": 1}, "label_conflicts": 0, "twins_on_pixels": 5, "twins_gone": 0,
            "settings": {"threshold": 10, "tol": 0.11, "image_size": 64, "hash_only_threshold": 2},
            "training": {"file": "training_hashes.npz", "root": "/data/training set", "n_train": 40, "n_val": 5,
                         "root_found": True}}


def _pair_rows(tmp_path) -> list[dict]:
    evaluated = [_write_image(tmp_path / "external" / f"scan {i}.png", 60 + 20 * i) for i in range(3)]
    twin = _write_image(tmp_path / "training" / "twin é.png", 60)
    gone = tmp_path / "training" / "moved away.png"
    return [
        {"path": str(evaluated[0]), "label": "glioma", "kind": "exact", "method": "digest", "hamming": 0,
         "pixel_distance": "0.0000", "twin_path": str(twin), "twin_label": "glioma", "twin_split": "train",
         "twin_on_disk": "yes"},
        {"path": str(evaluated[1]), "label": "meningioma", "kind": "near", "method": "pixels", "hamming": 2,
         "pixel_distance": "0.0412", "twin_path": str(twin), "twin_label": "glioma", "twin_split": "val",
         "twin_on_disk": "yes"},
        {"path": str(evaluated[2]), "label": "meningioma", "kind": "near", "method": "hash", "hamming": 0,
         "pixel_distance": "", "twin_path": str(gone), "twin_label": "meningioma", "twin_split": "train",
         "twin_on_disk": "no"},
    ]


def test_an_evaluation_with_training_copies_leads_with_a_banner_and_shows_the_pairs(make_run, tmp_path):
    run_dir = _evaluation(make_run, tmp_path, _contamination(), _pair_rows(tmp_path))
    html = write_run_report(run_dir).read_text(encoding="utf-8")
    first = html.index('class="banner')
    assert html.index("include the run&#39;s own training images") < html.index('class="banner', first + 1)
    assert "8 of 18 evaluated images (44.4%)" in html and "3 exact, 5 near" in html
    section = _section(html, "contamination")
    assert "44.4%" in section and "100.0%" in section  # meningioma: every image a copy
    assert "train 7, val 1" in section and "/data/training set" in section
    pairs = section[section.index("Example pairs"):]
    # near pairs first (the least alike first), then the exact one
    assert pairs.index("scan 1.png") < pairs.index("scan 2.png") < pairs.index("scan 0.png")
    assert pairs.count('src="data:image/jpeg;base64,') == 3 + 2  # three evaluated images, two twins on disk
    assert "twin file gone" in pairs and "moved away.png" in pairs and "twin é.png" in pairs
    assert "Full versus leak-free" in _section(html, "results")


def test_an_evaluation_that_could_not_be_checked_says_so_first(make_run, tmp_path):
    why = "not possible: the run folder has no training_hashes.npz (it was made before runs recorded them)"
    run_dir = _evaluation(make_run, tmp_path, {**_contamination(count=None, exact=None), "check": why}, None)
    html = write_run_report(run_dir).read_text(encoding="utf-8")
    top = html[: html.index('id="results"')]
    assert "Not checked for the run&#39;s training images" in top and "made before runs recorded them" in top
    assert "Full versus leak-free" not in html
    assert "Not checked: not possible" in _section(html, "contamination")


def test_an_evaluation_checked_on_hashes_alone_says_so(make_run, tmp_path):
    clean = {**_contamination("hash-only", count=0, exact=0), "detail": "the training images are no longer at "
             "their recorded paths under /data/training set"}
    html = write_run_report(_evaluation(make_run, tmp_path, clean, [])).read_text(encoding="utf-8")
    top = html[: html.index('id="results"')]
    assert "Checked for training images on hashes only" in top and "no longer at their recorded paths" in top
    assert "none: no evaluated image has a training twin" in _section(html, "contamination")


def test_a_clean_evaluation_checked_on_pixels_has_no_banner(make_run, tmp_path):
    clean = _contamination(count=0, exact=0)
    context = run_context(load_run(_evaluation(make_run, tmp_path, clean, [])))
    assert not [b for b in context["banners"] if "training images" in b["title"]]
    assert context["contamination"]["fraction"] == "0.0%"


def test_a_run_has_no_contamination_section(report):
    _, html = report
    assert 'id="contamination"' not in html


# ----------------------------------------------------------------------------------
# Calibration: temperature scaling and conformal prediction sets
# ----------------------------------------------------------------------------------


def _with_calibration(run_dir: pathlib.Path, n_val: int = 300) -> dict:
    """A calibration record fitted on synthetic over-confident probabilities, written into the run."""
    import numpy as np

    from suite import calibration, runs

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n_val + 400, len(TWO))) * 2
    truth = calibration.apply_temperature(logits, 1.0)
    y = np.array([rng.choice(len(TWO), p=p) for p in truth])
    probs = calibration.apply_temperature(logits * 3, 1.0)
    record = calibration.calibrate(probs[:n_val], y[:n_val], probs[n_val:], y[n_val:], TWO)
    (run_dir / runs.CALIBRATION).write_text(json.dumps(record), encoding="utf-8")
    return record


def test_calibration_section_shows_ece_before_and_after_and_the_conformal_table(make_run):
    run_dir = make_run(labels=TWO)
    record = _with_calibration(run_dir)
    html = write_run_report(run_dir).read_text(encoding="utf-8")
    section = _section(html, "calibration")
    assert f"{record['ece_test_before']:.3f}" in section and f"{record['ece_test_after']:.3f}" in section
    assert f"{record['temperature']:.3f}" in section
    assert section.count(DATA_PNG) == 1  # the reliability diagram
    assert "90.0%" in section and "95.0%" in section
    assert "coverage, glioma" in section and "coverage, meningioma" in section
    level = record["conformal"]["levels"][1]
    assert f"{level['coverage']:.3f}" in section and f"{level['mean_set_size']:.2f}" in section
    context = run_context(load_run(run_dir))["calibration"]
    assert [row["target"] for row in context["levels"]] == ["90.0%", "95.0%"]
    assert len(context["levels"][0]["per_class"]) == len(TWO)


def test_skipped_calibration_says_why(make_run):
    run_dir = make_run(labels=TWO)
    record = _with_calibration(run_dir, n_val=5)
    assert record["status"] == "skipped"
    section = _section(write_run_report(run_dir).read_text(encoding="utf-8"), "calibration")
    assert "Calibration skipped: only 5 validation images; calibration needs at least 20." in section


def test_a_run_without_calibration_has_no_calibration_section(report):
    assert 'id="calibration"' not in report[1]


def test_reliability_png_draws_before_and_after():
    from suite.metrics import reliability_bins

    y = [0, 1, 1, 0, 1]
    probs = [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]]
    series = [{"name": name, "reliability": reliability_bins(y, probs), "ece": 0.1} for name in ("before", "after")]
    assert plots.reliability_png(series).startswith(PNG_MAGIC)


@pytest.mark.parametrize("coverage, warned", [(0.94, False), (0.80, True)])
def test_coverage_short_of_its_target_beyond_chance_is_flagged(make_run, coverage, warned):
    from suite import runs

    run_dir = make_run(labels=TWO)
    record = _with_calibration(run_dir)
    record["conformal"]["levels"][1].update(coverage=coverage, n=400)  # 95% target: 2 SE is 0.022
    (run_dir / runs.CALIBRATION).write_text(json.dumps(record), encoding="utf-8")
    section = _section(write_run_report(run_dir).read_text(encoding="utf-8"), "calibration")
    assert ("falls short of its target" in section) is warned
