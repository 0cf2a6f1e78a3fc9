"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

The one writer of every file the suite makes: text, JSON and CSV through ``write_bytes_atomic``;
files another library writes (a Keras model, a NumPy array) through ``atomic_target``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from suite.errors import DiskFull


@contextlib.contextmanager
def atomic_target(path: str | Path, *, expected_bytes: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends.

    The temporary name keeps ``path``'s suffix (Keras chooses the format by it). If the block
    raises, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        expected_bytes: about how large it will be, for the message when the disk is full.

    Raises:
        DiskFull: the file system ran out of space (or quota); the message names ``path``,
            the free space and, with ``expected_bytes``, the space needed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _unlink(tmp)
        raise DiskFull(disk_full_message(path, expected_bytes)) from None
    finally:
        _unlink(tmp)


def _unlink(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def disk_full_message(path: Path, expected_bytes: int | None = None) -> str:
    """``no space left on device writing PATH: 12 MB free, about 40 MB needed; ...``."""
    try:
        free = f"{_megabytes(shutil.disk_usage(_existing(path)).free)} free"
    except OSError:
        free = "free space unknown"
    needed = f", about {_megabytes(expected_bytes)} needed" if expected_bytes else ""
    return (f"no space left on device writing {path}: {free}{needed}; free some space there "
            "(or write elsewhere with --out, or move the cache with SUITE_CACHE_DIR) and run again")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_target(path, expected_bytes=len(data)) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8 text. A file name the OS allowed but UTF-8 cannot spell (bytes such as ``\\xff``,
    which Python holds as lone surrogates) is written as its escape ``\\udcff``: in JSON that is
    the standard escape, which reads back to the same name."""
    return write_bytes_atomic(path, text.encode("utf-8", "backslashreplace"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, paths: what JSON cannot take by itself."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
