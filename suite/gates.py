"""Quality gates: metric thresholds checked against finished run folders.

thresholds TOML -> ``{backbone: [Threshold]}``; run, comparison and CV folders -> ``Run``s;
each (run, threshold) -> ``CheckResult``; ``format_verdict`` -> text (``suite check`` and the pytest
plugin, ``suite.pytest_plugin``, print it).

A run that failed, was killed, is still running or lost its metrics is a failed check that says
why, never a silent skip; a run still marked running whose process is gone reads "stopped" (see
``suite.runs.status_of``). A cross-validation folder counts each of its ``fold-k/`` runs (as listed
in its ``cv.json``) as a run of its own, so every fold must clear the bounds.

Gates never pass vacuously: a backbone table (``[<backbone>]`` or ``--require backbone:...``)
that matches no run, or thresholds under which no run would be checked, is a ``GateError``
(``check_coverage``); a run no threshold applies to is reported as not checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from suite.errors import SuiteError
from suite.io import read_json
from suite.metrics import is_number, named_figures
from suite.runs import COMPARISON, CV, MANIFEST, METRICS, kind_of, process_state, status_of, status_text

DEFAULT = "default"

_METRIC = r"[A-Za-z][\w\-]*"
_SYNTAX = re.compile(rf"(?:(?P<backbone>[\w.\-]+)\s*:\s*)?(?P<metric>{_METRIC})"
                     r"\s*(?P<op>>=|=>|<=|=<|==|>|<|=)\s*(?P<bound>.*)")
_EXAMPLES = "e.g. 'accuracy>=0.9', 'recall_glioma_ci_low>=0.7' or 'mobilenetv2:macro_f1>=0.85'"


class GateError(SuiteError, ValueError, argparse.ArgumentTypeError):
    """Bad threshold text, a bad thresholds file, paths that hold no runs, or thresholds that
    would check nothing (a table matching no run; no threshold applying to any run).

    A ``SuiteError`` (the CLI prints it and exits 2), a ``ValueError``, and an
    ``ArgumentTypeError`` so that argparse shows this message rather than "invalid value".
    """


class MetricNotFound(LookupError):
    """The run's metrics.json has no figure of that name; the message lists near names."""


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A lower bound on one figure of a run's metrics.json.

    Args:
        metric: ``accuracy``, ``macro_f1``, ``<stat>_<label>`` for a per-class figure
            (``recall_glioma``, ``f1_no_tumor``), any other top-level number (``roc_auc_macro``),
            ``<key>_<label>`` for per-label tables (``roc_auc_glioma``), and ``<name>_ci_low`` for
            the lower bound of a 95% interval (``accuracy_ci_low``, ``recall_glioma_ci_low``).
        minimum: the figure must be at least this.
        backbone: ``"default"`` for every backbone, else the backbone it applies to.
    """

    metric: str
    minimum: float
    backbone: str = DEFAULT

    def __post_init__(self):
        if not re.fullmatch(_METRIC, self.metric):
            raise GateError(f"{self.metric!r} is not a metric name; {_EXAMPLES}")
        if isinstance(self.minimum, bool) or not isinstance(self.minimum, (int, float)) \
                or not math.isfinite(self.minimum):
            raise GateError(f"the bound for {self.metric} must be a finite number, not {self.minimum!r}")
        object.__setattr__(self, "minimum", float(self.minimum))

    @classmethod
    def parse(cls, text: str, backbone: str = DEFAULT) -> Threshold:
        """``"accuracy>=0.9"`` or ``"mobilenetv2:accuracy>=0.9"`` -> Threshold; usable as argparse ``type=``.

        Raises:
            GateError (a ValueError): the text is not ``[BACKBONE:]METRIC>=MINIMUM``.
        """
        match = _SYNTAX.fullmatch(text.strip())
        if not match:
            raise GateError(f"cannot read threshold {text!r}: write METRIC>=MINIMUM, {_EXAMPLES}")
        metric, op, bound = match["metric"], match["op"], match["bound"].strip()
        if op != ">=":
            raise GateError(f"cannot read threshold {text!r}: thresholds are minimums, written {metric}>=MINIMUM")
        try:
            minimum = float(bound)
        except ValueError:
            raise GateError(f"cannot read threshold {text!r}: {bound!r} is not a number") from None
        if not math.isfinite(minimum):
            raise GateError(f"cannot read threshold {text!r}: the minimum must be a finite number")
        return cls(metric, minimum, match["backbone"] or backbone)

    def __str__(self) -> str:
        return f"{self.metric}>={_bound_text(self.minimum)}"

    def check(self, metrics: Mapping) -> str | None:
        """None when ``metrics`` meets the bound, else why not (``"recall_glioma = 0.812 < 0.850"``)."""
        try:
            value = metric_value(metrics, self.metric)
        except MetricNotFound as exc:
            return str(exc)
        if value >= self.minimum:
            return None
        shown, bound = _pair_text(value, self.minimum)
        return f"{self.metric} = {shown} < {bound}"


def _bound_text(x: float) -> str:
    text = f"{x:.3f}"
    return text if float(text) == x else repr(x)


def _pair_text(value: float, bound: float) -> tuple[str, str]:
    """Both numbers with 3 decimals, or with as many more as it takes to tell them apart."""
    for digits in range(3, 12):
        a, b = f"{value:.{digits}f}", f"{bound:.{digits}f}"
        if a != b or value == bound:
            return a, b
    return repr(value), repr(bound)


# -- metric names -----------------------------------------------------------------------------------

def available_metrics(metrics: Mapping) -> list[str]:
    """The names ``metric_value`` resolves for this metrics.json, sorted."""
    return sorted(named_figures(metrics))


def metric_value(metrics: Mapping, name: str) -> float:
    """The figure ``name`` (see ``Threshold``) from a parsed metrics.json.

    Raises:
        MetricNotFound: no such figure; the message suggests near names and lists the labels.
    """
    figures = named_figures(metrics)
    if name in figures:
        return figures[name]
    near = difflib.get_close_matches(name, list(figures), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    labels = list(metrics.get("per_class") or metrics.get("labels") or [])
    classes = f" (this run's classes: {', '.join(labels)})" if labels else ""
    raise MetricNotFound(f"{name}: not in metrics.json{hint}{classes}")


# -- thresholds files -----------------------------------------------------------------------------

def load_thresholds(path: str | Path) -> dict[str, list[Threshold]]:
    """Read a thresholds TOML file into ``{"default": [...], "<backbone>": [...]}``.

    The file holds a ``[default]`` table (applies to every backbone) and ``[<backbone>]``
    tables that add bounds or replace default ones, metric by metric; each line is
    ``metric = minimum``.

    Raises:
        GateError: the file is missing or not TOML, a key is outside a table, or a bound
            is not a finite number; the message names the file and the key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"{path}: no such thresholds file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GateError(f"{path}: cannot read thresholds: {exc}") from None
    table = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            raise GateError(f"{path}: {section} = {body!r} is outside any table; put bounds under [default] "
                            f"(every backbone) or [<backbone>], e.g.\n[default]\n{section} = 0.85")
        table[section] = [_threshold_entry(path, section, key, value) for key, value in body.items()]
    return table


