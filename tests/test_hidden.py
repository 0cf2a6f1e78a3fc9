"""Hidden files and folders are not data: ``.ipynb_checkpoints/`` copies inside class folders, ``.DS_Store``,
``__MACOSX/``, a hidden class folder. None is used; each is counted as skipped with the reason ``hidden``,
by discovery, by run's data stage and by the audit. Real image files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from suite.cli import main
from suite.data.audit import audit
from suite.data.discover import HIDDEN, discover, is_hidden
from suite.errors import DataError
from suite.runs import AUDIT, AUDIT_REPORT
from tests.imagegen import TINY_RUN, make_dataset

FIRST = "image(0) é.png"  # a file tests.imagegen.make_dataset writes in every class folder
DS_STORE = b"\x00\x00\x00\x01Bud1" + b"\x00" * 100


def _plant_hidden(root: Path, class_dirs: list[Path]) -> set[str]:
    """Jupyter checkpoint copies, .DS_Store and AppleDouble files in class folders, a __MACOSX tree beside
    them; returns the hidden names discovery must skip, relative to ``root``."""
    planted = set()
    for d in class_dirs:
        checkpoints = d / ".ipynb_checkpoints"
        checkpoints.mkdir()
        shutil.copyfile(d / FIRST, checkpoints / "image(0) é-checkpoint.png")  # a real image: a duplicate
        (d / ".DS_Store").write_bytes(DS_STORE)
        shutil.copyfile(d / FIRST, d / f"._{FIRST}")  # a hidden file that is an image all the same
        planted |= {(d / n).relative_to(root).as_posix() for n in (".ipynb_checkpoints", ".DS_Store", f"._{FIRST}")}
    macosx = root / "__MACOSX" / class_dirs[0].relative_to(root)
    macosx.mkdir(parents=True)
    shutil.copyfile(class_dirs[0] / FIRST, macosx / f"._{FIRST}")
    nested = class_dirs[0] / "__MACOSX"  # an archive unpacked inside a class folder
    nested.mkdir()
    shutil.copyfile(class_dirs[0] / FIRST, nested / FIRST)
    (root / ".DS_Store").write_bytes(DS_STORE)
    return planted | {"__MACOSX", nested.relative_to(root).as_posix(), ".DS_Store"}


@pytest.fixture(scope="module")
def hidden_split(tmp_path_factory) -> tuple[Path, set[str]]:
    root = make_dataset(tmp_path_factory.mktemp("hidden") / "data", n_train=4, n_test=2)
    class_dirs = sorted(d for part in ("Training", "Testing") for d in (root / part).iterdir())
    planted = _plant_hidden(root, class_dirs)
    hidden_class = root / "Training" / ".hidden_class"  # beside the class folders: not a class
    hidden_class.mkdir()
    shutil.copyfile(class_dirs[0] / FIRST, hidden_class / FIRST)
    return root, planted | {"Training/.hidden_class"}


@pytest.fixture(scope="module")
def hidden_flat(tmp_path_factory) -> tuple[Path, set[str]]:
    root = make_dataset(tmp_path_factory.mktemp("hidden-flat") / "data", layout="flat", n_train=4, n_test=2)
    return root, _plant_hidden(root, sorted(d for d in root.iterdir() if d.is_dir()))


@pytest.mark.parametrize("name, hidden", [
    (".DS_Store", True), (".ipynb_checkpoints", True), ("._scan.jpg", True), ("__MACOSX", True), (".", True),
    ("scan.jpg", False), ("__macosx_notes", False), ("Thumbs.db", False), ("a.hidden.png", False),
])
def test_what_is_hidden(name, hidden):
    assert is_hidden(name) is hidden


@pytest.mark.parametrize("fixture", ["hidden_split", "hidden_flat"])
def test_discovery_skips_each_hidden_name_once_and_reads_nothing_under_it(fixture, request):
    root, planted = request.getfixturevalue(fixture)
    index = discover(root)
    assert index.labels == ("glioma", "meningioma", "pituitary", "no_tumor")  # no __MACOSX or hidden class
    assert not any(is_hidden(part) for e in index.entries for part in e.path.relative_to(root).parts)
    skipped = [(s.path.relative_to(root).as_posix(), s.reason) for s in index.skipped]
    assert sorted(skipped) == sorted((p, HIDDEN) for p in planted)
    assert len(index.entries) == 4 * 6


def test_hidden_entries_carry_their_split_and_class(hidden_split):
    root, _ = hidden_split
    found = {s.path.relative_to(root).as_posix(): (s.split, s.label) for s in discover(root).skipped}
    assert found["Training/glioma_tumor/.DS_Store"] == ("train", "glioma")
    assert found["Testing/no_tumor/.ipynb_checkpoints"] == ("test", "no_tumor")
    assert found["Training/.hidden_class"] == ("train", "")
    assert found["__MACOSX"] == ("", "")


def test_run_data_stage_uses_no_hidden_file_and_lists_each_as_hidden(hidden_split, tmp_path):
    from suite.commands.run import prepare

    root, planted = hidden_split
    data = prepare({"data": str(root), "out": str(tmp_path), **TINY_RUN}, progress=False, log=lambda m: None).data
    used = {e.path.relative_to(root).as_posix() for e in data.entries}
    assert len(used) == 4 * 6 and not any(is_hidden(part) for p in used for part in p.split("/"))
    skipped = {Path(s["path"]).relative_to(root).as_posix(): s["reason"] for s in data.skipped}
    assert skipped == {p: HIDDEN for p in planted}
    # the checkpoint copies would be exact duplicates of test and training images had they been read
    assert data.dedup["clusters_with_duplicates"] == 0


def test_the_audit_counts_hidden_files_and_finds_no_checkpoint_duplicates(hidden_split):
    root, planted = hidden_split
    found = audit(discover(root, check=False), progress=False, workers=1)
    assert found["counts"]["hidden"] == len(planted)
    assert {s["path"]: s["reason"] for s in found["skipped"]} == {p: HIDDEN for p in planted}
    assert found["counts"]["files"] == found["counts"]["images"] + len(found["skipped"])
    assert found["exact"]["pairs"] == 0 and found["cross_split_exact"] == 0
    assert not any(is_hidden(part) for f in found["files"] for part in f["path"].split("/"))


def test_the_audit_command_reports_hidden_files_apart_from_bad_ones(hidden_split, tmp_path, capsys):
    root, planted = hidden_split
    assert main(["audit", "--data", str(root), "--out", str(tmp_path), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert json.loads((folder / AUDIT).read_text(encoding="utf-8"))["counts"]["hidden"] == len(planted)
    html = (folder / AUDIT_REPORT).read_text(encoding="utf-8")
    assert f"{len(planted)} hidden files and folders" in html
    assert "Training/glioma_tumor/.ipynb_checkpoints" in html
    assert "could not be decoded" not in html  # hidden is not broken


def test_a_class_folder_holding_only_hidden_files_names_them(tmp_path):
    root = make_dataset(tmp_path / "data", n_train=2, n_test=1)
    only_hidden = root / "Training" / "extra_class"
    (only_hidden / ".ipynb_checkpoints").mkdir(parents=True)
    shutil.copyfile(root / "Training" / "glioma_tumor" / FIRST, only_hidden / ".ipynb_checkpoints" / FIRST)
    with pytest.raises(DataError, match=r"no files to read: .*extra_class \(1 skipped; '.ipynb_checkpoints': hidden\)"):
        discover(root)
