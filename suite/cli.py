"""Command line: argparse subcommands that turn flags into calls. No logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from suite.config import AUGMENT_CHOICES, DEDUP_MODES, FINETUNE_PATTERN, PRECISION_CHOICES, STRATEGY_CHOICES
from suite.errors import SuiteError


def _backbone(name: str) -> str:
    from backbones import get_spec

    try:
        return get_spec(name).name
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None


def _backbone_list(value: str) -> tuple[str, ...]:
    names = tuple(_backbone(v.strip()) for v in value.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of backbones")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a backbone is listed twice: {value}")
    return names


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {value}")
    return path


def _threshold(value: str):
    from suite.gates import Threshold

    return Threshold.parse(value)


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


def _folds(value: str) -> int:
    n = int(value)
    if n < 2:
        raise argparse.ArgumentTypeError(f"cross-validation needs at least 2 folds, got {value}")
    return n


def _search_space(value: str):
    from suite.search_space import load_space

    try:
        return load_space(Path(value).expanduser())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TUNE_DESCRIPTION = """\
Search learning rate, dropout, fine-tune depth, augmentation and batch size with Keras Tuner,
then retrain the best settings as a normal run folder inside the tuning folder and test it.

Where the search lives:
  new search        --out DIR (default: runs) gets DIR/<timestamp>-tune-<backbone>/
  --resume TUNE_DIR continues the search stored in TUNE_DIR: finished trials are kept and not
                    rerun, and --max-trials is the new total. The backbone, data, split, tuner,
                    objective, --cv, the space and the other run flags must be those of the
                    original search (checked; stored in TUNE_DIR/search.json).
  distributed       with KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT set
                    (Keras Tuner's chief/worker mode), --out DIR is the tuning folder itself and
                    every process must be given the same one. The chief (tuner id containing
                    "chief") serves the oracle, then writes tuning.json and retrains the best;
                    workers run trials and exit.

A run flag that is given fixes that setting (e.g. --batch-size 16). With --finetune head the
frozen backbone's features are computed once, cached, and each trial trains only the head
(augmentation is then fixed to none).

Search space file (TOML), one table per setting, each optional:
  [learning_rate]   min = 1e-4   max = 1e-2   sampling = "log"   (default)
  [dropout]         min = 0.0    max = 0.6    step = 0.1         (default)
  [finetune]        values = ["head", "top:20", "top:50", "all"] (default)
  [augment]         values = ["none", "light"]                   (default)
  [batch_size]      values = [16, 32, 64]                        (default)
  value = X fixes a setting; sampling is linear, log or reverse_log.
"""


BENCH_DESCRIPTION = """\
Train the same model on the same synthetic images two ways, alternating: through the suite's
image cache and training loop (every callback a run has), and through a bare model.fit on
in-memory arrays. Prints one JSON object: suite_train_ips, bare_fit_train_ips, ratio,
infer_ips, infer_ms_per_image, device and backend, with warm-up and compile time apart.
"""


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
    p.add_argument("--dedup", choices=DEDUP_MODES, default=None,
                   help="leakage firewall against duplicate images: off, report (default: leak-free test metrics "
                        "beside the full ones), group (a duplicate cluster never straddles train/val/test or "
                        "folds), drop (test images with a training twin are removed)")
    p.add_argument("--protocol", choices=("default", "reference"), default=None,
                   help="reference: the original notebook's recipe (Training+Testing pooled, random 10%% test "
                        "split, seed 101, 150 px, 12 epochs, batch 32); flags still override it")
    add_device_arguments(p)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for the devices a command trains on."""
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, default=None,
                   help="auto (default: mirrored over several local GPUs, multiworker when "
                        "JAX_COORDINATOR_ADDRESS describes a cluster, else none), none, mirrored, multiworker "
                        "(JAX only: Keras 3 cannot fit under TensorFlow's multi-worker strategy); "
                        "--batch-size is the global batch, split across replicas")
    p.add_argument("--cpu-devices", type=_positive_int, default=None, metavar="N",
                   help="split the CPU into N logical devices (mirrored training on one CPU)")


