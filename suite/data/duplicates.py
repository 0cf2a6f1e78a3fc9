"""Exact and near-duplicate images: perceptual hashes, Hamming pairs, pixel checks, clusters.

The method, in three steps:

1. **Perceptual hash** (:func:`phashes`). Each image becomes greyscale (ITU-R 601 luma),
   is area-averaged to 32×32, and transformed with an orthonormal 2-D DCT-II. The
   top-left 8×8 block of low frequencies, *DC term included*, is thresholded at its own
   median (over the same 64 coefficients), giving 64 bits packed into a ``uint64`` with
   coefficient ``(0, 0)`` in the most significant bit. This is the ``imagehash.phash``
   convention. Images that look alike at 32×32 get hashes a few bits apart.
2. **Candidate pairs** (:func:`near_pairs`): every pair ``i < j`` whose hashes differ in at
   most ``threshold`` bits (default :data:`DEFAULT_THRESHOLD`).
3. **Pixel confirmation** (:func:`confirm_on_pixels`): brain MRI slices share a layout,
   so a low-frequency hash alone also pairs different patients' slices and neighbouring
   slices of one scan. A candidate is kept only if the two images agree on pixels: both
   are area-averaged to 64×64 greyscale (:data:`PIXEL_SIZE`), each normalised to zero
   mean and unit standard deviation, and the mean absolute difference of the two
   normalised images must be at most ``tol`` (default :data:`DEFAULT_TOL`). Normalising
   makes the check blind to brightness and contrast changes (re-exports, windowing) but
   not to content. Identical images score 0 and re-encoded or slightly rescaled copies
   about 0.01-0.08. On the public "sartaj" brain-tumour set, hash candidates scoring
   up to about 0.105 were, by eye, the same image; from about 0.115 on they were mostly
   neighbouring slices of one scan, and above 0.25 mostly different patients (scans on
   black backgrounds score 0.3-0.8 against each other, not the 2/√π ≈ 1.13 of two
   independent noise images). Raise ``tol`` to about 0.2 to also group neighbouring
   slices (same-patient leakage); that also pairs some different patients.
   A flat image (standard deviation below :data:`FLAT_STD` grey levels) has no content to
   compare and is never confirmed as a near duplicate; byte-identical copies of it are
   still exact duplicates.

:func:`find_duplicates` puts it together with exact duplicates (equal content digests)
and links both into clusters (:func:`clusters`, connected components, so a chain
A≈B≈C puts A and C in one cluster even when they are not a pair themselves). The cluster
id of every row is what a leak-free split groups by.

Everything here is pure numpy over arrays already in memory: the 3264 images of the
sartaj set (64 px) take about 1.5 s, most of it the pixel check of ~8800 candidates;
the pair search alone over 5000 hashes takes about 0.2 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HASH_SIZE = 8  # 8×8 low DCT frequencies -> 64 bits
HASH_INPUT = 32  # the greyscale image is area-averaged to 32×32 before the DCT
PIXEL_SIZE = 64  # side of the normalised greyscale images compared by confirm_on_pixels
# Max Hamming distance (of 64 bits) for a candidate near pair. On real scans the pairs that
# pass the pixel check sit at 0-6 bits; 10 leaves a margin and costs nothing (the pixel
# check, not the hash, decides).
DEFAULT_THRESHOLD = 10
DEFAULT_TOL = 0.11  # max mean |z_a - z_b| over the normalised 64×64 images (module docs)
FLAT_STD = 1.0  # grey levels: below this an image is flat and never near-confirmed
BLOCK_ROWS = 64  # rows of the distance matrix computed at once (about 9 * 64 * n bytes; small stays in cache)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


# ----------------------------------------------------------------------------------
# Resampling and the DCT as matrices, so a whole batch is two matrix products
# ----------------------------------------------------------------------------------


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D area (box) resampling.

    Output pixel ``i`` covers ``[i, i + 1) * n_in / n_out`` of the input axis; each input
    pixel weighs by its overlap with that interval. For an integer factor this is plain
    block averaging; it also works for upsampling.
    """
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    k = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, k + 1) - np.maximum(lo, k), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def dct_matrix(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``."""
    k = np.arange(keep, dtype=np.float64)[:, None]
    x = np.arange(n, dtype=np.float64)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def to_grey(images: np.ndarray) -> np.ndarray:
    """``(n, h, w, 3)`` RGB or ``(n, h, w)`` grey -> ``(n, h, w)`` float64 grey (0-255)."""
    images = np.asarray(images)
    if images.ndim == 4:
        if images.shape[-1] == 1:
            return images[..., 0].astype(np.float64)
        # three scaled adds: several times faster than a (..., 3) @ (3,) product
        return _LUMA[0] * images[..., 0] + _LUMA[1] * images[..., 1] + _LUMA[2] * images[..., 2]
    if images.ndim == 3:
        return images.astype(np.float64)
    raise ValueError(f"expected (n, h, w) or (n, h, w, channels) images, got shape {images.shape}")


def _resample(grey: np.ndarray, size: int) -> np.ndarray:
    """Area-resample ``(n, h, w)`` grey images to ``(n, size, size)``."""
    if grey.shape[1:] == (size, size):
        return grey
    rows = area_matrix(grey.shape[1], size)
    cols = area_matrix(grey.shape[2], size)
    return rows @ grey @ cols.T


def _batches(n: int, rows: int = BLOCK_ROWS):
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


# ----------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """``(n, 64)`` booleans -> ``(n,)`` uint64, first bit most significant."""
    packed = np.packbits(bits.astype(np.uint8), axis=1, bitorder="big")
    return packed.view(">u8")[:, 0].astype(np.uint64)


def _phash_grey(grey: np.ndarray) -> np.ndarray:
    """Hashes of a batch of ``(n, h, w)`` float grey images."""
    rows = dct_matrix(HASH_INPUT, HASH_SIZE) @ area_matrix(grey.shape[1], HASH_INPUT)
    cols = dct_matrix(HASH_INPUT, HASH_SIZE) @ area_matrix(grey.shape[2], HASH_INPUT)
    coeffs = (rows @ grey @ cols.T).reshape(len(grey), HASH_SIZE * HASH_SIZE)
    median = np.median(coeffs, axis=1, keepdims=True)
    return _pack_bits(coeffs > median)


def phash(grey: np.ndarray) -> np.uint64:
    """Perceptual hash of one greyscale image.

    Args:
        grey: ``(h, w)`` array of grey levels (any numeric dtype, any size; RGB
            ``(h, w, 3)`` is converted to grey first).

    Returns:
        The 64-bit hash: 8×8 lowest DCT frequencies of the 32×32 area-averaged image,
        DC included, each bit set where the coefficient exceeds the median of the 64.
    """
    grey = np.asarray(grey)
    batch = to_grey(grey[None]) if grey.ndim == 3 else grey[None].astype(np.float64)
    return _phash_grey(batch)[0]


def phashes(images: np.ndarray, *, batch: int = BLOCK_ROWS) -> np.ndarray:
    """Perceptual hashes (:func:`phash`) of a batch of images, vectorised.

    Args:
        images: ``(n, h, w, 3)`` uint8 RGB (a memory map is fine: it is read in
            batches of ``batch`` rows) or ``(n, h, w)`` grey.
        batch: rows converted to float at once, to bound memory.

    Returns:
        ``(n,)`` uint64 hashes.
    """
    out = np.empty(len(images), dtype=np.uint64)
    for rows in _batches(len(images), batch):
        out[rows] = _phash_grey(to_grey(images[rows]))
    return out


# ----------------------------------------------------------------------------------
# Hamming distances and candidate pairs
# ----------------------------------------------------------------------------------

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, as uint8 (``np.bitwise_count`` where numpy has it)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance between two arrays of uint64 hashes."""
    return popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def near_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, block: int = BLOCK_ROWS) -> np.ndarray:
    """All pairs ``i < j`` whose hashes differ in at most ``threshold`` bits.

    Args:
        hashes: ``(n,)`` uint64 hashes.
        threshold: maximum Hamming distance, 0-64 (default :data:`DEFAULT_THRESHOLD`).
        block: rows compared at once; memory is about ``9 * block * n`` bytes.

    Returns:
        ``(m, 2)`` int64 array of row pairs, sorted by ``i`` then ``j``.
    """
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be between 0 and 64 bits, got {threshold}")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found = [np.empty((0, 2), dtype=np.int64)]
    for rows in _batches(n, block):
        # Only columns right of the block's first row can pair with it (i < j).
        dist = popcount(hashes[rows, None] ^ hashes[None, rows.start:])
        i, j = np.nonzero(dist <= threshold)
        j += rows.start
        keep = j > i + rows.start
        found.append(np.stack([i[keep] + rows.start, j[keep]], axis=1).astype(np.int64))
    return np.concatenate(found)


