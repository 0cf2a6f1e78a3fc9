"""Decode image files to RGB uint8 arrays, in parallel, through an on-disk cache that verifies what it serves.

What the cache trusts, and what it checks every time:

* **File contents.** Each file's content digest (BLAKE2b of its bytes) is remembered in
  ``digests.json`` under its path, with the file's size, mtime, ctime and inode. While all of
  them are unchanged the file is trusted to be unchanged and is not read again (as git does). The
  kernel sets ctime on every write, ``chmod`` or rename, and ``os.utime`` cannot set it back, so a
  file edited in place with its size and mtime restored is hashed again; a replaced file has a new
  inode. What this cannot see: a file rewritten within one tick of the file system's clock after
  it was hashed (a few milliseconds on ext4 and tmpfs). A malformed index, or entry, is ignored
  and rebuilt.
* **Decoded images.** They are stored under a key of every file's digest, the image size and
  :data:`DECODE_VERSION`, as one ``.npy`` array (memory-mapped on the next run, so a second run
  decodes nothing) and a JSON metadata file. Nothing in an entry is trusted: each time it is
  opened, the metadata is checked in full (decoder version, size, file count, one skip reason or
  ``null`` per file, the array's shape and dtype) against the request and against the array's own
  header, and the array's bytes and the skip reasons against the CRC-32 checksums written when it
  was made. An entry that fails is discarded and decoded again, with one warning line. The duplicate
  analysis made from these images is cached beside them by the same rules (:mod:`suite.data.cache`).
* **Image sizes.** An image larger than :data:`MAX_PIXELS` is skipped, with a reason naming its
  size and the limit, as soon as its header is read: it is never decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from suite.data.cache import CacheEntryInvalid, cache_dir
from suite.io import atomic_target, read_json, write_json_atomic

# 2: images over MAX_PIXELS are skipped; the metadata carries a checksum. Bump when decoding changes what
# a file becomes; entries of other versions are never looked at again (their keys differ).
DECODE_VERSION = 2
PARALLEL_MIN_FILES = 64  # below this a thread pool costs more than it saves
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# 64 Mi pixels (8192 x 8192): far larger than any MRI slice (512 x 512, or a few thousand pixels a side for
# a scanned film), so it never refuses a scan, and it bounds what one decode may allocate: measured at the
# limit, 0.4 GB for a progressive JPEG, 1.0 GB for a 16-bit PNG, 1.3 GB for an RGBA PNG (each decoding
# thread may hold one). It is below Pillow's own limit (Image.MAX_IMAGE_PIXELS, 89.5 Mpx), so every image
# Pillow would warn about is one the decoder skips with a reason of its own.
MAX_PIXELS = 8192 * 8192


Log = Callable[[str], None]


def stderr_line(message: str) -> None:
    """The default ``log``: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


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


# --- decoding one file ------------------------------------------------------------

class ImageTooLarge(ValueError):
    """An image over :data:`MAX_PIXELS`; the message is the skip reason."""