def _threshold_entry(path: Path, section: str, key: str, value) -> Threshold:
    where = f"{path}: [{section}] {key}"
    if isinstance(value, dict):
        raise GateError(f"{where} is a table; write bounds as 'metric = minimum' directly under [{section}]")
    if not is_number(value) or not math.isfinite(value):
        raise GateError(f"{where} = {value!r}: the bound must be a finite number, e.g. {key} = 0.85")
    try:
        return Threshold(key, value, section)
    except GateError as exc:
        raise GateError(f"{where}: {exc}") from None


def thresholds_for(backbone: str, table: Mapping[str, Sequence[Threshold]]) -> list[Threshold]:
    """The bounds for ``backbone``: ``[default]`` merged with its own table, which wins per metric."""
    merged = {t.metric: t for t in table.get(DEFAULT, ())}
    merged.update({t.metric: t for t in table.get(backbone, ())} if backbone != DEFAULT else {})
    return list(merged.values())


def with_thresholds(table: Mapping[str, Sequence[Threshold]], extra: Iterable[Threshold]) -> dict[str, list[Threshold]]:
    """``table`` plus ``extra`` (e.g. from ``--require``), which replace bounds on the same metric."""
    out = {name: list(ts) for name, ts in table.items()}
    for t in extra:
        out[t.backbone] = [old for old in out.get(t.backbone, []) if old.metric != t.metric] + [t]
    return out


