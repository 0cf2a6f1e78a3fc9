"""``suite predict``: the class of image files by a finished run's model, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from suite import runs


def predict_images(run_dir: str | Path, paths) -> list[dict]:
    """Predicted class and every class probability for each image file.

    A file that cannot be decoded gets an ``error`` entry instead of crashing.
    """
    from suite.data.decode import _decode_task

    run = runs.RunFolder(run_dir)
    model, labels, size = run.load_model(), run.labels, run.image_size
    results, images, where = [], [], []
    for p in paths:
        arr, reason = _decode_task((str(p), size))
        results.append({"path": str(p), "error": reason} if reason else {"path": str(p)})
        if arr is not None:
            images.append(arr)
            where.append(len(results) - 1)
    if images:
        probs = model.predict(np.stack(images), verbose=0)
        for i, pr in zip(where, probs):
            results[i]["predicted"] = labels[int(np.argmax(pr))]
            results[i]["probabilities"] = {label: round(float(v), 6) for label, v in zip(labels, pr)}
    return results


def main(args) -> int:
    results = predict_images(args.run_dir, args.images)
    if args.json:  # a name UTF-8 cannot spell goes out as its JSON escape (\udcff), which reads back
        print(json.dumps(results, indent=2, ensure_ascii=False).encode("utf-8", "backslashreplace").decode())
    else:
        for r in results:
            if "error" in r:
                print(f"{printable(r['path'])}\terror: {printable(r['error'])}")
                continue
            probs = "  ".join(f"{printable(k)}={v:.3f}" for k, v in r["probabilities"].items())
            print(f"{printable(r['path'])}\t{printable(r['predicted'])}\t{probs}")
    return 1 if any("error" in r for r in results) else 0


def printable(text: str) -> str:
    """``text`` on one line: backslash, newline, tab, other control characters and names UTF-8 cannot
    spell written as Python escapes (``\\n``, ``\\udcff``), so one image is always one line."""
    return "".join(repr(ch)[1:-1] if _escaped(ch) else ch for ch in text)


def _escaped(ch: str) -> bool:
    return ch == "\\" or not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF
