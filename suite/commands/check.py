"""``suite check``: run, comparison and CV folders against metric thresholds; exit 1 when any fails.

thresholds TOML and ``--require`` bounds -> ``suite.gates.check_runs`` -> verdict on stdout -> exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from suite.errors import SuiteError
from suite.gates import Threshold, check_runs, format_verdict, gate_passed


def check_command(thresholds: str | Path | None, paths: Iterable[str | Path], require: Iterable[Threshold] = (),
                  *, out: TextIO | None = None) -> int:
    """Print the verdict for ``paths`` and say whether the gate passes.

    Exit statuses (the CLI's for ``suite check``):
        0: at least one check was made and every check passed. A finished run that no
           threshold applies to is listed as ``NOT CHECKED`` and does not fail the gate.
        1: a check failed: a figure below its bound or missing, or a run that failed, was
           terminated by a signal, is stopped (still marked running, its process gone), is
           still running, or lost its metrics. Also any verdict that checked nothing.
        2: (``GateError``, a ``SuiteError``, raised before any verdict is printed) the gate
           itself is wrong: bad threshold text or file, no thresholds, paths without runs,
           a ``[<backbone>]`` table or ``--require backbone:...`` bound that matches no run
           (with a "did you mean"), or thresholds under which no run would be checked.

    Args:
        thresholds: thresholds TOML file, or None when ``require`` gives the bounds.
        paths: run, comparison or CV folders, or folders holding them.
        require: extra ``Threshold``s (``--require accuracy>=0.9``).
        out: where to print; stdout by default.

    Returns:
        0 or 1, as above.

    Raises:
        GateError: as for status 2 above.
    """
    results = check_runs(thresholds, paths, require)
    print(format_verdict(results), file=out or sys.stdout)
    return 0 if gate_passed(results) else 1


def main(args) -> int:
    if args.thresholds is None and not args.require:
        raise SuiteError("give --thresholds FILE and/or --require METRIC>=VALUE")
    return check_command(args.thresholds, args.paths, args.require)