# -- finding runs ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One run to check.

    Attributes:
        path: the run folder (None when a comparison member failed before it had one).
        backbone: the backbone it trained.
        label: the folder name without the backbone, e.g. ``20261127-101500``; CV folds
            read ``20261127-101500-cv-fold-2``.
        metrics: parsed metrics.json, or None when ``problem`` says why there is none.
        problem: why the run cannot pass (failed, unfinished, metrics missing), or None.
    """

    path: Path | None
    backbone: str
    label: str
    metrics: Mapping | None = None
    problem: str | None = None

    @property
    def id(self) -> str:
        return f"{self.backbone}[{self.label}]"


@dataclasses.dataclass(frozen=True)
class _Spot:
    """Where a run is, or should be, with what its container says about it."""

    path: Path | None
    backbone: str | None = None
    label: str | None = None
    problem: str | None = None


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders under ``paths``: run folders as they are, the members of comparison folders,
    the folds of CV folders, and all of those one level inside any other folder (``runs/``).

    Comparison members that failed before they made a folder have no path and are not listed
    here; ``load_runs`` reports them.

    Raises:
        GateError: a path does not exist or holds no run, comparison or CV folder.
    """
    return [spot.path for spot in _spots(paths) if spot.path is not None]


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs under ``paths`` (see ``find_runs``), each with its metrics or the problem."""
    return [_read_run(spot) for spot in _spots(paths)]


def _spots(paths: Iterable[str | Path]) -> list[_Spot]:
    seen, out = set(), []
    for path in paths:
        for spot in _expand(Path(path)):
            key = spot.path.resolve() if spot.path is not None else (spot.label, spot.backbone)
            if key not in seen:
                seen.add(key)
                out.append(spot)
    return out


def _expand(path: Path) -> list[_Spot]:
    if path.is_file() and path.name in (MANIFEST, METRICS, COMPARISON, CV):
        path = path.parent
    if not path.is_dir():
        raise GateError(f"{path}: no such folder")
    spots = _expand_known(path)
    if spots is not None:
        return spots
    spots = [s for child in sorted(p for p in path.iterdir() if p.is_dir()) for s in _expand_known(child) or []]
    if not spots:
        raise GateError(f"{path} holds no run, comparison or cross-validation folder")
    return spots


def _expand_known(path: Path) -> list[_Spot] | None:
    """The runs of a run, comparison or CV folder; None for any other folder."""
    kind = kind_of(path)
    expand = {"run": lambda p: [_Spot(p)], "evaluation": lambda p: [_Spot(p)],
              "comparison": _comparison_spots, "cv": _cv_spots}.get(kind.name if kind else None)
    return expand(path) if expand else None


def _read_container(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise GateError(f"cannot read {path}: {exc}") from None


def _comparison_spots(folder: Path) -> list[_Spot]:
    """Every run of a comparison: with ``--seeds``, every replicate of every backbone."""
    spots = []
    for member in _read_container(folder / COMPARISON).get("runs", []):
        spots += [_comparison_spot(folder, {"backbone": member.get("backbone"), **entry})
                  for entry in member.get("seeds") or [member]]
    return spots


def _comparison_spot(folder: Path, entry: Mapping) -> _Spot:
    backbone = entry.get("backbone")
    if not entry.get("run_dir"):
        return _Spot(None, backbone, folder.name,
                     f"failed before it made a run folder: {entry.get('error') or 'no error recorded'}")
    run_dir = Path(os.path.normpath(folder / entry["run_dir"]))
    missing = not (run_dir / MANIFEST).is_file()
    return _Spot(run_dir, backbone, problem=f"run folder {run_dir} is missing (listed in {folder.name})"
                 if missing else None)


def _cv_spots(folder: Path) -> list[_Spot]:
    cv = _read_container(folder / CV)
    backbone = cv.get("backbone")
    folds = {f["fold"]: f for f in cv.get("folds", []) if "fold" in f}
    spots = []
    for k in range(1, max([cv.get("k") or 0, *folds]) + 1):
        run_dir = folder / (folds.get(k, {}).get("run_dir") or f"fold-{k}")
        if k not in folds:
            spots.append(_Spot(run_dir, backbone, problem=f"fold {k} has not run ({_cv_status(cv)})"))
        elif not (run_dir / MANIFEST).is_file():
            spots.append(_Spot(run_dir, backbone, problem=f"run folder {run_dir} is missing (listed in {CV})"))
        else:
            spots.append(_Spot(run_dir, backbone))
    return spots


def _cv_status(cv: Mapping) -> str:
    """``cross-validation status 'running'``, with why it failed or that its process is gone."""
    status = status_of(cv)
    if status == "stopped":
        return f"cross-validation {status_text(cv)}"
    if status == "failed":
        return f"cross-validation {_failure_text(cv.get('error'))}"
    return f"cross-validation status {cv.get('status')!r}"


def _read_run(spot: _Spot) -> Run:
    manifest, problem = {}, spot.problem
    if problem is None:
        manifest, problem = _read_part(spot.path / MANIFEST)
    backbone = manifest.get("backbone") or spot.backbone or "unknown"
    label = spot.label or _label(spot.path, backbone)
    if problem is None and manifest.get("status") != "completed":
        problem = _status_problem(manifest)
    metrics = None
    if problem is None:
        metrics, problem = _read_part(spot.path / METRICS)
    return Run(spot.path, backbone, label, metrics, problem)


def _read_part(path: Path) -> tuple[dict, str | None]:
    if not path.is_file():
        return {}, f"{path.name} is missing"
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        return {}, f"{path.name} cannot be read: {exc}"
    return (data, None) if isinstance(data, dict) else ({}, f"{path.name} holds no JSON object")


def _status_problem(manifest: Mapping) -> str:
    """Why a run whose manifest is not ``completed`` cannot pass, as one line.

    A ``running`` manifest is told apart by its recorded process (``suite.runs.process_state``):
    gone from this host reads "stopped: still marked running, but its process ... is gone";
    alive reads "still running"; with no pid recorded (older folders) it cannot be told apart.
    """
    status = status_of(manifest)
    if status == "failed":
        return _failure_text(manifest.get("error"))
    if status == "stopped":
        return status_text(manifest)
    if status == "running":
        where = f"({manifest.get('pid')} on {manifest.get('host')})"
        state = process_state(manifest)
        if state == "alive":
            return f"still running: its process {where} is alive; check it once it has finished"
        if state == "elsewhere":
            return f"still marked running, by a process {where} on another host: alive or not, it cannot be told here"
        return "run did not finish (status 'running': still running, or killed; no process recorded)"
    return f"run did not finish (status {manifest.get('status')!r})"


_SIGNALLED = re.compile(r"(?:terminated|interrupted) by SIG[A-Z0-9]+")


def _failure_text(error: str | None) -> str:
    """``run failed: <error>``; a run stopped by a signal reads as stopped from outside, not as a crash."""
    if error and _SIGNALLED.match(error):
        return f"run {error} before it finished (stopped from outside, not a crash of its own)"
    return f"run failed: {error or 'no error recorded'}"


def _label(path: Path, backbone: str) -> str:
    """``20261127-101500-mobilenetv2`` -> ``20261127-101500``; a CV fold gets its CV folder's name first."""
    name = path.name
    if (path.parent / CV).is_file():
        name = f"{path.parent.name}-{name}"
    return re.sub(rf"-{re.escape(backbone)}(?=-|$)", "", name, count=1) or name


