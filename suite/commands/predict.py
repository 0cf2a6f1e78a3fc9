"""``suite predict``: the class of image files by a finished run's model, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from suite import runs


def predict_images(run_dir: str | Path, paths) -> list[dict]:
    """Predicted class and every class probability for each image file.

    With the run's ``calibration.json`` fitted, each image also gets ``calibrated_probabilities``
    (temperature-scaled) and ``prediction_set`` (the classes of its 95% conformal set, most
    probable first) and ``calibration`` says what was applied; without one, ``calibration`` says
    why there is none. A file that cannot be decoded gets an ``error`` entry instead of crashing.
    """
    from suite.data.decode import _decode_task

    run = runs.RunFolder(run_dir)
    model, labels, size = run.load_model(), run.labels, run.image_size
    record, note = _calibration(run.path)
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
        if record is not None:
            _add_calibrated(results, where, np.asarray(probs), labels, record)
    for r in results:
        if "error" not in r:
            r["calibration"] = note
    return results


def _calibration(run_dir: Path) -> tuple[dict | None, dict]:
    """The run's fitted calibration record (or ``None``) and the note each prediction carries about it."""
    from suite import calibration
    from suite.io import read_json

    path = run_dir / runs.CALIBRATION
    if not path.is_file():
        return None, {"applied": False, "reason": f"the run has no {runs.CALIBRATION} (made before calibration "
                                                  "was kept, or it did not finish)"}
    record = read_json(path)
    level = calibration.level(record) if isinstance(record, dict) else None
    if level is None:
        reason = record.get("reason") if isinstance(record, dict) else None
        return None, {"applied": False, "reason": f"calibration was skipped: {reason or 'no 95% level recorded'}"}
    return record, {"applied": True, "temperature": record["temperature"], "set_coverage_target": level["target"],
                    "set_test_coverage": level["coverage"], "method": record["conformal"]["method"]}


def _add_calibrated(results: list[dict], where: list[int], probs: np.ndarray, labels, record: dict) -> None:
    """Temperature-scaled probabilities and the 95% prediction set (on the raw probabilities, as fitted)."""
    from suite import calibration

    level, conformal = calibration.level(record), record["conformal"]
    scaled = calibration.apply_temperature(calibration.log_probs(probs), record["temperature"])
    sets = calibration.prediction_sets(probs, level["threshold"], conformal["penalty"], conformal["k_reg"])
    for i, pr, cal, members in zip(where, probs, scaled, sets):
        results[i]["calibrated_probabilities"] = {label: round(float(v), 6) for label, v in zip(labels, cal)}
        order = np.argsort(-pr, kind="stable")
        results[i]["prediction_set"] = [labels[k] for k in order if members[k]]


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
