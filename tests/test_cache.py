"""The decoded-image cache never serves what it did not verify, and the digest index never crashes a run.

Each fault is made on real cache files written by a real decode; the images served afterwards
are compared with a fresh decode of the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite.data import decode as decode_mod
from suite.data.dataset import prepare_data
from suite.data.decode import DECODE_VERSION, decode_image, digest_files, file_digest, load_images
from suite.data.discover import discover
from tests.imagegen import make_dataset

SIZE = 24


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SUITE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def paths(tmp_path) -> list[Path]:
    root = make_dataset(tmp_path / "data", layout="flat", folders=("a", "b"), n_train=3, n_test=1)
    return sorted(p for p in root.rglob("*") if p.is_file())


def _fresh(paths) -> np.ndarray:
    return np.stack([decode_image(p, SIZE) for p in paths])


def _entry(cache: Path) -> tuple[Path, Path]:
    arrays = list((cache / "images").glob("*.npy"))
    assert len(arrays) == 1, arrays
    return arrays[0], arrays[0].with_suffix(".json")


def _data_offset(array_path: Path) -> int:
    with open(array_path, "rb") as f:
        assert np.lib.format.read_magic(f) == (2, 0)
        np.lib.format.read_array_header_2_0(f)
        return f.tell()


# --- each fault: (what it does to the .npy and its metadata) ---------------------------

def _zero_pixels(array_path: Path, meta_path: Path) -> None:
    """Same size, valid header, every pixel black."""
    offset = _data_offset(array_path)
    size = array_path.stat().st_size
    with open(array_path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(size - offset))


def _flip_one_byte(array_path: Path, meta_path: Path) -> None:
    data = bytearray(array_path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    array_path.write_bytes(bytes(data))


def _truncate_array(array_path: Path, meta_path: Path) -> None:
    data = array_path.read_bytes()
    array_path.write_bytes(data[: len(data) // 2])


def _truncate_array_in_header(array_path: Path, meta_path: Path) -> None:
    array_path.write_bytes(array_path.read_bytes()[:20])


def _truncate_meta(array_path: Path, meta_path: Path) -> None:
    text = meta_path.read_text()
    meta_path.write_text(text[: len(text) // 2])


def _garbage_meta(array_path: Path, meta_path: Path) -> None:
    meta_path.write_bytes(b"\xff\xfe not json at all")


def _not_an_object(array_path: Path, meta_path: Path) -> None:
    meta_path.write_text("[1, 2, 3]")


def _edit_meta(**changes):
    def edit(array_path: Path, meta_path: Path) -> None:
        meta = json.loads(meta_path.read_text())
        for key, change in changes.items():
            meta[key] = change(meta.get(key))
        meta_path.write_text(json.dumps(meta))
    return edit


def _wrong_shape_array(array_path: Path, meta_path: Path) -> None:
    n = json.loads(meta_path.read_text())["n"]
    with open(array_path, "wb") as f:  # a valid .npy of another shape
        np.save(f, np.full((n, SIZE, SIZE + 1, 3), 7, dtype=np.uint8))


def _wrong_dtype_array(array_path: Path, meta_path: Path) -> None:
    n = json.loads(meta_path.read_text())["n"]
    with open(array_path, "wb") as f:
        np.save(f, np.zeros((n, SIZE, SIZE, 3), dtype=np.float32))


FAULTS = {
    "zeroed pixels": (_zero_pixels, "checksum differs"),
    "one flipped byte": (_flip_one_byte, "checksum differs"),
    "truncated array": (_truncate_array, "bytes, expected"),
    "array truncated inside its header": (_truncate_array_in_header, "header unreadable"),
    "truncated metadata": (_truncate_meta, "not valid JSON"),
    "metadata not JSON": (_garbage_meta, "not valid JSON"),
    "metadata not an object": (_not_an_object, "not a JSON object"),
    "short reasons list": (_edit_meta(reasons=lambda r: r[:-1]), "skip reasons for"),
    "no reasons list": (_edit_meta(reasons=lambda r: None), "skip reasons for"),
    "a reason that is a number": (_edit_meta(reasons=lambda r: [5] + r[1:]), "other than text"),
    "a reason edited": (_edit_meta(reasons=lambda r: r[:-1] + ["edited"]), "skip reasons differs"),
    "wrong shape in metadata": (_edit_meta(shape=lambda s: [s[0], s[1], s[2], 1]), "metadata shape"),
    "wrong shape of the array": (_wrong_shape_array, "header unreadable"),
    "wrong dtype of the array": (_wrong_dtype_array, "header unreadable"),
    "size as a float": (_edit_meta(size=lambda s: float(s)), "metadata size"),
    "count as a boolean": (_edit_meta(n=lambda n: True), "metadata n"),
    "another decoder version": (_edit_meta(decoder=lambda v: DECODE_VERSION - 1), "metadata decoder"),
    "no checksum": (_edit_meta(checksum=lambda c: None), "no crc32 checksum"),
    "checksum segments edited": (_edit_meta(checksum=lambda c: {**c, "segments": ["00000000"]}), "checksum differs"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_entry_is_detected_warned_once_and_rebuilt(fault, cache, paths):
    damage, why = FAULTS[fault]
    first = load_images(paths, SIZE, progress=False)
    assert not first.cache_hit and all(r is None for r in first.reasons)
    damage(*_entry(cache))

    messages: list[str] = []
    second = load_images(paths, SIZE, progress=False, log=messages.append)
    assert not second.cache_hit
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert messages[0].startswith("warning: cached images ") and messages[0].endswith("; decoding again")
    assert "failed verification" in messages[0] and why in messages[0], messages[0]
    assert second.reasons == first.reasons
    assert np.array_equal(np.asarray(second.images), _fresh(paths))

    again: list[str] = []
    third = load_images(paths, SIZE, progress=False, log=again.append)
    assert third.cache_hit and again == []  # rebuilt once, then served quietly
    assert np.array_equal(np.asarray(third.images), _fresh(paths))


def test_reasons_of_skipped_files_survive_and_are_verified(cache, paths, tmp_path):
    bad = tmp_path / "data" / "a" / "notes.png"
    bad.write_text("not an image")
    files = paths + [bad]
    first = load_images(files, SIZE, progress=False)
    assert first.reasons[-1] and "not an image" in first.reasons[-1]
    _edit_meta(reasons=lambda r: r[:-1] + [None])(*_entry(cache))  # the bad file would pass as a black image
    messages: list[str] = []
    second = load_images(files, SIZE, progress=False, log=messages.append)
    assert len(messages) == 1 and "skip reasons differs" in messages[0]
    assert second.reasons == first.reasons


def test_a_short_reasons_list_is_not_blamed_on_the_data(cache, tmp_path):
    """The old symptom: "class folder has no readable images" for a cache fault."""
    root = make_dataset(tmp_path / "data", layout="flat", folders=("a", "b"), n_train=4, n_test=1)
    kw = dict(image_size=SIZE, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False)
    first = prepare_data(discover(root), **kw)
    _edit_meta(reasons=lambda r: r[:1])(*_entry(cache))
    messages: list[str] = []
    second = prepare_data(discover(root), log=messages.append, **kw)
    assert len(messages) == 1 and "1 skip reasons for 10 files" in messages[0]
    assert second.split_fingerprint == first.split_fingerprint and not second.skipped


def test_a_missing_half_is_rebuilt_quietly(cache, paths):
    load_images(paths, SIZE, progress=False)
    array_path, meta_path = _entry(cache)
    meta_path.unlink()
    messages: list[str] = []
    again = load_images(paths, SIZE, progress=False, log=messages.append)
    assert not again.cache_hit and messages == []
    assert np.array_equal(np.asarray(again.images), _fresh(paths))


def test_the_served_array_is_the_verified_file(cache, paths):
    """Memory-mapped from the very file that was checked, read-only."""
    decoded = load_images(paths, SIZE, progress=False)
    cached = load_images(paths, SIZE, progress=False)
    assert cached.cache_hit and isinstance(cached.images, np.memmap)
    assert not cached.images.flags.writeable
    assert np.array_equal(np.asarray(decoded.images), np.asarray(cached.images))


# --- the digest index --------------------------------------------------------------

def test_an_in_place_edit_with_size_and_mtime_restored_is_decoded_again(cache, tmp_path):
    """The quick key holds ctime and inode: os.utime cannot set ctime back."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, value in enumerate((40, 90, 140)):
        paths.append(folder / f"{i}.bmp")  # uncompressed: same pixels count, same file size
        Image.new("L", (30, 30), value).save(paths[-1])
    before = load_images(paths, SIZE, progress=False)
    st = paths[0].stat()
    Image.new("L", (30, 30), 250).save(paths[0])  # new pixels, written in place
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    after_st = paths[0].stat()
    assert (after_st.st_size, after_st.st_mtime_ns, after_st.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)

    after = load_images(paths, SIZE, progress=False)
    assert not after.cache_hit
    assert after.digests[0] == file_digest(paths[0]) != before.digests[0]
    assert np.array_equal(np.asarray(after.images), _fresh(paths))
    assert int(after.images[0].min()) == 250


