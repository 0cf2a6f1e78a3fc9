"""What every report shares, for each step of folder -> load -> context -> render -> write.

Loading: :func:`read_json` and :func:`read_csv` note what they cannot read in a ``problems``
list instead of raising, so a half-broken folder still gets a report that says what is
missing. Context: the ``fmt_*`` functions turn numbers into the short text the templates
show (a dash when unknown), :func:`banner` makes the notices at the top of a page, and
:func:`data_uri` / :func:`figure_uri` / :func:`thumbnail_uri` embed images. Rendering:
:func:`render` fills a template of ``reports/templates`` (autoescape always on). Writing:
:func:`write_html` goes through the suite's one atomic writer.

Nothing here imports Keras or TensorFlow; matplotlib and Pillow load only when drawing.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import functools
import json
import math
import pathlib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reports import plots
from suite.io import write_text_atomic

DASH = "\u2014"
SPLIT_ORDER = ("train", "val", "test")
SYNTHETIC_TITLE = "Synthetic phantom data, not real MRI"


# ----------------------------------------------------------------------------------
# Plain values out of JSON that may hold anything
# ----------------------------------------------------------------------------------


def to_float(value: Any) -> float | None:
    """``value`` as a float (a CSV cell's text included); ``None`` for blanks and junk."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_dict(value: Any) -> dict:
    """``value`` if it is a dict, else an empty dict (tolerates nulls and junk)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    """``value`` as a list if it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def pair(value: Any) -> tuple[float | None, float | None]:
    """An interval ``[low, high]`` as two floats (``None`` when absent or malformed)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return to_float(value[0]), to_float(value[1])
    return None, None


# ----------------------------------------------------------------------------------
# Formatting: plain strings for the templates, a dash when unknown
# ----------------------------------------------------------------------------------


def fmt3(value: Any) -> str:
    """A number to three decimals, or a dash."""
    number = to_float(value)
    return DASH if number is None else f"{number:.3f}"


def fmt2(value: Any) -> str:
    """A number to two decimals (a mean set size), or a dash."""
    number = to_float(value)
    return DASH if number is None else f"{number:.2f}"


def fmt_pct(value: Any) -> str:
    """A fraction as a percentage with one decimal, or a dash."""
    number = to_float(value)
    return DASH if number is None else f"{100 * number:.1f}%"


def fmt_int(value: Any) -> str:
    """An integer with thousands separators, or a dash."""
    number = to_float(value)
    return DASH if number is None or not math.isfinite(number) else f"{int(number):,}"


def fmt_seconds(value: Any) -> str:
    """A duration: ``"12.3 s"``, ``"4 min 05 s"`` or ``"2 h 03 min"``, or a dash."""
    seconds = to_float(value)
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_value(value: Any) -> str:
    """Any setting as short text: floats with ``:g``, containers as JSON, ``None`` as a dash."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def fmt_ci(value: Any, low: Any, high: Any) -> str:
    """``"0.962 [0.941, 0.978]"``; just the value when the interval is unknown; a dash without a value."""
    if to_float(value) is None:
        return DASH
    if to_float(low) is None or to_float(high) is None:
        return fmt3(value)
    return f"{fmt3(value)} [{fmt3(low)}, {fmt3(high)}]"


def fmt_metric(metrics: Any, name: str) -> str:
    """``name`` of a metrics dict with its ``<name>_ci`` interval, as :func:`fmt_ci` writes it."""
    metrics = as_dict(metrics)
    return fmt_ci(metrics.get(name), *pair(metrics.get(f"{name}_ci")))


def fmt_p(value: Any) -> str:
    """A p-value to three decimals, ``"<0.001"`` below that, or a dash."""
    number = to_float(value)
    if number is None or math.isnan(number):
        return DASH
    return "<0.001" if number < 0.001 else f"{number:.3f}"


def fmt_params(value: Any) -> str:
    """A parameter count in millions: ``"4.05 M"``, or a dash."""
    number = to_float(value)
    return DASH if number is None else f"{number / 1e6:.2f} M"


def fmt_unit(value: Any, unit: str, digits: int = 1) -> str:
    """A number with a unit (``"12.3 ms"``), or a dash."""
    number = to_float(value)
    return DASH if number is None else f"{number:.{digits}f} {unit}"


def fmt_share(part: Any, whole: Any) -> str:
    """``part`` as a percentage of ``whole`` (``"12.5%"``), or a dash when either is unknown or ``whole`` is 0."""
    part, whole = to_float(part), to_float(whole)
    return DASH if part is None or not whole else f"{100 * part / whole:.1f}%"


def fmt_created(created: Any) -> str:
    """``"2026-11-27 17:00"`` from an ISO time; the text itself when it does not parse."""
    try:
        return dt.datetime.fromisoformat(str(created)).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return fmt_value(created)


def href(relative: str | pathlib.PurePath) -> str:
    """A relative URL for a relative path: every character but ``/`` percent-encoded."""
    return urllib.parse.quote(pathlib.PurePath(relative).as_posix(), safe="/")


# ----------------------------------------------------------------------------------
# Context pieces several reports show
# ----------------------------------------------------------------------------------


def banner(kind: str, title: str, text: Any, detail: Any = "") -> dict:
    """A notice for the top of a page; ``kind`` is ``"error"``, ``"synthetic"``, ``"warning"`` or ``"note"``."""
    return {"kind": kind, "title": title, "text": str(text), "detail": str(detail or "")}


def synthetic_banner(text: str, detail: Any = "") -> dict:
    """The notice that the figures come from synthetic phantoms; ``text`` says what that means for this page."""
    return banner("synthetic", SYNTHETIC_TITLE, text, detail)


def input_banners(problems: Sequence[str]) -> list[dict]:
    """One warning per file a report could not read (the ``problems`` of its loader)."""
    return [banner("warning", "Report input", text) for text in problems]


def key_value_rows(mapping: Mapping) -> list[dict]:
    """``[{"key", "value"}]`` rows of a two-column table, keys in their given order."""
    return [{"key": str(key), "value": fmt_value(value)} for key, value in mapping.items()]


def class_count_table(class_counts: Mapping, labels: Sequence[str], class_folders: Mapping) -> dict:
    """Images per class and split, with totals.

    Args:
        class_counts: ``{split: {label: n}}``.
        labels: class order for the rows (labels found only in the counts are appended).
        class_folders: ``{label: [folder names]}`` shown next to each class.

    Returns:
        ``{"splits": [...], "rows": [{"label", "folders", "counts", "total"}], "totals": [...], "grand_total"}``.
    """
    splits = [s for s in SPLIT_ORDER if s in class_counts] + [s for s in class_counts if s not in SPLIT_ORDER]
    per_split = {s: as_dict(class_counts.get(s)) for s in splits}
    order = list(labels) + sorted({k for c in per_split.values() for k in c} - set(labels))
    rows = []
    for label in order:
        values = [to_float(per_split[s].get(label)) or 0 for s in splits]
        folders = ", ".join(str(f) for f in as_list(class_folders.get(label)))
        rows.append({"label": label, "folders": folders, "counts": [fmt_int(v) for v in values],
                     "total": fmt_int(sum(values))})
    totals = [sum(to_float(per_split[s].get(label)) or 0 for label in order) for s in splits]
    return {"splits": splits, "rows": rows, "totals": [fmt_int(t) for t in totals],
            "grand_total": fmt_int(sum(totals))}


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def read_json(path: pathlib.Path, problems: list[str]) -> dict | None:
    """A file's JSON object; ``None`` if the file is absent, and a note in ``problems`` if it is broken."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name} could not be read: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} does not hold a JSON object")
        return None
    return data


def read_csv(path: pathlib.Path, problems: list[str]) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings; empty if absent, and a note in ``problems`` if unreadable."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path.name} could not be read: {exc}")
        return []


# ----------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------


def data_uri(data: bytes | None, mime: str = "image/png") -> str | None:
    """Encoded image bytes as a ``data:`` URI for an ``<img src>``; ``None`` for no image."""
    if not data:
        return None
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail_uri(path, size: int, *, jpeg: bool = False) -> str | None:
    """A thumbnail of the image file at ``path`` as a ``data:`` URI; ``None`` when it cannot be read.

    JPEG is a fraction of PNG's size on photographs and scans: use it where a page shows many.
    """
    if jpeg:
        return data_uri(plots.thumbnail_jpeg(path, size), "image/jpeg")
    return data_uri(plots.thumbnail_png(path, size))


def figure_uri(draw: Callable[..., bytes], problems: list[str], what: str, *args) -> str | None:
    """``draw(*args)`` as a ``data:`` URI; ``None`` if there is nothing to plot or (noted in ``problems``) it fails."""
    try:
        return data_uri(draw(*args))
    except plots.NothingToPlot:
        return None
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        problems.append(f"{what} not drawn: {exc}")
        return None


# ----------------------------------------------------------------------------------
# Rendering and writing
# ----------------------------------------------------------------------------------


@functools.cache
def environment():
    """The Jinja environment: templates from ``reports/templates``, autoescape always on, undefined names an error."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template_name: str, context: Mapping[str, Any]) -> str:
    """The complete HTML document ``template_name`` makes of ``context``."""
    return environment().get_template(template_name).render(**context)


def write_html(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Write a rendered page atomically (a reader never sees half of it); returns ``path``."""
    return write_text_atomic(path, text)