def build_parser() -> argparse.ArgumentParser:
    from suite.tune import OBJECTIVES, TUNER_NAMES

    parser = argparse.ArgumentParser(
        prog="python -m suite",
        description="Benchmark transfer-learning classifiers on brain-tumour MRI.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate one backbone; prints the run folder")
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("compare", help="train every backbone under identical conditions; prints the comparison folder")
    add_run_arguments(p)
    p.add_argument("--backbones", type=_backbone_list, default=None,
                   help="comma-separated backbones (default: every registered one)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("cv", help="stratified K-fold cross-validation of one backbone; prints the CV folder")
    add_run_arguments(p)
    p.add_argument("--folds", type=_positive_int, default=5, help="K (default: 5)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CV_DIR",
                   help="continue a killed CV: CV_DIR, or without a value the newest unfinished CV of this "
                        "backbone under --out; completed folds are kept")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_cv)

    p = sub.add_parser(
        "tune", help="search training settings with Keras Tuner, retrain the best; prints the tuning folder",
        description=TUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--tuner", choices=TUNER_NAMES, default="random",
                   help="Keras Tuner oracle (default: random)")
    p.add_argument("--max-trials", type=_positive_int, default=10,
                   help="trials in all, counting those a resumed search finished (default: 10)")
    p.add_argument("--objective", choices=OBJECTIVES, default="val_accuracy",
                   help="validation figure to maximise, at each trial's best epoch (default: val_accuracy)")
    p.add_argument("--space", type=_search_space, default=None, metavar="FILE.toml",
                   help="override the default search space (see below)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="TUNE_DIR",
                   help="continue the search in TUNE_DIR (without a value: the newest tuning folder of this "
                        "backbone under --out); finished trials are kept and not rerun")
    p.add_argument("--cv", type=_folds, default=None, metavar="K",
                   help="score each trial by the mean over K stratified folds of the training pool "
                        "(default: the validation split)")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="with --finetune head, still build and train the full model in every trial")
    p.add_argument("--compare-default", action="store_true",
                   help="also train the un-tuned settings, for a best-versus-default comparison")
    p.add_argument("--max-consecutive-failures", type=_positive_int, default=3, metavar="N",
                   help="stop the search after N failed trials in a row (default: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_tune)

    p = sub.add_parser("bench", help="training and inference images/s: the suite's loop against a bare model.fit",
                       description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=_backbone, default="efficientnetb0")
    p.add_argument("--image-size", type=_image_size, default=None, help="default: 150")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="global batch (default: 32)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="auto (default: bf16 on a GPU, fp32 on a CPU), fp32, bf16, fp16")
    p.add_argument("--finetune", type=_finetune, default=None, help="all (default), head, or top:N")
    p.add_argument("--steps", type=_positive_int, default=30, help="training steps per epoch (default: 30)")
    p.add_argument("--epochs", type=_positive_int, default=3, help="epochs per fit, the first is warm-up (default: 3)")
    p.add_argument("--rounds", type=_positive_int, default=2, help="bare/suite pairs, alternated bare-suite, suite-bare, ... (default: 2)")
    add_device_arguments(p)
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("evaluate", help="score a finished run's model on another dataset")
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("--data", required=True, type=_existing_dir, help="dataset folder (any supported layout)")
    p.add_argument("--split", choices=("auto", "all", "train", "val", "test"), default="auto",
                   help="which part to score (default: the test split if there is one, else all)")
    p.add_argument("--out", default=None, help="where the evaluation folder goes (default: beside the run)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="predict the class of image files with a finished run's model")
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("audit", help="dataset audit: duplicates, leakage across splits, label conflicts, bad files")
    p.add_argument("--data", required=True, type=_existing_dir, help="dataset folder")
    p.add_argument("--out", default=None, help="where the audit folder goes (default: runs)")
    p.add_argument("--threshold", type=int, default=None, help="perceptual-hash Hamming distance for near "
                   "duplicate candidates (default: 10 of 64 bits)")
    p.add_argument("--tol", type=float, default=None, help="pixel tolerance confirming a near duplicate "
                   "(default: 0.11; about 0.2 also groups neighbouring slices of one scan)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_audit)

    p = sub.add_parser("check", help="check run, comparison or CV folders against metric thresholds (exit 1 on failure)")
    p.add_argument("--thresholds", type=Path, default=None, help="TOML file: [default] and per-backbone tables")
    p.add_argument("--require", action="append", default=[], type=_threshold, metavar="METRIC>=VALUE",
                   help="an extra bound for every backbone, e.g. accuracy>=0.9 (may repeat)")
    p.add_argument("paths", nargs="+", help="run, comparison or CV folders, or a folder of them")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("list", help="list the registered backbones")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter (default: all)")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("phantom", help="write the synthetic phantom dataset")
    p.add_argument("--out", required=True, help="folder to write it into (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-class", type=_positive_int, default=None)
    p.add_argument("--test-per-class", type=_positive_int, default=None)
    p.set_defaults(handler=cmd_phantom)

    p = sub.add_parser("report", help="re-render run or comparison reports from their folders, without retraining")
    p.add_argument("paths", nargs="+", type=_existing_dir, help="run, evaluation or comparison folders")
    p.set_defaults(handler=cmd_report)
    return parser


RUN_FLAG_NAMES = ("backbone", "data", "out", "image_size", "epochs", "batch_size", "learning_rate", "dropout",
                  "finetune", "augment", "val_fraction", "test_fraction", "seed", "weights", "precision",
                  "early_stopping", "workers", "protocol", "dedup", "strategy", "cpu_devices")


def run_flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in RUN_FLAG_NAMES}


def cmd_run(args) -> int:
    from suite.pipeline import run

    with training_output():
        run_dir = run(run_flags(args), progress=not args.quiet)
    print(run_dir)
    return 0


def cmd_compare(args) -> int:
    from backbones import list_backbones
    from suite.compare import compare

    flags = run_flags(args)
    flags.pop("backbone")
    with training_output():
        folder = compare(flags, args.backbones or tuple(list_backbones()), progress=not args.quiet, log=_log)
    print(folder)
    return 0


def cmd_cv(args) -> int:
    from backbones import get_spec
    from suite.config import RunConfig
    from suite.cv import cross_validate, latest_unfinished

    flags = run_flags(args)
    resume = None
    if args.resume == "latest":
        out = Path(args.out or RunConfig.out)
        resume = latest_unfinished(out, get_spec(args.backbone or RunConfig.backbone).name)
        if resume is None:
            raise SuiteError(f"no unfinished cross-validation to resume under {out}")
    elif args.resume:
        resume = Path(args.resume)
    with training_output():
        folder = cross_validate(flags, args.folds, resume=resume, progress=not args.quiet, log=_log)
    print(folder)
    return 0


def cmd_tune(args) -> int:
    from backbones import get_spec
    from suite.config import RunConfig
    from suite.io import read_json
    from suite.tune import TUNING_FILE, TuneSettings, distributed_role, latest_search, tune

    resume = None
    if args.resume == "latest":
        out = Path(args.out or RunConfig.out)
        resume = latest_search(out, get_spec(args.backbone or RunConfig.backbone).name)
        if resume is None:
            raise SuiteError(f"no tuning folder to resume under {out}")
    elif args.resume:
        resume = Path(args.resume)
    settings = TuneSettings(tuner=args.tuner, max_trials=args.max_trials, objective=args.objective,
                            resume=resume, cv=args.cv, fast_path=args.fast_path,
                            compare_default=args.compare_default,
                            max_consecutive_failures=args.max_consecutive_failures,
                            **({"space": args.space} if args.space is not None else {}))
    with training_output():
        folder = tune(run_flags(args), settings, progress=not args.quiet, log=_log)
    print(folder)
    if distributed_role() == "worker":
        return 0
    return 0 if read_json(folder / TUNING_FILE).get("status") == "completed" else 1


def cmd_bench(args) -> int:
    import json

    from suite.bench import BenchSettings, bench

    flags = {k: getattr(args, k) for k in ("backbone", "image_size", "batch_size", "precision", "finetune",
                                           "strategy", "cpu_devices")}
    try:
        settings = BenchSettings(steps=args.steps, epochs=args.epochs, rounds=args.rounds)
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    with training_output():
        result = bench(flags, settings, log=_log)
    print(json.dumps(result, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from suite.external import evaluate_external

    print(evaluate_external(args.run_dir, args.data, out=args.out, split=args.split, progress=not args.quiet))
    return 0


def cmd_predict(args) -> int:
    import json

    from suite.inference import predict_images

    results = predict_images(args.run_dir, args.images)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}\terror: {r['error']}")
                continue
            probs = "  ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['path']}\t{r['predicted']}\t{probs}")
    return 1 if any("error" in r for r in results) else 0


def training_output():
    """Send what Keras prints while training (epoch lines, learning-rate changes) to stderr,
    so that stdout carries only the command's result (a folder, a JSON object)."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_audit(args) -> int:
    from suite.audit import run_audit

    settings = {k: v for k, v in (("threshold", args.threshold), ("tol", args.tol)) if v is not None}
    print(run_audit(args.data, out=args.out, progress=not args.quiet, **settings))
    return 0


def cmd_check(args) -> int:
    from suite.gates import check_command

    if args.thresholds is None and not args.require:
        raise SuiteError("give --thresholds FILE and/or --require METRIC>=VALUE")
    return check_command(args.thresholds, args.paths, args.require)


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
    from reports import write_any_report
    from reports.compare import write_index

    for path in args.paths:
        try:
            print(write_any_report(path))
        except ValueError as exc:
            raise SuiteError(str(exc)) from None
    for parent in sorted({Path(p).resolve().parent for p in args.paths}):
        print(write_index(parent))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "cpu_devices", None) or getattr(args, "strategy", None):
            from suite.runtime import configure_process

            configure_process(args.cpu_devices, args.strategy)  # before the backend starts
        return args.handler(args)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
