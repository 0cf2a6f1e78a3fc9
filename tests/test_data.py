"""Discovery, decoding, the image cache and splits, on real image files."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite.data import decode as decode_mod
from suite.data.audit import audit
from suite.data.dataset import prepare_data
from suite.data.decode import MAX_PIXELS, decode_image, load_images
from suite.data.discover import canonical_label, discover
from suite.data.splits import make_split
from suite.errors import DataError
from tests.imagegen import make_dataset

PREPARE = dict(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False)

# --- discovery -----------------------------------------------------------------------

@pytest.mark.parametrize("train_name,test_name", [
    ("Training", "Testing"), ("Train", "Test"), ("train", "test"),
])
def test_split_layout_names(tmp_path, train_name, test_name):
    make_dataset(tmp_path, n_train=2, n_test=1)
    (tmp_path / "Training").rename(tmp_path / f"_{train_name}")
    (tmp_path / "Testing").rename(tmp_path / test_name)
    (tmp_path / f"_{train_name}").rename(tmp_path / train_name)
    index = discover(tmp_path)
    assert index.layout == "split"
    assert index.labels == ("glioma", "meningioma", "pituitary", "no_tumor")
    assert sum(e.split == "test" for e in index.entries) == 4


def test_val_folder_is_used_as_validation(tmp_path):
    make_dataset(tmp_path, n_train=4, n_test=2)
    shutil.copytree(tmp_path / "Testing", tmp_path / "val")
    index = discover(tmp_path)
    data = prepare_data(index, image_size=32, val_fraction=0.1, test_fraction=0.2, seed=0, progress=False)
    assert data.class_counts()["val"] == {"glioma": 2, "meningioma": 2, "pituitary": 2, "no_tumor": 2}
    assert sum(data.class_counts()["train"].values()) == 16


def test_flat_layout(tmp_path):
    make_dataset(tmp_path, layout="flat", n_train=8, n_test=2)
    index = discover(tmp_path)
    assert index.layout == "flat"
    assert {e.split for e in index.entries} == {"pool"}


@pytest.mark.parametrize("folder,label", [
    ("glioma_tumor", "glioma"), ("Glioma Tumor", "glioma"), ("notumor", "no_tumor"),
    ("no_tumor", "no_tumor"), ("pituitary_tumor", "pituitary"), ("meningioma", "meningioma"),
    ("Astrocytoma", "Astrocytoma"),
])
def test_label_aliases(folder, label):
    assert canonical_label(folder) == label


def test_unknown_class_names_are_kept(tmp_path):
    make_dataset(tmp_path, folders=("cats", "dogs"), n_train=2, n_test=1)
    assert discover(tmp_path).labels == ("cats", "dogs")


def test_empty_class_folder_names_it(tmp_path):
    make_dataset(tmp_path, n_train=2, n_test=1)
    empty = tmp_path / "Training" / "extra_class"
    empty.mkdir()
    with pytest.raises(DataError, match="extra_class"):
        discover(tmp_path)


def test_single_class_is_refused(tmp_path):
    make_dataset(tmp_path, folders=("glioma",), n_train=3, n_test=1)
    with pytest.raises(DataError, match="single class"):
        discover(tmp_path)


def test_test_class_missing_from_training(tmp_path):
    make_dataset(tmp_path, n_train=2, n_test=1)
    shutil.rmtree(tmp_path / "Training" / "no_tumor")
    with pytest.raises(DataError, match=r"Testing.no_tumor"):
        discover(tmp_path)


def test_class_with_no_readable_image(tmp_path):
    make_dataset(tmp_path, n_train=3, n_test=1)
    bad = tmp_path / "Training" / "junk"
    bad.mkdir()
    (bad / "a.jpg").write_text("not an image")
    with pytest.raises(DataError, match="no readable images.*junk"):
        prepare_data(discover(tmp_path), image_size=32, val_fraction=0.1, test_fraction=0.2, seed=0,
                     progress=False)


def test_data_that_is_a_file_says_so(tmp_path):
    archive = tmp_path / "sartaj.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"dataset path is a file, not a folder: .*sartaj\.zip"):
        discover(archive)
    with pytest.raises(DataError, match="dataset folder not found"):
        discover(tmp_path / "missing")


def test_a_class_too_small_to_split_is_named_as_plain_text(tmp_path):
    make_dataset(tmp_path, layout="flat", folders=("glioma", "meningioma"), n_train=3, n_test=0)
    for extra in sorted((tmp_path / "glioma").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DataError) as caught:
        prepare_data(discover(tmp_path), **PREPARE)
    assert "class 'glioma' has 1 image(s)" in str(caught.value) and "np." not in str(caught.value)


# --- what discovery skips, and says why ------------------------------------------------

def _odd_tree(root: Path) -> dict[str, Path]:
    """Beside ``make_dataset``'s images: nested folders, links, a folder named like an image."""
    make_dataset(root, layout="flat", folders=("glioma", "no_tumor"), n_train=4, n_test=0)
    glioma = root / "glioma"
    src = glioma / "image(0) é.png"
    nested = glioma / "scan 7" / "slices"
    nested.mkdir(parents=True)
    shutil.copyfile(src, nested / "deep.png")
    named_like_image = glioma / "x.jpg"
    named_like_image.mkdir()
    shutil.copyfile(src, named_like_image / "inside.png")
    planted = {"nested": nested / "deep.png", "folder_like_image": named_like_image,
               "inside_folder_like_image": named_like_image / "inside.png",
               "loop_up": glioma / "scan 7" / "up", "loop_self": glioma / "self", "broken": glioma / "broken.png",
               "linked_file": glioma / "linked.png", "fifo": glioma / "pipe.jpg"}
    planted["loop_up"].symlink_to("..")  # scan 7/up -> glioma: a loop through a folder above
    planted["loop_self"].symlink_to("self")  # a link to itself
    planted["broken"].symlink_to("nowhere.png")
    planted["linked_file"].symlink_to(src.name)
    os.mkfifo(planted["fifo"])
    return planted


