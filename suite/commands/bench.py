"""``suite bench``: training and inference speed of one backbone, the suite's way against a bare fit.

Both sides train the same model (``suite.model.build_model``) on the same synthetic images:

* **suite**: the images go through the suite's image cache (a memory-mapped ``.npy``, read
  the way ``PreparedData.arrays`` reads it) and the suite's training loop
  (``suite.train.fit`` with every callback a run has: best checkpoint, learning-rate
  schedule, CSV history, TensorBoard);
* **bare**: ``model.fit`` on in-memory arrays with no callbacks, as a notebook would.

They alternate on one model, in the order bare, suite, suite, bare, bare, suite, ... so that a
steady drift in machine speed (load, clocks) hits both alike, and both run the same compiled
step. The first fit's first epoch carries tracing and compilation, every fit's first epoch its
set-up: each is reported as warm-up and never mixed into throughput. Throughput counts each
later epoch's training steps and its end-of-epoch callbacks; the validation pass, which both
sides run on the same images, is timed apart.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

N_CLASSES = 4
# The run settings that change what bench measures; the rest of a run's flags do not apply.
BENCH_FLAGS = ("backbone", "image_size", "batch_size", "precision", "finetune", "strategy", "cpu_devices")

@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What ``suite bench`` measures.

    Args:
        steps: training steps per epoch (images = steps x batch size).
        epochs: epochs per fit; the first is warm-up.
        rounds: bare/suite pairs, alternated.
        val_fraction: validation images per training image.
    """

    steps: int = 30
    epochs: int = 3
    rounds: int = 2
    val_fraction: float = 0.1

    def __post_init__(self):
        if self.steps < 1 or self.rounds < 1:
            raise ValueError("steps and rounds must be at least 1")
        if self.epochs < 2:
            raise ValueError("epochs must be at least 2: the first is warm-up")


