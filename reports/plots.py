"""Drawing for the context step of every report: plain numbers in, PNG (or JPEG) bytes out.

A context builder calls these and embeds the bytes with :func:`reports.toolkit.data_uri`
(or :func:`~reports.toolkit.figure_uri`, which also turns :class:`NothingToPlot` into no figure).
Matplotlib is imported lazily inside the functions and driven through
``matplotlib.figure.Figure`` plus ``FigureCanvasAgg`` directly, so nothing here touches
pyplot's global state or the user's selected backend. Thumbnails use Pillow only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Colours: one per series, consistent across panels (train solid, validation dashed).
_TRAIN_COLOUR = "#2563eb"
_VAL_COLOUR = "#dc2626"
_LR_COLOUR = "#059669"
_LEAK_FREE_COLOUR = "#7c3aed"  # figures on the images with no training twin
_MAX_TICK_LABEL = 18


class NothingToPlot(ValueError):
    """Raised when a figure would be empty (no series has a plottable value)."""


def _new_figure(width: float, height: float):
    """A Figure attached to its own Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure_png(fig, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes, without metadata so output is reproducible."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _short(label: str, limit: int = _MAX_TICK_LABEL) -> str:
    """Shorten a tick label, keeping both ends so similar long names stay distinct."""
    label = str(label)
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "\u2026" + label[-(limit - 1 - head):]


# ----------------------------------------------------------------------------------
# Confusion matrix
# ----------------------------------------------------------------------------------


def row_fractions(matrix: Sequence[Sequence[float]]) -> list[list[float | None]]:
    """Each cell divided by its row total (``None`` for all-zero rows).

    Args:
        matrix: square counts, rows = true class, columns = predicted class.

    Returns:
        The row-normalised matrix as nested lists.
    """
    out = []
    for row in matrix:
        total = sum(row)
        out.append([(v / total) if total else None for v in row])
    return out


def _cell_text(count: float, fraction: float | None, normalise: bool) -> str:
    """Annotation for one confusion-matrix cell: count and row percentage."""
    count_txt = f"{int(count)}" if float(count).is_integer() else f"{count:g}"
    pct_txt = "\u2013" if fraction is None else f"{100 * fraction:.1f}%"
    return f"{pct_txt}\n({count_txt})" if normalise else f"{count_txt}\n{pct_txt}"


def _validate_square(matrix: Sequence[Sequence[float]], labels: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``matrix`` is n x n with n = len(labels) > 0."""
    n = len(labels)
    if n == 0 or len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"confusion matrix must be {n}x{n} to match the labels")


def confusion_matrix_png(
    matrix: Sequence[Sequence[float]], labels: Sequence[str], normalise: bool = False
) -> bytes:
    """Annotated confusion-matrix heatmap.

    Every cell shows its count and its share of the true-class row. Readable up to
    about ten classes; long class names are truncated on the axes.

    Args:
        matrix: square counts, rows = true class, columns = predicted class, in the
            order of ``labels``.
        labels: class names.
        normalise: colour cells by row fraction (and lead with the percentage) rather
            than by raw count. Row colouring keeps small classes readable when the
            test set is imbalanced.

    Returns:
        PNG bytes.

    Raises:
        ValueError: if the matrix is not square or does not match ``labels``.
    """
    _validate_square(matrix, labels)
    n = len(labels)
    counts = [[float(v) for v in row] for row in matrix]
    fractions = row_fractions(counts)
    shade = [[f or 0.0 for f in row] for row in fractions] if normalise else counts
    vmax = 1.0 if normalise else max(1.0, max(max(row) for row in counts))

    side = max(4.0, 0.72 * n + 2.4)
    fig = _new_figure(side + 0.8, side)
    ax = fig.add_subplot()
    image = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("row fraction" if normalise else "count")

    fontsize = 9 if n <= 6 else 7 if n <= 10 else 6
    for i in range(n):
        for j in range(n):
            dark = shade[i][j] > 0.55 * vmax
            ax.text(
                j, i, _cell_text(counts[i][j], fractions[i][j], normalise),
                ha="center", va="center", fontsize=fontsize,
                color="white" if dark else "#1f2937", parse_math=False,
            )

    ticks = list(range(n))
    names = [_short(label) for label in labels]
    ax.set_xticks(ticks, names, rotation=40, ha="right", rotation_mode="anchor", parse_math=False)
    ax.set_yticks(ticks, names, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    return _figure_png(fig)


# ----------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------


def _finite(value) -> float | None:
    """``value`` as a finite float, else ``None`` (blank, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(rows: Sequence[Mapping], key: str) -> tuple[list[float], list[float]] | None:
    """(x, y) points of one history column, or ``None`` when it has no values."""
    xs, ys = [], []
    for index, row in enumerate(rows):
        y = _finite(row.get(key))
        if y is None:
            continue
        x = _finite(row.get("epoch"))
        xs.append(index if x is None else x)
        ys.append(y)
    return (xs, ys) if ys else None


def curve_panels(history_rows: Sequence[Mapping]) -> list[dict]:
    """Decide which panels the training-curve figure has.

    Args:
        history_rows: one mapping per epoch with any of ``epoch, accuracy, loss,
            val_accuracy, val_loss, learning_rate``.

    Returns:
        A list of ``{"title", "ylabel", "log", "series": [(name, colour, style, xs, ys)]}``
        with only the panels that have data (accuracy, loss, learning rate).
    """
    specs = [
        ("Accuracy", "accuracy", [("train", "accuracy", _TRAIN_COLOUR, "-"),
                                   ("validation", "val_accuracy", _VAL_COLOUR, "--")]),
        ("Loss", "loss", [("train", "loss", _TRAIN_COLOUR, "-"),
                          ("validation", "val_loss", _VAL_COLOUR, "--")]),
        ("Learning rate", "learning rate", [("learning rate", "learning_rate", _LR_COLOUR, "-")]),
    ]
    panels = []
    for title, ylabel, wanted in specs:
        series = []
        for name, key, colour, style in wanted:
            points = _series(history_rows, key)
            if points:
                series.append((name, colour, style, *points))
        if series:
            all_y = [y for s in series for y in s[4]]
            log = title == "Learning rate" and min(all_y) > 0 and max(all_y) / min(all_y) > 20
            panels.append({"title": title, "ylabel": ylabel, "log": log, "series": series})
    return panels


def training_curves_png(history_rows: Sequence[Mapping]) -> bytes:
    """Training curves: accuracy and loss (train vs validation), plus learning rate.

    Args:
        history_rows: one mapping per epoch, as read from a run's history; missing or
            blank columns are skipped.

    Returns:
        PNG bytes with one panel per quantity present.

    Raises:
        NothingToPlot: if no column has a plottable value.
    """
    panels = curve_panels(history_rows)
    if not panels:
        raise NothingToPlot("history has no accuracy, loss or learning-rate values")
    fig = _new_figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel)
    return _figure_png(fig)


def _draw_panel(ax, panel: Mapping) -> None:
    """Draw one training-curve panel onto ``ax``."""
    for name, colour, style, xs, ys in panel["series"]:
        marker = "o" if len(xs) <= 30 else None
        ax.plot(xs, ys, style, color=colour, label=name, marker=marker, markersize=3, linewidth=1.6)
    if panel["log"]:
        ax.set_yscale("log")
    elif panel["title"] == "Learning rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.set_title(panel["title"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(panel["ylabel"])
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(panel["series"]) > 1:
        ax.legend(frameon=False, fontsize=8)


# ----------------------------------------------------------------------------------
# Thumbnails
# ----------------------------------------------------------------------------------


def _to_rgb(image):
    """Convert any Pillow image to 8-bit RGB, stretching 16-bit/float greyscale."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("F")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale).convert("L")
    return image.convert("RGB")


def thumbnail_png(path, size: int = 96) -> bytes | None:
    """A small RGB PNG thumbnail of the image file at ``path``.

    Args:
        path: image file path (any format Pillow reads).
        size: longest side of the thumbnail in pixels.

    Returns:
        PNG bytes, or ``None`` when the file is missing or cannot be decoded.
    """
    return _thumbnail(path, size, "PNG", optimize=True)


def thumbnail_jpeg(path, size: int = 128) -> bytes | None:
    """:func:`thumbnail_png` as a JPEG (quality 85): much smaller, for pages that show many."""
    return _thumbnail(path, size, "JPEG", quality=85)


def _thumbnail(path, size: int, image_format: str, **options) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # cheap JPEG down-scaling; no-op otherwise
            rgb = _to_rgb(image)
        rgb.thumbnail((size, size))
        buf = io.BytesIO()
        rgb.save(buf, format=image_format, **options)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - any unreadable file becomes a placeholder
        return None


# ----------------------------------------------------------------------------------
# Comparison figures: one colour per backbone, in the order the caller gives
# ----------------------------------------------------------------------------------

_PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed",
            "#0891b2", "#db2777", "#4b5563", "#65a30d", "#9333ea")
_GRID = "#e5e7eb"
_LEGEND_LABEL = 28


def series_colour(index: int) -> str:
    """The colour of the ``index``-th backbone, shared by every comparison figure.

    Args:
        index: position of the backbone in the leaderboard order.

    Returns:
        A ``#rrggbb`` string (the palette repeats after ten backbones).
    """
    return _PALETTE[index % len(_PALETTE)]


def _plain(text, limit: int = _LEGEND_LABEL) -> str:
    """A legend/annotation label: shortened, with ``$`` escaped so mathtext stays off."""
    return _short(str(text), limit).replace("$", r"\$")


def _colour(item: Mapping, index: int) -> str:
    """``item["colour"]`` when given, else the palette colour for ``index``."""
    return item.get("colour") or series_colour(index)


def _panel_grid(fig, n: int, max_cols: int = 4):
    """``n`` axes in a grid of at most ``max_cols`` columns; spare axes are hidden."""
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    axes = [ax for row in fig.subplots(rows, cols, squeeze=False) for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _ci_errors(values: Sequence, cis: Sequence) -> tuple[list[float], list[float]]:
    """Lower and upper error-bar lengths from ``[lo, hi]`` intervals (0 when absent)."""
    low, high = [], []
    for value, ci in zip(values, cis):
        lo, hi = (ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None))
        lo, hi = _finite(lo), _finite(hi)
        low.append(max(0.0, value - lo) if lo is not None else 0.0)
        high.append(max(0.0, hi - value) if hi is not None else 0.0)
    return low, high


def per_class_f1_png(labels: Sequence[str], series: Sequence[Mapping]) -> bytes:
    """Grouped bars of per-class F1 with 95% confidence intervals.

    Args:
        labels: class names, one group of bars each (x axis).
        series: one mapping per backbone with ``name``, ``f1`` (a value or ``None``
            per label, in ``labels`` order), optional ``ci`` (``[lo, hi]`` or ``None``
            per label) and optional ``colour``.

    Returns:
        PNG bytes.

    Raises:
        NothingToPlot: if no backbone has an F1 value.
    """
    if not labels or not any(_finite(v) is not None for s in series for v in s.get("f1") or []):
        raise NothingToPlot("no per-class F1 values")
    n_series = len(series)
    step = 0.8 / n_series
    fig = _new_figure(max(6.0, 1.2 + len(labels) * (0.28 * n_series + 0.6)), 3.8)
    ax = fig.add_subplot()
    for k, item in enumerate(series):
        f1 = list(item.get("f1") or [])
        cis = list(item.get("ci") or [])
        points = [(i, _finite(f1[i]), cis[i] if i < len(cis) else None)
                  for i in range(min(len(labels), len(f1))) if _finite(f1[i]) is not None]
        if not points:
            continue
        xs = [i - 0.4 + step * (k + 0.5) for i, _, _ in points]
        ys = [y for _, y, _ in points]
        low, high = _ci_errors(ys, [ci for _, _, ci in points])
        ax.bar(xs, ys, step * 0.9, color=_colour(item, k), label=_plain(item["name"]))
        ax.errorbar(xs, ys, yerr=[low, high], fmt="none", ecolor="#111827", elinewidth=1, capsize=2)
    ax.set_xticks(range(len(labels)), [_short(label) for label in labels], parse_math=False,
                  rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 on the test set")
    ax.set_title("Per-class F1 (bars: 95% CI)")
    ax.grid(True, axis="y", color=_GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", ncol=min(n_series, 4), frameon=False, fontsize=8)
    return _figure_png(fig)


def roc_curves_png(labels: Sequence[str], series: Sequence[Mapping]) -> bytes:
    """One-vs-rest ROC curves: one small panel per class, one line per backbone.

    Args:
        labels: class names; a panel is drawn for each class some backbone has a curve for.
        series: one mapping per backbone with ``name``, ``curves`` (``{label: {"fpr",
            "tpr", "auc"}}``) and optional ``colour``.

    Returns:
        PNG bytes.

    Raises:
        NothingToPlot: if no backbone has a curve.
    """
    def curve(item, label):
        data = (item.get("curves") or {}).get(label)
        if not isinstance(data, Mapping):
            return None
        pairs = [(_finite(x), _finite(y)) for x, y in zip(data.get("fpr") or [], data.get("tpr") or [])]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        return (pairs, _finite(data.get("auc"))) if pairs else None

    panels = [label for label in labels if any(curve(item, label) for item in series)]
    if not panels:
        raise NothingToPlot("no ROC curves")
    cols = min(4, len(panels))
    fig = _new_figure(3.1 * cols, 3.2 * math.ceil(len(panels) / cols))
    for ax, label in zip(_panel_grid(fig, len(panels)), panels):
        ax.plot([0, 1], [0, 1], ":", color="#9ca3af", linewidth=1)
        for k, item in enumerate(series):
            found = curve(item, label)
            if not found:
                continue
            pairs, auc = found
            auc_txt = "\u2013" if auc is None else f"{auc:.3f}"
            ax.plot([x for x, _ in pairs], [y for _, y in pairs], color=_colour(item, k), linewidth=1.5,
                    label=f"{_plain(item['name'], 20)} (AUC {auc_txt})")
        ax.set_title(_short(label, 30), fontsize=10, parse_math=False)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, color=_GRID, linewidth=0.6)
        ax.legend(loc="lower right", fontsize=6.5, frameon=True, framealpha=0.85)
    return _figure_png(fig)


def reliability_png(series: Sequence[Mapping]) -> bytes:
    """Reliability diagrams, one panel per backbone.

    Bars show the accuracy of the predictions in each confidence bin; a perfectly
    calibrated model's bars touch the diagonal.

    Args:
        series: one mapping per backbone with ``name``, ``reliability`` (lists
            ``bin_lower``, ``bin_upper``, ``confidence``, ``accuracy``, ``count``;
            empty bins hold ``None``), ``ece`` and optional ``colour``.

    Returns:
        PNG bytes.

    Raises:
        NothingToPlot: if no backbone has a non-empty bin.
    """
    def bins(item):
        data = item.get("reliability") or {}
        rows = zip(data.get("bin_lower") or [], data.get("bin_upper") or [], data.get("accuracy") or [],
                   data.get("confidence") or [])
        return [(lo, hi, acc, conf) for lo, hi, acc, conf in
                ((_finite(a), _finite(b), _finite(c), _finite(d)) for a, b, c, d in rows)
                if lo is not None and hi is not None and acc is not None]

    drawn = [(k, item, bins(item)) for k, item in enumerate(series)]
    drawn = [entry for entry in drawn if entry[2]]
    if not drawn:
        raise NothingToPlot("no reliability bins")
    cols = min(4, len(drawn))
    fig = _new_figure(3.0 * cols, 3.2 * math.ceil(len(drawn) / cols))
    for ax, (k, item, rows) in zip(_panel_grid(fig, len(drawn)), drawn):
        ece = _finite(item.get("ece"))
        ax.plot([0, 1], [0, 1], "--", color="#6b7280", linewidth=1, label="perfect calibration")
        ax.bar([lo for lo, *_ in rows], [acc for _, _, acc, _ in rows], [hi - lo for lo, hi, *_ in rows],
               align="edge", color=_colour(item, k), alpha=0.75, edgecolor="white", linewidth=0.6,
               label="ECE " + ("\u2013" if ece is None else f"{ece:.3f}"))
        confs = [(conf, acc) for _, _, acc, conf in rows if conf is not None]
        if confs:
            ax.plot(*zip(*confs), "o", color="#111827", markersize=2.5, label="mean confidence")
        ax.set_title(_plain(item["name"], 30), fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, color=_GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", fontsize=6.5, frameon=False)
    return _figure_png(fig)


def overlaid_curves_png(series: Sequence[Mapping]) -> bytes:
    """Validation accuracy and loss per epoch, one line per backbone.

    Args:
        series: one mapping per backbone with ``name``, ``history`` (rows as read from
            a run's history) and optional ``colour``.

    Returns:
        PNG bytes with a panel for each of validation accuracy and loss that has data.

    Raises:
        NothingToPlot: if no backbone has a validation value.
    """
    panels = []
    for title, key in (("Validation accuracy", "val_accuracy"), ("Validation loss", "val_loss")):
        lines = [(k, item, _series(item.get("history") or [], key)) for k, item in enumerate(series)]
        lines = [line for line in lines if line[2]]
        if lines:
            panels.append((title, lines))
    if not panels:
        raise NothingToPlot("no validation history")
    fig = _new_figure(4.6 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels):
        for k, item, (xs, ys) in lines:
            ax.plot(xs, ys, "-", color=_colour(item, k), label=_plain(item["name"]),
                    marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.6)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, color=_GRID, linewidth=0.8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(frameon=False, fontsize=8)
    return _figure_png(fig)


def pareto_front(points: Sequence[Mapping]) -> list[int]:
    """Indices of the points no other point beats on both latency and accuracy.

    Args:
        points: mappings with ``latency_ms`` (lower is better) and ``accuracy``
            (higher is better); points missing either are never on the front.

    Returns:
        The indices on the front, by increasing latency.
    """
    valid = [(i, _finite(p.get("latency_ms")), _finite(p.get("accuracy"))) for i, p in enumerate(points)]
    valid = [(i, x, y) for i, x, y in valid if x is not None and y is not None]
    front = [
        (x, i) for i, x, y in valid
        if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for _, x2, y2 in valid)
    ]
    return [i for _, i in sorted(front)]


def accuracy_latency_png(points: Sequence[Mapping]) -> bytes:
    """Test accuracy (with 95% CI) against inference latency, Pareto front highlighted.

    Args:
        points: one mapping per backbone with ``name``, ``latency_ms`` (milliseconds
            per image), ``accuracy``, optional ``ci`` (``[lo, hi]``) and ``colour``.

    Returns:
        PNG bytes.

    Raises:
        NothingToPlot: if no backbone has both a latency and an accuracy.
    """
    usable = [(k, p) for k, p in enumerate(points)
              if _finite(p.get("latency_ms")) is not None and _finite(p.get("accuracy")) is not None]
    if not usable:
        raise NothingToPlot("no backbone has both latency and accuracy")
    front = set(pareto_front(points))
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    front_xy = sorted((_finite(points[i]["latency_ms"]), _finite(points[i]["accuracy"])) for i in front)
    if len(front_xy) > 1:
        ax.plot(*zip(*front_xy), "-", color="#f59e0b", linewidth=6, alpha=0.35, solid_capstyle="round",
                label="Pareto front", zorder=1)
    for k, p in usable:
        x, y = _finite(p["latency_ms"]), _finite(p["accuracy"])
        low, high = _ci_errors([y], [p.get("ci")])
        on_front = k in front
        ax.errorbar([x], [y], yerr=[low, high], fmt="o", color=_colour(p, k), capsize=3,
                    markersize=8 if on_front else 6, markeredgecolor="#111827" if on_front else "white",
                    markeredgewidth=1.5 if on_front else 0.8, zorder=3)
        ax.annotate(_plain(p["name"], 22) + (" \u2605" if on_front else ""), (x, y),
                    xytext=(6, 6), textcoords="offset points", fontsize=8)
    xs = [_finite(p["latency_ms"]) for _, p in usable]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("inference latency (ms per image)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.set_title("Accuracy against latency (\u2605 = Pareto front: nothing is both faster and more accurate)",
                 fontsize=9)
    ax.grid(True, color=_GRID, linewidth=0.8)
    if len(front_xy) > 1:
        ax.legend(loc="lower right", frameon=False, fontsize=8)
    return _figure_png(fig)


def _seed_offsets(n: int, height: float = 0.36) -> list[float]:
    """Vertical offsets that fan ``n`` dots of one row out, so seeds with equal values stay apart."""
    if n < 2:
        return [0.0] * n
    return [-height / 2 + height * k / (n - 1) for k in range(n)]


def seed_strip_png(series: Sequence[Mapping]) -> bytes:
    """Every seed's test accuracy and macro-F1: one row per backbone, one dot per seed, the mean marked.

    A thin bar spans each backbone's range across seeds, so whether two backbones' seed
    ranges overlap can be read off directly.

    Args:
        series: one mapping per backbone, top row first, with ``name``, ``accuracy`` and
            ``macro_f1`` (one value per seed; ``None`` where a seed has none) and
            optional ``colour``.

    Returns:
        PNG bytes with a panel for each of accuracy and macro-F1 that has a value.

    Raises:
        NothingToPlot: if no seed of any backbone has a value.
    """
    from matplotlib.lines import Line2D

    def values(item, key):
        return [v for v in (_finite(x) for x in item.get(key) or []) if v is not None]

    panels = [(title, key) for title, key in (("Accuracy", "accuracy"), ("Macro F1", "macro_f1"))
              if any(values(item, key) for item in series)]
    if not panels:
        raise NothingToPlot("no seed has a value")
    n = len(series)
    fig = _new_figure(1.6 + 4.2 * len(panels), 1.3 + 0.55 * n)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (title, key) in zip(axes, panels):
        for k, item in enumerate(series):
            xs, y, colour = values(item, key), n - 1 - k, _colour(item, k)
            if not xs:
                continue
            ax.plot([min(xs), max(xs)], [y, y], "-", color=colour, alpha=0.3, linewidth=5, solid_capstyle="round",
                    zorder=1)
            ax.scatter(xs, [y + d for d in _seed_offsets(len(xs))], s=34, color=colour, edgecolors="white",
                       linewidths=0.8, zorder=3)
            ax.plot([sum(xs) / len(xs)], [y], "|", color="#111827", markersize=18, markeredgewidth=2.5, zorder=2)
        ax.set_title(f"{title} per seed", fontsize=10)
        ax.set_xlabel(f"{title} on the test set", fontsize=8)
        ax.margins(x=0.12)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="x", color=_GRID, linewidth=0.8)
        ax.set_axisbelow(True)
    axes[0].set_yticks(range(n), [_short(item["name"], 24) for item in reversed(series)], parse_math=False)
    axes[0].set_ylim(-0.6, n - 0.4)
    key = [Line2D([], [], marker="o", linestyle="", color="#6b7280", label="one seed"),
           Line2D([], [], marker="|", linestyle="", color="#111827", markersize=12, markeredgewidth=2.5,
                  label="mean over seeds"),
           Line2D([], [], color="#6b7280", alpha=0.3, linewidth=5, label="range across seeds")]
    fig.legend(handles=key, loc="outside lower center", ncol=3, frameon=False, fontsize=8)
    return _figure_png(fig)


# ----------------------------------------------------------------------------------
# Grad-CAM overlays (Pillow + a matplotlib colormap; no figure)
# ----------------------------------------------------------------------------------


def gradcam_overlay_png(path, heat, size: int = 112, alpha: float = 0.45, cmap: str = "jet") -> bytes | None:
    """The image at ``path`` as a thumbnail with a Grad-CAM heat-map blended over it.

    Args:
        path: image file path.
        heat: 2-D array of values in [0, 1] at feature-map resolution (e.g. 7x7); it
            is upsampled bilinearly to the thumbnail, covering the whole image.
        size: longest side of the thumbnail in pixels.
        alpha: weight of the coloured heat-map in the blend.
        cmap: name of a matplotlib colormap.

    Returns:
        PNG bytes, or ``None`` when the image cannot be read or ``heat`` is not a
        non-empty 2-D array.
    """
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0)
    if heat.ndim != 2 or heat.size == 0:
        return None
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            rgb = _to_rgb(image)
    except Exception:  # noqa: BLE001 - an unreadable image becomes a placeholder
        return None
    rgb.thumbnail((size, size))
    upsampled = Image.fromarray(np.clip(heat, 0.0, 1.0)).resize(rgb.size, Image.Resampling.BILINEAR)
    colours = colormaps[cmap](np.clip(np.asarray(upsampled), 0.0, 1.0))[..., :3]
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * colours
    out = Image.fromarray(np.round(blended * 255.0).astype(np.uint8))  # HxWx3 uint8 -> RGB
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------------
# Robustness: accuracy against severity, and the corrupted images themselves
# ----------------------------------------------------------------------------------


def robustness_curves_png(panels: Sequence[Mapping]) -> bytes:
    """One small panel per corruption: accuracy (solid), macro-F1 (dashed) and, where known, the accuracy on
    the images with no training twin (dotted) against severity, clean at 0.

    Args:
        panels: ``{"name", "severities", "accuracy", "macro_f1"}`` and optionally ``"leak_free_accuracy"``
            each, severity 0 (clean) first; values may be ``None``.

    Raises:
        NothingToPlot: no panel has a plottable accuracy.
    """
    panels = [p for p in panels if any(_finite(v) is not None for v in p.get("accuracy") or [])]
    if not panels:
        raise NothingToPlot("no robustness figures")
    cols = min(3, len(panels))
    fig = _new_figure(3.3 * cols, 2.5 * math.ceil(len(panels) / cols))
    for ax, panel in zip(_panel_grid(fig, len(panels), max_cols=cols), panels):
        for key, style, colour in (("accuracy", "-", _TRAIN_COLOUR), ("macro_f1", "--", _VAL_COLOUR),
                                   ("leak_free_accuracy", ":", _LEAK_FREE_COLOUR)):
            points = [(s, _finite(v)) for s, v in zip(panel["severities"], panel.get(key) or [])]
            points = [(s, v) for s, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), style, color=colour, marker="o", markersize=3, linewidth=1.5,
                        label=key.replace("_", "-"))
        ax.set_title(_plain(panel["name"]), fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("severity (0: clean)", fontsize=8)
        ax.grid(True, color=_GRID, linewidth=0.8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.axes[0].legend(frameon=False, fontsize=7, loc="lower left")
    return _figure_png(fig, dpi=90)


def image_png(array, size: int = 96) -> bytes:
    """A ``uint8`` HxWxC (or HxW) array as PNG bytes, scaled up with nearest neighbours to at least ``size``
    px so that single pixels (noise, blocks, ghosts) stay visible rather than smoothed away."""
    import numpy as np
    from PIL import Image

    array = np.asarray(array, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    image = Image.fromarray(array)
    factor = max(1, math.ceil(size / max(image.size)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
