"""The tuning report: trials sorted by score, the best settings and their test result, from ``tuning.json``.

``load_tuning`` (read) -> ``tuning_context`` (a flat dict of plain values) -> ``render_tuning``
(Jinja, autoescaped) -> ``write_tuning_report`` (atomic write of ``report.html``).

Only reads the tuning folder: never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

from reports.render import (
    REPORT_NAME,
    _DASH,
    _as_dict,
    _as_list,
    _atomic_write_text,
    _banner,
    _environment,
    _read_json,
    _to_float,
    fmt3,
    fmt_seconds,
    fmt_value,
)

TUNING_NAME = "tuning.json"


def load_tuning(folder) -> dict:
    """``tuning.json`` of a tuning folder.

    Raises:
        FileNotFoundError: no readable ``tuning.json`` there.
    """
    folder = pathlib.Path(folder)
    problems: list[str] = []
    tuning = _read_json(folder / TUNING_NAME, problems)
    if tuning is None:
        raise FileNotFoundError(f"{folder} is not a tuning folder: {'; '.join(problems) or 'no tuning.json'}")
    return tuning


def fmt_ci(metrics: Mapping | None, name: str) -> str:
    """``0.812 [0.771, 0.850]`` for ``name`` and ``name_ci`` of a metrics dict, or a dash."""
    metrics = _as_dict(metrics)
    value = fmt3(metrics.get(name))
    ci = _as_list(metrics.get(f"{name}_ci"))
    return f"{value} [{fmt3(ci[0])}, {fmt3(ci[1])}]" if len(ci) == 2 and value != _DASH else value


def _delta(best: Mapping | None, default: Mapping | None, name: str) -> str:
    a, b = _to_float(_as_dict(best).get(name)), _to_float(_as_dict(default).get(name))
    return _DASH if a is None or b is None else f"{a - b:+.3f}"


def trial_rows(trials: Sequence[Mapping], names: Sequence[str]) -> list[dict]:
    """Table rows, best score first; trials without a score (failed, running) last, by id."""
    scored = sorted((t for t in trials if _to_float(t.get("score")) is not None),
                    key=lambda t: -_to_float(t["score"]))
    rest = sorted((t for t in trials if _to_float(t.get("score")) is None), key=lambda t: str(t.get("trial_id")))
    rows = []
    for rank, trial in enumerate(scored + rest, start=1):
        values = _as_dict(trial.get("hyperparameters"))
        status = str(trial.get("status") or "unknown")
        rows.append({
            "rank": rank if trial in scored else _DASH,
            "trial_id": str(trial.get("trial_id")),
            "values": [fmt_value(values.get(n)) for n in names],
            "score": fmt3(trial.get("score")),
            "folds": ", ".join(fmt3(s) for s in _as_list(trial.get("fold_scores"))),
            "status": status,
            "status_class": {"COMPLETED": "completed", "FAILED": "failed", "INVALID": "failed"}.get(status, ""),
            "seconds": fmt_seconds(trial.get("seconds")),
            "error": str(trial.get("error") or ""),
        })
    return rows


def _comparison_rows(tuning: Mapping, names: Sequence[str]) -> list[dict]:
    best, default = tuning.get("test_metrics"), tuning.get("default_test_metrics")
    rows = [{"name": f"test {m}", "best": fmt_ci(best, m), "default": fmt_ci(default, m),
             "delta": _delta(best, default, m)} for m in ("accuracy", "macro_f1")]
    best_values = _as_dict(_as_dict(tuning.get("best")).get("hyperparameters"))
    default_values = _as_dict(tuning.get("default_hyperparameters"))
    rows += [{"name": n, "best": fmt_value(best_values.get(n)), "default": fmt_value(default_values.get(n)),
              "delta": ""} for n in names]
    return rows


def _banners(tuning: Mapping, trials: Sequence[Mapping]) -> list[dict]:
    banners = []
    if tuning.get("error"):
        banners.append(_banner("error", "Tuning failed", tuning["error"]))
    best_run = _as_dict(tuning.get("best_run"))
    if best_run.get("status") == "failed":
        banners.append(_banner("error", "Retraining the best settings failed", best_run.get("error")))
    if tuning.get("search_stopped"):
        banners.append(_banner("error", "Search stopped early", tuning["search_stopped"]))
    if _as_dict(tuning.get("dataset")).get("synthetic"):
        banners.append(_banner("synthetic", "Synthetic phantom data, not real MRI",
                               "This search used synthetic phantom data: its figures say nothing about real scans."))
    failed = [t for t in trials if t.get("status") not in ("COMPLETED", "RUNNING")]
    if failed:
        first = failed[0]
        banners.append(_banner("warning", f"{len(failed)} of {len(trials)} trials failed",
                               f"trial {first.get('trial_id')}: {first.get('error') or 'no error recorded'}",
                               "Failed trials are listed at the bottom of the table; the search went on."))
    banners += [_banner("note", "Note", text) for text in _as_list(tuning.get("notes"))]
    return banners


def _summary_rows(tuning: Mapping, trials: Sequence[Mapping]) -> list[dict]:
    done = sum(t.get("status") == "COMPLETED" for t in trials)
    embeddings = _as_dict(tuning.get("embeddings"))
    rows = [
        ("backbone", tuning.get("backbone")),
        ("tuner", tuning.get("tuner")),
        ("objective", f"{tuning.get('objective')} (maximised, best epoch of each trial)"),
        ("scored on", f"mean of {tuning['cv']} stratified folds of the training pool" if tuning.get("cv")
         else "the validation split"),
        ("fast path", "yes: head trained on cached backbone features" if tuning.get("fast_path") else "no"),
        ("trials", f"{done} completed of {len(trials)} run ({tuning.get('max_trials')} allowed)"),
        ("search time", fmt_seconds(tuning.get("search_s"))),
        ("dataset", _as_dict(tuning.get("dataset")).get("root")),
        ("data fingerprint", tuning.get("data_fingerprint")),
        ("split fingerprint", tuning.get("split_fingerprint")),
    ]
    if embeddings:
        rows.append(("embeddings", f"{'cache hit' if embeddings.get('cache_hit') else 'computed'}: "
                                   f"{embeddings.get('key')}"))
    return [{"key": k, "value": fmt_value(v)} for k, v in rows]


def tuning_context(tuning: Mapping) -> dict[str, Any]:
    """The flat template context of a tuning report."""
    trials = [_as_dict(t) for t in _as_list(tuning.get("trials"))]
    names = list(_as_dict(tuning.get("space"))) or sorted({k for t in trials for k in _as_dict(t.get("hyperparameters"))})
    best = _as_dict(tuning.get("best"))
    best_run = _as_dict(tuning.get("best_run"))
    default_run = _as_dict(tuning.get("default_run"))
    return {
        "tuning_id": str(tuning.get("tuning_id") or ""),
        "backbone": str(tuning.get("backbone") or ""),
        "status": str(tuning.get("status") or "unknown"),
        "created": fmt_value(tuning.get("created")),
        "banners": _banners(tuning, trials),
        "summary": _summary_rows(tuning, trials),
        "has_best": bool(best),
        "best_trial": str(best.get("trial_id") or ""),
        "best_score": fmt3(best.get("score")),
        "objective": str(tuning.get("objective") or ""),
        "best_values": [{"key": n, "value": fmt_value(_as_dict(best.get("hyperparameters")).get(n))} for n in names],
        "has_test": bool(tuning.get("test_metrics")),
        "test_accuracy": fmt_ci(tuning.get("test_metrics"), "accuracy"),
        "test_macro_f1": fmt_ci(tuning.get("test_metrics"), "macro_f1"),
        "n_test": fmt_value(_as_dict(tuning.get("test_metrics")).get("n_test")),
        "best_run_link": f"{best_run['run_dir']}/{REPORT_NAME}" if best_run.get("run_dir") else None,
        "has_default": bool(tuning.get("default_test_metrics")),
        "default_run_link": f"{default_run['run_dir']}/{REPORT_NAME}" if default_run.get("run_dir") else None,
        "comparison": _comparison_rows(tuning, names),
        "space": [{"key": n, "value": fmt_value(v)} for n, v in _as_dict(tuning.get("space")).items()],
        "names": names,
        "trials": trial_rows(trials, names),
    }


def render_tuning(context: dict) -> str:
    return _environment().get_template("tuning.html.j2").render(**context)


def write_tuning_report(folder) -> pathlib.Path:
    """Render ``folder/report.html`` from ``folder/tuning.json``; returns its path."""
    folder = pathlib.Path(folder)
    path = folder / REPORT_NAME
    _atomic_write_text(path, render_tuning(tuning_context(load_tuning(folder))))
    return path
