"""Run configuration: one frozen dataclass, resolved once.

Precedence: command-line flags, then the protocol (``--protocol reference``), then the
dataset's own card (``dataset.json``: the phantom data recommends its image size and
epochs), then the reference recipe's defaults below. ``resolve_config`` is the only place
defaults are filled in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from suite.errors import ConfigError

# The notebook recipe this project grew from.
REFERENCE = {
    "image_size": 150,
    "epochs": 12,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "dropout": 0.5,
    "finetune": "all",
}
# Protocols fix how data is split and trained. "reference" reproduces the notebook this
# project grew from: Training and Testing pooled and shuffled, a random 10% test split with
# seed 101, 150 px, 12 epochs, batch 32. Random splits of these datasets leak duplicates
# into the test set; the protocol exists so that headline figure can be put beside ours.
PROTOCOLS = {
    "default": {},
    "reference": {"image_size": 150, "epochs": 12, "batch_size": 32, "seed": 101,
                  "test_fraction": 0.1, "val_fraction": 0.1, "pool_splits": True},
}

# Settings a dataset card may recommend.
CARD_KEYS = ("image_size", "epochs")

FINETUNE_PATTERN = re.compile(r"^(all|head|top:[1-9][0-9]*)$")
AUGMENT_CHOICES = ("none", "light")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
DEDUP_MODES = ("off", "report", "group", "drop")
STRATEGY_CHOICES = ("auto", "none", "mirrored", "multiworker")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes.

    Args:
        backbone: registered backbone name.
        data: dataset folder; ``None`` means the embedded phantom dataset.
        out: folder under which run folders are made.
        image_size: square input size in pixels.
        epochs: training epochs.
        batch_size: images per step.
        learning_rate: Adam's learning rate.
        dropout: dropout rate before the classifier.
        finetune: ``all`` (the reference), ``head`` (frozen backbone) or ``top:N``
            (the last N backbone layers train).
        augment: ``none`` or ``light`` (flips, small rotations and zooms; training only).
        val_fraction: stratified share of the training pool held out for validation.
        test_fraction: share of a single-folder dataset held out as the test set.
        seed: seeds the split, and with ``replicate`` the weights initialisation, the
            shuffling, dropout and augmentation.
        replicate: which training replicate on the split of ``seed``: training is seeded by
            ``seed + replicate`` (``--seeds N`` trains replicates 0 .. N-1 on one split).
        weights: ``auto``, ``imagenet``, ``none`` or a weights-file path.
        precision: ``auto`` (mixed bf16 on a GPU, fp32 on a CPU), ``fp32``, ``bf16``, ``fp16``.
        early_stopping: patience in epochs on ``val_accuracy``; ``None`` disables it.
        workers: decoding processes; ``None`` uses every core.
        protocol: ``default`` or ``reference`` (the original notebook's recipe, see ``PROTOCOLS``).
        pool_splits: pool official Training/Testing folders and split them at random
            (set by the ``reference`` protocol).
        dedup: leakage firewall against exact and near-duplicate images: ``off``,
            ``report`` (leak-free test metrics beside the full ones), ``group`` (a
            duplicate cluster never straddles train/validation/test) or ``drop`` (test
            images with a training twin are removed).
        groups: a CSV file of ``path,group`` lines (``suite.data.groups``): the images of one
            patient (or scan volume) never straddle train/validation/test or folds; training
            images sharing a group with an official test folder leave training; under
            ``dedup="group"`` groups and duplicate clusters join. ``None``: no groups.
        strategy: ``auto`` (mirrored over several local devices, multi-worker when a JAX
            cluster is configured, else none), ``none``, ``mirrored`` or ``multiworker``; see
            ``suite.runtime``. ``batch_size`` is the global batch, split across replicas.
        cpu_devices: split the CPU into N logical devices (for the mirrored strategy on a CPU).
    """

    backbone: str = "efficientnetb0"
    data: str | None = None
    out: str = "runs"
    image_size: int = REFERENCE["image_size"]
    epochs: int = REFERENCE["epochs"]
    batch_size: int = REFERENCE["batch_size"]
    learning_rate: float = REFERENCE["learning_rate"]
    dropout: float = REFERENCE["dropout"]
    finetune: str = REFERENCE["finetune"]
    augment: str = "none"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    replicate: int = 0
    weights: str = "auto"
    precision: str = "auto"
    early_stopping: int | None = None
    workers: int | None = None
    protocol: str = "default"
    pool_splits: bool = False
    dedup: str = "report"
    groups: str | None = None
    strategy: str = "auto"
    cpu_devices: int | None = None

    def __post_init__(self):
        _check(self.image_size >= 32, f"image_size must be at least 32, got {self.image_size}")
        _check(self.replicate >= 0, f"replicate must be at least 0, got {self.replicate}")
        _check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _check(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(bool(FINETUNE_PATTERN.match(self.finetune)),
               f"finetune must be all, head or top:N, got {self.finetune!r}")
        _check(self.augment in AUGMENT_CHOICES, f"augment must be one of {AUGMENT_CHOICES}")
        _check(self.precision in PRECISION_CHOICES, f"precision must be one of {PRECISION_CHOICES}")
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _check(self.dedup in DEDUP_MODES, f"dedup must be one of {DEDUP_MODES}, got {self.dedup!r}")
        _check(self.groups is None or (isinstance(self.groups, str) and self.groups.strip() != ""),
               f"groups must be the path of a CSV file, got {self.groups!r}")
        _check(self.strategy in STRATEGY_CHOICES, f"strategy must be one of {STRATEGY_CHOICES}")
        _check(self.cpu_devices is None or self.cpu_devices >= 1,
               f"cpu_devices must be at least 1, got {self.cpu_devices}")
        _check(self.protocol in PROTOCOLS, f"protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def training_seed(self) -> int:
        """What seeds everything random in training (not the split): ``seed + replicate``."""
        return self.seed + self.replicate

    def identity(self) -> dict[str, Any]:
        """The settings that decide what is computed (everything but ``PLACEMENT_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in PLACEMENT_FIELDS}


# Set by a protocol, never by a flag of its own.
INTERNAL_FIELDS = ("pool_splits",)
# The settings a user gives on the command line, one flag each (``--image-size`` for image_size).
USER_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in INTERNAL_FIELDS)
# Settings that do not change what a run computes: where it is written, how many decoding processes.
PLACEMENT_FIELDS = ("out", "data", "workers")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def resolve_config(
    flags: Mapping[str, Any],
    card: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Build the one ``RunConfig`` of a run: flags over protocol over card over defaults.

    Args:
        flags: values the user gave (``None`` values count as not given).
        card: the dataset card; its ``image_size`` and ``epochs`` fill what flags leave open.
        defaults: defaults of the calling command, below the card and above the
            reference recipe (``bench`` measures without pretrained weights). Every command
            that trains gives none, so ``run`` and ``compare`` resolve the same flags to the
            same configuration: the image size is ``--image-size``, else the dataset card's,
            else the protocol's, else 150 px, whatever the backbone's native size.
    """
    values = dict(defaults or {})
    values.update({k: v for k, v in (card or {}).items() if k in CARD_KEYS and v is not None})
    protocol = flags.get("protocol") or "default"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))}")
    values.update(PROTOCOLS[protocol])
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(flags) - known
    if unknown:
        raise TypeError(f"unknown configuration keys: {sorted(unknown)}")
    values.update({k: v for k, v in flags.items() if v is not None})
    return RunConfig(**values)
