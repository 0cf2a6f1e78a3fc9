"""The reporter: every folder the suite writes becomes one self-contained HTML page, and an index lists them.

Each folder kind of :data:`suite.runs.FOLDER_KINDS` (run, evaluation, comparison, cv,
tuning, audit, robustness) has one module here that runs folder -> load -> context -> render -> write
with the shared pieces of :mod:`reports.toolkit`; :mod:`reports.index` lists an output
folder. Commands end with :func:`finish`, which writes the new folder's report and the
index beside it without ever losing the data to a report problem. Only reads folders:
never imports Keras or TensorFlow.

Example:
    >>> import reports
    >>> reports.write_report("runs/20240101-120000-compare")  # doctest: +SKIP
    >>> reports.write_index("runs")  # doctest: +SKIP
    >>> reports.finish("runs/20240101-120000-cv-efficientnetb0", log=print)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reports.comparison import comparison_context, load_comparison, render_comparison, write_comparison_report
from reports.index import index_context, index_entry, render_index, write_index
from reports.run import load_run, render_run, run_context, write_run_report
from suite import runs

__all__ = [
    "comparison_context",
    "finish",
    "index_context",
    "index_entry",
    "load_comparison",
    "load_run",
    "render_comparison",
    "render_index",
    "render_run",
    "run_context",
    "write_comparison_report",
    "write_index",
    "write_report",
    "write_run_report",
]


def write_report(folder) -> Path:
    """Write the report of any folder the suite writes, by its kind (:func:`suite.runs.kind_of`).

    Args:
        folder: a run, evaluation, robustness, comparison, cv, tuning or audit folder.

    Returns:
        The path of the written report.

    Raises:
        ValueError: ``folder`` is not a folder, or is of no kind the suite writes.
    """
    folder = Path(folder)
    kind = runs.kind_of(folder)
    if kind is None:
        if folder.is_dir():
            what = "it is not a folder the suite writes"
        else:
            what = "it is not a folder" if folder.exists() else "it does not exist"
        raise ValueError(f"cannot report on {folder}: {what}; known kinds: {', '.join(runs.kind_names())}")
    return kind.write_report(folder)


def finish(folder, log: Callable[[str], None] = print) -> Path | None:
    """Write ``folder``'s report, then the index of its parent folder: the last step of every command.

    Neither failure is raised, only logged as a warning: the folder's data is written
    already and a report problem must not lose it.

    Args:
        folder: the folder a command has just written.
        log: where warnings go. Defaults to ``print``.

    Returns:
        The path of the report, or ``None`` if it could not be written.
    """
    folder = Path(folder)
    report = None
    try:
        report = write_report(folder)
    except Exception as exc:  # noqa: BLE001 - logged, never raised: the data must survive
        kind = runs.kind_of(folder)
        what = f"the {kind.name} report" if kind else f"the report of {folder}"
        log(f"warning: {what} could not be written: {type(exc).__name__}: {exc}")
    parent = folder.resolve().parent
    try:
        write_index(parent)
    except Exception as exc:  # noqa: BLE001 - as above
        log(f"warning: {parent / runs.INDEX} could not be updated: {type(exc).__name__}: {exc}")
    return report
