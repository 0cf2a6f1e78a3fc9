"""The machine a process trains on: backend and accelerators, threads, logical CPU devices,
compilation cache, and the distribution strategy a model is built and trained under.

The engines do the work: ``tf.distribute`` with TensorFlow, ``keras.distribution`` with JAX.
This module only picks and configures them, once per process, before the backend starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterator

from suite.cluster import joined
from suite.config import STRATEGY_CHOICES as STRATEGIES
from suite.errors import SuiteError

# Checked here with two local workers (Keras 3.15, TensorFlow 2.21): the cluster forms, then
# model.fit fails converting a PerReplica batch, the open upstream keras-team/keras#20585.
TF_MULTIWORKER_UNSUPPORTED = (
    "multi-worker training with the TensorFlow backend does not work in Keras 3 "
    "(tf.distribute.MultiWorkerMirroredStrategy fails inside model.fit: keras-team/keras#20585); "
    "train across machines with KERAS_BACKEND=jax and JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
    "JAX_PROCESS_ID set (see README), or on one machine with --strategy mirrored")
_CONFIGURED: dict = {}

# -- what the process runs on ---------------------------------------------------------------------

PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy",
            "scikit-learn", "pillow", "pandas", "matplotlib", "jinja2")


def backend() -> str:
    import keras

    return keras.backend.backend()


def accelerators() -> list[str]:
    """Names of the GPUs the active Keras backend sees (empty on a CPU)."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if name == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    if name == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def describe_device() -> str:
    gpus = accelerators()
    if gpus:
        return f"GPU x{len(gpus)}: {', '.join(gpus)}"
    return f"CPU ({platform.processor() or platform.machine()})"


def has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


# -- configuring the process -----------------------------------------------------------------------

# What TensorFlow's C++ side prints while it loads, before any logging setting applies
# (absl's notice, oneDNN's and the CPU-feature guard's info lines).
_STARTUP_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                              r"[IW]\d{4} .*\b(port|cpu_feature_guard)\.cc:\d+\]|"
                              r"To enable the following instructions:)")


# KERAS_BACKEND value -> the package it needs.
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy",
                    "openvino": "openvino"}


def check_backend_installed(environ=os.environ) -> None:
    """Refuse an unknown ``KERAS_BACKEND``, or one whose package is missing, before Keras is imported."""
    name = environ.get("KERAS_BACKEND")
    if not name or "keras" in sys.modules:
        return
    if name not in BACKEND_PACKAGES:
        raise SuiteError(f"KERAS_BACKEND={name} is not a Keras backend; use one of {', '.join(BACKEND_PACKAGES)} "
                         "(or unset it for TensorFlow)")
    package = BACKEND_PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise SuiteError(f"KERAS_BACKEND={name} needs {package}, which is not installed: pip install {package} "
                         "(or unset KERAS_BACKEND for TensorFlow)")


def start_backend(cpu_devices: int | None = None, strategy: str | None = None, *, quiet: bool = True) -> dict:
    """Configure the process (:func:`configure_process`) and import Keras and its backend.

    With ``quiet``, the backend's C++ start-up lines are kept off the terminal: file
    descriptor 2 is read while the backend loads and every other line is passed on.
    """
    check_backend_installed()
    if os.environ.get("KERAS_BACKEND") or "keras" in sys.modules:  # known without loading TensorFlow here
        join_cluster_if_asked(strategy)  # unfiltered: a cluster that does not form says so on the terminal
    filtered = quiet and "keras" not in sys.modules
    with _startup_chatter_filtered() if filtered else contextlib.nullcontext():
        settings = configure_process(cpu_devices, strategy)
        import keras  # noqa: F401
    return settings