# -- checking -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One threshold checked against one run.

    Attributes:
        run_dir: the run folder (None when a comparison member never made one).
        backbone, run: the run's backbone and label (see ``Run``).
        threshold: the bound checked; None for a run no threshold applies to.
        value: the figure the run has, or None when it has none.
        passed: whether the gate lets it through (a run not checked is let through, but a
            verdict that checked nothing never passes: see ``gate_passed``).
        message: ``"accuracy 0.931 >= 0.900"``, ``"recall_glioma = 0.812 < 0.850"``, or why not checked.
        checked: False for a finished run that no threshold applies to (reported as not checked).
    """

    run_dir: Path | None
    backbone: str
    run: str
    threshold: Threshold | None
    value: float | None
    passed: bool
    message: str
    checked: bool = True

    @property
    def id(self) -> str:
        """``mobilenetv2[20261127-101500]::accuracy>=0.900``, as the pytest plugin names the check."""
        return f"{self.backbone}[{self.run}]::{self.threshold if self.threshold else 'thresholds'}"


def check_run(run: Run, threshold: Threshold) -> CheckResult:
    """Check one bound against one run; a run with a problem fails every bound, saying why."""
    def result(value, passed, message):
        return CheckResult(run.path, run.backbone, run.label, threshold, value, passed, message)

    if run.problem is not None:
        return result(None, False, f"{threshold.metric}: not checked, {run.problem}")
    failure = threshold.check(run.metrics)
    try:
        value = metric_value(run.metrics, threshold.metric)
    except MetricNotFound:
        value = None
    if failure is not None:
        return result(value, False, failure)
    shown, bound = _pair_text(value, threshold.minimum)
    return result(value, True, f"{threshold.metric} {shown} >= {bound}")


def check_unthresholded(run: Run) -> CheckResult:
    """A run whose backbone has no bounds: not checked (reported, not failed), unless the run itself failed."""
    if run.problem is not None:
        return CheckResult(run.path, run.backbone, run.label, None, None, False, run.problem)
    return CheckResult(run.path, run.backbone, run.label, None, None, True,
                       f"no thresholds for {run.backbone} (no [default] or [{run.backbone}] table)",
                       checked=False)


def check_coverage(runs: Sequence[Run], table: Mapping[str, Sequence[Threshold]],
                   thresholds_file: str | Path | None = None, require: Iterable[Threshold] = ()) -> None:
    """Refuse thresholds that would let the gate pass without checking what they name.

    Args:
        runs: the runs found (``load_runs``).
        table: the thresholds file's tables (``load_thresholds``), without ``require``.
        thresholds_file: the file ``table`` came from, to name it in the message.
        require: bounds from the command line (``--require [BACKBONE:]METRIC>=MINIMUM``).

    Raises:
        GateError: a ``[<backbone>]`` table or a ``--require backbone:...`` bound names a backbone
            no run is of (a misspelt name, or a run missing), suggesting the nearest backbone
            that has runs or is registered; or no threshold applies to any run, so nothing
            would be checked. One message names every such table.
    """
    require = list(require)
    have = sorted({run.backbone for run in runs})
    problems = [f"{label} matches no run{_backbone_hint(name, have, suggest)}"
                for name, label, suggest in _named_tables(table, thresholds_file, require) if name not in have]
    merged = with_thresholds(table, require)
    if not any(thresholds_for(backbone, merged) for backbone in have):
        problems.insert(0, "nothing would be checked: no threshold applies to any run")
    if problems:
        raise GateError("; ".join(problems) + f"; the runs here are of {', '.join(have) or 'no backbone'}")


def _named_tables(table: Mapping[str, Sequence[Threshold]], thresholds_file: str | Path | None,
                  require: Sequence[Threshold]) -> Iterator[tuple[str, str, Callable[[str], str]]]:
    """(backbone, how to name the table, how to write it for another backbone) for each backbone table."""
    where = f" in {thresholds_file}" if thresholds_file is not None else ""
    for name in table:
        if name != DEFAULT:
            yield name, f"[{name}]{where}", lambda other: f"[{other}]"
    for t in require:
        if t.backbone != DEFAULT:
            yield t.backbone, f"--require {t.backbone}:{t}", lambda other, t=t: f"{other}:{t}"


def _backbone_hint(name: str, have: Sequence[str], suggest: Callable[[str], str]) -> str:
    """`` (did you mean [mobilenetv2]?)``: the nearest backbone with runs, else the nearest registered one."""
    from backbones import is_backbone, list_backbones  # light: the registry imports no Keras

    near_run = _nearest(name, have)
    if near_run:
        return f" (did you mean {suggest(near_run)}?)"
    if is_backbone(name):
        return ""  # a real backbone whose run is missing; the message lists the backbones that have runs
    near_registered = _nearest(name, list_backbones())
    if near_registered:
        return f" (did you mean {suggest(near_registered)}? a registered backbone, though no run here is of it)"
    return f" ({name} is not a registered backbone either; `python -m suite list` shows them)"


def _nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, ignoring case, or None when none is close."""
    by_lower = {c.lower(): c for c in candidates if c != name}
    near = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[near[0]] if near else None


