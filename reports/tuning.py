"""The tuning report: tuning folder -> load_tuning -> tuning_context -> render_tuning -> write_tuning_report.

A tuning folder is made when a search starts (``runs.SEARCH`` records what it searches);
the final record (``runs.TUNING``: trials, the best settings, their retrained test result)
is written when it ends. Until then the report says the search is unfinished and lists
the trials finished so far, read from each trial's own file. Never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    banner,
    fmt3,
    fmt_created,
    fmt_metric,
    fmt_seconds,
    fmt_value,
    href,
    input_banners,
    read_json,
    render,
    synthetic_banner,
    to_float,
    write_html,
)
from suite import runs

RUNNING = "running"
TRIAL_FOLDERS = "trial_*"  # how Keras Tuner names each trial's folder inside the project
STATUS_CLASS = {"COMPLETED": "completed", "FAILED": "failed", "INVALID": "failed", "RUNNING": "running"}


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def finished_trials(folder: pathlib.Path, problems: list[str]) -> list[dict]:
    """The trials of a search that has no final record yet, from each trial's own file, by trial id."""
    paths = sorted((folder / runs.TUNER_PROJECT).glob(f"{TRIAL_FOLDERS}/{runs.TRIAL}"))
    return [trial for trial in (read_json(path, problems) for path in paths) if trial]


def load_tuning(folder) -> dict:
    """Read a tuning folder, finished or not.

    Returns:
        ``{"folder", "tuning", "problems"}``: ``tuning`` is the final record over the
        search's own (so a search still running has its settings, status ``running``
        and the trials finished so far); ``problems`` lists what could not be read.

    Raises:
        FileNotFoundError: if the folder has neither record readable.
    """
    folder = pathlib.Path(folder)
    problems: list[str] = []
    search, final = read_json(folder / runs.SEARCH, problems), read_json(folder / runs.TUNING, problems)
    if search is None and final is None:
        detail = "; ".join(problems) or f"no {runs.SEARCH} or {runs.TUNING}"
        raise FileNotFoundError(f"{folder} is not a tuning folder: {detail}")
    tuning = {**(search or {}), **(final or {})}
    tuning.setdefault("status", RUNNING)
    if tuning["status"] == RUNNING:  # a resumed search's record still holds the old trials
        tuning["trials"] = finished_trials(folder, problems) or as_list(tuning.get("trials"))
    return {"folder": str(folder), "tuning": tuning, "problems": problems}


def best_trial(tuning: Mapping) -> dict:
    """The record's best trial, or for an unfinished search the best completed so far (``{}`` for none)."""
    if tuning.get("best"):
        return as_dict(tuning["best"])
    done = [as_dict(t) for t in as_list(tuning.get("trials"))
            if as_dict(t).get("status") == "COMPLETED" and to_float(as_dict(t).get("score")) is not None]
    return max(done, key=lambda t: to_float(t["score"]), default={})


# ----------------------------------------------------------------------------------
# Context
# ----------------------------------------------------------------------------------


def _delta(best: Mapping | None, default: Mapping | None, name: str) -> str:
    a, b = to_float(as_dict(best).get(name)), to_float(as_dict(default).get(name))
    return DASH if a is None or b is None else f"{a - b:+.3f}"


def trial_rows(trials: Sequence[Mapping], names: Sequence[str]) -> list[dict]:
    """Table rows, best score first; trials without a score (failed, running) last, by id."""
    scored = sorted((t for t in trials if to_float(t.get("score")) is not None), key=lambda t: -to_float(t["score"]))
    rest = sorted((t for t in trials if to_float(t.get("score")) is None), key=lambda t: str(t.get("trial_id")))
    rows = []
    for rank, trial in enumerate(scored + rest, start=1):
        values = as_dict(trial.get("hyperparameters"))
        status = str(trial.get("status") or "unknown")
        rows.append({
            "rank": rank if rank <= len(scored) else DASH,
            "trial_id": str(trial.get("trial_id")),
            "values": [fmt_value(values.get(n)) for n in names],
            "score": fmt3(trial.get("score")),
            "folds": ", ".join(fmt3(s) for s in as_list(trial.get("fold_scores"))),
            "status": status,
            "status_class": STATUS_CLASS.get(status, ""),
            "seconds": fmt_seconds(trial.get("seconds")),
            "error": str(trial.get("error") or ""),
        })
    return rows


def _comparison_rows(tuning: Mapping, names: Sequence[str]) -> list[dict]:
    best, default = tuning.get("test_metrics"), tuning.get("default_test_metrics")
    rows = [{"name": f"test {m}", "best": fmt_metric(best, m), "default": fmt_metric(default, m),
             "delta": _delta(best, default, m)} for m in ("accuracy", "macro_f1")]
    best_values = as_dict(as_dict(tuning.get("best")).get("hyperparameters"))
    default_values = as_dict(tuning.get("default_hyperparameters"))
    return rows + [{"name": n, "best": fmt_value(best_values.get(n)), "default": fmt_value(default_values.get(n)),
                    "delta": ""} for n in names]


def _unfinished_banner(trials: Sequence[Mapping]) -> dict:
    return banner("note", "Search unfinished",
                  f"The search is running, or stopped before it finished: {len(trials)} trial(s) on record so far. "
                  "Nothing has been retrained or tested yet; resume a stopped search with --resume.")


