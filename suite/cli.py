"""Command line: argparse subcommands, shared argument groups and converters; dispatch to ``suite.commands``.

Flags are checked here (a converter rejects a bad value with one line); configuration is
resolved in ``suite.config.resolve_config``; each subcommand's ``main(args)`` in
``suite.commands.<name>`` does the work. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import signal
import sys
from pathlib import Path

from suite.config import (
    AUGMENT_CHOICES,
    DEDUP_MODES,
    FINETUNE_PATTERN,
    PRECISION_CHOICES,
    PROTOCOLS,
    STRATEGY_CHOICES,
    USER_FIELDS,
    RunConfig,
)
from suite.errors import SuiteError, Terminated


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag answered by one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- converters: a bad value ends as one argparse error line ---------------------------------------


def _backbone(name: str) -> str:
    from backbones import get_spec

    try:
        return get_spec(name).name
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None


def _backbone_list(value: str) -> tuple[str, ...]:
    """Names, families (``convnext``), globs (``efficientnet*``), ``all``: expanded in registry order."""
    from backbones import expand_backbones

    try:
        return tuple(expand_backbones(value))
    except (KeyError, ValueError) as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is a file, not a folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    return path


def _threshold(value: str):
    from suite.gates import Threshold

    return Threshold.parse(value)


def _finetune(value: str) -> str:
    if not FINETUNE_PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"expected all, head or top:N (N >= 1), got {value!r}")
    return value


def _fraction(value: str) -> float:
    x = _finite_float(value)
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value}")
    return x


def _positive_float(value: str) -> float:
    x = _finite_float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return x


def _dropout(value: str) -> float:
    x = _finite_float(value)
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"expected a dropout rate in [0, 1) (1 would drop every feature), got {value}")
    return x


def _finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value}")
    return x


def _int_at_least(minimum: int, what: str = "an integer"):
    """A converter taking integers of at least ``minimum``."""
    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected {what} of at least {minimum}, got {value}")
        return n

    convert.__name__ = f"integer >= {minimum}"  # what argparse names in "invalid ... value"
    return convert


_positive_int = _int_at_least(1, "a positive integer")
_image_size = _int_at_least(32, "an image size in px")
_folds = _int_at_least(2, "a number of folds")


def _port(value: str) -> int:
    port = _int_at_least(0, "a port number")(value)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number up to 65535, got {value}")
    return port


def _severities(value: str) -> tuple[int, ...]:
    from suite.corruptions import SEVERITIES

    try:
        chosen = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected severities such as 1,3,5, got {value!r}") from None
    if not chosen or not set(chosen) <= set(SEVERITIES):
        raise argparse.ArgumentTypeError(f"expected severities from {SEVERITIES[0]} to {SEVERITIES[-1]}, got {value!r}")
    return tuple(chosen)


def _weights(value: str) -> str:
    if value in ("auto", "imagenet", "none"):
        return value
    if not Path(value).expanduser().is_file():
        raise argparse.ArgumentTypeError(
            f"expected auto, imagenet, none or an existing weights file, got {value!r}"
        )
    return value


def _groups_file(value: str) -> str:
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a CSV file of path,group lines")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return value


def _search_space(value: str):
    from suite.search_space import load_space

    try:
        return load_space(Path(value).expanduser())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def flag(field: str) -> str:
    """``image_size`` -> ``--image-size``: every RunConfig setting has the flag of its name."""
    return "--" + field.replace("_", "-")


# -- the run flags: one per RunConfig field, help naming RunConfig's default -----------------------

_D = RunConfig()
RUN_FLAGS: dict[str, dict] = {
    "backbone": dict(type=_backbone, help=f"registered backbone (default: {_D.backbone})"),
    "data": dict(help="dataset folder: DIR/Training/<class>/ + DIR/Testing/<class>/, or DIR/<class>/ "
                      "(default: the synthetic phantom dataset)"),
    "out": dict(help=f"folder for result folders (default: {_D.out})"),
    "image_size": dict(type=_image_size, help="square input size in px, the same for every backbone "
                       f"(default: the dataset card's, else {_D.image_size})"),
    "epochs": dict(type=_positive_int, help=f"default: the dataset card's, else {_D.epochs}"),
    "batch_size": dict(type=_positive_int, help=f"global batch (default: {_D.batch_size})"),
    "learning_rate": dict(type=_positive_float, help=f"Adam learning rate (default: {_D.learning_rate:g})"),
    "dropout": dict(type=_dropout, help=f"dropout before the classifier (default: {_D.dropout})"),
    "finetune": dict(type=_finetune, help=f"all, head, or top:N (default: {_D.finetune})"),
    "augment": dict(choices=AUGMENT_CHOICES, help=f"training-time augmentation (default: {_D.augment})"),
    "val_fraction": dict(type=_fraction, help=f"validation share of training (default: {_D.val_fraction})"),
    "test_fraction": dict(type=_fraction, help="test share of a single-folder dataset "
                          f"(default: {_D.test_fraction})"),
    "seed": dict(type=int, help="seed of the split, and (plus --replicate) of initialisation, shuffling, "
                                f"dropout and augmentation (default: {_D.seed})"),
    "replicate": dict(type=_int_at_least(0, "a replicate number"), help="training replicate on the same split: "
                      "training is seeded by --seed plus this; --seeds N trains replicates 0..N-1 "
                      f"(default: {_D.replicate})"),
    "weights": dict(type=_weights, help=f"auto, imagenet, none, or a weights file (default: {_D.weights})"),
    "precision": dict(choices=PRECISION_CHOICES, help="auto (default: bf16 on a GPU, fp32 on a CPU), fp32, "
                      "bf16, fp16"),
    "early_stopping": dict(type=_positive_int, metavar="PATIENCE",
                           help="stop after PATIENCE epochs without val_accuracy gain (default: off)"),
    "workers": dict(type=_positive_int, help="decoding processes (default: all cores)"),
    "protocol": dict(choices=tuple(PROTOCOLS), help="reference: the original notebook's recipe (Training+Testing "
                     "pooled, random 10%% test split, seed 101, 150 px, 12 epochs, batch 32); flags still "
                     f"override it (default: {_D.protocol})"),
    "dedup": dict(choices=DEDUP_MODES, help="leakage firewall against duplicate images: off, report (leak-free "
                  "test metrics beside the full ones), group (a duplicate cluster never straddles "
                  "train/val/test or folds), drop (test images with a training twin are removed) "
                  f"(default: {_D.dedup})"),
    "groups": dict(type=_groups_file, metavar="FILE", help="CSV of path,group lines (path relative to --data; "
                   "a header row path,group is allowed): images of one patient or scan never straddle "
                   "train/val/test or folds, and training images sharing a group with the official test "
                   "split leave training; with --dedup group, groups and duplicate clusters join "
                   "(default: none)"),
    "strategy": dict(choices=STRATEGY_CHOICES, help="auto (default: mirrored over several local GPUs, "
                     "multiworker when JAX_COORDINATOR_ADDRESS describes a cluster, else none), none, mirrored, "
                     "multiworker (JAX only: Keras 3 cannot fit under TensorFlow's multi-worker strategy); "
                     "--batch-size is the global batch, split across replicas"),
    "cpu_devices": dict(type=_positive_int, metavar="N",
                        help="split the CPU into N logical devices (mirrored training on one CPU)"),
}
assert tuple(RUN_FLAGS) == USER_FIELDS, "every RunConfig setting a user gives needs its flag here"
DEVICE_FLAGS = ("strategy", "cpu_devices")


def add_run_arguments(p: argparse.ArgumentParser, names=USER_FIELDS) -> None:
    """The run flags ``names`` (default: all), each defaulting to ``None`` (resolved in ``resolve_config``)."""
    group = p.add_argument_group("run settings")
    for name in names:
        group.add_argument(flag(name), dest=name, default=None, **RUN_FLAGS[name])


def _parent(*adders) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(parent)
    return parent


def _quiet(p):
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _seeds(p):
    p.add_argument("--seeds", type=_positive_int, default=1, metavar="N",
                   help="train each backbone N times on the same split, training seeded by --seed, --seed + 1, "
                        "...; the leaderboard gives mean and SD over seeds, ties are tested over images and seeds "
                        "(with N > 1, run writes a comparison folder of one backbone; default: 1)")


def _resume(what: str):
    def add(p):
        p.add_argument("--resume", nargs="?", const="latest", default=None, metavar=f"{what.upper()}_DIR",
                       help=f"continue the {what} in {what.upper()}_DIR (without a value: the newest unfinished "
                            f"one of this backbone under --out); finished work is kept, not redone; the "
                            f"settings must be the original ones (checked)")
    return add


def _track(p):
    from suite.tracking import TRACKERS

    p.add_argument("--track", choices=TRACKERS, default=None,
                   help="also log the finished folder to MLflow: settings, per-epoch and final metrics, tags, "
                        "report and model; nested runs for backbones, folds and trials. Store: "
                        "$MLFLOW_TRACKING_URI, else sqlite OUT/mlflow.db. Not part of a run's settings: "
                        "resuming with or without it is allowed (default: off)")
    _experiment(p)


def _experiment(p):
    p.add_argument("--experiment", default=None, metavar="NAME",
                   help="MLflow experiment (default: the folder's kind: run, comparison, cv, tuning)")


def _out(default_text: str):
    def add(p):
        p.add_argument("--out", default=None, help=f"where the result folder goes (default: {default_text})")
    return add


def _data(required_help: str):
    def add(p):
        p.add_argument("--data", required=True, type=_existing_dir, help=required_help)
    return add


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


ROBUSTNESS_DESCRIPTION = """\
Score a finished run's model on its own test split (or --data DIR's) under MRI corruptions at
five severities each: bias_field, rician_noise, gaussian_blur, motion_ghosting, gamma, jpeg,
resolution, rotation, translation (suite/corruptions.py holds each severity's parameter). The
decoded images are corrupted in memory, seeded; no file is changed. Writes a robustness folder:
robustness.json/.csv (accuracy and macro-F1 per corruption x severity, clean accuracy, mean
corruption accuracy, relative robustness = mean corruption accuracy / clean accuracy) and a
report with a curve per corruption and one test image at every severity.
"""


EXPORT_DESCRIPTION = """\
Export a finished run's model with Keras's model.export, reload each artifact with its own
runtime (TensorFlow, ONNX Runtime, the LiteRT interpreter) and check it on the run's test images
against model.keras: largest absolute difference of probabilities (--atol) and the same top-1
class on every image. Also measures latency (batch 1 and 32) and size. Every artifact takes raw
RGB float32 NHWC images, 0-255, at the run's image size (preprocessing is inside the model);
labels.json beside them names the classes. The folder (RUN/export by default) gets the
artifacts, labels.json and export.json, and replaces an earlier export only once complete.
A format whose converter is not installed is skipped with the pip line that installs it.
Exit status 1 names each format whose export or parity failed.
"""


def build_parser() -> argparse.ArgumentParser:
    from suite.commands.bench import BENCH_FLAGS
    from suite.export import PARITY_ATOL, format_names
    from suite.trials import OBJECTIVES, TUNER_NAMES

    parser = _Parser(
        prog="python -m suite",
        description="Benchmark transfer-learning classifiers on brain-tumour MRI.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error, not just its line (or set SUITE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    quiet = _parent(_quiet)
    track = _parent(_track)

    def command(name: str, help: str, *, parents=(), **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=list(parents), **kwargs)
        p.set_defaults(module=f"suite.commands.{name}")
        return p

    seeds = _parent(_seeds)
    p = command("run", "train and evaluate one backbone; prints the run folder", parents=[quiet, seeds, track])
    add_run_arguments(p)

    p = command("compare", "train every backbone under identical conditions; prints the comparison folder",
                parents=[quiet, seeds, track])
    p.add_argument("--backbones", type=_backbone_list, default=None,
                   help="backbones, families (convnext), globs (efficientnet*), 'all' or 'reference', "
                        "comma-separated (default: reference, the three reference backbones)")
    p.add_argument("--external", action="append", default=[], type=_existing_dir, metavar="DIR",
                   help="also evaluate every backbone on this dataset (any layout, or only DIR/Testing/<class>/), "
                        "checking how many of its images copy training images (may repeat)")
    p.add_argument("--robustness", action="store_true",
                   help="also score every backbone under each MRI corruption at five severities (suite robustness) "
                        "and add mean corruption accuracy and relative robustness to the leaderboard")
    add_run_arguments(p, [n for n in USER_FIELDS if n != "backbone"])

    p = command("cv", "stratified K-fold cross-validation of one backbone; prints the CV folder",
                parents=[quiet, _parent(_resume("cv")), track])
    p.add_argument("--folds", type=_folds, default=5, help="K (default: 5)")
    add_run_arguments(p)

    p = command("tune", "search training settings with Keras Tuner, retrain the best; prints the tuning folder",
                parents=[quiet, _parent(_resume("tune")), track], description=TUNE_DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tuner", choices=TUNER_NAMES, default="random", help="Keras Tuner oracle (default: random)")
    p.add_argument("--max-trials", type=_positive_int, default=10,
                   help="trials in all, counting those a resumed search finished (default: 10)")
    p.add_argument("--objective", choices=OBJECTIVES, default="val_accuracy",
                   help="validation figure to maximise, at each trial's best epoch (default: val_accuracy)")
    p.add_argument("--space", type=_search_space, default=None, metavar="FILE.toml",
                   help="override the default search space (see below)")
    p.add_argument("--cv", type=_folds, default=None, metavar="K",
                   help="score each trial by the mean over K stratified folds of the training pool "
                        "(default: the validation split)")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="with --finetune head, still build and train the full model in every trial")
    p.add_argument("--compare-default", action="store_true",
                   help="also train the un-tuned settings, for a best-versus-default comparison")
    p.add_argument("--max-consecutive-failures", type=_positive_int, default=3, metavar="N",
                   help="stop the search after N failed trials in a row (default: 3)")
    add_run_arguments(p)

    p = command("bench", "training and inference images/s: the suite's loop against a bare model.fit",
                description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=_positive_int, default=30, help="training steps per epoch (default: 30)")
    p.add_argument("--epochs", type=_int_at_least(2, "epochs (the first is warm-up)"), default=3,
                   help="epochs per fit, the first is warm-up (default: 3)")
    p.add_argument("--rounds", type=_positive_int, default=2,
                   help="bare/suite pairs, alternated bare-suite, suite-bare, ... (default: 2)")
    add_run_arguments(p, BENCH_FLAGS)

    p = command("evaluate", "score a finished run's model on another dataset",
                parents=[quiet, _parent(_data("dataset folder (any supported layout)"), _out("beside the run"))])
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("--split", choices=("auto", "all", "train", "val", "test"), default="auto",
                   help="which part to score (default: the test split if there is one, else all)")

    p = command("robustness", "accuracy of a finished run's model under MRI corruptions at five severities; "
                "prints the robustness folder", parents=[quiet, _parent(_out("beside the run"))],
                description=ROBUSTNESS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("--data", type=_existing_dir, default=None, metavar="DIR",
                   help="evaluate this dataset's test split (else all of it) instead of the run's own test split; "
                        "its images are checked for copies of the run's training images")
    p.add_argument("--severities", type=_severities, default=None, metavar="S,S,...",
                   help="severities to evaluate, from 1 to 5, comma-separated (default: 1,2,3,4,5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws (default: 0)")

    p = command("predict", "predict the class of image files with a finished run's model")
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    p = command("export", "export a finished run's model (SavedModel, ONNX, LiteRT), each checked against it",
                parents=[quiet, _parent(_out("RUN/export"))], description=EXPORT_DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("--format", dest="formats", action="append", choices=format_names(), default=None,
                   help="format to export (may repeat; default: every one, skipping those whose converter "
                        "is not installed)")
    p.add_argument("--atol", type=_positive_float, default=PARITY_ATOL,
                   help=f"largest absolute difference of probabilities parity allows (default: {PARITY_ATOL:g})")

    p = command("serve", "a local web page predicting uploaded images with a finished run's model "
                          "(and a JSON API: POST /predict)")
    p.add_argument("run_dir", type=_existing_dir, metavar="RUN")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the "
                        "network, with a warning: there is no authentication)")
    p.add_argument("--port", type=_port, default=8000,
                   help="TCP port (default: 8000; 0: any free port, printed at start)")

    p = command("audit", "dataset audit: duplicates, leakage across splits, label conflicts, bad files",
                parents=[quiet, _parent(_data("dataset folder"), _out(RunConfig.out))])
    p.add_argument("--threshold", type=int, default=None, help="perceptual-hash Hamming distance for near "
                   "duplicate candidates (default: 10 of 64 bits)")
    p.add_argument("--tol", type=float, default=None, help="pixel tolerance confirming a near duplicate "
                   "(default: 0.11; about 0.2 also groups neighbouring slices of one scan)")
    p.add_argument("--groups", type=_groups_file, default=None, metavar="FILE",
                   help="CSV of path,group lines (path relative to --data): also report test images whose "
                        "patient group has images in training or validation")

    p = command("check", "check run, comparison or CV folders against metric thresholds (exit 1 when a check "
                          "fails, 2 when the thresholds match no run)")
    p.add_argument("--thresholds", type=Path, default=None, help="TOML file: [default] and per-backbone tables")
    p.add_argument("--require", action="append", default=[], type=_threshold, metavar="METRIC>=VALUE",
                   help="an extra bound for every backbone, e.g. accuracy>=0.9, or for one, e.g. "
                        "mobilenetv2:accuracy>=0.9 (may repeat)")
    p.add_argument("paths", nargs="+", help="run, comparison or CV folders, or a folder of them")

    p = command("track", "log finished run, comparison, cv or tuning folders to MLflow ($MLFLOW_TRACKING_URI, "
                         "else sqlite mlflow.db beside each folder)", parents=[_parent(_experiment)])
    p.add_argument("paths", nargs="+", type=_existing_dir, metavar="FOLDER",
                   help="run, evaluation, comparison, cv or tuning folders")
    p.add_argument("--again", action="store_true",
                   help="log a folder the experiment already holds in full anew (default: skip it, printing "
                        "its MLflow run id)")

    p = command("list", "list the registered backbones")
    p.add_argument("pattern", nargs="?", default="*",
                   help="names, families or globs, comma-separated (default: all)")

    p = command("phantom", "write the synthetic phantom dataset")
    p.add_argument("--out", required=True, help="folder to write it into (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-class", type=_positive_int, default=None)
    p.add_argument("--test-per-class", type=_positive_int, default=None)

    p = command("report", "re-render the report of any result folder from its files, without retraining")
    p.add_argument("paths", nargs="+", type=_existing_dir,
                   help="run, evaluation, robustness, comparison, cv, tuning or audit folders")
    return parser


# Commands that start a Keras backend.
BACKEND_COMMANDS = ("run", "compare", "cv", "tune", "bench", "evaluate", "robustness", "predict", "export",
                    "serve")


# Exit statuses: 2 for an error the user can fix, 128 + the signal's number when stopped by one.
EXIT_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure a user can cause ends as one line on stderr and a non-zero status."""
    chatter_wanted = "TF_CPP_MIN_LOG_LEVEL" in os.environ  # a user who sets it sees what it lets through
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("SUITE_DEBUG"))
    status = _run(args, debug=debug, quiet_backend=not chatter_wanted)
    if "suite.cluster" in sys.modules:  # a multi-worker run: wait for the others, or leave at once on failure
        sys.modules["suite.cluster"].leave(status)
    return status