def test_nested_folders_are_read_and_every_odd_entry_is_skipped_with_a_reason(tmp_path):
    planted = _odd_tree(tmp_path)
    index = discover(tmp_path)
    found = {e.path for e in index.entries}
    skipped = {s.path: s.reason for s in index.skipped}
    assert planted["nested"] in found and planted["linked_file"] in found
    assert planted["inside_folder_like_image"] not in found
    assert "folder named like an image" in skipped[planted["folder_like_image"]]
    assert "symbolic link loop" in skipped[planted["loop_up"]] and str(tmp_path / "glioma") in \
        skipped[planted["loop_up"]]
    assert "symbolic link loop" in skipped[planted["loop_self"]]
    assert "broken symbolic link" in skipped[planted["broken"]]
    assert "not a regular file" in skipped[planted["fifo"]]
    assert len(skipped) == 5 and all(s.label == "glioma" and s.split == "pool" for s in index.skipped)


def test_discovery_skips_are_listed_by_the_data_stage_and_the_audit(tmp_path):
    planted = _odd_tree(tmp_path)
    index = discover(tmp_path)
    data = prepare_data(index, **PREPARE)
    listed = {s["path"]: s["reason"] for s in data.skipped}
    assert {str(planted[k]) for k in ("folder_like_image", "loop_up", "loop_self", "broken", "fifo")} <= set(listed)
    assert len(data.entries) + len(data.skipped) == len(index.entries) + len(index.skipped)

    result = audit(index, progress=False, workers=1)
    assert result["counts"]["files"] == result["counts"]["images"] + len(result["skipped"])
    rows = {row["path"]: row for row in result["skipped"]}
    assert rows["glioma/x.jpg"] == {"path": "glioma/x.jpg", "split": "pool", "label": "glioma",
                                    "reason": listed[str(planted["folder_like_image"])]}


def test_a_link_among_class_folders_back_to_the_dataset_is_not_a_class(tmp_path):
    make_dataset(tmp_path, n_train=2, n_test=1)
    (tmp_path / "Training" / "everything").symlink_to("..")
    (tmp_path / "Testing" / "itself").symlink_to("itself")
    index = discover(tmp_path)
    assert index.labels == ("glioma", "meningioma", "pituitary", "no_tumor")
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert set(reasons) == {"everything", "itself"} and all("symbolic link loop" in r for r in reasons.values())


def test_a_class_folder_with_nothing_to_read_names_what_it_holds(tmp_path):
    make_dataset(tmp_path, n_train=2, n_test=1)
    only_loop = tmp_path / "Training" / "extra_class"
    only_loop.mkdir()
    (only_loop / "self").symlink_to("self")
    with pytest.raises(DataError, match=r"no files to read: .*extra_class.*'self': symbolic link loop"):
        discover(tmp_path)


# --- the pixel limit ---------------------------------------------------------------------