def cross_pairs(
    hashes: np.ndarray, reference: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, block: int = BLOCK_ROWS
) -> np.ndarray:
    """All pairs ``(i, j)`` of a row of ``hashes`` and a row of ``reference`` at most ``threshold`` bits apart.

    :func:`near_pairs` within one set; this one between two (evaluated images against a
    run's training images, :mod:`suite.contamination`).

    Args:
        hashes: ``(n,)`` uint64 hashes.
        reference: ``(m,)`` uint64 hashes.
        threshold: maximum Hamming distance, 0-64 (default :data:`DEFAULT_THRESHOLD`).
        block: rows of ``hashes`` compared at once; memory is about ``9 * block * m`` bytes.

    Returns:
        ``(k, 2)`` int64 array of ``(row of hashes, row of reference)``, sorted by ``i`` then ``j``.
    """
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be between 0 and 64 bits, got {threshold}")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    reference = np.ascontiguousarray(reference, dtype=np.uint64)
    found = [np.empty((0, 2), dtype=np.int64)]
    for rows in _batches(len(hashes), block):
        i, j = np.nonzero(popcount(hashes[rows, None] ^ reference[None, :]) <= threshold)
        found.append(np.stack([i + rows.start, j], axis=1).astype(np.int64))
    return np.concatenate(found)


