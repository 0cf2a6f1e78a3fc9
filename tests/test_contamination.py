"""Contamination-aware evaluation: an "external" set's copies of a run's own training images, found and left out.

The data are phantom brain slices written as real files; the external sets hold re-encoded
(JPEG quality 70-90) and resized (224 px) copies of training images, byte-identical copies,
and distinct slices. The quick tests work on a prepared dataset and the training record alone;
the slow ones train one tiny run and go through ``suite evaluate``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite import runs
from suite.cli import main
from suite.commands.evaluate import evaluation_index
from suite.contamination import (
    CSV_HEADER,
    HASH_ONLY_THRESHOLD,
    check_evaluated,
    find_twins,
    load_training_hashes,
    save_training_hashes,
    training_hashes,
)
from suite.data import duplicates as dup
from suite.data.dataset import prepare_data
from suite.data.decode import load_images
from suite.data.discover import discover
from suite.data.phantom import CLASSES, render_slice
from suite.errors import DataError, SuiteError
from tests.imagegen import FOLDERS, TINY_RUN

N_TRAIN, N_TEST, N_DISTINCT = 12, 3, 100
QUALITIES = (70, 80, 90)


# ----------------------------------------------------------------------------------
# Data: phantom slices as files, and external sets made of copies and new slices
# ----------------------------------------------------------------------------------


def _write_slices(folder: Path, label: str, n: int, rng: np.random.Generator, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{stem} ({i}) é.png"
        Image.fromarray(render_slice(rng, label, 128)).save(path)
        paths.append(path)
    return paths


def _training_set(root: Path) -> Path:
    """``root/Training/<class>/`` and ``root/Testing/<class>/`` of distinct phantom slices."""
    rng = np.random.default_rng(0)
    for part, n in (("Training", N_TRAIN), ("Testing", N_TEST)):
        for folder, label in zip(FOLDERS, CLASSES):
            _write_slices(root / part / folder, label, n, rng, part[:2])
    return root


def _reencode(source: Path, target: Path, quality: int, size: int = 224) -> Path:
    """A copy as another collection would hold it: resized, then saved as JPEG at ``quality``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
        im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(target, "JPEG", quality=quality)
    return target


def _external(root: Path, data: Path, *, prefix: str = "") -> dict[str, list[Path]]:
    """An external set under ``root/<prefix>/<class>/``: re-encoded copies of every training-folder image,
    byte-identical copies of four, re-encoded copies of the training set's test images (never trained on),
    and ``N_DISTINCT`` new slices saved the same way."""
    sets: dict[str, list[Path]] = {"near": [], "exact": [], "test_copies": [], "distinct": []}
    for k, source in enumerate(sorted((data / "Training").rglob("*.png"))):
        target = root / prefix / source.parent.name / f"copy {k}.jpg"
        sets["near"].append(_reencode(source, target, QUALITIES[k % len(QUALITIES)]))
        if k % 12 == 0:
            sets["exact"].append(Path(shutil.copy(source, root / prefix / source.parent.name / f"same {k}.png")))
    for k, source in enumerate(sorted((data / "Testing").rglob("*.png"))):
        sets["test_copies"].append(_reencode(source, root / prefix / source.parent.name / f"test {k}.jpg", 85))
    rng = np.random.default_rng(99)
    for k in range(N_DISTINCT):
        folder, label = FOLDERS[k % 4], CLASSES[k % 4]
        new = _write_slices(root / "scratch" / folder, label, 1, rng, f"new {k}")[0]
        sets["distinct"].append(_reencode(new, root / prefix / folder / f"new {k}.jpg", 85))
    shutil.rmtree(root / "scratch")
    return sets


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _training_set(tmp_path_factory.mktemp("contamination") / "data")


