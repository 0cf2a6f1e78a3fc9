"""Near-duplicate search: ``near_pairs`` in row blocks against the whole distance matrix at once.

The duplicate guard compares every image's 64-bit hash with every other's. Computing the
``n x n`` distance matrix in one go needs about ``9 n^2`` bytes (3.6 GB for 20,000 images);
:func:`suite.data.duplicates.near_pairs` computes it :data:`~suite.data.duplicates.BLOCK_ROWS`
rows at a time. This times both on ``--n`` random hashes (with a few planted near copies) in the
same process and checks they find the same pairs. Target: ``ratio`` = blocked_s / whole_s <= 1,
at ``block / n`` of the memory.

    python benchmarks/dedup_speed.py [--n 5000] [--repeats 3]

Prints one JSON object; each side is timed ``--repeats`` times and the fastest counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from suite.data import duplicates as dup  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="hashes to compare (default 5000)")
    p.add_argument("--repeats", type=int, default=3, help="timings of each side; the fastest counts (default 3)")
    return p.parse_args(argv)


def fastest(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64 - 1, args.n, dtype=np.uint64)
    hashes[1::50] = hashes[::50][: len(hashes[1::50])] ^ np.uint64(0b1011)  # a few near copies to find
    threshold = dup.DEFAULT_THRESHOLD
    blocked_s, blocked = fastest(lambda: dup.near_pairs(hashes, threshold), args.repeats)
    whole_s, whole = fastest(lambda: dup.near_pairs(hashes, threshold, block=args.n), args.repeats)
    same = bool(np.array_equal(blocked, whole))
    print(json.dumps({"n": args.n, "threshold": threshold, "pairs": len(blocked), "same_pairs": same,
                      "block_rows": dup.BLOCK_ROWS, "blocked_s": round(blocked_s, 4), "whole_s": round(whole_s, 4),
                      "ratio": round(blocked_s / whole_s, 4),
                      "memory_mb": {"blocked": round(9 * dup.BLOCK_ROWS * args.n / 1e6, 1),
                                    "whole": round(9 * args.n * args.n / 1e6, 1)}}))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
