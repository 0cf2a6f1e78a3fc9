"""Where the suite keeps what it can make again: decoded images, the phantom data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SUITE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mri-suite``, else ``~/.cache/mri-suite``."""
    explicit = os.environ.get("SUITE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mri-suite"