@pytest.fixture(scope="module")
def external(data, tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("external") / "external"
    return root, _external(root, data)


def _prepare(root: Path):
    return prepare_data(discover(root), image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0,
                        progress=False, dedup="report")


@pytest.fixture(scope="module")
def record(data):
    return training_hashes(_prepare(data))


def _twins(paths: list[Path], record):
    decoded = load_images(paths, 64, progress=False)
    return find_twins(decoded.digests, decoded.images, record, valid=decoded.ok)


def _flagged(twins, paths: list[Path], subset: list[Path]) -> int:
    where = {p: i for i, p in enumerate(paths)}
    return int(sum(twins.found[where[p]] for p in subset))


def _all(sets: dict[str, list[Path]]) -> list[Path]:
    return [p for part in sets.values() for p in part]


# ----------------------------------------------------------------------------------
# The training record
# ----------------------------------------------------------------------------------


def test_the_record_holds_every_training_and_validation_image(data, record):
    prepared = _prepare(data)
    parts = prepared.split.parts()
    assert record.counts() == {"train": len(parts["train"]), "val": len(parts["val"])}
    assert len(record) == len(parts["train"]) + len(parts["val"]) == 4 * N_TRAIN
    assert record.root == data.resolve() and all(record.file(j).is_file() for j in range(len(record)))
    assert all(not p.startswith("/") and p.startswith("Training/") for p in record.paths.tolist())
    assert set(record.labels.tolist()) == set(CLASSES)
    images = load_images([record.file(j) for j in range(len(record))], 64, progress=False)
    assert record.hashes.tolist() == dup.phashes(images.images).tolist()
    assert record.digests.tolist() == list(images.digests)
    assert record.settings["threshold"] == dup.DEFAULT_THRESHOLD and record.settings["tol"] == dup.DEFAULT_TOL


def test_the_record_reads_back_as_written(record, tmp_path):
    path = save_training_hashes(tmp_path / runs.TRAINING_HASHES, record)
    back = load_training_hashes(path)
    assert back.root == record.root and back.settings == record.settings
    for name in ("paths", "labels", "splits", "digests", "hashes"):
        assert getattr(back, name).tolist() == getattr(record, name).tolist(), name
    assert back.hashes.dtype == np.uint64
    assert path.stat().st_size < 64 * len(record) + 2048  # compact: digests, hashes and names only


@pytest.mark.parametrize("damage", ["not a zip", "missing array", "newer format"])
def test_a_damaged_or_newer_record_is_refused_with_its_name(record, tmp_path, damage):
    path = save_training_hashes(tmp_path / runs.TRAINING_HASHES, record)
    if damage == "not a zip":
        path.write_bytes(b"garbage")
    else:
        with np.load(path) as npz:
            arrays = dict(npz)
        if damage == "missing array":
            del arrays["hashes"]
        else:
            arrays["format"] = np.array(99)
        np.savez(path.with_suffix(""), **arrays)  # numpy adds .npz back
    with pytest.raises(SuiteError, match=str(path.name)):
        load_training_hashes(path)


def test_cross_pairs_is_a_direct_comparison():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**63, 40, dtype=np.uint64)
    b = np.concatenate([a[:5] ^ np.uint64(0b11), rng.integers(0, 2**63, 30, dtype=np.uint64)])
    pairs = dup.cross_pairs(a, b, 6, block=7)
    distance = dup.popcount(a[:, None] ^ b[None, :])
    assert pairs.tolist() == np.argwhere(distance <= 6).tolist()
    assert {(i, i) for i in range(5)} <= set(map(tuple, pairs.tolist()))


# ----------------------------------------------------------------------------------
# Evaluated images against the record
# ----------------------------------------------------------------------------------


def test_copies_are_found_on_pixels_and_distinct_images_are_not(external, record):
    _, sets = external
    paths = _all(sets)
    twins = _twins(paths, record)
    copies = sets["near"] + sets["exact"]
    assert _flagged(twins, paths, copies) >= 0.95 * len(copies)
    assert _flagged(twins, paths, sets["distinct"] + sets["test_copies"]) <= 0.01 * len(sets["distinct"])
    assert twins.check == "pixels" and twins.twins_gone == 0
    where = {p: i for i, p in enumerate(paths)}
    assert {twins.kind[where[p]] for p in sets["exact"]} == {"exact"}
    assert {twins.method[where[p]] for p in sets["near"] if twins.found[where[p]]} == {"pixels"}
    near = [where[p] for p in sets["near"] if twins.found[where[p]]]
    assert np.all(twins.pixel_distance[near] <= dup.DEFAULT_TOL) and np.all(twins.hamming[near] <= 10)


def test_each_copy_is_paired_with_its_own_original(external, record, data):
    _, sets = external
    twins = _twins(sets["exact"], record)
    for path, j in zip(sets["exact"], twins.twin):
        assert record.file(j).read_bytes() == path.read_bytes()


@pytest.fixture
def moved(tmp_path):
    """A training set whose record was made where it no longer is; with external copies of it."""
    data = _training_set(tmp_path / "data")
    record = training_hashes(_prepare(data))
    sets = _external(tmp_path / "external", data)
    return data, record, sets


