"""The dataset audit on a small dataset with planted duplicates, its report, and the real data."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite.commands.audit import run_audit, write_audit
from suite.data.audit import audit
from suite.data.discover import discover
from suite.data.phantom import render_slice
from suite.runs import AUDIT as AUDIT_JSON
from suite.runs import AUDIT_REPORT as AUDIT_HTML
from tests.imagegen import make_dataset

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _phantom(seed: int, label: str) -> Image.Image:
    return Image.fromarray(render_slice(np.random.default_rng(seed), label, 128))


def _near_copy(src: Path, dst: Path) -> None:
    """Resized a little and re-encoded as a lower-quality JPEG: same picture, other bytes."""
    with Image.open(src) as im:
        im.resize((120, 120), Image.Resampling.BICUBIC).save(dst, "JPEG", quality=70)


def _plant(root: Path) -> dict[str, Path]:
    """Duplicates on top of ``make_dataset``; returns the planted files by role."""
    train, test = root / "Training", root / "Testing"
    planted = {
        "exact_src": train / "glioma_tumor" / "image(0) é.png",
        "exact_copy": test / "glioma_tumor" / "copy of image(0) é.png",
        "near_src": train / "meningioma_tumor" / "scan b.png",
        "near_copy": test / "meningioma_tumor" / "scan b re-encoded.jpg",
        "conflict_src": train / "pituitary_tumor" / "scan c.png",
        "conflict_copy": train / "no_tumor" / "scan c.png",
        "unrelated": test / "no_tumor" / "scan d.png",
        "not_an_image": train / "no_tumor" / "notes.jpg",
    }
    shutil.copyfile(planted["exact_src"], planted["exact_copy"])
    _phantom(1, "meningioma").save(planted["near_src"])
    _near_copy(planted["near_src"], planted["near_copy"])
    _phantom(2, "pituitary").save(planted["conflict_src"])
    shutil.copyfile(planted["conflict_src"], planted["conflict_copy"])
    _phantom(3, "no_tumor").save(planted["unrelated"])
    planted["not_an_image"].write_text("scanner notes, not a JPEG")
    return planted


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = make_dataset(tmp_path_factory.mktemp("audit") / "data", n_train=6, n_test=3)
    return root, _plant(root)


@pytest.fixture(scope="module")
def result(planted_data) -> dict:
    root, _ = planted_data
    return audit(discover(root, check=False), progress=False, workers=1)


def _row(result: dict, root: Path, path: Path) -> int:
    rel = path.relative_to(root).as_posix()
    return next(i for i, f in enumerate(result["files"]) if f["path"] == rel)


# ----------------------------------------------------------------------------------
# The figures
# ----------------------------------------------------------------------------------


def test_counts_and_skipped_files(result):
    assert result["counts"]["files"] == 4 * 9 + 7
    assert result["counts"]["images"] == 4 * 9 + 6
    assert result["counts"]["images_by_split_class"]["test"]["glioma"] == 4
    assert [s["path"] for s in result["skipped"]] == ["Training/no_tumor/notes.jpg"]
    assert "not an image" in result["skipped"][0]["reason"]


def test_header_histograms(result):
    headers = result["headers"]
    formats = {h["value"]: h["count"] for h in headers["format"]}
    assert formats == {"PNG": 4 * 5 + 5, "JPEG": 4 * 4 + 1, "unreadable": 1}
    sizes = {h["value"]: h["count"] for h in headers["size"]}
    assert sizes["40\u00d740"] == 37 and sizes["128\u00d7128"] == 4 and sizes["120\u00d7120"] == 1
    assert {h["value"] for h in headers["size_bucket"]} == {"< 128 px", "128-255 px", "unreadable"}
    assert {h["value"]: h["count"] for h in headers["mode"]}["L"] == 42


def test_exact_and_near_duplicates(result):
    assert result["exact"]["pairs"] == 2
    assert result["exact"]["pairs_cross"] == 1 and result["exact"]["pairs_within"] == {"train": 1, "test": 0}
    assert result["exact"]["redundant"] == 2
    assert result["near"]["pairs"] == 1 and result["near"]["pairs_cross"] == 1
    assert result["near"]["candidates"] >= result["near"]["pairs"]


def test_leakage_figures(result):
    assert result["leakage"]["applicable"] is True
    assert result["leakage"]["test_images"] == 4 * 3 + 3
    assert result["cross_split_exact"] == 1
    assert result["cross_split_near"] == 2
    assert result["cross_split_cluster"] >= result["cross_split_near"] >= result["cross_split_exact"]
    by_class = result["cross_split_by_class"]
    assert by_class["glioma"] == {"test": 4, "exact": 1, "near": 1}
    assert by_class["meningioma"] == {"test": 4, "exact": 0, "near": 1}
    assert by_class["pituitary"]["near"] == by_class["no_tumor"]["near"] == 0


def test_label_conflicts(result):
    assert result["label_conflicts"] == 1 and result["label_conflict_images"] == 2
    (example,) = result["examples"]["label_conflicts"]["shown"]
    assert {example["a"]["label"], example["b"]["label"]} == {"pituitary", "no_tumor"}


def test_clusters_join_planted_pairs_and_leave_the_unrelated_image_alone(result, planted_data):
    root, planted = planted_data
    cluster = [f["cluster"] for f in result["files"]]
    row = {name: _row(result, root, path) for name, path in planted.items()}
    for pair in ("exact", "near", "conflict"):
        assert cluster[row[f"{pair}_src"]] == cluster[row[f"{pair}_copy"]]
    assert cluster.count(cluster[row["unrelated"]]) == 1
    assert cluster.count(cluster[row["not_an_image"]]) == 1
    assert result["clusters"] == {"count": 3, "files": 6, "largest": 2}


def test_examples_put_the_training_image_first(result):
    examples = result["examples"]
    assert examples["cross_split_exact"]["total"] == 1
    (pair,) = examples["cross_split_near"]["shown"]
    assert (pair["a"]["split"], pair["b"]["split"]) == ("train", "test")
    assert pair["kind"] == "near" and pair["distance"] <= result["settings"]["threshold"]
    assert 0 < pair["score"] <= result["settings"]["tol"]
    assert examples["within_split_near"]["total"] == 0


@pytest.mark.parametrize(
    ("settings", "near", "unrelated_alone"),
    [
        ({}, 2, True),
        ({"tol": 0.0}, 1, True),  # the pixel check now rejects the re-encoded copy
        ({"threshold": 64, "tol": float("inf")}, 15, False),  # no check at all: everything pairs
    ],
    ids=["defaults", "tol-0", "no-check"],
)
def test_settings_change_results_as_documented(planted_data, settings, near, unrelated_alone):
    root, planted = planted_data
    found = audit(discover(root, check=False), progress=False, workers=1, **settings)
    assert found["cross_split_exact"] == 1  # bytes do not depend on the settings
    assert found["cross_split_near"] == near
    cluster = [f["cluster"] for f in found["files"]]
    assert (cluster.count(cluster[_row(found, root, planted["unrelated"])]) == 1) is unrelated_alone
    assert found["settings"]["tol"] == settings.get("tol", found["settings"]["tol"])


def test_flat_layout_has_no_cross_split_leakage(tmp_path):
    root = make_dataset(tmp_path / "flat", layout="flat", n_train=4, n_test=0)
    shutil.copyfile(root / "glioma_tumor" / "image(0) é.png", root / "glioma_tumor" / "copy.png")
    found = audit(discover(root, check=False), progress=False, workers=1)
    assert found["leakage"]["applicable"] is False and "flat layout" in found["leakage"]["note"]
    assert found["cross_split_exact"] == found["cross_split_near"] == 0
    assert found["exact"]["pairs_within"] == {"pool": 1}


# ----------------------------------------------------------------------------------
# The files and the report
# ----------------------------------------------------------------------------------


def test_write_audit_json_round_trips(result, tmp_path):
    json_path, html_path = write_audit(result, tmp_path / "out")
    assert (json_path.name, html_path.name) == (AUDIT_JSON, AUDIT_HTML)
    assert json.loads(json_path.read_text(encoding="utf-8"))["cross_split_near"] == result["cross_split_near"]


def test_run_audit_makes_a_new_folder(planted_data, tmp_path):
    root, _ = planted_data
    folder = run_audit(root, out=tmp_path / "runs", progress=False, workers=1)
    assert folder.parent == tmp_path / "runs" and folder.name.endswith("-audit-data")
    saved = json.loads((folder / AUDIT_JSON).read_text(encoding="utf-8"))
    assert set(saved["timings"]) == {"discover_s", "decode_s", "headers_s", "duplicates_s", "total_s"}
    assert saved["cache_hit"] is True  # the module's audits decoded these files already


@pytest.fixture(scope="module")
def evil_html(tmp_path_factory) -> str:
    """A report over a class folder whose path reads ``<script>alert(1)</script>``.

    A folder name cannot hold ``/``, so the class folder is ``<script>alert(1)<`` with a
    sub-folder ``script>``: the file's path, shown under its thumbnail, spells the tag out.
    """
    root = make_dataset(tmp_path_factory.mktemp("evil") / "data", n_train=3, n_test=1)
    inner = Path("<script>alert(1)<") / "script>"
    for part in ("Training", "Testing"):
        (root / part / inner).mkdir(parents=True)
        shutil.copyfile(root / "Training" / "glioma_tumor" / "image(0) é.png", root / part / inner / "x.png")
    found = audit(discover(root, check=False), progress=False, workers=1)
    assert any(EVIL in f["path"] for f in found["files"])
    _, html_path = write_audit(found, tmp_path_factory.mktemp("evil-out"))
    return html_path.read_text(encoding="utf-8")


def test_report_escapes_names(evil_html):
    assert "<script" not in evil_html.lower()
    assert ESCAPED in evil_html
    assert "&lt;script&gt;alert(1)&lt;" in evil_html  # the label itself


def test_report_is_self_contained(evil_html):
    html = evil_html
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)


def test_report_shows_leakage_and_thumbnails(result, tmp_path):
    _, html_path = write_audit(result, tmp_path)
    html = html_path.read_text(encoding="utf-8")
    leakage = html[html.index('id="leakage"'):html.index('id="duplicates"')]
    assert "test images with a byte-identical training twin" in leakage
    near = html[html.index('id="cross-split-near"'):html.index('id="within-split-exact"')]
    assert near.count('src="data:image/jpeg;base64,') == 2
    assert "scan b re-encoded.jpg" in near and "Test images leak from training" in html
    assert "Training/no_tumor/notes.jpg" in html  # the skipped file is listed


def test_what_discovery_skipped_is_counted_listed_and_reported(tmp_path):
    root = make_dataset(tmp_path / "data", n_train=3, n_test=1)
    glioma = root / "Training" / "glioma_tumor"
    (glioma / "loop").symlink_to(".")
    (glioma / "scan.jpg").mkdir()
    (root / "Testing" / "everything").symlink_to("..")
    found = audit(discover(root, check=False), progress=False, workers=1)
    reasons = {s["path"]: s["reason"] for s in found["skipped"]}
    assert set(reasons) == {"Training/glioma_tumor/loop", "Training/glioma_tumor/scan.jpg", "Testing/everything"}
    assert "symbolic link loop" in reasons["Testing/everything"]
    assert found["counts"]["files"] == found["counts"]["images"] + 3 == 4 * 4 + 3
    _, html_path = write_audit(found, tmp_path / "out")
    html = html_path.read_text(encoding="utf-8")
    assert "Training/glioma_tumor/scan.jpg" in html and "folder named like an image" in html


def test_report_renders_without_readable_images(result, tmp_path):
    moved = json.loads(json.dumps(result))
    moved["dataset"]["root"] = str(tmp_path / "gone")
    _, html_path = write_audit(moved, tmp_path)
    assert "image not readable" in html_path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------
# The real data
# ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split_files(root: Path, prefix: str) -> list[Path]:
    (folder,) = [d for d in root.iterdir() if d.is_dir() and d.name.lower().startswith(prefix)]
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.realdata
def test_real_data_cross_split_exact_matches_an_independent_count(real_data):
    training = {_sha256(p) for p in _split_files(real_data, "train")}
    independent = sum(_sha256(p) in training for p in _split_files(real_data, "test"))
    found = audit(discover(real_data, check=False), progress=False)
    assert found["cross_split_exact"] == independent
    assert found["cross_split_near"] >= found["cross_split_exact"]
    assert found["cross_split_cluster"] >= found["cross_split_near"]
