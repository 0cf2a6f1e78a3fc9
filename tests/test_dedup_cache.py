"""The duplicate analysis is cached with the decoded images: a second data stage with ``--dedup report`` reads
it instead of searching again, a damaged entry is found again with one warning, and another detector setting,
mode, split or image content misses. Real image files, and a cache of each test's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from suite.data import cache as cache_mod
from suite.data import duplicates
from suite.data.dataset import DEDUP_IMAGE_SIZE, prepare_data
from suite.data.decode import load_images
from suite.data.discover import discover
from tests.imagegen import make_dataset

PREPARE = dict(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False, dedup="report")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SUITE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> Path:
    """A split dataset with an exact and a near copy of training images in the test split."""
    from PIL import Image

    root = make_dataset(tmp_path_factory.mktemp("dedup-cache") / "data", n_train=6, n_test=3)
    train, test = root / "Training" / "glioma_tumor", root / "Testing" / "glioma_tumor"
    shutil.copyfile(train / "image(0) é.png", test / "exact copy.png")
    with Image.open(train / "image(2) é.png") as im:
        im.resize((38, 38), Image.Resampling.BICUBIC).save(test / "near copy.jpg", quality=90)
    return root


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / cache_mod.DUPLICATES_FOLDER).glob("*.json"))


def _clusters(data) -> list[int]:
    return data.cluster.tolist()


def test_a_second_data_stage_reads_the_analysis_and_finds_the_same_clusters(cache, leaky, monkeypatch):
    index = discover(leaky)
    first = prepare_data(index, **PREPARE)
    assert first.dedup["cache_hit"] is False and first.dedup["test_with_training_twin"] == 2
    assert len(_entries(cache)) == 1

    def no_search(*args, **kwargs):
        raise AssertionError("a cached data stage must not search for duplicates")

    monkeypatch.setattr(duplicates, "find_duplicates", no_search)
    second = prepare_data(index, **PREPARE)
    assert second.dedup["cache_hit"] is True
    assert _clusters(second) == _clusters(first) and second.dedup == {**first.dedup, "cache_hit": True}
    assert second.split_fingerprint == first.split_fingerprint


def test_the_cached_clusters_are_the_detector_s_own(cache, leaky):
    index = discover(leaky)
    prepare_data(index, **PREPARE)
    cached = prepare_data(index, **PREPARE)
    small = load_images([e.path for e in index.entries], DEDUP_IMAGE_SIZE, progress=False)
    direct = duplicates.find_duplicates(list(small.digests), small.images, valid=small.ok)["cluster"]
    assert cached.dedup["cache_hit"] and _clusters(cached) == direct[small.ok].tolist()


def test_an_entry_is_readable_json_with_its_settings(cache, leaky):
    prepare_data(discover(leaky), **PREPARE)
    (path,) = _entries(cache)
    entry = json.loads(path.read_text(encoding="utf-8"))
    assert entry["key"] == path.stem and entry["n"] == len(entry["cluster"]) == 4 * 9 + 2
    assert entry["settings"] == {"threshold": duplicates.DEFAULT_THRESHOLD, "tol": duplicates.DEFAULT_TOL,
                                 "image_size": DEDUP_IMAGE_SIZE, "detector": cache_mod.DETECTOR_VERSION,
                                 "decoder": entry["settings"]["decoder"], "mode": "report"}
    assert entry["split"] == {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2, "pool_splits": False}
    assert entry["pairs"] == {"exact": 1, "near": 1, "candidates": entry["pairs"]["candidates"]}


def _set(field, value):
    def edit(entry: dict) -> str:
        entry[field] = value
        return json.dumps(entry)
    return edit


def _swap_first_clusters(entry: dict) -> str:  # a real edit, with its checksum made to match
    ids = entry["cluster"]
    ids[0], ids[1] = ids[1], ids[0]
    entry["checksum"]["cluster"] = cache_mod._checksum(ids)
    return json.dumps(entry)


def _move_a_copy(entry: dict) -> str:  # an image moved to another cluster; the checksum left as written
    ids = entry["cluster"]
    ids[-1] = 0
    return json.dumps(entry)


CORRUPTIONS = {
    "not JSON": (lambda entry: "\x00\x00 zeroed page", "not valid JSON"),
    "truncated": (lambda entry: json.dumps(entry)[:-40], "not valid JSON"),
    "not an object": (lambda entry: "[1, 2, 3]", "not a JSON object"),
    "a cluster id edited": (_move_a_copy, "checksum of the cluster ids differs"),
    "renumbered with a matching checksum": (_swap_first_clusters, "not numbered 0..k-1"),
    "another tolerance": (lambda entry: (entry["settings"].update(tol=0.5), json.dumps(entry))[1], "settings is"),
    "another file count": (_set("n", 3), "n is 3, expected 38"),
    "ids of the wrong type": (lambda entry: (entry.update(cluster=[str(c) for c in entry["cluster"]]),
                                            json.dumps(entry))[1], "not a list of 38 integers"),
    "another key": (_set("key", "0" * 32), "key is"),
}


@pytest.mark.parametrize("corrupt, says", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_damaged_entry_is_found_again_with_one_warning(cache, leaky, corrupt, says):
    index = discover(leaky)
    first = prepare_data(index, **PREPARE)
    (path,) = _entries(cache)
    path.write_text(corrupt(json.loads(path.read_text(encoding="utf-8"))), encoding="utf-8")
    messages: list[str] = []
    again = prepare_data(index, log=messages.append, **PREPARE)
    assert len(messages) == 1 and messages[0].startswith(f"warning: cached duplicate analysis {path} failed "
                                                         "verification (") and says in messages[0]
    assert messages[0].endswith("; finding duplicates again") and "\n" not in messages[0]
    assert again.dedup["cache_hit"] is False and _clusters(again) == _clusters(first)
    quiet: list[str] = []
    third = prepare_data(index, log=quiet.append, **PREPARE)  # rewritten whole
    assert third.dedup["cache_hit"] is True and quiet == []


def test_a_missing_entry_is_found_again_quietly(cache, leaky):
    index = discover(leaky)
    first = prepare_data(index, **PREPARE)
    _entries(cache)[0].unlink()
    messages: list[str] = []
    again = prepare_data(index, log=messages.append, **PREPARE)
    assert messages == [] and again.dedup["cache_hit"] is False and _clusters(again) == _clusters(first)


@pytest.mark.parametrize("change", [
    {"dedup_threshold": 4}, {"dedup_tol": 0.05}, {"seed": 1}, {"val_fraction": 0.3}, {"dedup": "group"},
    {"dedup": "drop"}, {"pool_splits": True},
], ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()))
def test_another_setting_mode_or_split_misses(cache, leaky, change):
    index = discover(leaky)
    prepare_data(index, **PREPARE)
    other = prepare_data(index, **{**PREPARE, **change})
    assert other.dedup["cache_hit"] is False and len(_entries(cache)) == 2
    assert prepare_data(index, **{**PREPARE, **change}).dedup["cache_hit"] is True


def test_a_threshold_that_finds_less_is_not_served_the_old_clusters(cache, leaky):
    index = discover(leaky)
    default = prepare_data(index, **PREPARE)
    strict = prepare_data(index, dedup_tol=0.0, **PREPARE)  # the pixel check now refuses the near copy
    assert strict.dedup["cache_hit"] is False
    assert default.dedup["test_with_training_twin"] == 2 and strict.dedup["test_with_training_twin"] == 1


def test_a_changed_image_misses(cache, tmp_path):
    root = make_dataset(tmp_path / "data", n_train=4, n_test=2)
    prepare_data(discover(root), **PREPARE)
    target = root / "Testing" / "glioma_tumor" / "image(0) é.png"
    shutil.copyfile(root / "Training" / "glioma_tumor" / "image(0) é.png", target)  # now a copy
    again = prepare_data(discover(root), **PREPARE)
    assert again.dedup["cache_hit"] is False and again.dedup["test_with_training_twin"] == 1


def test_dedup_off_neither_reads_nor_writes_the_analysis(cache, leaky):
    data = prepare_data(discover(leaky), **{**PREPARE, "dedup": "off"})
    assert data.dedup is None and _entries(cache) == []
    assert np.asarray(data.images).shape[0] == 4 * 9 + 2
