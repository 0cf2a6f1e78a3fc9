"""Command line: argparse subcommands that turn flags into calls. No logic lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from suite.config import AUGMENT_CHOICES, FINETUNE_PATTERN, PRECISION_CHOICES
from suite.errors import SuiteError


def _backbone(name: str) -> str:
    from backbones import get_spec

    try:
        return get_spec(name).name
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None


def _finetune(value: str) -> str:
    if not FINETUNE_PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"expected all, head or top:N (N >= 1), got {value!r}")
    return value


def _fraction(value: str) -> float:
    x = float(value)
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value}")
    return x


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def _image_size(value: str) -> int:
    n = int(value)
    if n < 32:
        raise argparse.ArgumentTypeError(f"image size must be at least 32 px, got {value}")
    return n


def _weights(value: str) -> str:
    if value in ("auto", "imagenet", "none"):
        return value
    if not Path(value).expanduser().is_file():
        raise argparse.ArgumentTypeError(
            f"expected auto, imagenet, none or an existing weights file, got {value!r}"
        )
    return value


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that trains (``run`` now; ``compare``, ``cv`` later)."""
    p.add_argument("--backbone", type=_backbone, default=None, help="registered backbone (default: efficientnetb0)")
    p.add_argument("--data", default=None,
                   help="dataset folder: DIR/Training/<class>/ + DIR/Testing/<class>/, or DIR/<class>/ "
                        "(default: the synthetic phantom dataset)")
    p.add_argument("--out", default=None, help="folder for run folders (default: runs)")
    p.add_argument("--image-size", type=_image_size, default=None,
                   help="square input size in px (default: the dataset card's, else 150)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="default: the dataset card's, else 12")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default: 32")
    p.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--dropout", type=float, default=None, help="dropout before the classifier (default: 0.5)")
    p.add_argument("--finetune", type=_finetune, default=None, help="all (default), head, or top:N")
    p.add_argument("--augment", choices=AUGMENT_CHOICES, default=None, help="training-time augmentation (default: none)")
    p.add_argument("--val-fraction", type=_fraction, default=None, help="validation share of training (default: 0.1)")
    p.add_argument("--test-fraction", type=_fraction, default=None,
                   help="test share of a single-folder dataset (default: 0.2)")
    p.add_argument("--seed", type=int, default=None, help="split, initialisation and shuffling seed (default: 0)")
    p.add_argument("--weights", type=_weights, default=None, help="auto (default), imagenet, none, or a weights file")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="auto (default: bf16 on a GPU, fp32 on a CPU), fp32, bf16, fp16")
    p.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without val_accuracy gain (default: off)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m suite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate one backbone; prints the run folder")
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("list", help="list the registered backbones")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter (default: all)")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("phantom", help="write the synthetic phantom dataset")
    p.add_argument("--out", required=True, help="folder to write it into (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-class", type=_positive_int, default=None)
    p.add_argument("--test-per-class", type=_positive_int, default=None)
    p.set_defaults(handler=cmd_phantom)

    p = sub.add_parser("report", help="re-render the report of run folders, without retraining")
    p.add_argument("paths", nargs="+", help="run folders")
    p.set_defaults(handler=cmd_report)
    return parser


RUN_FLAG_NAMES = ("backbone", "data", "out", "image_size", "epochs", "batch_size", "learning_rate", "dropout",
                  "finetune", "augment", "val_fraction", "test_fraction", "seed", "weights", "precision",
                  "early_stopping", "workers")


def run_flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in RUN_FLAG_NAMES}


def cmd_run(args) -> int:
    from suite.pipeline import run

    run_dir = run(run_flags(args), progress=not args.quiet)
    print(run_dir)
    return 0


def cmd_list(args) -> int:
    from backbones import get_spec, list_backbones

    names = list_backbones(args.pattern)
    print(f"{'name':<16} {'input':>5}  {'preprocessing':<13} {'features':>8}  constructor")
    for name in names:
        s = get_spec(name)
        print(f"{s.name:<16} {s.input_size:>5}  {s.preprocessing:<13} {s.feature_width:>8}  {s.constructor}")
    return 0 if names else 1


def cmd_phantom(args) -> int:
    from suite.data.phantom import generate_phantom

    out = Path(args.out)
    if out.exists():
        raise SuiteError(f"{out} exists already: choose a new folder")
    sizes = {k: v for k, v in (("n_train_per_class", args.train_per_class),
                                ("n_test_per_class", args.test_per_class)) if v}
    print(generate_phantom(out, seed=args.seed, **sizes))
    return 0


def cmd_report(args) -> int:
    from reports.render import write_run_report

    for path in args.paths:
        print(write_run_report(path))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
