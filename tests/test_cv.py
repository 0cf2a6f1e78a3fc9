"""Cross-validation: disjoint seeded folds, cv.json, and resuming a killed CV."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from suite.commands.cv import fold_splits, summarise
from suite.errors import SuiteError

ROOT = Path(__file__).resolve().parents[1]


def _labels():
    return np.repeat(np.array(["a", "b", "c"]), 12)


def test_folds_are_disjoint_stratified_and_seeded():
    labels, pool = _labels(), np.arange(36)
    a = fold_splits(labels, pool, 3, val_fraction=0.1, seed=5)
    b = fold_splits(labels, pool, 3, val_fraction=0.1, seed=5)
    c = fold_splits(labels, pool, 3, val_fraction=0.1, seed=6)
    held = np.concatenate([s.test for s in a])
    assert sorted(held.tolist()) == list(range(36))  # every image held out exactly once
    for s, t in zip(a, b):
        assert np.array_equal(s.test, t.test) and np.array_equal(s.val, t.val)
    assert any(not np.array_equal(s.test, t.test) for s, t in zip(a, c))
    for s in a:
        assert not set(s.test) & (set(s.train) | set(s.val))
        assert sorted(np.unique(labels[s.test], return_counts=True)[1].tolist()) == [4, 4, 4]


def test_official_test_rows_never_enter_a_fold():
    labels, pool = _labels(), np.arange(30)  # rows 30..35 are the official test
    for s in fold_splits(labels, pool, 2, val_fraction=0.1, seed=0):
        assert max(np.concatenate([s.train, s.val, s.test])) < 30


def test_too_few_images_per_class_for_k_folds():
    with pytest.raises(SuiteError, match="at least 5 images per class"):
        fold_splits(np.array(["a"] * 4 + ["b"] * 9), np.arange(13), 5, val_fraction=0.1, seed=0)


def test_summary_interval_contains_the_mean():
    s = summarise([0.8, 0.85, 0.9])
    assert s["mean"] == pytest.approx(0.85) and s["std"] == pytest.approx(0.05)
    assert s["ci"][0] < 0.85 < s["ci"][1]


def _cv_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "suite", "cv", "--backbone", "mobilenetv2", "--folds", "2", "--epochs", "1",
            "--image-size", "32", "--batch-size", "8", "--weights", "none", "--data", str(data),
            "--out", str(out), "--quiet", *extra]


def _wait_for_first_fold(out: Path, proc, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for manifest in out.glob("*-cv-*/fold-1/manifest.json"):
            if json.loads(manifest.read_text()).get("status") == "completed" and \
                    (manifest.parent / "report.html").exists():
                return manifest.parent
        if proc.poll() is not None:
            pytest.fail(f"cv exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    pytest.fail("fold 1 did not complete in time")


@pytest.fixture(scope="module")
def killed_cv(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """A real 2-fold CV, SIGKILLed after fold 1 completed: ``(out, fold-1 folder)``."""
    out = tmp_path_factory.mktemp("killed-cv") / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cv_command(tiny_data, out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        fold1 = _wait_for_first_fold(out, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out, fold1


@pytest.mark.slow
@pytest.mark.parametrize("changed, setting", [
    (("--learning-rate", "0.01"), "learning_rate: was 0.001, now 0.01"),
    (("--dedup", "group"), 'dedup: was "report", now "group"'),
    (("--augment", "light"), 'augment: was "none", now "light"'),
])
def test_resume_with_other_settings_is_refused_before_training(killed_cv, tiny_data, changed, setting):
    out, fold1 = killed_cv
    cv_dir = fold1.parent
    # the killed CV left its lock behind; a later process takes over a lock whose process is gone
    before = sorted(p.name for p in cv_dir.iterdir() if p.name != ".lock")
    done = subprocess.run(_cv_command(tiny_data, out, "--resume", str(cv_dir), *changed), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot resume {cv_dir}") and setting in line
    assert sorted(p.name for p in cv_dir.iterdir() if p.name != ".lock") == before  # nothing trained or moved


@pytest.mark.slow
def test_killed_cv_resumes_at_the_first_unfinished_fold(killed_cv, tiny_data):
    """Rerun a killed CV with --resume: fold 1 is kept, fold 2 runs."""
    out, fold1 = killed_cv
    cv_dir = fold1.parent
    assert json.loads((cv_dir / "cv.json").read_text())["status"] != "completed"
    kept = (fold1 / "metrics.json").stat().st_mtime_ns
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(_cv_command(tiny_data, out, "--resume"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == cv_dir
    assert "fold 1: already completed, kept" in done.stderr
    assert (fold1 / "metrics.json").stat().st_mtime_ns == kept
    cv = json.loads((cv_dir / "cv.json").read_text())
    assert cv["status"] == "completed" and [f["fold"] for f in cv["folds"]] == [1, 2]
    for key in ("accuracy", "macro_f1", "recall_glioma"):
        assert key in cv["mean"] and key in cv["std"] and len(cv["ci"][key]) == 2
    assert "accuracy" in cv["official_test"]["mean"]
    assert len({f["split_fingerprint"] for f in cv["folds"]}) == 2
    assert (cv_dir / "report.html").is_file()


def test_grouped_folds_keep_duplicate_clusters_together():
    labels = _labels()
    groups = np.arange(36) // 2  # pairs of duplicates (same class)
    for s in fold_splits(labels, np.arange(36), 3, val_fraction=0.2, seed=1, groups=groups):
        parts = [set(groups[p].tolist()) for p in (s.train, s.val, s.test)]
        assert not (parts[0] & parts[2]) and not (parts[1] & parts[2]) and not (parts[0] & parts[1])


def test_cv_pool_loses_training_twins_of_official_test_images_under_dedup_group(tmp_path):
    """What ``suite cv`` folds over: the training pool less the official test split and, with units
    (here duplicate clusters), less the training copies of official test images."""
    import shutil

    from suite.commands.cv import cv_splits
    from suite.data.dataset import prepare_data
    from suite.data.discover import discover
    from tests.imagegen import make_dataset

    root = make_dataset(tmp_path / "data", n_train=6, n_test=2)
    source = root / "Training" / "glioma_tumor" / "image(0) é.png"
    shutil.copyfile(source, root / "Testing" / "glioma_tumor" / "copy.png")
    kw = dict(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False)
    for dedup, pooled in (("report", 24), ("group", 23)):
        data = prepare_data(discover(root), dedup=dedup, **kw)
        splits, official_test = cv_splits(data, 2, val_fraction=0.2, seed=0)
        held = np.concatenate([s.test for s in splits])
        assert len(official_test) == 9 and len(held) == pooled
        assert not set(held.tolist()) & set(official_test.tolist())
        twin = next(i for i, e in enumerate(data.entries) if e.path == source)
        assert (twin in held) is (dedup == "report")