def synthetic_images(n: int, size: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random uint8 RGB images and balanced labels (content does not change speed)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, -(-size // 8), axis=1), -(-size // 8), axis=2)[:, :size, :size]
    return np.ascontiguousarray(images), np.arange(n) % n_classes


def bench(flags: Mapping[str, Any], settings: BenchSettings = BenchSettings(), *,
          log: Callable[[str], None] = print) -> dict:
    """Measure one backbone; returns the JSON-ready result (see the module docstring).

    Args:
        flags: run settings (``backbone``, ``image_size``, ``batch_size``, ``precision``,
            ``strategy``, ``cpu_devices``, ...); weights default to ``none`` (speed does not
            depend on them, and nothing is downloaded).
        settings: steps, epochs and rounds.
        log: one-line progress messages.
    """
    import keras

    from backbones import get_spec
    from suite.config import resolve_config
    from suite.model import build_model, precision_scope
    from suite.runtime import backend, configure_process, describe_device, distribution_scope, make_distribution

    runtime = configure_process(flags.get("cpu_devices"), flags.get("strategy"))
    config = resolve_config({**flags, "epochs": settings.epochs}, defaults={"weights": "none"})
    spec = get_spec(config.backbone)
    n_train = settings.steps * config.batch_size
    n_val = max(config.batch_size, int(round(n_train * settings.val_fraction)))
    with precision_scope(config.precision) as policy, tempfile.TemporaryDirectory(prefix="suite-bench-") as tmp:
        dist = make_distribution(config.strategy)
        images = _image_cache(Path(tmp), n_train + n_val, config.image_size, config.seed)
        log(f"bench: {spec.name} at {config.image_size}px, batch {config.batch_size}, {n_train} training "
            f"images, {policy}, {dist.name} ({dist.replicas} replicas), {backend()} on {describe_device()}")
        with distribution_scope(dist):
            keras.backend.clear_session()
            keras.utils.set_random_seed(config.seed)
            model = build_model(spec, config, N_CLASSES, None)
            runs = {"bare": [], "suite": []}
            for r in range(settings.rounds):
                for side in ("bare", "suite") if r % 2 == 0 else ("suite", "bare"):
                    runs[side].append(_one_fit(side, model, config, images, n_train, Path(tmp) / f"{side}{r}"))
                    log(f"bench: {side} round {r + 1}: {_ips(n_train, runs[side][-1]['train_s'][1:]):.1f} images/s")
            infer = _inference(model, config, images[:n_train])
    bare_ips, suite_ips = _ips(n_train, _timed(runs["bare"])), _ips(n_train, _timed(runs["suite"]))
    return {
        "backbone": spec.name, "image_size": config.image_size, "batch_size": config.batch_size,
        "precision_policy": policy, "strategy": dist.name, "replicas": dist.replicas,
        "backend": backend(), "device": describe_device(),
        "train_images": n_train, "val_images": n_val, "timed_epochs_per_side": settings.rounds * (settings.epochs - 1),
        "suite_train_ips": round(suite_ips, 2),
        "bare_fit_train_ips": round(bare_ips, 2),
        "ratio": round(suite_ips / bare_ips, 3),
        # Interference from other jobs only ever adds time: the fastest epochs bound the loops' own cost.
        "ratio_fastest_epochs": round(min(_timed(runs["bare"])) / min(_timed(runs["suite"])), 3),
        **infer,
        "warmup_s": {side: [round(f["train_s"][0], 3) for f in fits] for side, fits in runs.items()},
        "epoch_train_s": {side: [[round(s, 3) for s in f["train_s"][1:]] for f in fits] for side, fits in runs.items()},
        "compile": {side: [f["compile"] for f in fits] for side, fits in runs.items()},
        "val_s": {side: round(statistics.median(s for f in fits for s in f["val_s"][1:]), 3)
                  for side, fits in runs.items()},
        "checkpoint": [f["checkpoint"] for f in runs["suite"]],
        "runtime": runtime,
    }


def _timed(fits: list[dict]) -> list[float]:
    """Training seconds of every epoch after each fit's first."""
    return [s for fit in fits for s in fit["train_s"][1:]]


def _ips(n: int, seconds: list[float]) -> float:
    return n / statistics.median(seconds)


def _image_cache(folder: Path, n: int, size: int, seed: int) -> np.ndarray:
    """The synthetic images as the suite's image cache holds them: a memory-mapped ``.npy``."""
    x, _ = synthetic_images(n, size, N_CLASSES, seed)
    np.save(folder / "images.npy", x)
    return np.load(folder / "images.npy", mmap_mode="r")


def _one_fit(side: str, model, config, images, n_train: int, run_dir: Path) -> dict:
    from suite.data.dataset import take_rows
    from suite.runtime import COMPILE_MONITOR
    from suite.train import BestCheckpoint, EpochClock, fit, make_callbacks, one_hot

    y = np.arange(len(images)) % N_CLASSES
    rows = np.random.default_rng(config.seed).permutation(len(images))
    train_rows, val_rows = np.sort(rows[:n_train]), np.sort(rows[n_train:])
    clock = EpochClock()
    COMPILE_MONITOR.reset()
    if side == "bare":
        x, x_val = np.ascontiguousarray(images[train_rows]), np.ascontiguousarray(images[val_rows])
        model.fit(x, one_hot(y[train_rows], N_CLASSES), batch_size=config.batch_size, epochs=config.epochs,
                  validation_data=(x_val, one_hot(y[val_rows], N_CLASSES)), callbacks=[clock], verbose=0)
        checkpoint = None
    else:
        run_dir.mkdir()
        callbacks, _ = make_callbacks(config, run_dir)
        fit(model, config, (take_rows(images, train_rows), y[train_rows]),
            (take_rows(images, val_rows), y[val_rows]), callbacks + [clock], verbose=0)
        checkpoint = next(c.describe() for c in callbacks if isinstance(c, BestCheckpoint))
    return {"train_s": clock.train_s_, "val_s": clock.val_s_, "compile": COMPILE_MONITOR.snapshot(),
            "checkpoint": checkpoint}


def _inference(model, config, images) -> dict:
    """Batched ``model.predict`` throughput and batch-1 latency, after warm-up."""
    from suite.inference import time_inference

    x = np.ascontiguousarray(images)
    model.predict(x[: 2 * config.batch_size], batch_size=config.batch_size, verbose=0)  # warm-up
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        model.predict(x, batch_size=config.batch_size, verbose=0)
        seconds.append(time.perf_counter() - start)
    latency = time_inference(model, x[: config.batch_size], batch_size=config.batch_size)
    return {"infer_ips": round(len(x) / min(seconds), 2), "infer_ms_per_image": latency["infer_ms_per_image"]}


def main(args) -> int:
    import json

    from suite.commands import log, run_flags, training_output
    from suite.errors import SuiteError
    from suite.runtime import refuse_multiworker

    refuse_multiworker(args.strategy, "suite bench")
    try:
        settings = BenchSettings(steps=args.steps, epochs=args.epochs, rounds=args.rounds)
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    flags = {k: v for k, v in run_flags(args).items() if k in BENCH_FLAGS}
    with training_output():
        result = bench(flags, settings, log=log)
    print(json.dumps(result, indent=2))
    return 0