@pytest.mark.parametrize("text", [
    "not json",
    '{"format": 2, "files": {',  # truncated
    "[]",
    '{"format": 2, "files": []}',
    '{"format": 99, "files": {}}',
    '"\\ud800"',
], ids=["garbage", "truncated", "a list", "files not a dict", "unknown format", "a string"])
def test_a_malformed_digest_index_is_ignored_with_one_warning_and_rewritten(text, cache, paths):
    (cache).mkdir(parents=True)
    (cache / "digests.json").write_text(text)
    messages: list[str] = []
    digests = digest_files(paths, log=messages.append)
    assert digests == [file_digest(p) for p in paths]
    assert len(messages) == 1 and messages[0].startswith("warning: digest index") and "\n" not in messages[0]
    index = json.loads((cache / "digests.json").read_text())
    assert index["format"] == 2 and set(index["files"]) == {str(p) for p in paths}


@pytest.mark.parametrize("record", [
    "deadbeef",
    [1, 2, 3],
    [1, 2, 3, 4, "not hex"],
    [True, 2, 3, 4, "0" * 32],
    [1.0, 2, 3, 4, "0" * 32],
    [1, 2, 3, 4, None],
], ids=["a string", "short", "bad digest", "a boolean", "a float", "no digest"])
def test_a_malformed_digest_entry_is_hashed_again(record, cache, paths):
    digest_files(paths)
    index_path = cache / "digests.json"
    index = json.loads(index_path.read_text())
    index["files"][str(paths[0])] = record
    index_path.write_text(json.dumps(index))
    messages: list[str] = []
    assert digest_files(paths, log=messages.append) == [file_digest(p) for p in paths]
    assert len(messages) == 1 and "1 malformed" in messages[0]
    assert digest_files(paths, log=messages.append) and len(messages) == 1  # rewritten: no second warning


def test_a_digest_index_of_the_old_format_is_dropped_quietly(cache, paths):
    cache.mkdir(parents=True)
    (cache / "digests.json").write_text(json.dumps({str(p): [1, 2, "0" * 32] for p in paths}))
    messages: list[str] = []
    assert digest_files(paths, log=messages.append) == [file_digest(p) for p in paths]
    assert messages == []


def test_an_unchanged_file_is_not_read_again(cache, paths, monkeypatch):
    digest_files(paths)

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(decode_mod, "file_digest", no_hashing)
    digest_files(paths)


def test_an_unreadable_file_is_skipped_not_fatal(cache, paths):
    gone = paths[0].with_name("vanished.png")  # listed, then gone before decoding
    decoded = load_images([gone] + paths, SIZE, progress=False)
    assert decoded.digests[0].startswith("unreadable:") and decoded.reasons[0]
    assert "FileNotFoundError" in decoded.reasons[0]
    assert str(gone) not in json.loads((cache / "digests.json").read_text())["files"]