def _banners(tuning: Mapping, trials: Sequence[Mapping], problems: Sequence[str]) -> list[dict]:
    banners = [_unfinished_banner(trials)] if tuning.get("status") == RUNNING else []
    if tuning.get("error"):
        banners.append(banner("error", "Tuning failed", tuning["error"]))
    if as_dict(tuning.get("best_run")).get("status") == "failed":
        banners.append(banner("error", "Retraining the best settings failed", tuning["best_run"].get("error")))
    if tuning.get("search_stopped"):
        banners.append(banner("error", "Search stopped early", tuning["search_stopped"]))
    if as_dict(tuning.get("dataset")).get("synthetic"):
        banners.append(synthetic_banner("This search used synthetic phantom data: its figures say nothing about "
                                        "real scans.", as_dict(tuning.get("dataset")).get("description")))
    failed = [t for t in trials if t.get("status") not in ("COMPLETED", "RUNNING")]
    if failed:
        first = failed[0]
        banners.append(banner("warning", f"{len(failed)} of {len(trials)} trials failed",
                              f"trial {first.get('trial_id')}: {first.get('error') or 'no error recorded'}",
                              "Failed trials are listed at the bottom of the table; the search went on."))
    banners += [banner("note", "Note", text) for text in as_list(tuning.get("notes"))]
    return banners + input_banners(problems)


def _summary_rows(tuning: Mapping, trials: Sequence[Mapping]) -> list[dict]:
    done = sum(t.get("status") == "COMPLETED" for t in trials)
    embeddings = as_dict(tuning.get("embeddings"))
    rows = [
        ("backbone", tuning.get("backbone")),
        ("tuner", tuning.get("tuner")),
        ("objective", f"{tuning.get('objective')} (maximised, best epoch of each trial)"),
        ("scored on", f"mean of {tuning['cv']} stratified folds of the training pool" if tuning.get("cv")
         else "the validation split"),
        ("fast path", "yes: head trained on cached backbone features" if tuning.get("fast_path") else "no"),
        ("trials", f"{done} completed of {len(trials)} run ({fmt_value(tuning.get('max_trials'))} allowed)"),
        ("search time", fmt_seconds(tuning.get("search_s"))),
        ("dataset", as_dict(tuning.get("dataset")).get("root")),
        ("data fingerprint", tuning.get("data_fingerprint")),
        ("split fingerprint", tuning.get("split_fingerprint")),
    ]
    if embeddings:
        rows.append(("embeddings", f"{'cache hit' if embeddings.get('cache_hit') else 'computed'}: "
                                   f"{embeddings.get('key')}"))
    return [{"key": k, "value": fmt_value(v)} for k, v in rows]


def _run_link(record: Any) -> str | None:
    run_dir = as_dict(record).get("run_dir")
    return href(str(run_dir)) + "/" + runs.REPORT if run_dir else None


def _best_context(tuning: Mapping, names: Sequence[str]) -> dict:
    """The "Best settings" section: the best trial and the test result of its retrained run."""
    best = best_trial(tuning)
    test = as_dict(tuning.get("test_metrics"))
    return {
        "has_best": bool(best),
        "best_trial": str(best.get("trial_id") or ""),
        "best_score": fmt3(best.get("score")),
        "best_values": [{"key": n, "value": fmt_value(as_dict(best.get("hyperparameters")).get(n))} for n in names],
        "has_test": bool(test),
        "test_accuracy": fmt_metric(test, "accuracy"),
        "test_macro_f1": fmt_metric(test, "macro_f1"),
        "n_test": fmt_value(test.get("n_test")),
        "best_run_link": _run_link(tuning.get("best_run")),
        "has_default": bool(tuning.get("default_test_metrics")),
        "default_run_link": _run_link(tuning.get("default_run")),
    }


def tuning_context(loaded: Mapping) -> dict[str, Any]:
    """The flat template context of a tuning report, from :func:`load_tuning`'s dict."""
    tuning = as_dict(loaded.get("tuning"))
    trials = [as_dict(t) for t in as_list(tuning.get("trials"))]
    names = list(as_dict(tuning.get("space"))) or sorted({k for t in trials for k in as_dict(t.get("hyperparameters"))})
    context = {
        "tuning_id": str(tuning.get("tuning_id") or pathlib.PurePath(loaded.get("folder") or "").name),
        "backbone": str(tuning.get("backbone") or ""),
        "status": str(tuning.get("status") or "unknown"),
        "finished": tuning.get("status") != RUNNING,
        "created": fmt_created(tuning.get("created") or tuning.get("updated")),
        "banners": _banners(tuning, trials, loaded.get("problems") or []),
        "summary": _summary_rows(tuning, trials),
        "objective": str(tuning.get("objective") or ""),
        "comparison": _comparison_rows(tuning, names),
        "space": [{"key": n, "value": fmt_value(v)} for n, v in as_dict(tuning.get("space")).items()],
        "names": names,
        "trials": trial_rows(trials, names),
    }
    context.update(_best_context(tuning, names))
    return context


# ----------------------------------------------------------------------------------
# Rendering and writing
# ----------------------------------------------------------------------------------


def render_tuning(context: Mapping) -> str:
    """The complete tuning report, as HTML text, from :func:`tuning_context`'s dict."""
    return render("tuning.html.j2", context)


def write_tuning_report(folder) -> pathlib.Path:
    """Load a tuning folder (finished or not), render its report and write it into the folder; returns its path."""
    folder = pathlib.Path(folder)
    return write_html(folder / runs.REPORT, render_tuning(tuning_context(load_tuning(folder))))
