"""The phantom dataset generator: deterministic, well laid out, and drawing what it says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite.data import phantom
from suite.data.phantom import (
    CLASSES,
    PHANTOM_VERSION,
    default_phantom_dir,
    ensure_phantom,
    generate_phantom,
    render_slice,
)

TINY = dict(n_train_per_class=2, n_test_per_class=1, size=48, workers=1, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    a = generate_phantom(tmp_path / "a", seed=3, **TINY)
    b = generate_phantom(tmp_path / "b", seed=3, **{**TINY, "workers": 2})
    assert _files(a) == _files(b)


def test_different_seeds_give_different_images(tmp_path):
    a = _files(generate_phantom(tmp_path / "a", seed=0, **TINY))
    b = _files(generate_phantom(tmp_path / "b", seed=1, **TINY))
    assert a.keys() == b.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != b[k] for k in pngs)


def test_layout_and_metadata(tmp_path):
    root = generate_phantom(tmp_path / "ph", seed=5, **TINY)
    for split, n in (("Training", 2), ("Testing", 1)):
        for label in CLASSES:
            names = sorted(p.name for p in (root / split / label).iterdir())
            assert names == [f"{label}_{i:04d}.png" for i in range(n)]
            with Image.open(root / split / label / names[0]) as im:
                assert im.mode == "L" and im.size == (48, 48)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["name"] == "phantom" and meta["synthetic"] is True
    assert meta["version"] == PHANTOM_VERSION
    assert (meta["seed"], meta["size"], meta["image_size"], meta["epochs"]) == (5, 48, 64, 12)
    assert "synthetic" in meta["description"].lower() and "not real" in meta["description"]
    assert meta["counts"] == {
        "Training": {c: 2 for c in CLASSES},
        "Testing": {c: 1 for c in CLASSES},
    }
    assert [p.name for p in tmp_path.iterdir()] == ["ph"]  # no temporary folder left


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "ph").mkdir()
    (tmp_path / "ph" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_phantom(tmp_path / "ph", **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["ph"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom, "_write_metadata", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(tmp_path / "ph", **TINY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("label", CLASSES)
@pytest.mark.parametrize("size", [64, 100])
def test_every_class_renders_uint8_of_the_requested_size(label, size):
    img = render_slice(np.random.default_rng(0), label, size)
    assert img.dtype == np.uint8 and img.shape == (size, size)
    assert img.max() > 150 and img.min() < 30  # a bright head on a dark background


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown label"):
        render_slice(np.random.default_rng(0), "astrocytoma")


def _lesion_change(label: str, seed: int, size: int = 128):
    """Pixels where ``label`` differs from no_tumor drawn from the same RNG state."""
    drawn = phantom._render(np.random.default_rng(seed), label, size)
    healthy = render_slice(np.random.default_rng(seed), "no_tumor", size)
    changed = np.abs(drawn.image.astype(int) - healthy.astype(int)) > 60
    u, v = phantom._head_grid(drawn.head, size)
    return changed, u, v, drawn.head


@pytest.mark.parametrize("seed", range(4))
def test_lesions_appear_where_their_class_puts_them(seed):
    for label in ("glioma", "meningioma", "pituitary"):
        changed, u, v, head = _lesion_change(label, seed)
        rho = np.hypot(u, v)
        phi = np.arctan2(v, u)
        assert changed.sum() > 20, label
        where = np.median(u[changed]), np.median(v[changed])
        if label == "pituitary":  # small, at the bottom centre of the head
            assert abs(where[0]) < 0.1 and where[1] < -0.3
            assert changed.sum() < 0.12 * (rho < 1).sum()
        elif label == "meningioma":  # against the inner skull
            assert np.median(head.inner(phi[changed]) - rho[changed]) < 0.25
        else:  # inside the brain, away from the skull
            assert np.all(rho[changed] < head.inner(phi[changed]) + 0.01)


def test_ensure_phantom_honours_suite_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_CACHE_DIR", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / f"phantom-v{PHANTOM_VERSION}"
    assert default_phantom_dir() == expected
    calls = []

    def small(out_dir, **kwargs):
        calls.append(out_dir)
        return generate_phantom(out_dir, **TINY)

    monkeypatch.setattr(phantom, "generate_phantom", small)
    assert ensure_phantom() == expected
    assert (expected / "dataset.json").is_file()
    before = _files(expected)
    assert ensure_phantom() == expected  # second call: returned as is
    assert len(calls) == 1 and _files(expected) == before


def test_ensure_phantom_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("not a phantom")
    with pytest.raises(FileExistsError):
        ensure_phantom(tmp_path / "x")
