"""File names the OS allows but UTF-8 cannot spell (bytes such as ``\\xff``), and other odd but legal ones.

Python holds an undecodable byte as a lone surrogate (``os.fsdecode(b"\\xff")`` is ``"\\udcff"``);
JSON files spell it as the escape ``\\udcff``, which reads back to the same name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from suite.cli import main
from suite.runs import AUDIT
from tests.imagegen import TINY_RUN, make_dataset

ODD_NAMES = {
    "undecodable bytes": os.fsdecode(b"scan \xff\xfe.png"),
    "a lone continuation byte": os.fsdecode(b"\x80.jpg"),
    "a newline": "new\nline.png",
    "a carriage return": "carriage\rreturn.png",
    "a tab": "tab\there.jpg",
    "quotes and a backslash": "quote\"'`back\\slash.png",
    "a terminal escape": "\x1b[31mred.png",
    "markup": "<b>bold<b> & co.png",
    "format fields": "percent %s {0} $HOME.png",
    "a leading dash": "-rf.png",
    "spaces around": " spaced .png",
    "decomposed unicode": "cafe\u0301.png",
    "an emoji": "brain \U0001f9e0.png",
    "a long name": "x" * 240 + ".png",
}
BAD_NAME = os.fsdecode(b"not an image \xff.jpg")  # skipped: its reason must name it
ODD_FOLDER = os.fsdecode(b"sub \xfe folder")  # a nested folder with an undecodable name


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = make_dataset(tmp_path_factory.mktemp("names") / "data", n_train=6, n_test=2)
    src = root / "Training" / "glioma_tumor" / "image(0) é.png"
    odd = []
    for i, name in enumerate(ODD_NAMES.values()):
        folder = root / "Training" / ("glioma_tumor" if i % 2 else "no_tumor")
        odd.append(folder / name)
        shutil.copyfile(src, odd[-1])
    nested = root / "Training" / "meningioma_tumor" / ODD_FOLDER
    nested.mkdir()
    odd.append(nested / os.fsdecode(b"\xff.png"))
    shutil.copyfile(src, odd[-1])
    bad = root / "Testing" / "pituitary_tumor" / BAD_NAME
    bad.write_text("scanner notes")
    return root, odd + [bad]


def test_the_odd_names_exist_on_disk(odd_data):
    root, odd = odd_data
    names = {p.name for p in root.rglob("*")}
    assert all(p.name in names for p in odd)
    assert any("\udcff" in p.name for p in odd)


def test_audit_finishes_and_its_json_reads_back(odd_data, tmp_path, capsys):
    root, odd = odd_data
    assert main(["audit", "--data", str(root), "--out", str(tmp_path), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    result = json.loads((folder / AUDIT).read_text(encoding="utf-8"))
    files = {f["path"] for f in result["files"]}
    skipped = {s["path"]: s["reason"] for s in result["skipped"]}
    for path in odd[:-1]:
        assert path.relative_to(root).as_posix() in files
    bad = odd[-1].relative_to(root).as_posix()
    assert bad in files and "not an image" in skipped[bad]
    assert result["counts"]["files"] == result["counts"]["images"] + len(result["skipped"])
    assert (folder / "audit.html").is_file()


def test_the_data_stage_uses_the_odd_files_and_names_the_skipped_one(odd_data, tmp_path):
    from suite.commands.run import prepare
    from suite.io import write_json_atomic

    root, odd = odd_data
    prepared = prepare({"data": str(root), "out": str(tmp_path), **TINY_RUN}, progress=False, log=lambda m: None)
    data = prepared.data
    used = {e.path for e in data.entries}
    assert all(p in used for p in odd[:-1])
    assert [s["path"] for s in data.skipped] == [str(odd[-1])] and "not an image" in data.skipped[0]["reason"]
    assert len(data.entries) + len(data.skipped) == sum(1 for p in root.rglob("*") if p.is_file())
    # what the manifest records reads back to the same names
    written = write_json_atomic(tmp_path / "skipped.json", {"skipped": list(data.skipped),
                                                            "paths": [str(p) for p in data.paths("train")]})
    back = json.loads(written.read_text(encoding="utf-8"))
    assert back["skipped"] == list(data.skipped)
    assert back["paths"] == [str(p) for p in data.paths("train")]


def test_a_second_data_stage_hits_the_cache_with_the_same_fingerprints(odd_data, tmp_path):
    from suite.data.dataset import prepare_data
    from suite.data.discover import discover

    root, _ = odd_data
    kw = dict(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False)
    first = prepare_data(discover(root), **kw)
    second = prepare_data(discover(root), **kw)
    assert second.cache_hit
    assert (first.data_fingerprint, first.split_fingerprint) == (second.data_fingerprint, second.split_fingerprint)


@pytest.mark.slow
def test_a_full_run_on_odd_names_completes(odd_data, tmp_path, capsys):
    root, odd = odd_data
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items()]
    assert main(["run", "--data", str(root), "--out", str(tmp_path), "--quiet", *flags]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "completed"
    assert [s["path"] for s in manifest["skipped"]] == [str(odd[-1])]
