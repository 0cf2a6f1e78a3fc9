"""The fast path of ``suite tune`` against building the full model in every trial, on the real data.

Both searches run the same random-search trials (same oracle seed, so the same settings in
the same order) with fine-tuning fixed to ``head``: the fast path computes the frozen
backbone's pooled features once (into an empty embedding cache, so that cost is counted)
and trains only dropout + softmax on them; the slow path builds and trains the full model
(frozen backbone + head) on the images in every trial. Only the searches are timed: the
data is decoded beforehand, and neither search retrains its best settings afterwards.

    python benchmarks/tune_fast_path.py --data ../shared/data/sartaj

ImageNet weights cannot be downloaded offline, so the backbone starts from random
initialisation (``--weights none``), the same in both paths. Prints one JSON object.

Besides wall times it reports each search's process CPU time (every thread), which another
job on the machine disturbs less, and ``ratio_ceiling``: the full path's time over the
embedding pass alone, the most the cold-cache ratio could reach were the trials free.
``features_abs_mean`` says whether the frozen random backbone's features carry anything a
head could learn (near zero: every trial scores the majority class, in both paths).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("SUITE_REAL_DATA"),
                   required="SUITE_REAL_DATA" not in os.environ, help="default: $SUITE_REAL_DATA")
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2, help="per trial")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def search(runner_cls, prepared, settings, space, folder: Path) -> dict:
    from suite.trials import collect_trials, run_search

    runner = runner_cls(prepared, settings.objective, settings.cv, space.names, log=lambda m: None)
    start, cpu = time.perf_counter(), time.process_time()
    tuner, stopped = run_search(folder, settings, space, prepared.config, runner, lambda m: None)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    trials = collect_trials(tuner.oracle, folder, settings.objective)
    done = [t for t in trials if t["status"] == "COMPLETED"]
    rss = [t["rss_mb"] for t in trials if t["rss_mb"] is not None]
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "n_completed": len(done),
        "best_val_accuracy": max((t["score"] for t in done), default=None),
        "trial_seconds": [t["seconds"] for t in trials],
        "rss_mb_first_last": [trials[0]["rss_mb"], trials[-1]["rss_mb"]] if trials else None,
        # from the second trial on: the first one's warm-up allocations are not growth
        "rss_mb_per_trial_after_first": round((rss[-1] - rss[1]) / (len(rss) - 2), 2) if len(rss) > 2 else None,
        "settings": [{k: v for k, v in t["hyperparameters"].items() if k in ("learning_rate", "dropout",
                                                                             "batch_size")} for t in trials],
        "scores": [t["score"] for t in trials],
        "embeddings": runner.describe(),
        "stopped": stopped,
    }


def features_abs_mean(embeddings: dict | None) -> float | None:
    """Mean absolute value of the cached features (``None`` without them)."""
    import numpy as np

    if not embeddings:
        return None
    return float(np.abs(np.load(Path(embeddings["path"]) / "features.npy", mmap_mode="r")).mean())


def warm_up() -> None:
    """Pay the one-time costs (Keras Tuner's import, TensorFlow's first trace) before any timing."""
    import keras
    import keras_tuner  # noqa: F401
    import numpy as np

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(np.zeros((8, 4)), np.eye(2)[np.zeros(8, dtype=int)], validation_split=0.5, epochs=1, verbose=0)
    keras.backend.clear_session()


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from suite.data.cache import cache_dir

    decode_cache = cache_dir()  # decoded images: shared with earlier runs, decoded before timing
    embedding_cache = Path(tempfile.mkdtemp(prefix="tune-bench-embeddings-"))
    from suite import embeddings

    embeddings.embeddings_folder = lambda: embedding_cache  # an empty cache: the fast path pays for it

    from suite.commands.run import prepare
    from suite.commands.tune import TuneSettings, plan_space
    from suite.trials import HeadTrials, ImageTrials

    flags = {"data": args.data, "backbone": args.backbone, "image_size": args.image_size, "epochs": args.epochs,
             "weights": "none", "finetune": "head", "seed": args.seed}
    start = time.perf_counter()
    prepared = prepare(flags, progress=False, log=lambda m: print(m, file=sys.stderr))
    data_s = time.perf_counter() - start
    warm_up()
    settings = TuneSettings(tuner="random", max_trials=args.trials)
    space, fast, _ = plan_space(settings, flags)
    assert fast
    out = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    load_at_start = os.getloadavg()
    fast_result = search(HeadTrials, prepared, settings, space, out / "fast")
    full_result = search(ImageTrials, prepared, settings, space, out / "full")
    warm_result = search(HeadTrials, prepared, settings, space, out / "fast-warm")
    same = fast_result["settings"] == full_result["settings"]
    fb, sb = fast_result["best_val_accuracy"], full_result["best_val_accuracy"]
    embeddings_s = (fast_result["embeddings"] or {}).get("seconds")
    print(json.dumps({
        "benchmark": "tune_fast_path",
        "weights": "none (random initialisation: ImageNet weights are not available offline)",
        "data": args.data, "backbone": args.backbone, "image_size": args.image_size,
        "epochs_per_trial": args.epochs, "trials": args.trials, "train_images": int(len(prepared.data.split.train)),
        "val_images": int(len(prepared.data.split.val)), "data_stage_s": round(data_s, 2),
        "decode_cache": str(decode_cache),
        "fast_path_s": fast_result["seconds"],
        "full_model_s": full_result["seconds"],
        "ratio": round(full_result["seconds"] / fast_result["seconds"], 1),
        "fast_path_warm_cache_s": warm_result["seconds"],
        "ratio_warm_cache": round(full_result["seconds"] / warm_result["seconds"], 1),
        "fast_path_cpu_s": fast_result["cpu_seconds"],
        "full_model_cpu_s": full_result["cpu_seconds"],
        "ratio_cpu": round(full_result["cpu_seconds"] / fast_result["cpu_seconds"], 1),
        "embeddings_s": embeddings_s,
        "ratio_ceiling": round(full_result["seconds"] / embeddings_s, 1) if embeddings_s else None,
        "features_abs_mean": features_abs_mean(fast_result["embeddings"]),
        "fast_best_val_accuracy": fb,
        "full_best_val_accuracy": sb,
        "best_val_accuracy_diff_points": None if fb is None or sb is None else round(100 * (fb - sb), 2),
        "same_trial_settings": same,
        "fast": fast_result,
        "full": full_result,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "cpus": os.cpu_count(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
