"""Patient groups (``--groups FILE``): no group in two splits or folds, the union with duplicate clusters,
what the file and the dataset disagree on, malformed files, and the audit's group leakage. Real image files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from suite.cli import build_parser, main
from suite.commands import run_flags
from suite.commands.cv import cv_splits
from suite.data.audit import audit
from suite.data.dataset import prepare_data
from suite.data.discover import discover
from suite.data.groups import assign_groups, merge_units, read_groups
from suite.errors import DataError
from suite.runs import AUDIT, AUDIT_REPORT
from suite.trials import trial_folds
from tests.imagegen import FOLDERS, TINY_RUN, make_dataset

PREPARE = dict(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False)
SHARED = "glioma_tumor-p0"  # the patient of Training/glioma_tumor/image(0..1) and Testing/glioma_tumor/image(0)


def _name(i: int) -> str:
    return f"image({i}) é.{'jpg' if i % 2 else 'png'}"  # as tests.imagegen.make_dataset names them


def _rows(n_train: int, n_test: int) -> list[tuple[str, str]]:
    """Two training images per patient; each test image a patient of its own, but for the first
    glioma test image, whose patient also has two training images (``SHARED``)."""
    rows = []
    for folder in FOLDERS:
        rows += [(f"Training/{folder}/{_name(i)}", f"{folder}-p{i // 2}") for i in range(n_train)]
        rows += [(f"Testing/{folder}/{_name(i)}", f"{folder}-t{i}") for i in range(n_test)]
    rows[rows.index((f"Testing/glioma_tumor/{_name(0)}", "glioma_tumor-t0"))] = (
        f"Testing/glioma_tumor/{_name(0)}", SHARED)
    return rows


def write_groups(path: Path, rows, *, header: bool = True) -> Path:
    lines = (["path,group"] if header else []) + [f'"{p}",{g}' for p, g in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> tuple[Path, Path]:
    """A split-layout dataset and its groups file."""
    root = make_dataset(tmp_path_factory.mktemp("groups") / "data", n_train=8, n_test=3)
    return root, write_groups(root.parent / "groups.csv", _rows(8, 3))


@pytest.fixture(scope="module")
def flat_grouped(tmp_path_factory) -> tuple[Path, Path]:
    """A flat dataset (12 images a class) in patients of three images each."""
    root = make_dataset(tmp_path_factory.mktemp("flat-groups") / "data", layout="flat", n_train=9, n_test=3)
    rows = [(f"{folder}/{_name(i)}", f"{folder}-p{i // 3}") for folder in FOLDERS for i in range(12)]
    return root, write_groups(root.parent / "groups.csv", rows)


def _parts_of(data, rows) -> set[str]:
    return {part for part, idx in data.split.parts().items() if set(idx.tolist()) & set(rows)}


def _patients(data) -> dict[object, list[int]]:
    members: dict[object, list[int]] = {}
    for row, g in enumerate(data.group.tolist()):
        members.setdefault(g, []).append(row)
    return members


# ----------------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------------


def test_the_file_reads_with_or_without_a_header(tmp_path):
    rows = [("Training/a b/x, y.png", "p1"), ("Testing/a b/z.png", "p 2")]
    with_header = read_groups(write_groups(tmp_path / "a.csv", rows))
    without = read_groups(write_groups(tmp_path / "b.csv", rows, header=False))
    assert with_header.groups == without.groups == {"Training/a b/x, y.png": "p1", "Testing/a b/z.png": "p 2"}
    assert with_header.digest != without.digest  # the bytes differ


def test_a_byte_order_mark_blank_lines_and_spaces_around_fields_are_allowed(tmp_path):
    path = tmp_path / "g.csv"
    path.write_bytes("\ufeffpath,group\n\n ./Training/a.png , p1 \n\nTesting/b.png,p1\n".encode())
    assert read_groups(path).groups == {"Training/a.png": "p1", "Testing/b.png": "p1"}


@pytest.mark.parametrize("text, line, says", [
    ("path,group\nTraining/a.png,p1\nTraining/b.png,p1,extra\n", 3, "expected 2 fields (path,group), found 3"),
    ("Training/a.png\n", 1, "expected 2 fields (path,group), found 1"),
    ("path,group\nTraining/a.png,\n", 2, "the group is empty"),
    ("path,group\n,p1\n", 2, "the path is empty"),
    ("/data/Training/a.png,p1\n", 1, "not a path inside the dataset folder"),
    ("Training/../../etc/passwd,p1\n", 1, "not a path inside the dataset folder"),
    ("Training/a.png,p1\nTraining/b.png,p2\nTraining/a.png,p3\n", 3, "line 1 put it in group 'p1'"),
    ('Training/a.png,p1\n"Training/b.png,p2\n', 2, "unexpected end of data"),
    ("Training/a.png,p1\nTraining/b\x00.png,p2\n", 2, "NUL"),
], ids=["three-fields", "one-field", "empty-group", "empty-path", "absolute", "dot-dot", "two-groups",
        "open-quote", "nul-byte"])
def test_a_malformed_file_is_one_error_naming_the_line(tmp_path, text, line, says):
    path = tmp_path / "groups.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_groups(path)
    message = str(caught.value)
    assert message.startswith(f"groups file {path}, line {line}: ") and says in message
    assert "\n" not in message


def test_a_file_listing_nothing_is_an_error(tmp_path):
    path = tmp_path / "groups.csv"
    path.write_text("path,group\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="lists no images"):
        read_groups(path)


def test_a_path_listed_twice_in_one_group_is_fine(tmp_path):
    path = write_groups(tmp_path / "g.csv", [("Training/a.png", "p1"), ("./Training/a.png", "p1")])
    assert read_groups(path).groups == {"Training/a.png": "p1"}


def test_a_malformed_file_stops_the_audit_command_with_one_line(grouped, tmp_path, capsys):
    root, _ = grouped
    bad = tmp_path / "bad.csv"
    bad.write_text("path,group\nTraining/glioma_tumor/x.png,p1,p2\n", encoding="utf-8")
    assert main(["audit", "--data", str(root), "--out", str(tmp_path / "out"), "--groups", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: groups file {bad}, line 2: expected 2 fields (path,group), found 3"]
    assert not (tmp_path / "out").exists()


def test_a_malformed_file_stops_a_run_before_decoding(grouped, tmp_path):
    from suite.commands.run import prepare

    root, _ = grouped
    bad = tmp_path / "bad.csv"
    bad.write_text("Training/glioma_tumor/x.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: expected 2 fields"):
        prepare({"data": str(root), "out": str(tmp_path / "runs"), "groups": str(bad), **TINY_RUN},
                progress=False, log=lambda m: None)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["run", "compare", "cv", "tune"])
def test_groups_is_a_run_flag_of_every_training_command(grouped, command):
    _, groups = grouped
    args = build_parser().parse_args([command, "--groups", str(groups)])
    assert run_flags(args)["groups"] == str(groups)


def test_a_groups_path_that_is_not_a_file_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["run", "--groups", str(tmp_path / "none.csv")])
    assert caught.value.code == 2 and "no such file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# Splits: run's split, cv's folds, tune's trial folds
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dedup", ["off", "report", "group", "drop"])
def test_no_patient_straddles_run_split_and_training_copies_of_test_patients_leave(grouped, dedup):
    root, groups = grouped
    data = prepare_data(discover(root), dedup=dedup, groups=groups, **PREPARE)
    for g, rows in _patients(data).items():
        assert len(_parts_of(data, rows)) == 1, f"group {g} straddles {_parts_of(data, rows)}"
    rel = {e.path.relative_to(root).as_posix(): i for i, e in enumerate(data.entries)}
    for i in (0, 1):  # the shared patient's training images left training; its test image stayed
        assert _parts_of(data, [rel[f"Training/glioma_tumor/{_name(i)}"]]) == set()
    assert _parts_of(data, [rel[f"Testing/glioma_tumor/{_name(0)}"]]) == {"test"}
    assert len(data.split.test) == 12  # the official test split stays whole
    summary = data.dedup["groups"]
    assert summary["removed_from_training"] == 2 and summary["groups_across_parts"] == 0
    assert data.dedup["mode"] == dedup and summary["missing"] == summary["ungrouped"] == 0


def test_without_groups_nothing_changes(grouped):
    root, _ = grouped
    data = prepare_data(discover(root), dedup="report", **PREPARE)
    assert data.group is None and data.unit is None and "groups" not in data.dedup
    assert len(data.split.train) + len(data.split.val) + len(data.split.test) == 4 * 11


def test_a_flat_split_keeps_patients_whole(flat_grouped):
    root, groups = flat_grouped
    data = prepare_data(discover(root), groups=groups, **PREPARE)
    assert all(len(_parts_of(data, rows)) == 1 for rows in _patients(data).values())
    assert all(len(rows) == 3 for rows in _patients(data).values())
    assert {part: len(rows) for part, rows in data.split.parts().items()} == {"train": 24, "val": 12, "test": 12}


def test_cv_folds_keep_patients_whole_and_away_from_the_official_test(grouped):
    root, groups = grouped
    data = prepare_data(discover(root), groups=groups, **PREPARE)
    splits, official_test = cv_splits(data, 3, val_fraction=0.2, seed=0)
    test_groups = set(data.group[official_test].tolist())
    held = np.concatenate([s.test for s in splits])
    assert len(held) == len(set(held.tolist())) == 4 * 8 - 2  # every pool image held out once; 2 left the pool
    for s in splits:
        parts = [set(data.group[rows].tolist()) for rows in (s.train, s.val, s.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert not (set().union(*parts) & test_groups)


def test_tune_trial_folds_keep_patients_whole(flat_grouped):
    root, groups = flat_grouped
    data = prepare_data(discover(root), groups=groups, **PREPARE)
    folds = trial_folds(data, 3, seed=0)
    assert len(folds) == 3
    for train, val in folds:
        assert not set(data.group[train].tolist()) & set(data.group[val].tolist())
        assert not (set(train.tolist()) | set(val.tolist())) & set(data.split.test.tolist())


# ----------------------------------------------------------------------------------
# The union with duplicate clusters (--dedup group)
# ----------------------------------------------------------------------------------


def test_merge_units_joins_groups_and_clusters_transitively():
    patients = np.array([0, 0, 1, 1, 2, 3])
    clusters = np.array([0, 1, 2, 3, 3, 4])  # row 1 ~ nothing; row 3 is a copy of row 4
    assert merge_units(6, patients, clusters).tolist() == [0, 0, 1, 1, 1, 2]
    assert merge_units(6, patients, None).tolist() == [0, 0, 1, 1, 2, 3]


def test_under_dedup_group_a_duplicate_joins_two_patients(tmp_path):
    root = make_dataset(tmp_path / "data", layout="flat", n_train=9, n_test=3)
    glioma = root / "glioma_tumor"
    shutil.copyfile(glioma / _name(0), glioma / "copy.png")  # patient A's image, filed under patient B
    rows = [(f"{folder}/{_name(i)}", f"{folder}-p{i // 3}") for folder in FOLDERS for i in range(12)]
    rows.append(("glioma_tumor/copy.png", "glioma_tumor-p1"))
    groups = write_groups(tmp_path / "groups.csv", rows)
    index = discover(root)
    row = {e.path.name: i for i, e in enumerate(index.entries) if e.label == "glioma"}
    a, b = row[_name(2)], row[_name(3)]  # patient p0's third image, patient p1's first
    report = prepare_data(index, dedup="report", groups=groups, **PREPARE)
    joined = prepare_data(index, dedup="group", groups=groups, **PREPARE)
    assert report.unit[a] != report.unit[b]  # patients only
    assert joined.unit[a] == joined.unit[b]  # p0 ~ copy (a duplicate of p0's image) ~ p1
    assert (joined.unit == joined.unit[a]).sum() == 7
    assert len(_parts_of(joined, np.flatnonzero(joined.unit == joined.unit[a]))) == 1
    assert joined.dedup["clusters_with_duplicates"] == 1


# ----------------------------------------------------------------------------------
# What the file and the dataset disagree on: counted, not fatal
# ----------------------------------------------------------------------------------


def test_missing_files_and_ungrouped_images_are_counted_not_fatal(tmp_path):
    root = make_dataset(tmp_path / "data", n_train=8, n_test=3)
    (root / "Training" / "no_tumor" / "notes.jpg").write_text("scanner notes")  # listed, but not an image
    rows = [r for r in _rows(8, 3) if not r[0].startswith("Training/no_tumor/image(7)")]
    rows += [("Training/glioma_tumor/gone.png", "glioma_tumor-p9"), ("Training/no_tumor/notes.jpg", "x")]
    groups = write_groups(tmp_path / "groups.csv", rows)
    data = prepare_data(discover(root), groups=groups, **PREPARE)
    summary = data.dedup["groups"]
    assert summary["missing"] == 2
    assert summary["missing_examples"] == ["Training/glioma_tumor/gone.png", "Training/no_tumor/notes.jpg"]
    assert summary["ungrouped"] == 1 and summary["ungrouped_examples"] == [f"Training/no_tumor/{_name(7)}"]
    assert summary["listed"] == 4 * 11 - 1 + 2 and summary["grouped_images"] == 4 * 11 - 1
    lone = next(i for i, e in enumerate(data.entries) if e.path.name == _name(7) and e.label == "no_tumor")
    assert (data.group == data.group[lone]).sum() == 1  # its own group


def test_assign_groups_leaves_rows_that_are_not_images_out(tmp_path):
    file = read_groups(write_groups(tmp_path / "g.csv", [("a.png", "p"), ("b.png", "p")]))
    ids, summary = assign_groups(file, ["a.png", "b.png", "c.png"], valid=np.array([True, False, True]))
    assert summary["missing"] == 1 and summary["ungrouped"] == 1 and summary["grouped_images"] == 1
    assert len(set(ids.tolist())) == 3


# ----------------------------------------------------------------------------------
# Fingerprints: an edited groups file is a different dataset for resume checks
# ----------------------------------------------------------------------------------


def test_the_data_fingerprint_follows_the_groups_file_content(grouped, tmp_path):
    root, groups = grouped
    index = discover(root)
    plain = prepare_data(index, **PREPARE)
    first = prepare_data(index, groups=groups, **PREPARE)
    copy = prepare_data(index, groups=shutil.copyfile(groups, tmp_path / "same.csv"), **PREPARE)
    rows = _rows(8, 3)
    rows[-1] = (rows[-1][0], "someone-else")  # one test image moves to another patient: the split is the same
    edited = prepare_data(index, groups=write_groups(tmp_path / "edited.csv", rows), **PREPARE)
    assert first.data_fingerprint == copy.data_fingerprint
    assert len({plain.data_fingerprint, first.data_fingerprint, edited.data_fingerprint}) == 3


def test_resuming_a_cv_with_the_groups_file_edited_in_place_is_refused(grouped, tmp_path):
    from suite.commands.cv import _plan
    from suite.config import resolve_config
    from suite.errors import SuiteError
    from suite.io import write_json_atomic

    root, _ = grouped
    groups = write_groups(tmp_path / "groups.csv", _rows(8, 3))
    config = resolve_config({"data": str(root), "groups": str(groups), **TINY_RUN})
    before = prepare_data(discover(root), groups=groups, **PREPARE)
    cv_dir = tmp_path / "cv"
    cv_dir.mkdir()
    write_json_atomic(cv_dir / "cv.json", _plan(cv_dir, config, before, 2, False))
    rows = _rows(8, 3)
    rows[0] = (rows[0][0], "another-patient")
    write_groups(groups, rows)  # the same path, other content
    after = prepare_data(discover(root), groups=groups, **PREPARE)
    with pytest.raises(SuiteError, match=rf"cannot resume .*data_fingerprint: was \"{before.data_fingerprint}\""):
        _plan(cv_dir, config, after, 2, True)
    assert _plan(cv_dir, config, before, 2, True)["resumed"] == 1  # the original file resumes


# ----------------------------------------------------------------------------------
# The audit: a patient across the official split is leakage
# ----------------------------------------------------------------------------------


def test_the_audit_reports_a_patient_across_the_official_split(grouped):
    root, groups = grouped
    found = audit(discover(root, check=False), progress=False, workers=1, groups=groups)
    assert found["cross_split_group"] == 1
    assert found["cross_split_by_class"]["glioma"]["group"] == 1
    assert found["cross_split_by_class"]["meningioma"]["group"] == 0
    assert found["groups"]["groups_across_splits"] == 1 and found["groups"]["test_sharing_group"] == 1
    assert found["cross_split_exact"] == 0  # not a duplicate: only the groups file ties them
    (pair,) = found["examples"]["cross_split_group"]["shown"]
    assert pair["a"]["path"] == f"Training/glioma_tumor/{_name(0)}" and pair["a"]["split"] == "train"
    assert pair["b"]["path"] == f"Testing/glioma_tumor/{_name(0)}" and pair["group"] == SHARED
    rows = {f["path"]: f for f in found["files"]}
    assert rows[f"Testing/glioma_tumor/{_name(0)}"]["group"] == SHARED


def test_an_audit_without_groups_has_no_group_figures(grouped):
    root, _ = grouped
    found = audit(discover(root, check=False), progress=False, workers=1)
    assert "cross_split_group" not in found and "groups" not in found
    assert "cross_split_group" not in found["examples"]


def test_the_audit_command_shows_group_leakage_in_its_report(grouped, tmp_path, capsys):
    root, groups = grouped
    assert main(["audit", "--data", str(root), "--out", str(tmp_path), "--groups", str(groups), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    saved = json.loads((folder / AUDIT).read_text(encoding="utf-8"))
    assert saved["cross_split_group"] == 1 and saved["groups"]["file"] == str(groups)
    html = (folder / AUDIT_REPORT).read_text(encoding="utf-8")
    assert "Patients straddle the official split" in html
    section = html[html.index('id="cross-split-group"'):html.index('id="contents"')]
    assert SHARED in section and section.count('src="data:image/jpeg;base64,') == 2
    assert "test images whose patient is also in training" in html


# ----------------------------------------------------------------------------------
# End to end (trains)
# ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_with_groups_records_them_and_trains_on_no_test_patient(grouped, tmp_path):
    from suite.commands.run import run
    from suite.contamination import load_training_hashes

    root, groups = grouped
    run_dir = run({"data": str(root), "out": str(tmp_path), "backbone": "mobilenetv2", "groups": str(groups),
                   **TINY_RUN}, progress=False, log=lambda m: None)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["groups"] == str(groups)
    assert manifest["dedup"]["groups"]["removed_from_training"] == 2
    patient = dict(_rows(8, 3))
    trained = load_training_hashes(run_dir / "training_hashes.npz").paths.tolist()
    tested = _tested(run_dir, root)
    assert len(trained) == 4 * 8 - 2 and len(tested) == 4 * 3
    assert not {patient[p] for p in tested} & {patient[p] for p in trained}


def _tested(run_dir: Path, root: Path) -> list[str]:
    """The test images of a run, relative to the dataset root."""
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        return [Path(row["path"]).relative_to(root).as_posix() for row in csv.DictReader(f)]


@pytest.mark.slow
def test_cv_with_groups_keeps_each_patient_in_one_fold(flat_grouped, tmp_path):
    from suite.commands.cv import cross_validate
    from suite.contamination import load_training_hashes

    root, groups = flat_grouped
    cv_dir = cross_validate({"data": str(root), "out": str(tmp_path), "backbone": "mobilenetv2",
                             "groups": str(groups), **TINY_RUN}, 2, progress=False, log=lambda m: None)
    patient = read_groups(groups).groups
    folds = sorted(cv_dir.glob("fold-?"))
    assert len(folds) == 2
    for fold in folds:
        trained = load_training_hashes(fold / "training_hashes.npz").paths.tolist()
        assert not {patient[p] for p in _tested(fold, root)} & {patient[p] for p in trained}, fold.name
    assert json.loads((cv_dir / "cv.json").read_text())["status"] == "completed"