def _run(args: argparse.Namespace, *, debug: bool, quiet_backend: bool) -> int:
    with _sigterm_raises():
        try:
            return _dispatch(args, quiet_backend=quiet_backend)
        except (SuiteError, OSError) as exc:
            if debug:
                raise
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_SIGINT
        except Terminated as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_SIGTERM


def _dispatch(args: argparse.Namespace, *, quiet_backend: bool) -> int:
    if getattr(args, "experiment", None) and "track" in args and not args.track:
        raise SuiteError("--experiment names the MLflow experiment of --track mlflow: give --track mlflow too")
    if getattr(args, "track", None):
        from suite.tracking import check_tracker

        check_tracker(args.track)  # a missing package is named now, not after hours of training
    if args.command in BACKEND_COMMANDS:
        from suite.runtime import start_backend

        # before the backend's first operation; TensorFlow's C++ start-up lines stay off the terminal
        start_backend(getattr(args, "cpu_devices", None), getattr(args, "strategy", None), quiet=quiet_backend)
    return importlib.import_module(args.module).main(args)


def _one_line(exc: BaseException) -> str:
    """The suite's own message, or an OS error as ``what: path``, never spread over lines."""
    if isinstance(exc, OSError) and not isinstance(exc, SuiteError):
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}"
    else:
        text = str(exc)
    return " ".join(text.split())


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into ``Terminated`` for the command's length, so what runs records the stop."""
    def handler(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
