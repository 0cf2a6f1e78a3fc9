"""Decode image files to RGB uint8 arrays, in parallel, through an on-disk cache.

The cache is keyed by the files' content (a BLAKE2 digest of each file's bytes), the
image size and the decoder's version, and stored as one ``.npy`` array that is
memory-mapped on the next run, so a second run of the same data decodes nothing.
Digests themselves are remembered by (path, size, mtime), as git does, so a cached
run reads no image bytes at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from suite.data.cache import cache_dir
from suite.io import atomic_target, read_json, write_json_atomic

DECODE_VERSION = 1  # bump when decoding changes what a file becomes
PARALLEL_MIN_FILES = 64  # below this a thread pool costs more than it saves
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclasses.dataclass(frozen=True)
class DecodedImages:
    """Decoded images, one row per input path (rows of unreadable files are zeros).

    Attributes:
        images: ``(n, size, size, 3)`` uint8, memory-mapped from the cache.
        reasons: ``None`` for a decoded file, else why it was skipped.
        digests: content digest of each file.
        cache_hit: whether nothing had to be decoded.
    """

    images: np.ndarray
    reasons: tuple[str | None, ...]
    digests: tuple[str, ...]
    cache_hit: bool

    @property
    def ok(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (grey replicated, alpha over black)."""
    if im.mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, im.convert("RGBA"))
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one file to a ``(size, size, 3)`` uint8 RGB array.

    Raises:
        UnidentifiedImageError: not an image. OSError: unreadable or truncated.
    """
    with Image.open(path) as im:
        im.draft(im.mode, (size, size))  # JPEG: decode at a reduced DCT scale, much faster
        im = ImageOps.exif_transpose(im)
        im.load()
        im = to_rgb(im).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _decode_task(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = args
    try:
        return decode_image(path, size), None
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except Exception as exc:  # truncated, corrupt, decompression bomb: skip, never crash
        return None, f"unreadable image: {type(exc).__name__}: {exc}"


# --- content digests -------------------------------------------------------------

def file_digest(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_files(paths: Sequence[Path]) -> list[str]:
    """Content digests of ``paths``, re-hashing only files whose size or mtime changed."""
    index_path = cache_dir() / "digests.json"
    try:
        known = read_json(index_path)
    except (OSError, ValueError):
        known = {}
    digests, changed = [], False
    for p in paths:
        st = os.stat(p)
        key, stamp = str(p), [st.st_size, st.st_mtime_ns]
        hit = known.get(key)
        if hit is None or hit[:2] != stamp:
            hit = stamp + [file_digest(p)]
            known[key], changed = hit, True
        digests.append(hit[2])
    if changed:
        write_json_atomic(index_path, known)
    return digests


# --- the cache --------------------------------------------------------------------

def cache_key(digests: Sequence[str], size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"decode-v{DECODE_VERSION}|{size}|".encode())
    h.update("\n".join(digests).encode())
    return h.hexdigest()


def load_images(
    paths: Sequence[Path], size: int, *, workers: int | None = None, progress: bool = True
) -> DecodedImages:
    """Decode ``paths`` at ``size`` px, or memory-map them from the cache.

    Args:
        paths: image files, in the order rows should have.
        size: square output size in pixels.
        workers: decoding processes; ``None`` uses every core.
        progress: show a progress bar while decoding.
    """
    digests = digest_files(paths)
    folder = cache_dir() / "images"
    key = cache_key(digests, size)
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    cache_hit = array_path.is_file() and meta_path.is_file()
    if cache_hit:
        reasons = read_json(meta_path)["reasons"]
    else:
        reasons = _decode_into(array_path, paths, size, workers, progress)
        write_json_atomic(meta_path, {"size": size, "n": len(paths), "reasons": reasons})
    images = np.load(array_path, mmap_mode="r")
    return DecodedImages(images, tuple(reasons), tuple(digests), cache_hit)


def _decode_into(array_path: Path, paths, size, workers, progress) -> list[str | None]:
    """Decode every file into a temporary ``.npy`` and rename it into place."""
    array_path.parent.mkdir(parents=True, exist_ok=True)
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = []
    # Plain sequential writes after an .npy header: cheaper than page-faulting a memmap.
    with atomic_target(array_path) as tmp, open(tmp, "wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), size, size, 3)}
        np.lib.format.write_array_header_2_0(f, header)
        for arr, reason in _decode_all(paths, size, workers, progress):
            f.write((blank if arr is None else arr).tobytes())
            reasons.append(reason)
    return reasons


def _decode_all(paths, size, workers, progress):
    from tqdm.auto import tqdm

    tasks = [(str(p), size) for p in paths]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(tasks), desc=f"decoding {size}px", unit="img", disable=not progress or None)
    with bar:
        if workers == 1 or len(tasks) < PARALLEL_MIN_FILES:
            yield from _ticking(map(_decode_task, tasks), bar)
            return
        # Threads, not processes: Pillow releases the GIL while it decodes and resizes, so
        # threads use every core without pickling images between processes, and without
        # the fork-after-threads and main-module re-import hazards of a process pool.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from _ticking(pool.map(_decode_task, tasks), bar)


def _ticking(results, bar):
    for r in results:
        bar.update(1)
        yield r