def test_without_the_training_images_the_check_is_on_hashes_alone(moved, tmp_path):
    data, record, sets = moved
    data.rename(tmp_path / "moved away")
    paths = _all(sets)
    twins = _twins(paths, record)
    assert twins.check == "hash-only" and "no longer" in twins.detail and twins.twins_on_pixels == 0
    assert _flagged(twins, paths, sets["exact"]) == len(sets["exact"])
    assert _flagged(twins, paths, sets["near"]) >= 0.9 * len(sets["near"])
    assert _flagged(twins, paths, sets["distinct"] + sets["test_copies"]) <= 0.01 * len(sets["distinct"])
    where = {p: i for i, p in enumerate(paths)}
    found = [where[p] for p in sets["near"] if twins.found[where[p]]]
    assert set(twins.method[found].tolist()) == {"hash"} and np.isnan(twins.pixel_distance[found]).all()
    assert twins.hamming[found].max() <= HASH_ONLY_THRESHOLD


def test_a_training_image_changed_since_training_is_not_compared_on_pixels(moved):
    data, record, sets = moved
    changed = sorted((data / "Training").rglob("*.png"))[:6]
    for path in changed:  # the same name, other content: its pixels are not what the model saw
        Image.fromarray(render_slice(np.random.default_rng(7), "glioma", 128)).save(path)
    twins = _twins(_all(sets), record)
    assert twins.check == "mixed" and twins.twins_gone == len(changed)
    assert "6 of" in twins.detail


def test_a_run_folder_without_the_record_cannot_be_checked(tmp_path):
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    runs.write_manifest(run_dir, {"status": "completed"})
    result = check_evaluated(run_dir, [tmp_path / "x.png"], ["glioma"])
    assert not result.possible and result.found is None and result.rows is None
    assert result.summary["check"].startswith("not possible: ") and runs.TRAINING_HASHES in result.summary["check"]
    assert result.summary["count"] is None and result.summary["n_evaluated"] == 1


def test_the_summary_and_the_rows_of_a_check(external, record, tmp_path):
    root, sets = external
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runs.write_manifest(run_dir, {"status": "completed"})
    save_training_hashes(run_dir / runs.TRAINING_HASHES, record)
    index = discover(root, check=False)
    result = check_evaluated(run_dir, [e.path for e in index.entries], [e.label for e in index.entries])
    summary = result.summary
    assert summary["n_evaluated"] == len(_all(sets)) and summary["count"] == result.found.sum() == len(result.rows)
    assert summary["count"] == summary["exact"] + summary["near"] and summary["exact"] == len(sets["exact"])
    assert summary["fraction"] == pytest.approx(summary["count"] / summary["n_evaluated"])
    assert sum(c["count"] for c in summary["by_class"].values()) == summary["count"]
    assert set(summary["by_class"]) == set(CLASSES) and summary["label_conflicts"] == 0
    assert sum(summary["twin_splits"].values()) == summary["count"] and set(summary["twin_splits"]) <= {"train", "val"}
    assert summary["training"]["root_found"] and summary["settings"]["hash_only_threshold"] == HASH_ONLY_THRESHOLD
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    row = dict(zip(CSV_HEADER, result.rows[0]))
    assert Path(row["twin_path"]).is_file() and row["twin_on_disk"] == "yes" and row["twin_split"] in ("train", "val")


# ----------------------------------------------------------------------------------
# A dataset that holds only a test folder
# ----------------------------------------------------------------------------------


def _test_only(root: Path, data: Path) -> Path:
    for source in sorted((data / "Training").rglob("*.png"))[::6]:
        _reencode(source, root / "Testing" / source.parent.name / f"{source.stem}.jpg", 80)
    return root


def test_a_test_only_dataset_is_read_for_evaluation_but_not_for_training(data, tmp_path):
    root = _test_only(tmp_path / "only-test", data)
    with pytest.raises(DataError, match="no training folder"):
        discover(root)  # what `suite run` reads: unchanged
    index = evaluation_index(root)
    assert index.root == root.resolve() and index.layout == "split"
    assert {e.split for e in index.entries} == {"test"} and len(index.entries) == 8
    assert set(index.labels) <= set(CLASSES) and set(index.class_folders) == set(index.labels)


def test_a_folder_of_split_folders_with_a_broken_class_still_fails_as_discovery_says(tmp_path):
    (tmp_path / "d" / "Testing" / "glioma").mkdir(parents=True)  # an empty class folder
    with pytest.raises(DataError, match="empty"):
        evaluation_index(tmp_path / "d")


# ----------------------------------------------------------------------------------
# `suite evaluate` end to end, on one tiny trained run
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    from suite.commands.run import run

    return run({"data": str(data), "out": str(tmp_path_factory.mktemp("runs")), "backbone": "mobilenetv2",
                **TINY_RUN}, progress=False, log=lambda message: None)


