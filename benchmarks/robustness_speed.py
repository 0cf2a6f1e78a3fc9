"""Cost of corrupting a run's test images against predicting them, as a ratio measured in one run.

``suite robustness`` corrupts every test image under every corruption at every severity and
predicts each corrupted set. This times both halves on the same images, in the same process:
corrupting all of them (each corruption x severity, :data:`suite.commands.robustness.CHUNK`
images at a time, as the command does) against predicting the same number of images with the
run's model (after a warm-up call). Target: ``ratio`` = corrupt_s / predict_s < 1.

    python benchmarks/robustness_speed.py RUN          # a finished run folder
    python benchmarks/robustness_speed.py              # trains a tiny run on the phantom data first

Prints one JSON object. Each half is timed ``--repeats`` times and the fastest counts, on both
sides: on a shared machine other jobs only ever add time. Per-corruption times are listed too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", default=None, help="a finished run folder (default: train a tiny one)")
    p.add_argument("--repeats", type=int, default=2, help="timings of each half; the fastest counts (default 2)")
    return p.parse_args(argv)


def tiny_run(out: str) -> Path:
    """One epoch of mobilenetv2 at 64 px on the synthetic phantom data, into ``out``."""
    from suite.commands.run import run

    return Path(run({"backbone": "mobilenetv2", "image_size": 64, "epochs": 1, "weights": "none", "out": out},
                    progress=False, log=lambda m: print(m, file=sys.stderr, flush=True)))


def measure(run_dir: Path, repeats: int = 2) -> dict:
    import numpy as np

    from suite import runs
    from suite.commands.robustness import CHUNK, corrupted_batches, own_test
    from suite.corruptions import SEVERITIES, corruption_names
    from suite.data.decode import load_images

    run = runs.RunFolder(run_dir)
    test = own_test(run)
    decoded = load_images(test["paths"], run.image_size, progress=False)
    images = np.ascontiguousarray(decoded.images[decoded.ok])
    model = run.load_model()
    model.predict_on_batch(images[:CHUNK])  # warm-up: tracing and compiling are not prediction
    cells = [(name, s) for name in corruption_names() for s in SEVERITIES]

    corrupt_s, per_corruption = float("inf"), {}
    for _ in range(repeats):
        times = dict.fromkeys(corruption_names(), 0.0)
        for name, s in cells:
            start = time.perf_counter()
            for _batch in corrupted_batches(images, name, s):
                pass
            times[name] += time.perf_counter() - start
        if sum(times.values()) < corrupt_s:
            corrupt_s, per_corruption = sum(times.values()), times
    predict_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _cell in cells:
            for k in range(0, len(images), CHUNK):
                model.predict_on_batch(images[k:k + CHUNK])
        predict_s = min(predict_s, time.perf_counter() - start)
    return {"run": str(run_dir), "backbone": run.backbone, "image_size": run.image_size,
            "test_images": len(images), "cells": len(cells), "images_per_half": len(images) * len(cells),
            "corrupt_s": round(corrupt_s, 3), "predict_s": round(predict_s, 3),
            "ratio": round(corrupt_s / predict_s, 3),
            "corrupt_s_by_corruption": {k: round(v, 3) for k, v in per_corruption.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    from suite.runtime import start_backend

    start_backend(None, None, quiet=True)
    with tempfile.TemporaryDirectory(prefix="suite-robustness-bench-") as tmp:
        run_dir = Path(args.run) if args.run else tiny_run(tmp)
        print(json.dumps(measure(run_dir, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