# ----------------------------------------------------------------------------------
# Pixel confirmation
# ----------------------------------------------------------------------------------


def normalised(images: np.ndarray, size: int = PIXEL_SIZE, *, batch: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Grey ``size``×``size`` images, each at zero mean and unit std, and their raw stds.

    Returns:
        ``(z, std)``: ``(n, size, size)`` float32 and ``(n,)`` float64 (grey levels).
        Rows of a flat image (std below :data:`FLAT_STD`) are all zeros.
    """
    z = np.empty((len(images), size, size), dtype=np.float32)
    std = np.empty(len(images), dtype=np.float64)
    for rows in _batches(len(images), batch):
        small = _resample(to_grey(images[rows]), size)
        centred = small - small.mean(axis=(1, 2), keepdims=True)
        s = centred.std(axis=(1, 2))
        std[rows] = s
        z[rows] = centred / np.where(s < FLAT_STD, np.inf, s)[:, None, None]
    return z, std


def pixel_distance(images: np.ndarray, pairs: np.ndarray, *, size: int = PIXEL_SIZE) -> np.ndarray:
    """Mean absolute difference of each pair's normalised images (see the module docs).

    Args:
        images: ``(n, h, w, 3)`` or ``(n, h, w)`` images, all rows (only the rows that
            appear in ``pairs`` are read).
        pairs: ``(m, 2)`` row pairs.
        size: side of the compared greyscale images.

    Returns:
        ``(m,)`` float64 scores; ``inf`` where either image is flat.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.empty(0, dtype=np.float64)
    rows = np.unique(pairs)
    z, std = normalised(np.asarray(images[rows]), size)
    where = np.searchsorted(rows, pairs)
    score = np.empty(len(pairs), dtype=np.float64)
    for chunk in _batches(len(pairs), 1024):
        a, b = z[where[chunk, 0]], z[where[chunk, 1]]
        score[chunk] = np.abs(a - b).mean(axis=(1, 2))
    flat = (std[where[:, 0]] < FLAT_STD) | (std[where[:, 1]] < FLAT_STD)
    score[flat] = np.inf
    return score


def confirm_on_pixels(images: np.ndarray, pairs: np.ndarray, tol: float = DEFAULT_TOL) -> np.ndarray:
    """Which candidate pairs agree on pixels: :func:`pixel_distance` at most ``tol``.

    Args:
        images: the images the pairs index into.
        pairs: ``(m, 2)`` row pairs (typically from :func:`near_pairs`).
        tol: largest mean absolute difference of the normalised 64×64 grey images
            (default :data:`DEFAULT_TOL`).

    Returns:
        ``(m,)`` boolean mask.
    """
    score = pixel_distance(images, pairs)
    return np.isfinite(score) & (score <= tol)


# ----------------------------------------------------------------------------------
# Exact duplicates and clusters
# ----------------------------------------------------------------------------------


def exact_pairs(digests: Sequence[str], valid: np.ndarray | None = None) -> np.ndarray:
    """All pairs ``i < j`` of rows with the same content digest.

    Args:
        digests: one content digest per row.
        valid: optional mask; rows outside it are never paired.

    Returns:
        ``(m, 2)`` int64 pairs, sorted.
    """
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if valid is None or valid[i]:
            groups.setdefault(d, []).append(i)
    found = [(a, b) for rows in groups.values() if len(rows) > 1
             for k, a in enumerate(rows) for b in rows[k + 1:]]
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Cluster id of each of ``n`` rows: connected components of the pair graph.

    Union-find with path halving. Ids are ``0..k-1`` in order of each cluster's
    smallest row, so a singleton has an id of its own and the numbering is stable.

    Args:
        n: number of rows.
        pairs: ``(m, 2)`` row pairs that belong together.

    Returns:
        ``(n,)`` int64 cluster ids.
    """
    parent = np.arange(n, dtype=np.int64)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smaller row stays the root
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    _, ids = np.unique(roots, return_inverse=True)
    return ids.astype(np.int64)


def _without(pairs: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """Rows of ``pairs`` that are not in ``remove`` (both ``(m, 2)`` with i < j)."""
    if len(pairs) == 0 or len(remove) == 0:
        return pairs
    width = max(int(pairs.max()), int(remove.max())) + 1
    return pairs[~np.isin(pairs[:, 0] * width + pairs[:, 1], remove[:, 0] * width + remove[:, 1])]


def find_duplicates(
    digests: Sequence[str],
    images: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    threshold: int = DEFAULT_THRESHOLD,
    tol: float = DEFAULT_TOL,
) -> dict:
    """Exact and near duplicates among ``images``, and the clusters they form.

    Args:
        digests: content digest of each row's file (equal digest = byte-identical).
        images: ``(n, h, w, 3)`` uint8 images, one row per digest.
        valid: rows that hold a decoded image (default: all). Other rows (unreadable
            files) get singleton clusters and no pairs.
        threshold: Hamming distance for candidate near pairs
            (default :data:`DEFAULT_THRESHOLD`).
        tol: pixel tolerance that confirms a candidate (default :data:`DEFAULT_TOL`).

    Returns:
        A dict of numpy arrays:

        * ``hashes``: ``(n,)`` uint64 perceptual hashes (0 for invalid rows);
        * ``exact_pairs``: ``(a, 2)`` rows with equal digests;
        * ``near_pairs``: ``(b, 2)`` confirmed near pairs that are not exact pairs;
        * ``near_distance``: ``(b,)`` Hamming distance of each near pair;
        * ``near_score``: ``(b,)`` pixel score of each near pair (see :func:`pixel_distance`);
        * ``candidates``: number of hash pairs before pixel confirmation (exact excluded);
        * ``cluster``: ``(n,)`` cluster id per row, over exact and near pairs;
        * ``threshold``, ``tol``: the settings used.
    """
    n = len(digests)
    if len(images) != n:
        raise ValueError(f"{len(images)} images but {n} digests: one of each per row is needed")
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    rows = np.flatnonzero(valid)
    hashes = np.zeros(n, dtype=np.uint64)
    hashes[rows] = _phash_rows(images, rows)
    exact = exact_pairs(digests, valid)
    candidates = _without(rows[near_pairs(hashes[rows], threshold)], exact)
    score = pixel_distance(images, candidates)
    keep = np.isfinite(score) & (score <= tol)
    near = candidates[keep]
    both = np.concatenate([exact, near]) if len(near) else exact
    return {
        "hashes": hashes,
        "exact_pairs": exact,
        "near_pairs": near,
        "near_distance": hamming(hashes[near[:, 0]], hashes[near[:, 1]]).astype(np.int64),
        "near_score": score[keep],
        "candidates": int(len(candidates)),
        "cluster": clusters(n, both),
        "threshold": int(threshold),
        "tol": float(tol),
    }


def _phash_rows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Hashes of the selected rows of a (possibly memory-mapped) image array."""
    out = np.empty(len(rows), dtype=np.uint64)
    for part in _batches(len(rows)):
        out[part] = _phash_grey(to_grey(images[rows[part]]))
    return out