def too_large_reason(pixels: int, width: int | None = None, height: int | None = None) -> str:
    """``image too large: 9000x9000 px, 81.0 megapixels, over the limit of 67.1 megapixels (...); not decoded``
    (without the dimensions when Pillow refused the file before they were known)."""
    dims = f"{width}x{height} px, " if width is not None else ""
    return (f"image too large: {dims}{pixels / 1e6:.1f} megapixels, over the limit of "
            f"{MAX_PIXELS / 1e6:.1f} megapixels (suite.data.decode.MAX_PIXELS); not decoded")


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
        UnidentifiedImageError: not an image. ImageTooLarge: over :data:`MAX_PIXELS` (checked
        from the header, before any pixel is decoded). OSError: unreadable or truncated.
    """
    _quiet_bomb_warnings()
    with Image.open(path) as im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise ImageTooLarge(too_large_reason(width * height, width, height))
        im.draft(im.mode, (size, size))  # JPEG: decode at a reduced DCT scale, much faster
        im = ImageOps.exif_transpose(im)
        im.load()
        im = to_rgb(im).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _quiet_bomb_warnings() -> None:
    """Ignore Pillow's DecompressionBombWarning: it would only repeat, as a raw line on stderr, what the
    skip reason says, since every image Pillow warns about is over MAX_PIXELS.

    The filter is process-wide because warnings.catch_warnings is not thread-safe and decoding runs in
    threads. It is added where it is missing (a caller's catch_warnings may have dropped it), never
    again where it is present: each change of the filters resets "show once" warnings everywhere.
    """
    if not any(f[0] == "ignore" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _decode_task(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = args
    try:
        return decode_image(path, size), None
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except ImageTooLarge as exc:
        return None, str(exc)
    except Image.DecompressionBombError as exc:  # Pillow refused it from the header, beyond twice its own limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return None, too_large_reason(int(found.group(1))) if found else f"image too large: {exc}"
    except IsADirectoryError:
        return None, "a folder, not an image file"
    except Exception as exc:  # truncated, corrupt: skip, never crash
        return None, f"unreadable image: {type(exc).__name__}: {exc}"


# --- content digests -------------------------------------------------------------

DIGEST_INDEX = "digests.json"
DIGEST_INDEX_FORMAT = 2  # 2: the quick key is (size, mtime_ns, ctime_ns, inode); 1 had no ctime or inode
_HEX_DIGEST = re.compile(r"[0-9a-f]{32}")


def file_digest(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quick_key(st: os.stat_result) -> list[int]:
    """What must be unchanged for a remembered digest to be trusted (see the module docstring)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def digest_files(paths: Sequence[Path], *, log: Log = stderr_line) -> list[str]:
    """Content digests of ``paths``, re-hashing only files whose quick key changed.

    A file that cannot be read gets the digest ``unreadable:<error>``, never remembered;
    the decoder then says why it was skipped.
    """
    index_path = cache_dir() / DIGEST_INDEX
    known = read_digest_index(index_path, log)
    digests, changed = [], False
    malformed = 0
    for p in paths:
        try:
            key = quick_key(os.stat(p))
            record = known.get(str(p))
            if record is not None and not _valid_digest_record(record):
                record, malformed = None, malformed + 1
            if record is None or record[:4] != key:
                record = known[str(p)] = key + [file_digest(p)]
                changed = True
        except OSError as exc:
            digests.append(f"unreadable:{type(exc).__name__}")
            continue
        digests.append(record[4])
    if malformed:
        log(f"warning: digest index {index_path} had {malformed} malformed entries; hashed those files again")
    if changed:
        known = {k: v for k, v in known.items() if _valid_digest_record(v)}
        with contextlib.suppress(OSError):  # an index that cannot be saved only costs hashing next time
            write_json_atomic(index_path, {"format": DIGEST_INDEX_FORMAT, "files": known})
    return digests


def read_digest_index(path: Path, log: Log = stderr_line) -> dict:
    """The remembered ``{path: [size, mtime_ns, ctime_ns, inode, digest]}`` (entries are checked as they
    are used); a malformed or unreadable file counts as empty, with one warning line."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log(_one_line(f"warning: digest index {path} is unreadable ({exc}); hashing the files again"))
        return {}
    if isinstance(data, dict) and "format" not in data:
        return {}  # written before format 2: its keys lack ctime and inode, so none can be trusted
    files = data.get("files") if isinstance(data, dict) and data.get("format") == DIGEST_INDEX_FORMAT else None
    if not isinstance(files, dict):
        log(f"warning: digest index {path} is malformed; hashing the files again")
        return {}
    return files


def _valid_digest_record(record) -> bool:
    if type(record) is not list or len(record) != 5:
        return False
    size, mtime, ctime, inode, digest = record
    return (type(size) is type(mtime) is type(ctime) is type(inode) is int  # not bool, not float
            and type(digest) is str and _HEX_DIGEST.fullmatch(digest) is not None)


# --- the cache --------------------------------------------------------------------

# The checksum of a cached array: CRC-32 (zlib) of each 8 MiB segment of its bytes, read in 1 MiB blocks.
# Measured on this project's 2-core machine over the 220 MB array of the real data at 150 px, page cache
# warm: CRC-32 0.07 s (3.3 GB/s); Adler-32 0.10 s; SHA-256 0.12-0.14 s (SHA extensions); BLAKE2b 0.20 s.
# The cached data stage takes about 0.11 s without a check and must stay 20x faster than decoding (3.8 s),
# which leaves about 0.08 s: only CRC-32 fits. It is made to catch corruption (zeroed pages, flipped bits,
# torn or truncated writes), which it does with certainty for bursts up to 32 bits and with probability
# 1 - 2**-32 otherwise; resisting a forger is not its job (whoever can write the cache can write its
# metadata). Segments let several cores share the work (two threads: 0.037 s); reading each in 1 MiB blocks
# into a buffer that stays in the CPU cache while zlib runs over it was 1.4x faster than one pass over a
# memory map of the file.
CHECKSUM = "crc32"
CHECKSUM_SEGMENT = 1 << 23
CHECKSUM_BLOCK = 1 << 20
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def cache_key(digests: Sequence[str], size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"decode-v{DECODE_VERSION}|{size}|".encode())
    h.update("\n".join(digests).encode())
    return h.hexdigest()


def load_images(
    paths: Sequence[Path], size: int, *, workers: int | None = None, progress: bool = True, log: Log = stderr_line
) -> DecodedImages:
    """Decode ``paths`` at ``size`` px, or memory-map them from the cache after verifying them.

    Args:
        paths: image files, in the order rows should have.
        size: square output size in pixels.
        workers: decoding threads; ``None`` uses every core.
        progress: show a progress bar while decoding.
        log: where a warning line goes (a cache entry or digest index that failed its
            checks and is rebuilt); default: stderr.
    """
    digests = digest_files(paths, log=log)
    key = cache_key(digests, size)
    array_path, meta_path = cache_dir() / "images" / f"{key}.npy", cache_dir() / "images" / f"{key}.json"
    try:
        images, reasons = open_cached(array_path, meta_path, len(paths), size)
        return DecodedImages(images, tuple(reasons), tuple(digests), True)
    except FileNotFoundError:
        pass  # not cached (or half of an entry missing: the other half is replaced below)
    except (CacheEntryInvalid, OSError) as exc:
        log(_one_line(f"warning: cached images {array_path} failed verification ({exc}); decoding again"))
    for stale in (meta_path, array_path):
        with contextlib.suppress(OSError):
            stale.unlink(missing_ok=True)
    reasons, checksum = _decode_into(array_path, paths, size, workers, progress)
    write_json_atomic(meta_path, _metadata(len(paths), size, reasons, checksum))
    images = _open_array(array_path, len(paths), size, verify=None)
    return DecodedImages(images, tuple(reasons), tuple(digests), False)


def open_cached(array_path: Path, meta_path: Path, n: int, size: int) -> tuple[np.memmap, list[str | None]]:
    """The verified array and skip reasons of a cache entry.

    Raises:
        FileNotFoundError: the array or its metadata is missing.
        CacheEntryInvalid: anything else is wrong; the message says what.
    """
    try:
        meta = read_json(meta_path)
    except ValueError as exc:  # not UTF-8, not JSON
        raise CacheEntryInvalid(f"metadata is not valid JSON: {exc}") from None
    reasons = check_metadata(meta, n, size)
    return _open_array(array_path, n, size, verify=meta["checksum"]["segments"]), reasons


def _metadata(n: int, size: int, reasons: list[str | None], checksum: list[str]) -> dict:
    return {"decoder": DECODE_VERSION, "size": size, "n": n, "shape": [n, size, size, 3], "dtype": "uint8",
            "checksum": {"algorithm": CHECKSUM, "segment_bytes": CHECKSUM_SEGMENT, "segments": checksum,
                         "reasons": reasons_checksum(reasons)},
            "reasons": reasons}


def reasons_checksum(reasons: list) -> str:
    """CRC-32 of the skip reasons as canonical JSON: a reason edited to ``null`` would serve a blank row."""
    return f"{zlib.crc32(json.dumps(reasons).encode('ascii')):08x}"


def check_metadata(meta, n: int, size: int) -> list[str | None]:
    """The skip reasons of a parsed metadata file, once every field checks out.

    Raises:
        CacheEntryInvalid: a field is missing, of the wrong type, or not what was asked for.
    """
    if not isinstance(meta, dict):
        raise CacheEntryInvalid("metadata is not a JSON object")
    expected = {k: v for k, v in _metadata(n, size, [], []).items() if k not in ("checksum", "reasons")}
    for field, want in expected.items():
        if not _plain_equal(meta.get(field), want):
            raise CacheEntryInvalid(f"metadata {field} is {json.dumps(meta.get(field))}, expected {json.dumps(want)}")
    reasons = meta.get("reasons")
    if not isinstance(reasons, list) or len(reasons) != n:
        count = len(reasons) if isinstance(reasons, list) else "no list of"
        raise CacheEntryInvalid(f"metadata has {count} skip reasons for {n} files")
    if not all(r is None or isinstance(r, str) for r in reasons):
        raise CacheEntryInvalid("metadata skip reasons hold something other than text or null")
    checksum = meta.get("checksum")
    if not (isinstance(checksum, dict) and checksum.get("algorithm") == CHECKSUM
            and _plain_equal(checksum.get("segment_bytes"), CHECKSUM_SEGMENT)
            and isinstance(checksum.get("segments"), list)):
        raise CacheEntryInvalid(f"metadata has no {CHECKSUM} checksum of {CHECKSUM_SEGMENT}-byte segments")
    if checksum.get("reasons") != reasons_checksum(reasons):
        raise CacheEntryInvalid(f"{CHECKSUM} checksum of the skip reasons differs")
    return reasons


def _plain_equal(value, want) -> bool:
    """Equal and of the same JSON type (``true`` is not ``1``, ``150.0`` is not ``150``)."""
    if isinstance(want, list):
        return isinstance(value, list) and len(value) == len(want) and all(map(_plain_equal, value, want))
    return type(value) is type(want) and value == want


def _open_array(array_path: Path, n: int, size: int, *, verify: list | None) -> np.memmap:
    """Memory-map a cached ``.npy`` after checking its header, its length and, unless ``verify`` is
    ``None`` (an array this process has just written and checksummed), its checksum segments."""
    with open(array_path, "rb") as f:
        try:
            offset = _check_npy_header(f, (n, size, size, 3))
        except (ValueError, EOFError) as exc:
            raise CacheEntryInvalid(f"array header unreadable: {exc}") from None
        nbytes, found = n * size * size * 3, os.fstat(f.fileno()).st_size
        if found != offset + nbytes:
            raise CacheEntryInvalid(f"array file is {found} bytes, expected {offset + nbytes}")
        if verify is not None:
            _verify(array_checksum(f.fileno(), offset, nbytes), verify)
        # The same open file as was checked: a file renamed over array_path meanwhile is not what is served.
        return np.memmap(f, dtype=np.uint8, mode="r", offset=offset, shape=(n, size, size, 3))


def _verify(found: list[str], recorded: list) -> None:
    if found != recorded:
        bad = sum(a != b for a, b in zip(found, recorded)) + abs(len(found) - len(recorded))
        raise CacheEntryInvalid(f"{CHECKSUM} checksum differs in {bad} of {len(found)} segments")


def _check_npy_header(f, shape: tuple[int, ...]) -> int:
    """Check an ``.npy`` header against ``shape`` of uint8 in C order; returns where the data starts."""
    version = np.lib.format.read_magic(f)
    reader = _NPY_HEADER_READERS.get(version)
    if reader is None:
        raise ValueError(f"unknown .npy version {version}")
    found_shape, fortran, dtype = reader(f)
    if tuple(found_shape) != shape or fortran or dtype != np.dtype(np.uint8):
        raise ValueError(f"holds {dtype} {tuple(found_shape)}{' in Fortran order' if fortran else ''}, "
                         f"expected uint8 {shape}")
    return f.tell()


def array_checksum(fd: int, offset: int, nbytes: int) -> list[str]:
    """CRC-32 (hex) of each :data:`CHECKSUM_SEGMENT` bytes of the ``nbytes`` at ``offset`` in ``fd``."""
    end = offset + nbytes
    starts = range(offset, end, CHECKSUM_SEGMENT)

    def segment(lo: int) -> str:
        return f"{_crc32_range(fd, lo, min(lo + CHECKSUM_SEGMENT, end)):08x}"

    threads = min(len(starts), os.cpu_count() or 1)
    if threads < 2:
        return [segment(lo) for lo in starts]
    with ThreadPoolExecutor(max_workers=threads) as pool:  # zlib and preadv release the GIL
        return list(pool.map(segment, starts))


def _crc32_range(fd: int, lo: int, hi: int) -> int:
    buf = memoryview(bytearray(min(CHECKSUM_BLOCK, hi - lo)))
    crc = 0
    while lo < hi:
        n = os.preadv(fd, [buf[: min(len(buf), hi - lo)]], lo)
        if n == 0:
            raise CacheEntryInvalid("array file ended early")
        crc = zlib.crc32(buf[:n], crc)
        lo += n
    return crc


def _decode_into(array_path: Path, paths, size, workers, progress) -> tuple[list[str | None], list[str]]:
    """Decode every file into a temporary ``.npy`` and rename it into place; returns reasons and checksum."""
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    reasons: list[str | None] = []
    nbytes = len(paths) * blank.nbytes
    # Plain sequential writes after an .npy header: cheaper than page-faulting a memmap.
    with atomic_target(array_path, expected_bytes=nbytes) as tmp:
        with open(tmp, "wb") as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), size, size, 3)}
            np.lib.format.write_array_header_2_0(f, header)
            offset = f.tell()
            for arr, reason in _decode_all(paths, size, workers, progress):
                f.write((blank if arr is None else arr).tobytes())
                reasons.append(reason)
        with open(tmp, "rb") as f:  # what was written, read back: the checksum covers the bytes on disk
            checksum = array_checksum(f.fileno(), offset, nbytes)
    return reasons, checksum


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


def _one_line(message: str) -> str:
    """A message as one line, whatever an exception's text held."""
    return " ".join(message.split())
