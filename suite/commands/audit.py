"""``suite audit``: a dataset's contents, unreadable files, duplicates and leakage across splits, as a folder.

dataset folder -> discover -> ``suite.data.audit.audit`` -> audit folder (audit.json, audit.html).
"""

from __future__ import annotations

import time
from pathlib import Path

from suite import runs
from suite.data.audit import audit, slug
from suite.data.discover import discover
from suite.data.groups import read_groups
from suite.io import write_json_atomic


def write_audit(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir`` (made if missing).

    Returns:
        ``(json_path, html_path)``.
    """
    from reports.audit import write_audit_report

    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / runs.AUDIT, result)
    return json_path, write_audit_report(out_dir)


def run_audit(data_dir: str | Path, out: str | Path | None = None, **kw) -> Path:
    """Discover, decode, audit and write the report into a new folder.

    Args:
        data_dir: the dataset folder (split or flat layout).
        out: parent folder of the audit folder (default ``runs``); the audit goes to
            ``<out>/<timestamp>-audit-<dataset name>/``.
        **kw: passed to :func:`audit` (``image_size``, ``threshold``, ``tol``,
            ``progress``, ``workers``, ``examples``, ``groups``).

    Returns:
        The audit folder.
    """
    started = time.perf_counter()
    if kw.get("groups") is not None:  # a malformed groups file fails before the dataset is read
        kw["groups"] = read_groups(kw["groups"])
    index = discover(data_dir, check=False)
    runs.check_out_outside(out or "runs", index.root)
    discovered_s = time.perf_counter() - started
    result = audit(index, **kw)
    result["timings"] = {"discover_s": round(discovered_s, 3), **result["timings"]}
    folder = runs.new_run_dir(out or "runs", f"audit-{slug(index.name)}")
    write_audit(result, folder)
    return folder


def main(args) -> int:
    settings = {k: v for k, v in (("threshold", args.threshold), ("tol", args.tol), ("groups", args.groups))
                if v is not None}
    print(run_audit(args.data, out=args.out, progress=not args.quiet, **settings))
    return 0
