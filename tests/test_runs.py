"""The folder format: file names spelled once, folder kinds, reading a run back, resume identity."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from suite import runs
from suite.config import RunConfig
from suite.errors import SuiteError

ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = {value for name, value in vars(runs).items()
              if name.isupper() and isinstance(value, str) and "." in value}


def _string_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_every_run_folder_file_name_is_spelled_once_in_the_code():
    sources = sorted((ROOT / "suite").rglob("*.py")) + sorted((ROOT / "reports").rglob("*.py"))
    counts = {name: [] for name in FILE_NAMES}
    for path in sources:
        for literal in _string_literals(path):
            if literal in counts:
                counts[literal].append(str(path.relative_to(ROOT)))
    assert {name: places for name, places in counts.items() if places != ["suite/runs.py"]} == {}


def _write(folder: Path, name: str, obj) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj), encoding="utf-8")
    return folder


@pytest.mark.parametrize("marker, content, kind", [
    (runs.MANIFEST, {"status": "completed"}, "run"),
    (runs.MANIFEST, {"kind": "evaluation"}, "evaluation"),
    (runs.COMPARISON, {"runs": []}, "comparison"),
    (runs.CV, {"k": 2}, "cv"),
    (runs.SEARCH, {"tuner": "random"}, "tuning"),
    (runs.AUDIT, {"n_files": 1}, "audit"),
    (runs.ROBUSTNESS, {"kind": "robustness"}, "robustness"),
])
def test_folder_kinds_are_told_apart(tmp_path, marker, content, kind):
    folder = _write(tmp_path / "f", marker, content)
    assert runs.kind_of(folder).name == kind


def test_a_folder_the_suite_did_not_write_has_no_kind(tmp_path):
    assert runs.kind_of(tmp_path) is None
    assert runs.kind_of(tmp_path / "missing") is None


def test_an_unreadable_manifest_still_makes_a_run_folder(tmp_path):
    (tmp_path / runs.MANIFEST).write_text("{half", encoding="utf-8")
    assert runs.kind_of(tmp_path).name == "run"


def test_a_kind_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        runs.register_kind(runs.FolderKind("run", "x.json", "m:f", "m:g"))


def test_run_folder_accessors(tmp_path):
    folder = _write(tmp_path / "r", runs.MANIFEST, {
        "backbone": "mobilenetv2", "status": "completed", "dataset": {"labels": ["a", "b"]},
        "config": {"image_size": 48, "backbone": "mobilenetv2"}})
    _write(folder, runs.METRICS, {"accuracy": 0.5})
    run = runs.RunFolder(folder)
    assert (run.backbone, run.status, run.labels, run.image_size) == ("mobilenetv2", "completed", ["a", "b"], 48)
    assert run.metrics() == {"accuracy": 0.5}
    with pytest.raises(SuiteError, match="has no model.keras"):
        run.load_model()


@pytest.mark.parametrize("content, message", [(None, "is not a run folder"), ("{half", "cannot read"),
                                              ("[1, 2]", "holds no JSON object")])
def test_a_missing_or_broken_manifest_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / runs.MANIFEST).write_text(content, encoding="utf-8")
    with pytest.raises(SuiteError, match=message):
        runs.RunFolder(tmp_path)


def test_completed_run_needs_status_and_metrics(tmp_path):
    folder = _write(tmp_path / "r", runs.MANIFEST, {"status": "completed"})
    assert not runs.is_completed_run(folder)
    _write(folder, runs.METRICS, {})
    assert runs.is_completed_run(folder)
    _write(folder, runs.MANIFEST, {"status": "failed"})
    assert not runs.is_completed_run(folder)


def test_latest_folder_takes_the_newest_of_the_kind(tmp_path):
    _write(tmp_path / "20260101-000000-cv-x", runs.CV, {"status": "running"})
    _write(tmp_path / "20260102-000000-cv-x", runs.CV, {"status": "completed"})
    _write(tmp_path / "20260103-000000-cv-x", "other.json", {})
    assert runs.latest_folder(tmp_path, "cv", "cv-x").name == "20260102-000000-cv-x"
    unfinished = runs.latest_folder(tmp_path, "cv", "cv-x",
                                    lambda f: json.loads((f / runs.CV).read_text())["status"] != "completed")
    assert unfinished.name == "20260101-000000-cv-x"


def test_resume_identity_passes_when_nothing_changed(tmp_path):
    identity = {"k": 3, "config": RunConfig().identity()}
    runs.check_resume(tmp_path, json.loads(json.dumps(identity)), identity)


def test_resume_identity_names_every_changed_setting(tmp_path):
    old = {"k": 3, "config": RunConfig().identity()}
    new = {"k": 4, "config": RunConfig(learning_rate=0.01, dedup="group").identity()}
    with pytest.raises(SuiteError) as info:
        runs.check_resume(tmp_path, old, new)
    message = str(info.value)
    assert message.startswith(f"cannot resume {tmp_path}")
    for part in ("k: was 3, now 4", "learning_rate: was 0.001, now 0.01", 'dedup: was "report", now "group"'):
        assert part in message
    assert "seed" not in message


def test_resume_identity_allows_what_may_change(tmp_path):
    runs.check_resume(tmp_path, {"dataset": "a", "k": 1}, {"dataset": "b", "k": 1}, may_change=("dataset",))


def test_placement_settings_are_not_part_of_the_identity():
    assert RunConfig(out="a", workers=1, data="x").identity() == RunConfig(out="b", workers=2, data="y").identity()
