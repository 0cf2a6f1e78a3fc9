"""``suite list``: the registered backbones and their specs, without loading TensorFlow."""

from __future__ import annotations

import sys

COLUMNS = ("name", "family", "params", "size", "top-1", "preprocessing", "features")


def rows(selection: str = "all") -> list[tuple[str, ...]]:
    """One row of ``COLUMNS`` per backbone ``selection`` stands for, in registry order.

    ``params`` is in millions and ``top-1`` the ImageNet top-1 accuracy in percent, both from the
    Keras applications table (``-`` where it gives none).
    """
    from backbones import expand_backbones, get_spec

    out = []
    for name in expand_backbones(selection):
        s = get_spec(name)
        out.append((s.name, s.family, _number(s.params_m, "M"), str(s.input_size), _number(s.top1, "%"),
                    s.preprocessing, str(s.feature_width)))
    return out


def render(table: list[tuple[str, ...]]) -> str:
    """``table`` under a header, in aligned columns (text left, numbers right)."""
    lines = [COLUMNS, *table]
    widths = [max(len(row[i]) for row in lines) for i in range(len(COLUMNS))]
    right = {"params", "size", "top-1", "features"}
    return "\n".join(
        "  ".join(cell.rjust(w) if col in right else cell.ljust(w)
                  for col, cell, w in zip(COLUMNS, row, widths)).rstrip()
        for row in lines
    )


def _number(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def main(args) -> int:
    try:
        table = rows(args.pattern)
    except (KeyError, ValueError) as exc:
        print(f"suite list: {exc.args[0]}", file=sys.stderr)
        return 1
    print(render(table))
    return 0
