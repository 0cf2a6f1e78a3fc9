"""``suite report``: re-render the report of any result folder, then the index of the folders holding them."""

from __future__ import annotations

from pathlib import Path

from suite.errors import SuiteError


def main(args) -> int:
    from reports import write_index, write_report

    for path in args.paths:
        try:
            print(write_report(path))
        except ValueError as exc:
            raise SuiteError(str(exc)) from None
    for parent in sorted({Path(p).resolve().parent for p in args.paths}):
        print(write_index(parent))
    return 0
