"""``suite check``: run, comparison and CV folders against metric thresholds; exit 1 when any fails.

thresholds TOML and ``--require`` bounds -> ``suite.gates.check_runs`` -> verdict on stdout -> exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from suite.errors import SuiteError
from suite.gates import Threshold, check_runs, format_verdict


def check_command(thresholds: str | Path | None, paths: Iterable[str | Path], require: Iterable[Threshold] = (),
                  *, out: TextIO | None = None) -> int:
    """Print the verdict for ``paths``; 0 when every check passes, 1 when any fails.

    Args:
        thresholds: thresholds TOML file, or None when ``require`` gives the bounds.
        paths: run, comparison or CV folders, or folders holding them.
        require: extra ``Threshold``s (``--require accuracy>=0.9``).
        out: where to print; stdout by default.

    Raises:
        GateError: (a SuiteError, so the CLI exits 2) bad thresholds or paths without runs.
    """
    results = check_runs(thresholds, paths, require)
    print(format_verdict(results), file=out or sys.stdout)
    return 1 if any(not r.passed for r in results) else 0


def main(args) -> int:
    if args.thresholds is None and not args.require:
        raise SuiteError("give --thresholds FILE and/or --require METRIC>=VALUE")
    return check_command(args.thresholds, args.paths, args.require)
