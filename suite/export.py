"""A finished run's model for serving: exported per format, reloaded by that format's own runtime, and checked.

run folder (``model.keras``, labels, image size, the test images of ``predictions.csv``) -> each
format's exporter writes its artifact into a temporary folder -> the artifact is loaded by its own
runtime (TensorFlow, ONNX Runtime, the LiteRT interpreter) and run on the run's test images ->
parity against ``model.keras`` (largest absolute difference of probabilities, top-1 agreement),
latency at batch 1 and 32, size -> ``labels.json`` and ``export.json`` -> the temporary folder
renamed into place. Every artifact takes what ``model.keras`` takes: raw RGB images, float32
NHWC, values 0-255, at the run's image size (the backbone's preprocessing is inside the model).

Formats are a registry (:data:`FORMATS`): a name, the artifact's file name, the exporter, the
runtime that loads it, and the modules each needs under each Keras backend. A format whose
modules cannot be imported is skipped with the ``pip install`` line that fixes it; one that
Keras cannot export under the active backend is skipped saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from suite import runs
from suite.errors import DataError, SuiteError
from suite.io import write_json_atomic

# Parity: every probability within this of model.keras's, and the same top-1 class.
PARITY_ATOL = 1e-4
# Latency: the median of this many timed calls per batch size, after WARMUP_CALLS untimed ones.
LATENCY_REPEATS = {1: 20, 32: 5}
WARMUP_CALLS = 2
# Test images go through each runtime this many at a time (bounded memory on any test split).
CHUNK = 32
TIE_RULE = ("an image where the artifact's top-1 class differs from model.keras's is a tie, not a failure, "
            "when model.keras gives the two classes probabilities within 2 x atol of each other (outputs "
            "each within atol can swap them); ties are counted apart in top1_ties")
# Distributions whose import name differs from their pip name.
PIP_NAMES = {"ai_edge_litert": "ai-edge-litert", "tensorflow": "tensorflow-cpu"}

Runner = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: the ``--format`` value (Keras's ``model.export`` format name).
        artifact: the file (or folder) name in the export folder (a constant of :mod:`suite.runs`).
        export: ``(model, path) -> str | None`` writes the artifact; returns ``None`` for Keras's own
            ``model.export``, or a line on the route taken instead.
        load: ``path -> runner``, the format's own runtime; a runner maps float32 images to probabilities.
        requires: for each Keras backend that can export this format, the modules the converter and
            the runtime need; a backend not listed cannot export it.
        versions: distributions whose versions the record keeps.
    """

    name: str
    artifact: str
    export: Callable
    load: Callable[[Path], Runner]
    requires: Mapping[str, tuple[str, ...]]
    versions: tuple[str, ...]

    def unavailable(self, backend: str) -> dict | None:
        """Why this format cannot be made here (``{"reason", "install"}``), or ``None`` when it can."""
        if backend not in self.requires:
            able = " or ".join(self.requires)
            return {"reason": f"Keras cannot export {self.name} under the {backend} backend (only under {able}); "
                              f"run with KERAS_BACKEND={next(iter(self.requires))}", "install": None}
        missing = {}
        for module in self.requires[backend]:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a module too old or new for its neighbours
                missing[module] = f"{type(exc).__name__}: {_first_line(exc)}"
        if not missing:
            return None
        install = "pip install " + " ".join(PIP_NAMES.get(m, m) for m in missing)
        detail = "; ".join(f"{m} ({why})" for m, why in missing.items())
        return {"reason": f"cannot import {detail}; install with: {install}", "install": install}


FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Add an export format; its name must be new."""
    if fmt.name in FORMATS:
        raise ValueError(f"export format {fmt.name!r} is registered already")
    FORMATS[fmt.name] = fmt
    return fmt


def format_names() -> list[str]:
    return list(FORMATS)


def get_format(name: str) -> ExportFormat:
    """The registered format ``name``.

    Raises:
        KeyError: no such format; the message lists the registered ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}") from None


# -- the formats -------------------------------------------------------------------------------------

def _keras_export(fmt: str) -> Callable:
    def export(model, path: Path) -> None:
        model.export(str(path), format=fmt, verbose=False)
    return export  # None: Keras's own export, as it is


def _load_saved_model(path: Path) -> Runner:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        return loaded.serve(tf.constant(x)).numpy()
    return run


def _load_onnx(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]
    return run