def check_runs(thresholds_file: str | Path | None, paths: Iterable[str | Path],
               require: Iterable[Threshold] = ()) -> list[CheckResult]:
    """Every bound that applies to every run under ``paths``.

    Args:
        thresholds_file: TOML file (see ``load_thresholds``); None to use ``require`` alone.
        paths: run, comparison or CV folders, or folders holding them (see ``find_runs``).
        require: extra bounds, e.g. from the command line; they replace file bounds on the same metric.

    Raises:
        GateError: bad thresholds, no thresholds at all, paths without runs, or thresholds that
            would check nothing (see ``check_coverage``).
    """
    file_table = load_thresholds(thresholds_file) if thresholds_file is not None else {}
    require = list(require)
    table = with_thresholds(file_table, require)
    if not any(table.values()):
        raise GateError("no thresholds to check: give a thresholds file with a [default] or [<backbone>] table, "
                        f"or bounds such as {_EXAMPLES}")
    runs = load_runs(paths)
    check_coverage(runs, file_table, thresholds_file, require)
    results = []
    for run in runs:
        bounds = thresholds_for(run.backbone, table)
        results.extend([check_run(run, t) for t in bounds] if bounds else [check_unthresholded(run)])
    return results


def gate_passed(results: Sequence[CheckResult]) -> bool:
    """Whether the gate lets ``results`` through: something was checked and nothing failed."""
    return any(r.checked for r in results) and all(r.passed for r in results)


def format_verdict(results: Sequence[CheckResult]) -> str:
    """One line per check (``PASS  mobilenetv2  20261127-101500  accuracy 0.931 >= 0.900``), then
    ``N passed, M failed`` (and ``, K not checked`` when some runs had no thresholds); a verdict
    that checked nothing says so on a last line, as it does not pass."""
    wide_w = max((len(_word(r)) for r in results), default=4)
    wide_b = max((len(r.backbone) for r in results), default=0)
    wide_r = max((len(r.run) for r in results), default=0)
    lines = [f"{_word(r):<{wide_w}}  {r.backbone:<{wide_b}}  {r.run:<{wide_r}}  {r.message}" for r in results]
    passed = sum(r.passed and r.checked for r in results)
    failed = sum(not r.passed for r in results)
    unchecked = sum(not r.checked for r in results)
    lines.append(f"{passed} passed, {failed} failed" + (f", {unchecked} not checked" if unchecked else ""))
    if not any(r.checked for r in results):
        lines.append("nothing was checked: that is not a pass")
    return "\n".join(lines)


def _word(r: CheckResult) -> str:
    return "NOT CHECKED" if not r.checked else "PASS" if r.passed else "FAIL"
