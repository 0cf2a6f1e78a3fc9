"""Run folders: where they go, what the manifest says."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from suite.io import read_json, write_json_atomic

MANIFEST = "manifest.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
HISTORY = "history.csv"
MODEL = "model.keras"
REPORT = "report.html"


def timestamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


def new_run_dir(out: str | Path, name: str) -> Path:
    """Make ``out/<timestamp>-<name>/``, adding ``-2``, ``-3``... if that exists."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{timestamp()}-{name}"
    for n in range(1, 1000):
        candidate = out / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot make a new run folder under {out}")


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    return write_json_atomic(run_dir / MANIFEST, manifest)


def read_manifest(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / MANIFEST)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
