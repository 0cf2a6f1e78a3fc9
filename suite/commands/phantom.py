"""``suite phantom``: write the synthetic phantom dataset (two-split layout with its card) to a new folder."""

from __future__ import annotations

from pathlib import Path

from suite.errors import SuiteError


def main(args) -> int:
    from suite.data.phantom import generate_phantom

    out = Path(args.out)
    if out.exists():
        raise SuiteError(f"{out} exists already: choose a new folder")
    sizes = {k: v for k, v in (("n_train_per_class", args.train_per_class),
                                ("n_test_per_class", args.test_per_class)) if v}
    print(generate_phantom(out, seed=args.seed, **sizes))
    return 0
