"""Self-contained HTML reports for finished run and comparison folders, and an index.

Only reads result folders (``manifest.json``, ``metrics.json``, ``history.csv``,
``predictions.csv``; ``comparison.json``, ``leaderboard.*``, ``gradcam.npz``); never
imports Keras or TensorFlow.

Example:
    >>> from reports import write_any_report, write_index
    >>> write_any_report("runs/20240101-120000-compare")  # doctest: +SKIP
    >>> write_index("runs")  # doctest: +SKIP
"""

from reports.compare import (
    comparison_context,
    load_comparison,
    render_comparison,
    write_any_report,
    write_comparison_report,
    write_index,
)
from reports.render import load_run, render_run, run_context, write_run_report

__all__ = [
    "comparison_context",
    "load_comparison",
    "load_run",
    "render_comparison",
    "render_run",
    "run_context",
    "write_any_report",
    "write_comparison_report",
    "write_index",
    "write_run_report",
]