def _load_litert(path: Path) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    source, sink = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    shape: list = [None]

    def run(x: np.ndarray) -> np.ndarray:
        if shape[0] != x.shape:  # the interpreter's tensors have one batch size at a time
            interpreter.resize_tensor_input(source, x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(sink).copy()
    return run


def _export_onnx(model, path: Path) -> str | None:
    """Keras's ONNX export; under TensorFlow, redone from the frozen graph when Keras's leaves constants as inputs.

    tf2onnx (1.17, TensorFlow 2.21) turns tensors a layer holds as constants rather than variables,
    such as the mean and variance of EfficientNet's ``Normalization`` layer, into extra graph
    inputs that no caller can feed. Freezing the graph first makes them constants.

    Returns:
        ``None`` when Keras's export was kept, else what was done instead.
    """
    import keras

    model.export(str(path), format="onnx", verbose=False)
    if keras.backend.backend() != "tensorflow":
        return None
    extra = _onnx_extra_inputs(path)
    if not extra:
        return None
    _onnx_from_frozen_graph(model, path)
    return (f"tf2onnx from the frozen graph: Keras's export left {len(extra)} constants as inputs "
            f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")


def _onnx_extra_inputs(path: Path) -> list[str]:
    """Graph inputs besides the image that are not initialisers (nothing can feed them)."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    return [i.name for i in graph.input[1:] if i.name not in constants]


def _onnx_from_frozen_graph(model, path: Path) -> None:
    """``model`` as ONNX through its frozen TensorFlow graph, input named ``image`` and output ``probs``."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda image: model(image, training=False)).get_concrete_function(spec))
    patch_tf2onnx()  # Keras's fix of tf2onnx for NumPy 2, as its own export applies it
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # tf2onnx calls TensorFlow 1 graph functions, each with a deprecation warning
    try:
        proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(),
                                                  input_names=[t.name for t in frozen.inputs],
                                                  output_names=[t.name for t in frozen.outputs])
    finally:
        logger.setLevel(level)
    names = {proto.graph.input[0].name: "image", proto.graph.output[0].name: "probs"}
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = names.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    onnx.save(proto, str(path))


for _fmt in (
    # Under JAX, Keras writes a SavedModel through jax2tf (TensorFlow must be installed).
    ExportFormat("tf_saved_model", runs.SAVED_MODEL, _keras_export("tf_saved_model"), _load_saved_model,
                 {"tensorflow": ("tensorflow",), "jax": ("tensorflow",)}, ("tensorflow",)),
    # tf2onnx converts a TensorFlow graph; under JAX, Keras converts with jax2onnx instead.
    ExportFormat("onnx", runs.ONNX_MODEL, _export_onnx, _load_onnx,
                 {"tensorflow": ("tf2onnx", "onnx", "onnxruntime"), "jax": ("jax2onnx", "onnx", "onnxruntime")},
                 ("onnx", "onnxruntime", "tf2onnx", "jax2onnx")),
    # Keras converts to LiteRT (TFLite) with TensorFlow's converter only: not under JAX.
    ExportFormat("litert", runs.LITERT_MODEL, _keras_export("litert"), _load_litert,
                 {"tensorflow": ("tensorflow", "ai_edge_litert")}, ("tensorflow", "ai-edge-litert")),
):
    register_format(_fmt)


# -- exporting a run -------------------------------------------------------------------------------------

def export_run(run_dir, formats: Iterable[str] | None = None, *, out=None, atol: float = PARITY_ATOL,
               progress: bool = True, log: Callable[[str], None] = lambda message: None) -> tuple[Path, dict]:
    """Export ``run_dir``'s model in each of ``formats`` and check every artifact; returns the folder and its record.

    The folder (default ``RUN/export``) is built beside its final place and renamed into it when
    complete, replacing an earlier export; if anything stops the export, no folder is left.
    A format that fails (its converter, its runtime, or parity) is recorded ``failed`` with the
    reason and its artifact is not kept; one that cannot be made here is recorded ``skipped``.

    Args:
        run_dir: a finished run folder (``model.keras`` and ``predictions.csv``).
        formats: names of registered formats; default every one.
        out: the export folder; default ``run_dir/export``.
        atol: the largest absolute difference of probabilities parity allows; default 1e-4.
        progress: show a progress bar while decoding the test images.
        log: where one-line progress messages go.

    Raises:
        SuiteError: not a finished run, its test images cannot be read, or ``out`` holds something
            other than an earlier export.
    """
    chosen = [get_format(name) for name in dict.fromkeys(formats or FORMATS)]
    run = runs.RunFolder(run_dir)
    if not (run.path / runs.MODEL).is_file():  # said before Keras starts
        raise SuiteError(f"{run.path} has no {runs.MODEL}: the run did not finish training")
    import keras

    model = run.load_model()
    out = Path(out) if out is not None else run.path / runs.EXPORT_DIR
    _check_replaceable(out)
    paths, images = run_test_images(run, progress=progress)
    log(f"parity and latency on the run's {len(images)} test images, model.keras as reference")
    reference = np.asarray(model.predict(images, batch_size=CHUNK, verbose=0), dtype=np.float32)
    backend = keras.backend.backend()
    record = _record(run, backend, len(images), atol)
    record["reference"] = _reference(model, run, images, backend)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual permissions
    with runs.removed_on_error(tmp):
        for fmt in chosen:
            record["formats"][fmt.name] = entry = _export_one(fmt, model, tmp, images, reference, backend, atol, log)
            log(summary_line(fmt.name, entry))
        record["status"] = "failed" if failed_formats(record) else "ok"
        write_json_atomic(tmp / runs.EXPORT_LABELS, _labels(run, record))
        write_json_atomic(tmp / runs.EXPORT, record)
        _replace_dir(tmp, out)
    return out, record


def run_test_images(run: runs.RunFolder, *, progress: bool = True) -> tuple[list[Path], np.ndarray]:
    """The run's own test images (the paths of its ``predictions.csv``), decoded as the run decoded them.

    Raises:
        SuiteError: no ``predictions.csv``, or none of its images can be read.
    """
    from suite.data.decode import load_images

    table = run.path / runs.PREDICTIONS
    paths = [path for path, _ in run.test_images()]
    decoded = load_images(paths, run.image_size, progress=progress) if paths else None
    ok = [i for i, reason in enumerate(decoded.reasons) if reason is None] if decoded else []
    if not ok:
        raise DataError(f"none of the {len(paths)} test images listed in {table} can be read (moved or deleted?)")
    return [paths[i] for i in ok], np.ascontiguousarray(decoded.images[ok], dtype=np.float32)


def _export_one(fmt: ExportFormat, model, folder: Path, images, reference, backend: str, atol: float, log) -> dict:
    """Export, reload, check and time one format; its record (``status`` ok, failed or skipped)."""
    missing = fmt.unavailable(backend)
    if missing:
        return {"status": "skipped", **missing}
    path, stage, entry = folder / fmt.artifact, "export", {"status": "failed", "path": None}
    log(f"{fmt.name}: exporting")
    try:
        start = time.perf_counter()
        # converters print (stdout carries only the result) and warn about their own dependencies
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            route = fmt.export(model, path)
        entry["route"] = route or "keras model.export"
        entry["export_s"] = round(time.perf_counter() - start, 2)
        stage = "load"
        runner = fmt.load(path)
        stage = "run"
        entry.update(parity(reference, predict(runner, images), atol))
        entry["latency_b1_ms"], entry["latency_b32_ms"] = (latency_ms(runner, images, n) for n in LATENCY_REPEATS)
    except Exception as exc:  # a converter's or runtime's own error: recorded, the other formats go on
        entry["reason"] = f"{stage} failed: {type(exc).__name__}: {_first_line(exc)}"
    entry["size_bytes"] = size_bytes(path) if path.exists() else None
    entry["versions"] = versions(fmt.versions)
    if "reason" not in entry and entry["parity_ok"]:
        entry.update(status="ok", path=fmt.artifact, reason=None)
        return entry
    entry.setdefault("reason", parity_failure(entry))
    _remove(path)  # a failed artifact is never left where a good one would be
    return entry


def predict(runner: Runner, images: np.ndarray) -> np.ndarray:
    """The runner's probabilities for ``images``, :data:`CHUNK` at a time."""
    parts = [np.asarray(runner(np.ascontiguousarray(images[i:i + CHUNK])), dtype=np.float32)
             for i in range(0, len(images), CHUNK)]
    return np.concatenate(parts)


def parity(reference: np.ndarray, probs: np.ndarray, atol: float = PARITY_ATOL) -> dict:
    """How closely ``probs`` follow ``reference`` (both ``(n, classes)``); see :data:`TIE_RULE`.

    Returns:
        ``max_abs_diff`` (``None`` if any output is not finite), ``top1_agree``, ``top1_ties``,
        ``top1_total`` and ``parity_ok`` (diff within ``atol`` and every other image agreeing).
    """
    if probs.shape != reference.shape:
        raise ValueError(f"outputs of shape {probs.shape}, model.keras gives {reference.shape}")
    diff = float(np.abs(probs - reference).max())
    ref_top, top = reference.argmax(axis=1), probs.argmax(axis=1)
    rows = np.arange(len(reference))
    agree = ref_top == top
    ties = ~agree & (reference[rows, ref_top] - reference[rows, top] <= 2 * atol)
    finite = bool(np.isfinite(probs).all())
    return {"max_abs_diff": diff if finite else None, "atol": atol, "top1_agree": int(agree.sum()),
            "top1_ties": int(ties.sum()), "top1_total": len(reference),
            "parity_ok": finite and diff <= atol and bool((agree | ties).all())}


def parity_failure(entry: Mapping) -> str:
    """Why a format's ``parity`` failed, in one line."""
    if entry.get("max_abs_diff") is None:
        return "parity failed: the artifact's outputs are not finite"
    wrong = entry["top1_total"] - entry["top1_agree"] - entry["top1_ties"]
    return (f"parity failed: max abs diff of probabilities {entry['max_abs_diff']:.3g} (allowed "
            f"{entry['atol']:.3g}), top-1 differs from model.keras on {wrong} of {entry['top1_total']} images")


def latency_ms(runner: Runner, images: np.ndarray, batch: int) -> float:
    """Median milliseconds per call at ``batch`` images (repeated to fill it), after warm-up calls."""
    x = np.ascontiguousarray(np.resize(images, (batch,) + images.shape[1:]), dtype=np.float32)
    for _ in range(WARMUP_CALLS):
        runner(x)
    times = []
    for _ in range(LATENCY_REPEATS[batch]):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def size_bytes(path: Path) -> int:
    """A file's size, or the total of a folder's files (a SavedModel)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def versions(distributions: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``distributions`` (those not installed left out)."""
    found = {}
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    if "tensorflow" in found or "tensorflow" not in distributions:
        return found
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # the CPU wheel's distribution name
        found["tensorflow"] = importlib.metadata.version("tensorflow-cpu")
    return found


def failed_formats(record: Mapping) -> dict[str, str]:
    """``{format: reason}`` for each format whose export or checks failed."""
    return {name: e.get("reason") or "failed" for name, e in record["formats"].items() if e["status"] == "failed"}


def summary_line(name: str, entry: Mapping) -> str:
    """One line on a format's outcome, for a person."""
    if entry["status"] == "skipped":
        return f"{name}: skipped: {entry['reason']}"
    if entry["status"] == "failed":
        return f"{name}: FAILED: {entry['reason']}"
    ties = f" (+{entry['top1_ties']} ties)" if entry["top1_ties"] else ""
    return (f"{name}: ok: max abs diff {entry['max_abs_diff']:.2g}, top-1 {entry['top1_agree']}/{entry['top1_total']}"
            f"{ties}, latency {entry['latency_b1_ms']:.2f} ms "
            f"(batch 1), {entry['latency_b32_ms']:.1f} ms (batch 32), {entry['size_bytes'] / 1e6:.2f} MB")


# -- the records -------------------------------------------------------------------------------------------

def _input_spec(size: int) -> dict:
    return {"shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC",
            "range": [0, 255], "channels": "RGB", "preprocessing": "inside the model"}


def _record(run: runs.RunFolder, backend: str, n_images: int, atol: float) -> dict:
    return {
        "schema": 1,
        "kind": "export",
        "created": runs.now_iso(),
        "source_run": str(run.path.resolve()),
        "backbone": run.backbone,
        "backend": backend,
        "labels": run.labels,
        "image_size": run.image_size,
        "input": _input_spec(run.image_size),
        "output": "class probabilities (softmax), one per label, in the order of labels",
        "parity": {"reference": runs.MODEL, "images": n_images, "split": "test", "atol": atol, "tie_rule": TIE_RULE},
        "latency": {"batches": list(LATENCY_REPEATS), "repeats": dict(LATENCY_REPEATS), "warmup_calls": WARMUP_CALLS,
                    "statistic": "median ms per call"},
        "status": "running",
        "reference": None,
        "formats": {},
    }


def _reference(model, run: runs.RunFolder, images: np.ndarray, backend: str) -> dict:
    """model.keras itself, timed the same way, for comparison."""
    def runner(x):
        return model.predict_on_batch(x)

    return {"format": "keras", "path": str((run.path / runs.MODEL).resolve()),
            "size_bytes": size_bytes(run.path / runs.MODEL),
            "latency_b1_ms": latency_ms(runner, images, 1), "latency_b32_ms": latency_ms(runner, images, 32),
            "versions": versions(("keras", "tensorflow", "jax"))}


def _labels(run: runs.RunFolder, record: Mapping) -> dict:
    """What a program serving an artifact needs beside it."""
    return {"labels": record["labels"], "image_size": record["image_size"], "input": record["input"],
            "output": record["output"], "backbone": record["backbone"], "source_run": record["source_run"],
            "formats": {name: e["path"] for name, e in record["formats"].items() if e["status"] == "ok"}}


# -- the folder ----------------------------------------------------------------------------------------------

def _check_replaceable(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier export (nor empty): it would be deleted."""
    if out.is_file():
        raise SuiteError(f"--out {out} is a file; give a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / runs.EXPORT).is_file():
        raise SuiteError(f"{out} exists and holds no {runs.EXPORT} (not an earlier export); the export would "
                         "replace it: choose another --out or move it away")


def _replace_dir(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``; an earlier export there goes only once ``new`` is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
