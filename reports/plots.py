"""Pure plotting helpers for run reports: each returns PNG bytes.

Matplotlib is imported lazily inside the functions and driven through
``matplotlib.figure.Figure`` plus ``FigureCanvasAgg`` directly, so nothing here touches
pyplot's global state or the user's selected backend. Thumbnails use Pillow only.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Iterable, Mapping, Sequence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Colours: one per series, consistent across panels (train solid, validation dashed).
_TRAIN_COLOUR = "#2563eb"
_VAL_COLOUR = "#dc2626"
_LR_COLOUR = "#059669"
_MAX_TICK_LABEL = 18


def to_data_uri(png_bytes: bytes) -> str:
    """Wrap PNG bytes as a ``data:image/png;base64,...`` URI for embedding in HTML.

    Args:
        png_bytes: the encoded PNG image.

    Returns:
        The data URI as a plain ASCII string.
    """
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


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
        history_rows: one mapping per epoch, as read from ``history.csv``; missing or
            blank columns are skipped.

    Returns:
        PNG bytes with one panel per quantity present.

    Raises:
        ValueError: if no column has a plottable value.
    """
    panels = curve_panels(history_rows)
    if not panels:
        raise ValueError("history has no accuracy, loss or learning-rate values")
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
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # cheap JPEG down-scaling; no-op otherwise
            rgb = _to_rgb(image)
        rgb.thumbnail((size, size))
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - any unreadable file becomes a placeholder
        return None


def thumbnails(paths: Iterable, size: int = 96) -> list[bytes | None]:
    """:func:`thumbnail_png` for each path, in order."""
    return [thumbnail_png(path, size) for path in paths]
