"""``suite predict``: the class of image files by a finished run's model, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path


def predict_images(run_dir: str | Path, paths) -> list[dict]:
    """Predicted class and every class probability for each image file (see ``Predictor.predict``)."""
    from suite.inference import Predictor

    return Predictor(run_dir).predict((p, str(p)) for p in paths)


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
