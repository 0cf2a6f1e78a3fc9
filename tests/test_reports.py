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
