"""The subcommands: one module each, whose ``main(args) -> int`` wires engine steps together.

``suite.cli`` parses the command line and calls ``suite.commands.<name>.main``; the modules
here hold no argument parsing and no engine code of their own beyond the flow of their command.
Each prints its result (a folder, a JSON document) on stdout and everything else on stderr.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from suite.config import USER_FIELDS, RunConfig
from suite.errors import SuiteError


def log(message: str) -> None:
    """One status line on stderr (stdout carries only the command's result)."""
    print(message, file=sys.stderr, flush=True)


def training_output():
    """Send what Keras prints while training (epoch lines, learning-rate changes) to stderr,
    so that stdout carries only the command's result (a folder, a JSON object)."""
    return contextlib.redirect_stdout(sys.stderr)


def run_flags(args: Any) -> dict:
    """The ``RunConfig`` settings a command line gave (``None``: not given, resolved later)."""
    return {name: getattr(args, name, None) for name in USER_FIELDS}


def resume_folder(args: Any, find_latest: Callable[[Path, str], Path | None], what: str) -> Path | None:
    """The folder ``--resume`` names: its value, or for a bare ``--resume`` the newest one ``find_latest``
    finds under ``--out`` for this backbone; ``None`` when not resuming.

    Raises:
        SuiteError: a bare ``--resume`` with nothing to resume.
    """
    if args.resume is None:
        return None
    if args.resume != "latest":
        return Path(args.resume)
    from backbones import get_spec

    out = Path(args.out or RunConfig.out)
    found = find_latest(out, get_spec(args.backbone or RunConfig.backbone).name)
    if found is None:
        raise SuiteError(f"no {what} to resume under {out}")
    return found


def track_result(args: Any, folder: Path) -> None:
    """With ``--track mlflow``, log the finished ``folder``; a tracking failure is one warning line,
    never the command's failure (the folder is complete and ``suite track`` can log it later)."""
    if getattr(args, "track", None) is None:
        return
    from suite.tracking import track_or_warn

    track_or_warn(folder, experiment=args.experiment, log=log)
