"""``suite export``: a finished run's model as TensorFlow SavedModel, ONNX and LiteRT, each checked against it.

run folder -> :func:`suite.export.export_run` (export, reload with each format's runtime, parity and
latency on the run's test images) -> export folder (artifacts, labels.json, export.json). Prints the
folder; exits 1 naming each format whose export or parity failed (export.json records why).
"""

from __future__ import annotations

from suite.commands import log


def main(args) -> int:
    from suite.export import export_run, failed_formats

    folder, record = export_run(args.run_dir, args.formats, out=args.out, atol=args.atol,
                                progress=not args.quiet, log=log)
    print(folder)
    failed = failed_formats(record)
    for name, reason in failed.items():
        log(f"error: {name} export failed: {reason}")
    return 1 if failed else 0
