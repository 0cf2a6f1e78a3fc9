"""Speed of the run pipeline's data stage and training loop, as ratios measured in one run.

(a) a cached re-run's data stage against the first (decoding) one;
(b) the first decode (hashing and writing the cache included) against a plain sequential
    PIL loop (open, convert to RGB, resize) over the same files;
(c) the suite's training loop (its callbacks, its fit) against a bare ``model.fit`` on the
    same in-memory arrays, the way the original notebook trained (``suite bench``).

    python benchmarks/pipeline_speed.py --data ../shared/data/sartaj

Prints one JSON object. Absolute times depend on the machine; the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("SUITE_REAL_DATA"), required="SUITE_REAL_DATA" not in os.environ)
    p.add_argument("--image-size", type=int, default=150)
    p.add_argument("--backbone", default="efficientnetb0")
    p.add_argument("--train-images", type=int, default=640, help="training images for (c)")
    p.add_argument("--epochs", type=int, default=3, help="epochs for (c); the first is warm-up")
    p.add_argument("--skip-training", action="store_true")
    return p.parse_args(argv)


def data_stage_ratios(data_root: str, size: int) -> dict:
    """(a) and (b), each data stage in a fresh cache folder."""
    os.environ["SUITE_CACHE_DIR"] = tempfile.mkdtemp(prefix="suite-bench-cache-")
    from suite.data.dataset import prepare_data
    from suite.data.discover import discover

    def stage():
        start = time.perf_counter()
        data = prepare_data(discover(data_root), image_size=size, val_fraction=0.1, test_fraction=0.2,
                            seed=0, progress=False)
        data.arrays("train")  # what training needs: the arrays in memory
        return time.perf_counter() - start, data

    paths = [e.path for e in discover(data_root).entries]
    loop_s = sequential_pil_loop(paths, size)  # first, so it also warms the OS file cache for both
    decode_s = first_decode(paths, size)
    first_s, data = stage()
    cached_s, cached = stage()
    assert not data.cache_hit and cached.cache_hit
    return {
        "files": len(paths),
        "first_data_s": round(first_s, 3),
        "cached_data_s": round(cached_s, 3),
        "first_decode_s": round(decode_s, 3),
        "sequential_pil_s": round(loop_s, 3),
        "a_cached_speedup": round(first_s / cached_s, 1),
        "b_decode_speedup_vs_pil_loop": round(loop_s / decode_s, 2),
    }, cached


def first_decode(paths, size: int) -> float:
    """The suite's decode of every file into a fresh cache (hashing included), timed alone."""
    from suite.data.decode import load_images

    os.environ["SUITE_CACHE_DIR"] = tempfile.mkdtemp(prefix="suite-bench-decode-")
    start = time.perf_counter()
    assert not load_images(paths, size, progress=False).cache_hit
    seconds = time.perf_counter() - start
    os.environ["SUITE_CACHE_DIR"] = tempfile.mkdtemp(prefix="suite-bench-cache-")
    return seconds


def sequential_pil_loop(paths, size: int) -> float:
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    for p in paths:
        try:
            with Image.open(p) as im:
                np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except Exception:
            pass
    return time.perf_counter() - start


def training_ratio(args) -> dict:
    """(c): ``suite bench`` (the suite's image cache and loop against a bare ``model.fit``)."""
    from suite.commands.bench import BenchSettings, bench

    steps = max(1, args.train_images // 32)
    result = bench({"backbone": args.backbone, "image_size": args.image_size, "batch_size": 32},
                   BenchSettings(steps=steps, epochs=args.epochs, rounds=2),
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    keys = ("backbone", "image_size", "train_images", "bare_fit_train_ips", "suite_train_ips", "checkpoint")
    return {**{k: result[k] for k in keys}, "c_suite_vs_bare_fit": result["ratio"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    report, data = data_stage_ratios(args.data, args.image_size)
    print(json.dumps(report), file=sys.stderr, flush=True)
    if not args.skip_training:
        report.update(training_ratio(args))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
