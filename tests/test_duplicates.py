"""Perceptual hashes, Hamming pairs, pixel confirmation and clusters (pure numpy, no files)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from suite.data import duplicates as dup
from suite.data.phantom import render_slice


def _rgb64(grey: np.ndarray) -> np.ndarray:
    """What the image cache holds: 64 px RGB uint8, bilinear as the decoder resizes."""
    small = Image.fromarray(grey).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8)


def _jpeg_copy(grey: np.ndarray, size: int, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(grey).resize((size, size), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))


@pytest.fixture(scope="module")
def slices() -> dict[str, np.ndarray]:
    """Four unrelated phantom slices (128 px grey), one per class."""
    return {label: render_slice(np.random.default_rng(i), label, 128)
            for i, label in enumerate(("glioma", "meningioma", "pituitary", "no_tumor"))}


@pytest.fixture(scope="module")
def batch(slices) -> np.ndarray:
    """Rows 0-3: unrelated slices; 4: re-encoded, resized copy of row 1;
    5: row 2 with brightness and contrast changed; 6, 7: flat black and flat grey."""
    rows = [_rgb64(s) for s in slices.values()]
    rows.append(_rgb64(_jpeg_copy(slices["meningioma"], 120, 70)))
    rows.append(np.clip(rows[2].astype(np.float64) * 0.7 + 40, 0, 255).astype(np.uint8))
    rows.append(np.zeros((64, 64, 3), np.uint8))
    rows.append(np.full((64, 64, 3), 128, np.uint8))
    return np.stack(rows)


# ----------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------


def test_dct_matrix_is_the_orthonormal_dct():
    from scipy.fft import dctn

    x = np.random.default_rng(0).random((32, 32))
    d = dup.dct_matrix(32, 8)
    np.testing.assert_allclose(d @ x @ d.T, dctn(x, norm="ortho")[:8, :8], atol=1e-12)


def test_area_matrix_averages_blocks():
    m = dup.area_matrix(64, 32)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[0, :3], [0.5, 0.5, 0.0])


def test_phash_single_equals_batch_and_accepts_grey_or_rgb(batch):
    hashes = dup.phashes(batch)
    assert hashes.dtype == np.uint64 and hashes.shape == (len(batch),)
    assert dup.phash(batch[0]) == hashes[0]
    assert dup.phash(dup.to_grey(batch[:1])[0]) == hashes[0]


def test_phash_matches_a_reference_implementation():
    from scipy.fft import dctn

    grey = render_slice(np.random.default_rng(5), "glioma", 96).astype(np.float64)
    small = grey.reshape(32, 3, 32, 3).mean(axis=(1, 3))  # 96 -> 32 by 3x3 block means
    coeffs = dctn(small, norm="ortho")[:8, :8].ravel()  # DC first, row by row
    bits = coeffs > np.median(coeffs)
    expected = sum(1 << (63 - k) for k, bit in enumerate(bits) if bit)
    assert int(dup.phash(grey)) == expected


def test_near_copies_hash_close_and_unrelated_far(batch):
    h = dup.phashes(batch)
    assert dup.hamming(h[1], h[4]) <= dup.DEFAULT_THRESHOLD  # re-encoded copy
    assert dup.hamming(h[2], h[5]) <= dup.DEFAULT_THRESHOLD  # brightness/contrast change
    for i, j in [(0, 1), (0, 2), (1, 3), (2, 3)]:
        assert dup.hamming(h[i], h[j]) > dup.DEFAULT_THRESHOLD


# ----------------------------------------------------------------------------------
# Hamming pairs
# ----------------------------------------------------------------------------------


def _brute_pairs(hashes, threshold):
    d = dup.popcount(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(d <= threshold, k=1))
    return np.stack([i, j], axis=1)


@pytest.mark.parametrize("threshold", [0, 3, 12, 24, 64])
def test_near_pairs_match_brute_force_across_blocks(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    # many close variants so small thresholds find something: flip one random bit
    hashes = np.concatenate([base, base ^ (np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64))])
    got = dup.near_pairs(hashes, threshold, block=7)  # blocks that do not divide n
    np.testing.assert_array_equal(got, _brute_pairs(hashes, threshold))
    assert (got[:, 0] < got[:, 1]).all()


def test_popcount_lookup_table_fallback(monkeypatch):
    hashes = np.random.default_rng(0).integers(0, 2**64 - 1, 200, dtype=np.uint64)
    fast = dup.near_pairs(hashes, 28)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(dup.popcount(hashes), [bin(int(h)).count("1") for h in hashes])
    np.testing.assert_array_equal(dup.near_pairs(hashes, 28), fast)


def test_near_pairs_rejects_bad_threshold():
    with pytest.raises(ValueError, match="between 0 and 64"):
        dup.near_pairs(np.zeros(3, np.uint64), 65)


# ----------------------------------------------------------------------------------
# Pixel confirmation
# ----------------------------------------------------------------------------------


def test_pixel_check_confirms_copies_and_rejects_others(batch):
    pairs = np.array([[1, 4], [2, 5], [0, 1], [0, 2], [1, 3], [6, 7], [0, 6]])
    score = dup.pixel_distance(batch, pairs)
    assert score[0] < 0.05 and score[1] < 1e-2  # re-encoded copy; linear intensity change
    assert (score[2:5] > 0.3).all()  # different heads
    assert np.isinf(score[5:]).all()  # flat images are never near duplicates
    np.testing.assert_array_equal(dup.confirm_on_pixels(batch, pairs), [True, True, False, False, False, False, False])


def test_tolerance_decides(batch):
    pairs = np.array([[1, 4], [0, 1]])
    assert dup.confirm_on_pixels(batch, pairs, tol=0.0).tolist() == [False, False]
    assert dup.confirm_on_pixels(batch, pairs, tol=5.0).tolist() == [True, True]


# ----------------------------------------------------------------------------------
# Clusters and the whole search
# ----------------------------------------------------------------------------------


def test_clusters_union_find_with_chains_and_singletons():
    ids = dup.clusters(7, np.array([[1, 2], [4, 5], [0, 1]]))
    np.testing.assert_array_equal(ids, [0, 0, 0, 1, 2, 2, 3])
    np.testing.assert_array_equal(dup.clusters(3, np.empty((0, 2), np.int64)), [0, 1, 2])


def test_exact_pairs_group_every_copy():
    pairs = dup.exact_pairs(["a", "b", "a", "c", "a", "b"], valid=np.array([1, 1, 1, 1, 1, 0], bool))
    np.testing.assert_array_equal(pairs, [[0, 2], [0, 4], [2, 4]])


def test_find_duplicates(batch):
    images = np.concatenate([batch, batch[:1]])  # row 8: a byte-identical file of row 0
    digests = [f"d{i}" for i in range(len(batch))] + ["d0"]
    valid = np.ones(len(images), bool)
    valid[3] = False  # an unreadable file: never paired, whatever its row holds
    found = dup.find_duplicates(digests, images, valid=valid)
    np.testing.assert_array_equal(found["exact_pairs"], [[0, 8]])
    np.testing.assert_array_equal(found["near_pairs"], [[1, 4], [2, 5]])  # the exact pair is not repeated
    assert found["near_distance"].shape == found["near_score"].shape == (2,)
    assert found["hashes"][3] == 0
    cluster = found["cluster"]
    assert cluster[0] == cluster[8] and cluster[1] == cluster[4] and cluster[2] == cluster[5]
    assert len(set(cluster.tolist())) == len(images) - 3
    assert found["threshold"] == dup.DEFAULT_THRESHOLD and found["tol"] == dup.DEFAULT_TOL


def test_find_duplicates_settings_change_results(batch):
    digests = [f"d{i}" for i in range(len(batch))]
    strict = dup.find_duplicates(digests, batch, tol=0.0)
    assert len(strict["near_pairs"]) == 0 and strict["candidates"] >= 2
    anything = dup.find_duplicates(digests, batch, threshold=64, tol=np.inf)
    n_content = 6  # rows 6 and 7 are flat: never confirmed
    assert len(anything["near_pairs"]) == n_content * (n_content - 1) // 2


def test_find_duplicates_checks_lengths(batch):
    with pytest.raises(ValueError, match="one of each per row"):
        dup.find_duplicates(["a"], batch)