def _evaluate(run_dir: Path, data: Path, out: Path, capsys) -> tuple[Path, dict]:
    assert main(["evaluate", str(run_dir), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    return folder, json.loads((folder / runs.METRICS).read_text(encoding="utf-8"))


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_run_records_its_training_images(trained, data):
    record = load_training_hashes(runs.RunFolder(trained).training_hashes)
    counts = json.loads((trained / runs.MANIFEST).read_text())["class_counts"]
    assert record.counts() == {part: sum(counts[part].values()) for part in ("train", "val")}
    assert record.root == data.resolve()


@pytest.mark.slow
def test_evaluate_finds_the_copies_and_scores_the_rest(trained, external, tmp_path, capsys):
    root, sets = external
    folder, metrics = _evaluate(trained, root, tmp_path / "evals", capsys)
    contamination, leak = metrics["contamination"], metrics["leak_free"]
    rows = _csv(folder / runs.CONTAMINATION)
    flagged = {Path(r["path"]) for r in rows}
    copies, distinct = set(sets["near"] + sets["exact"]), set(sets["distinct"] + sets["test_copies"])
    assert len(flagged & copies) >= 0.95 * len(copies) and len(flagged & distinct) <= 0.01 * len(sets["distinct"])
    assert contamination["check"] == "pixels" and contamination["count"] == len(rows) == len(flagged)
    assert contamination["n_evaluated"] == metrics["n_test"] == len(_all(sets))
    # the leak-free metrics cover exactly the images without a training twin
    assert leak["n_excluded"] == contamination["count"] and leak["n_test"] == metrics["n_test"] - len(flagged)
    assert sum(c["support"] for c in leak["per_class"].values()) == leak["n_test"]
    predictions = {Path(r["path"]): r for r in _csv(folder / runs.PREDICTIONS)}
    rest = [r for p, r in predictions.items() if p not in flagged]
    assert leak["accuracy"] == pytest.approx(np.mean([r["true"] == r["predicted"] for r in rest]))
    assert "balanced_accuracy_ci" in leak and "balanced_accuracy" in metrics
    html = (folder / runs.REPORT).read_text(encoding="utf-8")
    assert html.index("include the run&#39;s own training images") < html.index('id="results"')
    assert "Full versus leak-free" in html and "support, leak-free" in html and "Example pairs" in html
    assert html.count('src="data:image/jpeg;base64,') >= 2 * 12


@pytest.fixture
def training_moved_away(data):
    """The trained run's dataset folder renamed for the length of a test."""
    away = data.with_name("data-moved")
    data.rename(away)
    yield away
    away.rename(data)


@pytest.mark.slow
def test_evaluate_says_hash_only_when_the_training_data_moved(trained, external, training_moved_away, tmp_path,
                                                              capsys):
    root, sets = external
    folder, metrics = _evaluate(trained, root, tmp_path / "evals", capsys)
    contamination = metrics["contamination"]
    flagged = {Path(r["path"]) for r in _csv(folder / runs.CONTAMINATION)}
    assert contamination["check"] == "hash-only" and not contamination["training"]["root_found"]
    assert set(sets["exact"]) <= flagged and len(flagged & set(sets["near"])) >= 0.9 * len(sets["near"])
    html = (folder / runs.REPORT).read_text(encoding="utf-8")
    assert "perceptual hashes only" in html and "twin file gone" in html


@pytest.mark.slow
def test_evaluate_a_run_made_before_runs_recorded_their_training_images(trained, external, tmp_path, capsys):
    old = Path(shutil.copytree(trained, tmp_path / "old-run"))
    (old / runs.TRAINING_HASHES).unlink()
    folder, metrics = _evaluate(old, external[0], tmp_path / "evals", capsys)
    assert metrics["contamination"]["check"].startswith("not possible: the run folder has no")
    assert "leak_free" not in metrics and not (folder / runs.CONTAMINATION).exists()
    html = (folder / runs.REPORT).read_text(encoding="utf-8")
    assert "Not checked for the run&#39;s training images" in html


@pytest.mark.slow
def test_evaluate_a_dataset_of_only_a_test_folder(trained, data, tmp_path, capsys):
    root = _test_only(tmp_path / "only-test", data)
    folder, metrics = _evaluate(trained, root, tmp_path / "evals", capsys)
    assert metrics["n_test"] == 8 and metrics["contamination"]["count"] >= 7
    manifest = json.loads((folder / runs.MANIFEST).read_text())
    assert manifest["config"]["evaluated_split"] == "test" and manifest["dataset"]["root"] == str(root.resolve())
