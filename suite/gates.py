"""Quality gates: metric thresholds checked against finished run folders.

thresholds TOML -> ``{backbone: [Threshold]}``; run, comparison and CV folders -> ``Run``s;
each (run, threshold) -> ``CheckResult``; ``format_verdict`` -> text (``suite check`` and the pytest
plugin, ``suite.pytest_plugin``, print it).

A run that failed, never finished or lost its metrics is a failed check that says why, never a
silent skip. A cross-validation folder counts each of its ``fold-k/`` runs (as listed in its
``cv.json``) as a run of its own, so every fold must clear the bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from suite.errors import SuiteError
from suite.io import read_json
from suite.metrics import is_number, named_figures
from suite.runs import COMPARISON, CV, MANIFEST, METRICS, kind_of

DEFAULT = "default"

_METRIC = r"[A-Za-z][\w\-]*"
_SYNTAX = re.compile(rf"(?:(?P<backbone>[\w.\-]+)\s*:\s*)?(?P<metric>{_METRIC})"
                     r"\s*(?P<op>>=|=>|<=|=<|==|>|<|=)\s*(?P<bound>.*)")
_EXAMPLES = "e.g. 'accuracy>=0.9', 'recall_glioma_ci_low>=0.7' or 'mobilenetv2:macro_f1>=0.85'"


class GateError(SuiteError, ValueError, argparse.ArgumentTypeError):
    """Bad threshold text, a bad thresholds file, or paths that hold no runs.

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
    spots = []
    for entry in _read_container(folder / COMPARISON).get("runs", []):
        backbone = entry.get("backbone")
        if not entry.get("run_dir"):
            spots.append(_Spot(None, backbone, folder.name,
                               f"failed before it made a run folder: {entry.get('error') or 'no error recorded'}"))
            continue
        run_dir = Path(os.path.normpath(folder / entry["run_dir"]))
        missing = not (run_dir / MANIFEST).is_file()
        spots.append(_Spot(run_dir, backbone, problem=f"run folder {run_dir} is missing (listed in {folder.name})"
                           if missing else None))
    return spots


def _cv_spots(folder: Path) -> list[_Spot]:
    cv = _read_container(folder / CV)
    backbone, status = cv.get("backbone"), cv.get("status")
    folds = {f["fold"]: f for f in cv.get("folds", []) if "fold" in f}
    spots = []
    for k in range(1, max([cv.get("k") or 0, *folds]) + 1):
        run_dir = folder / (folds.get(k, {}).get("run_dir") or f"fold-{k}")
        if k not in folds:
            spots.append(_Spot(run_dir, backbone, problem=f"fold {k} has not run (cross-validation status {status!r})"))
        elif not (run_dir / MANIFEST).is_file():
            spots.append(_Spot(run_dir, backbone, problem=f"run folder {run_dir} is missing (listed in {CV})"))
        else:
            spots.append(_Spot(run_dir, backbone))
    return spots


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
    status, error = manifest.get("status"), manifest.get("error")
    if status == "failed":
        return f"run failed: {error or 'no error recorded'}"
    return f"run did not finish (status {status!r}: still running, or killed)"


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
        passed: whether the gate lets it through (a skipped check passes).
        message: ``"accuracy 0.931 >= 0.900"``, ``"recall_glioma = 0.812 < 0.850"``, or why not checked.
        skipped: no threshold applies to this backbone.
    """

    run_dir: Path | None
    backbone: str
    run: str
    threshold: Threshold | None
    value: float | None
    passed: bool
    message: str
    skipped: bool = False

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
    """A run whose backbone has no bounds: skipped, unless the run itself failed."""
    if run.problem is not None:
        return CheckResult(run.path, run.backbone, run.label, None, None, False, run.problem)
    return CheckResult(run.path, run.backbone, run.label, None, None, True,
                       f"no thresholds for {run.backbone} (no [default] or [{run.backbone}] table)", skipped=True)


def check_runs(thresholds_file: str | Path | None, paths: Iterable[str | Path],
               require: Iterable[Threshold] = ()) -> list[CheckResult]:
    """Every bound that applies to every run under ``paths``.

    Args:
        thresholds_file: TOML file (see ``load_thresholds``); None to use ``require`` alone.
        paths: run, comparison or CV folders, or folders holding them (see ``find_runs``).
        require: extra bounds, e.g. from the command line; they replace file bounds on the same metric.

    Raises:
        GateError: bad thresholds, no thresholds at all, or paths without runs.
    """
    table = load_thresholds(thresholds_file) if thresholds_file is not None else {}
    table = with_thresholds(table, require)
    if not any(table.values()):
        raise GateError("no thresholds to check: give a thresholds file with a [default] or [<backbone>] table, "
                        f"or bounds such as {_EXAMPLES}")
    results = []
    for run in load_runs(paths):
        bounds = thresholds_for(run.backbone, table)
        results.extend([check_run(run, t) for t in bounds] if bounds else [check_unthresholded(run)])
    return results


def format_verdict(results: Sequence[CheckResult]) -> str:
    """One line per check (``PASS  mobilenetv2  20261127-101500  accuracy 0.931 >= 0.900``), then
    ``N passed, M failed`` (and ``K skipped`` when some runs had no thresholds)."""
    wide_b = max((len(r.backbone) for r in results), default=0)
    wide_r = max((len(r.run) for r in results), default=0)
    lines = [f"{_word(r):<5} {r.backbone:<{wide_b}}  {r.run:<{wide_r}}  {r.message}" for r in results]
    passed = sum(r.passed and not r.skipped for r in results)
    failed = sum(not r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    lines.append(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return "\n".join(lines)


def _word(r: CheckResult) -> str:
    return "SKIP" if r.skipped else "PASS" if r.passed else "FAIL"
