"""Where the suite keeps what it can make again: decoded images, the duplicate analysis, the phantom data.

The duplicate analysis (which images are exact or near duplicates, as cluster ids) is cached
beside the decoded images, under ``duplicates/<key>.json``, by the same rules as they are (see
:mod:`suite.data.decode`): nothing in an entry is trusted. The key is a digest of every file's
content digest and whether it decoded, the detector's settings (hash threshold, pixel tolerance,
the size of the images it compares, :data:`DETECTOR_VERSION` and the decoder's version), the
``--dedup`` mode and the split (each file's official split, the seed and the fractions). Each time
an entry is read, its format, key, settings, split and file count are checked against the request,
its cluster ids against their own numbering (``0..k-1`` in order of first appearance, as
:func:`suite.data.duplicates.clusters` numbers them), and against the CRC-32 written when it was
made. An entry that fails is discarded and computed again, with one warning line; a missing one is
computed quietly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np


class CacheEntryInvalid(Exception):
    """A cache entry that cannot be served; the message says why."""


# 1: the first. Bump when suite.data.duplicates changes which images it finds to be duplicates: entries of
# another version are never looked at again (their keys differ).
DETECTOR_VERSION = 1
DUPLICATES_FORMAT = 1
DUPLICATES_FOLDER = "duplicates"


def cache_dir() -> Path:
    """``$SUITE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mri-suite``, else ``~/.cache/mri-suite``."""
    explicit = os.environ.get("SUITE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mri-suite"


def duplicates_key(digests: Sequence[str], valid: np.ndarray, settings: Mapping, split: Mapping,
                   splits: Sequence[str]) -> str:
    """The cache key of a duplicate analysis (see the module docstring).

    Args:
        digests: every discovered file's content digest, in row order.
        valid: which rows decoded.
        settings: the detector's settings and the ``--dedup`` mode (JSON values).
        split: the split's settings: seed, fractions, whether official splits were pooled.
        splits: each row's official split (``train``, ``val``, ``test`` or ``pool``).
    """
    h = hashlib.blake2b(digest_size=16)
    head = {"format": DUPLICATES_FORMAT, "settings": dict(settings), "split": dict(split)}
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(np.packbits(np.asarray(valid, dtype=bool)).tobytes())
    h.update("\n".join(splits).encode())
    h.update(b"\0")
    h.update("\n".join(digests).encode())
    return h.hexdigest()


def cached_clusters(
    key: str,
    n: int,
    settings: Mapping,
    split: Mapping,
    compute: Callable[[], dict],
    log: Callable[[str], None],
) -> tuple[np.ndarray, bool]:
    """The duplicate clusters under ``key``: read and verified from the cache, else computed and cached.

    Args:
        key: from :func:`duplicates_key`.
        n: rows (discovered files).
        settings, split: what the key was made of, stored in the entry for a reader and checked.
        compute: makes :func:`suite.data.duplicates.find_duplicates`'s result on a miss.
        log: where the warning line about an entry that failed verification goes.

    Returns:
        ``(cluster ids, cache_hit)``.
    """
    path = cache_dir() / DUPLICATES_FOLDER / f"{key}.json"
    try:
        return read_clusters(path, key, n, settings, split), True
    except FileNotFoundError:
        pass
    except (CacheEntryInvalid, OSError) as exc:
        log(" ".join(f"warning: cached duplicate analysis {path} failed verification ({exc}); "
                     "finding duplicates again".split()))
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    found = compute()
    cluster = np.asarray(found["cluster"], dtype=np.int64)
    write_clusters(path, key, settings, split, cluster, found)
    return cluster, False


def _checksum(cluster: list) -> str:
    return f"{zlib.crc32(json.dumps(cluster).encode('ascii')):08x}"


def write_clusters(path: Path, key: str, settings: Mapping, split: Mapping, cluster: np.ndarray,
                   found: Mapping) -> None:
    """Write one entry atomically: its key and what it was made of, the cluster ids, their checksum, and
    (for a person reading it) the pair counts behind them."""
    from suite.io import write_json_atomic

    ids = [int(c) for c in cluster]
    write_json_atomic(path, {
        "format": DUPLICATES_FORMAT, "key": key, "settings": dict(settings), "split": dict(split), "n": len(ids),
        "pairs": {"exact": int(len(found["exact_pairs"])), "near": int(len(found["near_pairs"])),
                  "candidates": int(found["candidates"])},
        "checksum": {"algorithm": "crc32", "cluster": _checksum(ids)},
        "cluster": ids,
    })


def read_clusters(path: Path, key: str, n: int, settings: Mapping, split: Mapping) -> np.ndarray:
    """The verified cluster ids of an entry.

    Raises:
        FileNotFoundError: no entry.
        CacheEntryInvalid: anything about it is not as written for this request; the message says what.
    """
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON
        raise CacheEntryInvalid(f"not valid JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise CacheEntryInvalid("not a JSON object")
    expected = {"format": DUPLICATES_FORMAT, "key": key, "settings": dict(settings), "split": dict(split), "n": n}
    for field, want in expected.items():
        if not _same(entry.get(field), want):
            raise CacheEntryInvalid(f"{field} is {json.dumps(entry.get(field))}, expected {json.dumps(want)}")
    cluster = entry.get("cluster")
    if not (isinstance(cluster, list) and len(cluster) == n and all(type(c) is int for c in cluster)):
        raise CacheEntryInvalid(f"cluster ids are not a list of {n} integers")
    checksum = entry.get("checksum")
    if not (isinstance(checksum, dict) and checksum.get("algorithm") == "crc32"
            and checksum.get("cluster") == _checksum(cluster)):
        raise CacheEntryInvalid("crc32 checksum of the cluster ids differs")
    ids = np.array(cluster, dtype=np.int64)
    if n and not _canonical(ids):
        raise CacheEntryInvalid("cluster ids are not numbered 0..k-1 in order of first appearance")
    return ids


def _canonical(ids: np.ndarray) -> bool:
    """Ids ``0..k-1``, each new one one more than the largest before it."""
    running = np.maximum.accumulate(ids)
    return bool(ids[0] == 0 and (ids >= 0).all() and (np.diff(running) <= 1).all())


def _same(value, want) -> bool:
    """Equal and of the same JSON type, recursively (``true`` is not ``1``, ``0.11`` is not ``"0.11"``)."""
    if isinstance(want, dict):
        return isinstance(value, dict) and value.keys() == want.keys() and all(_same(value[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(value, list) and len(value) == len(want) and all(map(_same, value, want))
    return type(value) is type(want) and value == want
