"""``suite list``: the registered backbones and their specs, without loading TensorFlow."""

from __future__ import annotations


def main(args) -> int:
    from backbones import get_spec, list_backbones

    names = list_backbones(args.pattern)
    print(f"{'name':<16} {'input':>5}  {'preprocessing':<13} {'features':>8}  constructor")
    for name in names:
        s = get_spec(name)
        print(f"{s.name:<16} {s.input_size:>5}  {s.preprocessing:<13} {s.feature_width:>8}  {s.constructor}")
    return 0 if names else 1
