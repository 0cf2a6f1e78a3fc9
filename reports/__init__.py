"""Self-contained HTML reports for finished run folders.

Only reads run folders (``manifest.json``, ``metrics.json``, ``history.csv``,
``predictions.csv``); never imports Keras or TensorFlow.

Example:
    >>> from reports import write_run_report
    >>> write_run_report("runs/efficientnetb0-20240101-120000")  # doctest: +SKIP
"""

from reports.render import load_run, render_run, run_context, write_run_report

__all__ = ["load_run", "render_run", "run_context", "write_run_report"]
