"""Speed of the run pipeline's data stage and training loop, as ratios measured in one run.

(a) a cached re-run's data stage against the first (decoding) one, with the duplicate search of
    the default ``--dedup report`` (``--dedup`` chooses another mode); the cached run verifies
    what it serves (metadata in full, CRC-32 of every byte of the cached array, and of the
    cached duplicate analysis), as every run does. ``images_cached_only_s`` is a data stage with
    the images cached but the duplicate analysis not, as before that analysis was cached;
(b) the first decode (hashing and writing the cache included) against a plain sequential
    PIL loop (open, convert to RGB, resize) over the same files;
(c) the suite's training loop (its callbacks, its fit) against a bare ``model.fit`` on the
    same in-memory arrays, the way the original notebook trained (``suite bench``).

    python benchmarks/pipeline_speed.py --data ../shared/data/sartaj

Prints one JSON object. Absolute times depend on the machine; the ratios are the point. Each
data stage is timed several times (``--first-repeats`` into fresh caches, ``--cached-repeats``
from the cache) and the fastest counts, on both sides: on a shared machine other jobs only
ever add time. Every sample is listed beside the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time


def parse_args(argv=None):
    from suite.config import DEDUP_MODES, RunConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("SUITE_REAL_DATA"), required="SUITE_REAL_DATA" not in os.environ)
    p.add_argument("--image-size", type=int, default=150)
    p.add_argument("--dedup", choices=DEDUP_MODES, default=RunConfig.dedup,
                   help=f"the data stage's --dedup mode (default: {RunConfig.dedup}, as suite run)")
    p.add_argument("--backbone", default="efficientnetb0")
    p.add_argument("--train-images", type=int, default=640, help="training images for (c)")
    p.add_argument("--epochs", type=int, default=3, help="epochs for (c); the first is warm-up")
    p.add_argument("--skip-training", action="store_true", help="measure (a) and (b) only")
    p.add_argument("--first-repeats", type=int, default=2, help="first (decoding) data stages, each into a "
                   "fresh cache; the fastest counts (default 2)")
    p.add_argument("--cached-repeats", type=int, default=5, help="cached data stages; the fastest counts "
                   "(default 5)")
    return p.parse_args(argv)


def data_stage_ratios(data_root: str, size: int, first_repeats: int = 2, cached_repeats: int = 5,
                      dedup: str = "report") -> dict:
    """(a) and (b); caches go to temporary folders, removed at the end."""
    from suite.data.cache import DUPLICATES_FOLDER, cache_dir
    from suite.data.decode import CHECKSUM, load_images
    from suite.data.discover import discover

    paths = [e.path for e in discover(data_root).entries]
    loop_s = sequential_pil_loop(paths, size)  # first, so it also warms the OS file cache for both
    with fresh_cache():
        start = time.perf_counter()
        assert not load_images(paths, size, progress=False).cache_hit
        decode_s = time.perf_counter() - start
    first = []
    for _ in range(first_repeats - 1):
        with fresh_cache():
            first.append(data_stage(data_root, size, dedup, cached=False))
    with fresh_cache():  # the last first stage leaves the cache the cached stages read
        first.append(data_stage(data_root, size, dedup, cached=False))
        cached = [data_stage(data_root, size, dedup, cached=True) for _ in range(cached_repeats)]
        shutil.rmtree(cache_dir() / DUPLICATES_FOLDER, ignore_errors=True)
        images_only = data_stage(data_root, size, dedup, cached=True, dedup_cached=False)
    return {
        "files": len(paths),
        "dedup": dedup,
        "cache_check": f"metadata + {CHECKSUM} of every cached byte and of the duplicate analysis",
        "first_data_s": round(min(first), 3),
        "cached_data_s": round(min(cached), 3),
        "first_data_samples_s": [round(t, 3) for t in first],
        "cached_data_samples_s": [round(t, 3) for t in cached],
        "images_cached_only_s": round(images_only, 3),
        "first_decode_s": round(decode_s, 3),
        "sequential_pil_s": round(loop_s, 3),
        "a_cached_speedup": round(min(first) / min(cached), 1),
        "a_cached_speedup_medians": round(_median(first) / _median(cached), 1),
        "b_decode_speedup_vs_pil_loop": round(loop_s / decode_s, 2),
    }


def data_stage(data_root: str, size: int, dedup: str, *, cached: bool, dedup_cached: bool | None = None) -> float:
    """Seconds of one data stage as ``suite run`` has it, up to the training arrays in memory.

    Args:
        cached: whether the images must come from the cache.
        dedup_cached: whether the duplicate analysis must (default: as ``cached``).
    """
    from suite.data.dataset import prepare_data
    from suite.data.discover import discover

    start = time.perf_counter()
    data = prepare_data(discover(data_root), image_size=size, val_fraction=0.1, test_fraction=0.2,
                        seed=0, progress=False, dedup=dedup)
    data.arrays("train")  # what training needs: the arrays in memory
    seconds = time.perf_counter() - start
    assert data.cache_hit == cached, f"expected cache_hit={cached}"
    if dedup != "off":
        expected = cached if dedup_cached is None else dedup_cached
        assert data.dedup["cache_hit"] == expected, f"expected the duplicate analysis cache_hit={expected}"
    return seconds


@contextlib.contextmanager
def fresh_cache():
    """``SUITE_CACHE_DIR`` set to a new temporary folder, removed (and the variable restored) on exit."""
    before = os.environ.get("SUITE_CACHE_DIR")
    path = tempfile.mkdtemp(prefix="suite-bench-cache-")
    os.environ["SUITE_CACHE_DIR"] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if before is None:
            os.environ.pop("SUITE_CACHE_DIR", None)
        else:
            os.environ["SUITE_CACHE_DIR"] = before


def _median(values) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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
    report = data_stage_ratios(args.data, args.image_size, args.first_repeats, args.cached_repeats, args.dedup)
    print(json.dumps(report), file=sys.stderr, flush=True)
    if not args.skip_training:
        report.update(training_ratio(args))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