@contextlib.contextmanager
def _startup_chatter_filtered():
    """Read file descriptor 2 for the block's length; pass on every line but the start-up chatter."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not _STARTUP_CHATTER.match(line):
                    print(line, file=sys.stderr)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_process(cpu_devices: int | None = None, strategy: str | None = None) -> dict:
    """Set the backend up for training; call before the backend's first operation.

    * ``cpu_devices``: split the CPU into N logical devices (TensorFlow: logical device
      configuration; JAX: ``--xla_force_host_platform_device_count``), so multi-device
      strategies can run on one CPU.
    * TensorFlow thread pools sized to the usable cores: one inter-op thread on small
      machines, where two concurrent ops only fight over the same cores.
    * JAX: a persistent compilation cache in the suite's cache folder, so a second
      identical run loads its compiled programs instead of recompiling them.
    * JAX with ``strategy`` resolving to ``multiworker``: join the cluster the environment
      describes (:func:`suite.cluster.join`); the settings then hold ``cluster``.

    ``strategy`` is only checked here (:func:`resolve_strategy`), so that a strategy that
    cannot run stops the command before it makes anything.

    Returns what was set (idempotent: a second call returns the first call's settings).
    """
    join_cluster_if_asked(strategy)  # refuses what cannot run before anything starts
    if _CONFIGURED.keys() - {"cluster"}:
        if cpu_devices and cpu_devices != (_CONFIGURED["cpu_devices"] or 1):
            raise SuiteError(f"this process already runs with {_CONFIGURED['cpu_devices'] or 1} CPU device(s); "
                             f"--cpu-devices {cpu_devices} must be given before the backend starts "
                             "(on the command line)")
        return dict(_CONFIGURED)
    backend = os.environ.get("KERAS_BACKEND") or _keras_backend()
    settings = {"backend": backend, "cpu_devices": cpu_devices}
    if backend == "jax":
        settings.update(_configure_jax(cpu_devices))
    elif backend == "tensorflow":
        settings.update(_configure_tensorflow(cpu_devices))
    elif cpu_devices and cpu_devices > 1:
        raise SuiteError(f"--cpu-devices needs the tensorflow or jax backend, not {backend}")
    _CONFIGURED.update(settings)
    return dict(_CONFIGURED)


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


def _configure_jax(cpu_devices: int | None) -> dict:
    if cpu_devices and cpu_devices > 1:
        # Read when JAX creates its CPU backend, which is after import, at the first use.
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_devices}".strip()
    import jax

    from suite.data.cache import cache_dir

    if cpu_devices and cpu_devices > 1 and len(jax.devices("cpu")) != cpu_devices:
        raise SuiteError(f"JAX started with {len(jax.devices('cpu'))} CPU devices before --cpu-devices "
                         f"{cpu_devices} could be applied; pass it on the command line")
    folder = cache_dir() / "jax-compilation"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache every program: a training step compiles in seconds, a small eval step in less.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    COMPILE_MONITOR.install()
    return {"jax_compilation_cache": str(folder)}


def join_cluster_if_asked(strategy: str | None) -> None:
    """Check ``strategy`` against the backend; join the cluster once if it resolves to ``multiworker``."""
    if strategy is None:
        return
    if resolve_strategy(strategy, os.environ.get("KERAS_BACKEND") or _keras_backend(), 1) != "multiworker":
        return
    if "cluster" not in _CONFIGURED:
        from suite.cluster import cluster_from_env, join

        _CONFIGURED["cluster"] = join(cluster_from_env())  # before JAX's first operation


def refuse_multiworker(strategy: str | None, command: str) -> None:
    """Stop ``command`` before it starts if it would train across processes.

    Only ``suite run`` (one seed) knows that process 0 alone keeps the folder; comparisons,
    cross-validation, tuning and benchmarks would write one on every process.
    """
    backend = os.environ.get("KERAS_BACKEND") or _keras_backend()
    if joined() is not None or resolve_strategy(strategy or "auto", backend, 1) == "multiworker":
        raise SuiteError(f"{command} does not run multi-worker; train across processes with `suite run` "
                         "(one --seeds), or unset JAX_COORDINATOR_ADDRESS and pick another --strategy")


class _RetracingNotice(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning. The suite predicts at batch 1 and 32 and
    computes Grad-CAM for several backbones in one process, so some retracing is by design; the warning would
    only tell a user to restructure code that is not theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _configure_tensorflow(cpu_devices: int | None) -> dict:
    import tensorflow as tf

    tf.get_logger().addFilter(_RetracingNotice())
    settings = {}
    if cpu_devices and cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
        except RuntimeError:  # TensorFlow already started: fine if it has the devices asked for
            if len(tf.config.list_logical_devices("CPU")) != cpu_devices:
                raise SuiteError(f"TensorFlow started before --cpu-devices {cpu_devices} could be applied; "
                                 "pass it on the command line") from None
    if os.environ.get("SUITE_TF_THREADS") == "default":
        return settings
    cores = usable_cores()
    inter = 1 if cores <= 4 else 2
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        settings.update(intra_op_threads=cores, inter_op_threads=inter)
    except RuntimeError:  # already started (a library caller trained before): keep its pools
        settings.update(intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads())
    return settings


# ----------------------------------------------------------------------------------
# Distribution
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy a model is built and trained under.

    Attributes:
        name: ``none``, ``mirrored`` or ``multiworker`` (``auto`` resolved).
        replicas: model copies each global batch is split across.
        devices: the devices they run on (every process's, for ``multiworker``).
        engine: what does the work (``tf.distribute.MirroredStrategy``, ...).
        processes: processes training together (``multiworker``: the cluster's size, else 1).
        process_id: this process's number among them.
    """

    name: str
    replicas: int
    devices: tuple[str, ...]
    engine: str
    strategy: object = dataclasses.field(default=None, repr=False, compare=False)
    processes: int = 1
    process_id: int = 0

    def describe(self) -> dict:
        return {"strategy": self.name, "replicas": self.replicas, "devices": list(self.devices),
                "engine": self.engine, "processes": self.processes}

    def local_batch(self, global_batch: int) -> int:
        """This process's share of a global batch (:func:`split_batch`)."""
        return split_batch(global_batch, self.processes)

    def share(self, x, y):
        """This process's part of the training arrays: every ``processes``-th image from ``process_id``.

        Every share has the same length (``len(y) // processes``; up to ``processes - 1``
        images are left out) so that all processes take the same number of steps, each of
        which needs all of them.
        """
        if self.processes == 1:
            return x, y
        n = len(y) // self.processes
        rows = slice(self.process_id, self.process_id + n * self.processes, self.processes)
        return x[rows], y[rows]


def split_batch(global_batch: int, processes: int) -> int:
    """Each process's share of a global batch; refuses a batch the processes cannot split evenly."""
    if global_batch % processes:
        raise SuiteError(f"--batch-size {global_batch} does not split evenly over {processes} processes; "
                         f"use a multiple of {processes}")
    return global_batch // processes


def local_devices(backend: str) -> tuple[list[str], str]:
    """``(names, kind)`` of the local devices a mirrored strategy would use: GPUs, else CPUs."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return [d.name for d in gpus], "gpu"
        return [d.name for d in tf.config.list_logical_devices("CPU")], "cpu"
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform != "cpu"]
        return ([str(d) for d in gpus], "gpu") if gpus else ([str(d) for d in jax.devices("cpu")], "cpu")
    return ["cpu"], "cpu"


def resolve_strategy(name: str, backend: str, n_local: int, environ=os.environ) -> str:
    """``auto`` -> ``multiworker`` when a cluster is configured, ``mirrored`` with several
    local devices, else ``none``; other names are checked against the backend."""
    if name not in STRATEGIES:
        raise SuiteError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if backend not in ("tensorflow", "jax") and name not in ("auto", "none"):
        raise SuiteError(f"--strategy {name} needs the tensorflow or jax backend, not {backend}")
    if name == "auto" and backend == "tensorflow" and _tf_config_workers(environ) > 1:
        name = "multiworker"
    if name == "multiworker" and backend == "tensorflow":
        raise SuiteError(TF_MULTIWORKER_UNSUPPORTED)
    if name != "auto":
        return name
    if backend == "jax" and environ.get("JAX_COORDINATOR_ADDRESS"):
        return "multiworker"
    return "mirrored" if n_local > 1 and backend in ("tensorflow", "jax") else "none"


def _tf_config_workers(environ) -> int:
    raw = environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError):
        raise SuiteError("TF_CONFIG is not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_distribution(name: str) -> Distribution:
    """Create the strategy ``name`` asks for on this backend (see :func:`resolve_strategy`)."""
    backend = _keras_backend()
    names, kind = local_devices(backend)
    resolved = resolve_strategy(name, backend, len(names))
    if resolved == "none":
        return Distribution("none", 1, tuple(names[:1]), "none")
    if backend == "tensorflow":
        return _tf_distribution(resolved, names, kind)
    return _jax_distribution(resolved)


def _tf_distribution(name: str, names: list[str], kind: str) -> Distribution:
    import tensorflow as tf

    # name is "mirrored": resolve_strategy refuses multi-worker training on TensorFlow.
    cross = tf.distribute.ReductionToOneDevice() if kind == "cpu" else None
    strategy = tf.distribute.MirroredStrategy(devices=names, cross_device_ops=cross)
    devices = tuple(strategy.extended.worker_devices)
    return Distribution(name, int(strategy.num_replicas_in_sync), devices, "tf.distribute.MirroredStrategy",
                        strategy)


def _jax_distribution(name: str) -> Distribution:
    import jax
    import keras

    cluster = joined()
    if name == "multiworker" and cluster is None:
        raise SuiteError("--strategy multiworker must be chosen before the backend starts (on the command line)")
    devices = [d for d in jax.devices() if d.platform != "cpu"] or jax.devices("cpu")  # every process's
    # Multi-worker: each process passes its own share of every global batch (Distribution.share),
    # so Keras must not shard the data again.
    strategy = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=cluster is None)
    return Distribution(name, len(devices), tuple(str(d) for d in devices),
                        "keras.distribution.DataParallel", strategy,
                        processes=cluster.processes if cluster else 1, process_id=cluster.process_id if cluster else 0)


@contextlib.contextmanager
def distribution_scope(dist: Distribution) -> Iterator[Distribution]:
    """Build, compile and train inside this: the strategy's scope, or JAX's global distribution."""
    if dist.strategy is None:
        yield dist
        return
    if dist.engine.startswith("tf."):
        with dist.strategy.scope():
            yield dist
        return
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(dist.strategy)
    try:
        yield dist
    finally:
        keras.distribution.set_distribution(previous)


# ----------------------------------------------------------------------------------
# Compilation time (JAX)
# ----------------------------------------------------------------------------------


class CompileMonitor:
    """Sums JAX's compilation events: seconds spent compiling, persistent-cache hits and misses."""

    BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
    TRACE = "/jax/core/compile/jaxpr_trace_duration"
    HITS = "/jax/compilation_cache/cache_hits"
    MISSES = "/jax/compilation_cache/cache_misses"

    def __init__(self):
        self.installed = False
        self.reset()

    def reset(self) -> None:
        self.compile_s = self.trace_s = 0.0
        self.cache_hits = self.cache_misses = 0

    def install(self) -> None:
        if self.installed:
            return
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)
        self.installed = True

    def _on_duration(self, event: str, seconds: float, **kwargs) -> None:
        if event == self.BACKEND_COMPILE:
            self.compile_s += seconds
        elif event == self.TRACE:
            self.trace_s += seconds

    def _on_event(self, event: str, **kwargs) -> None:
        if event == self.HITS:
            self.cache_hits += 1
        elif event == self.MISSES:
            self.cache_misses += 1

    def snapshot(self) -> dict | None:
        """What was counted since the last :meth:`reset`; ``None`` where JAX is not monitored."""
        if not self.installed:
            return None
        return {"compile_s": round(self.compile_s, 3), "trace_s": round(self.trace_s, 3),
                "persistent_cache_hits": self.cache_hits, "persistent_cache_misses": self.cache_misses}


COMPILE_MONITOR = CompileMonitor()