def png_with_size(path: Path, width: int, height: int, *, pixels: bool = False) -> Path:
    """A greyscale PNG whose header says ``width`` x ``height``. Its pixel data is only complete
    with ``pixels`` (streamed through zlib, so the test never holds the image in memory);
    otherwise one row follows, as in a bomb that relies on the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(), bytes(width + 1)  # filter byte + a black row
    idat = b"".join(packer.compress(row) for _ in range(height if pixels else 1)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width,height,dims", [
    (9000, 9000, True),  # over our limit, under Pillow's: Pillow would decode it
    (12000, 12000, True),  # over Pillow's warning limit
    (20000, 20000, False),  # over twice Pillow's limit: Pillow refuses it from the header
])
def test_an_image_over_the_pixel_limit_is_skipped_with_its_size_and_the_limit(tmp_path, width, height, dims):
    big = png_with_size(tmp_path / "big.png", width, height)
    reason = load_images([big], 32, progress=False).reasons[0]
    assert reason.startswith("image too large") and f"{width * height / 1e6:.1f} megapixels" in reason
    assert f"limit of {MAX_PIXELS / 1e6:.1f} megapixels" in reason
    assert (f"{width}x{height} px" in reason) == dims


def test_an_image_just_under_the_limit_is_decoded(tmp_path):
    side = int(MAX_PIXELS ** 0.5)
    assert side * side <= MAX_PIXELS
    edge = png_with_size(tmp_path / "edge.png", side, side, pixels=True)
    assert load_images([edge], 32, progress=False).reasons == (None,)


def test_no_decompression_bomb_warning_reaches_stderr(tmp_path):
    bombs = [png_with_size(tmp_path / f"{w}.png", w, w) for w in (9000, 12000, 20000)]
    code = ("import sys, json; from suite.data.decode import load_images; "
            "print(json.dumps(load_images(sys.argv[1:], 32, progress=False).reasons))")
    env = {**os.environ, "SUITE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", code, *map(str, bombs)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert all(r.startswith("image too large") for r in json.loads(done.stdout))


# --- decoding ------------------------------------------------------------------------

def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_greyscale_is_replicated(tmp_path):
    arr = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    out = decode_image(_save(Image.fromarray(arr), tmp_path / "g.png"), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert out[0, -1, 0] > out[0, 0, 0]


def test_rgba_alpha_goes_over_black(tmp_path):
    img = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
    img.paste((200, 10, 10, 255), (0, 0, 20, 40))
    out = decode_image(_save(img, tmp_path / "a.png"), 32)
    assert out[16, 2].tolist() == [200, 10, 10]
    assert out[16, 30].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.paste(1, (0, 0, 40, 20))
    img.info["transparency"] = 0
    out = decode_image(_save(img, tmp_path / "p.png", transparency=0), 32)
    assert out[4, 16].tolist() == [10, 200, 30]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(img, tmp_path / "c.jpg", quality=95), 32)
    r, g, b = out[16, 16].tolist()
    assert r > 200 and g < 60 and b < 60


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    arr = np.zeros((40, 40), dtype=np.uint16)
    arr[:, 20:] = 4000  # typical MRI range, far below 65535
    out = decode_image(_save(Image.fromarray(arr), tmp_path / "h.png"), 32)
    assert out[16, 30, 0] == 255 and out[16, 2, 0] == 0


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:, :30] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_save(img, tmp_path / "e.jpg", exif=exif, quality=95), 32)
    assert out[2, 16].mean() > 200 and out[30, 16].mean() < 50  # white half now on top


def test_bad_files_are_skipped_with_reasons(tmp_path):
    good = _save(Image.new("L", (40, 40), 128), tmp_path / "good (1) ü.png")
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8)).save(buf, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds_store = tmp_path / ".DS_Store"
    ds_store.write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    empty = tmp_path / "Thumbs.db"
    empty.write_bytes(b"")
    decoded = load_images([good, truncated, ds_store, text, empty], 32, progress=False)
    assert decoded.ok.tolist() == [True, False, False, False, False]
    assert "unreadable" in decoded.reasons[1]
    assert all("not an image" in r for r in decoded.reasons[2:])


def test_second_load_hits_cache_and_decodes_nothing(tmp_path, monkeypatch):
    make_dataset(tmp_path, n_train=2, n_test=1)
    paths = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    first = load_images(paths, 36, progress=False)
    assert not first.cache_hit

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached load must not decode")

    monkeypatch.setattr(decode_mod, "_decode_all", no_decoding)
    monkeypatch.setattr(decode_mod, "file_digest", no_decoding)
    second = load_images(paths, 36, progress=False)
    assert second.cache_hit and isinstance(second.images, np.memmap)
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))


def test_cache_is_keyed_by_content(tmp_path):
    make_dataset(tmp_path, n_train=2, n_test=1)
    paths = sorted(p for p in tmp_path.rglob("*.png"))
    before = load_images(paths, 34, progress=False)
    Image.new("L", (40, 40), 255).save(paths[0])  # same path, new content
    after = load_images(paths, 34, progress=False)
    assert not after.cache_hit
    assert after.images[0].min() == 255 and before.images[0].min() < 255


def test_parallel_decode_matches_sequential(tmp_path):
    make_dataset(tmp_path, n_train=40, n_test=0, size=48)  # 160 files: above the pool threshold
    paths = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    parallel = load_images(paths, 40, workers=2, progress=False)
    assert not parallel.cache_hit
    expected = np.stack([decode_image(p, 40) for p in paths])
    assert np.array_equal(np.asarray(parallel.images), expected)


# --- splits --------------------------------------------------------------------------

def _labels(n_per_class=20, classes=4):
    return np.repeat(np.array([f"c{i}" for i in range(classes)]), n_per_class)


def test_flat_split_is_stratified_disjoint_and_seeded():
    labels = _labels()
    splits = np.array(["pool"] * len(labels))
    a = make_split(labels, splits, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = make_split(labels, splits, val_fraction=0.1, test_fraction=0.2, seed=3)
    c = make_split(labels, splits, val_fraction=0.1, test_fraction=0.2, seed=4)
    rows = np.concatenate([a.train, a.val, a.test])
    assert sorted(rows.tolist()) == list(range(len(labels)))
    for part in ("train", "val", "test"):
        assert np.array_equal(a.parts()[part], b.parts()[part])
    assert not np.array_equal(a.test, c.test)
    assert all((labels[a.test] == f"c{i}").sum() == 4 for i in range(4))
    assert all((labels[a.val] == f"c{i}").sum() == 2 for i in range(4))


def test_official_test_split_is_untouched():
    labels = _labels(10, 2)
    splits = np.array((["train"] * 7 + ["test"] * 3) * 2)
    s = make_split(labels, splits, val_fraction=0.2, test_fraction=0.5, seed=0)
    assert np.array_equal(s.test, np.flatnonzero(splits == "test"))
    assert set(s.val) <= set(np.flatnonzero(splits == "train"))


def test_split_fingerprint_follows_the_seed(tiny_data):
    index = discover(tiny_data)
    kw = dict(image_size=32, val_fraction=0.2, test_fraction=0.2, progress=False)
    a = prepare_data(index, seed=1, **kw)
    b = prepare_data(index, seed=1, **kw)
    c = prepare_data(index, seed=2, **kw)
    assert a.split_fingerprint == b.split_fingerprint != c.split_fingerprint
    assert a.data_fingerprint == c.data_fingerprint


def test_reference_protocol_pools_official_splits(tiny_data):
    from suite.config import resolve_config

    config = resolve_config({"protocol": "reference"}, {"image_size": 64, "epochs": 3})
    assert (config.image_size, config.epochs, config.batch_size, config.seed) == (150, 12, 32, 101)
    assert config.pool_splits and config.test_fraction == 0.1
    assert resolve_config({"protocol": "reference", "epochs": 1}).epochs == 1  # flags still win
    data = prepare_data(discover(tiny_data), image_size=32, val_fraction=0.1, test_fraction=0.1, seed=101,
                        progress=False, pool_splits=True)
    test_folders = {data.entries[i].path.parent.parent.name for i in data.split.test}
    train_folders = {data.entries[i].path.parent.parent.name for i in data.split.train}
    assert train_folders == {"Training", "Testing"}  # official test images end up in training
    assert len(data.split.test) == 4 and test_folders <= {"Training", "Testing"}  # 10% of 14 per class


def test_grouped_split_never_straddles_a_cluster():
    labels = _labels(20, 3)
    groups = np.arange(len(labels)) // 3  # clusters of three same-class images
    splits = np.array(["pool"] * len(labels))
    s = make_split(labels, splits, val_fraction=0.2, test_fraction=0.2, seed=0, groups=groups)
    parts = [set(groups[p].tolist()) for p in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(len(labels)))
    assert all((labels[s.test] == f"c{i}").any() for i in range(3))


def test_grouped_split_moves_training_twins_of_official_test_out():
    labels = _labels(10, 2)
    splits = np.array((["train"] * 8 + ["test"] * 2) * 2)
    groups = np.arange(len(labels))
    groups[0] = groups[8]  # a training image duplicated in the official test set
    s = make_split(labels, splits, val_fraction=0.2, test_fraction=0.2, seed=0, groups=groups)
    assert np.array_equal(s.test, np.flatnonzero(splits == "test"))
    assert 0 not in s.train and 0 not in s.val
