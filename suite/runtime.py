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
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterator

from suite.config import STRATEGY_CHOICES as STRATEGIES
from suite.errors import ClusterError, SuiteError

# Checked here with two local workers (Keras 3.15, TensorFlow 2.21): the cluster forms, then
# model.fit fails converting a PerReplica batch, the open upstream keras-team/keras#20585.
TF_MULTIWORKER_UNSUPPORTED = (
    "multi-worker training with the TensorFlow backend does not work in Keras 3 "
    "(tf.distribute.MultiWorkerMirroredStrategy fails inside model.fit: keras-team/keras#20585); "
    "train across machines with KERAS_BACKEND=jax and JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
    "JAX_PROCESS_ID set (see README), or on one machine with --strategy mirrored")
_CONFIGURED: dict = {}

# The environment that describes a JAX cluster, read by the suite (not by Keras or JAX).
CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Seconds to wait for every process to join, for a silent process to count as dead,
# and for the others at exit; SUITE_CLUSTER_TIMEOUT overrides it.
CLUSTER_TIMEOUT_S = 120

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
      describes (:func:`join_cluster`); the settings then hold ``cluster``.

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


# -- a cluster of JAX processes ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes a multi-worker run spans, as ``JAX_*`` variables describe them.

    Attributes:
        coordinator: ``host:port`` of process 0, where the others connect.
        processes: how many processes train together.
        process_id: this process's number, 0 to ``processes - 1``; process 0 keeps the run folder.
        timeout_s: seconds allowed for all processes to join, for a silent one to count as
            dead, and for the others to finish at exit (``SUITE_CLUSTER_TIMEOUT``).
    """

    coordinator: str
    processes: int
    process_id: int
    timeout_s: int = CLUSTER_TIMEOUT_S

    @property
    def lead(self) -> bool:
        return self.process_id == 0

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def cluster_from_env(environ=os.environ) -> Cluster:
    """Read the cluster from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``."""
    missing = [name for name in CLUSTER_VARS if not environ.get(name)]
    if missing:
        raise SuiteError(f"--strategy multiworker needs {', '.join(missing)} set on every process "
                         "(JAX_COORDINATOR_ADDRESS=host:port of process 0, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    coordinator = environ["JAX_COORDINATOR_ADDRESS"]
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise SuiteError(f"JAX_COORDINATOR_ADDRESS={coordinator} is not host:port (e.g. 10.0.0.5:1234)")
    processes = _int_var(environ, "JAX_NUM_PROCESSES", 1)
    process_id = _int_var(environ, "JAX_PROCESS_ID", 0)
    if process_id >= processes:
        raise SuiteError(f"JAX_PROCESS_ID={process_id} must be below JAX_NUM_PROCESSES={processes}")
    timeout = _int_var(environ, "SUITE_CLUSTER_TIMEOUT", 1) if environ.get("SUITE_CLUSTER_TIMEOUT") \
        else CLUSTER_TIMEOUT_S
    return Cluster(coordinator, processes, process_id, timeout)


def _int_var(environ, name: str, minimum: int) -> int:
    value = environ[name]
    if not value.strip().isdigit() or int(value) < minimum:
        raise SuiteError(f"{name}={value} must be a whole number of at least {minimum}")
    return int(value)


def join_cluster_if_asked(strategy: str | None) -> None:
    """Check ``strategy`` against the backend; join the cluster once if it resolves to ``multiworker``."""
    if strategy is None:
        return
    if resolve_strategy(strategy, os.environ.get("KERAS_BACKEND") or _keras_backend(), 1) != "multiworker":
        return
    if "cluster" not in _CONFIGURED:
        _CONFIGURED["cluster"] = join_cluster(cluster_from_env())  # before JAX's first operation


# JAX's own deadlines come this much later than the suite's, which end the process with one line;
# JAX's end it with a page of C++ log.
_JAX_GRACE_S = 30
_EXIT_WAIT_S = 24 * 3600
_WATCH: list = []  # the running ClusterWatch, once joined
EXIT_CLUSTER = 2  # the CLI's status for an error the user can act on


def join_cluster(cluster: Cluster) -> dict:
    """Connect this process to the others (``jax.distributed.initialize``); return what the manifest keeps.

    CPU processes exchange gradients over gloo (TCP), which must be chosen before JAX starts
    its backends. A process that has not met all the others within ``cluster.timeout_s``
    ends with one ``error:`` line (a watchdog: JAX would abort the process itself, later).
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only the CPU backend reads it
    message = (f"process {cluster.process_id} of {cluster.processes} could not form the cluster at "
               f"{cluster.coordinator} within {cluster.timeout_s}s: is every process started, with the same "
               "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES and its own JAX_PROCESS_ID? (SUITE_CLUSTER_TIMEOUT "
               "sets the wait)")
    limit = cluster.timeout_s + _JAX_GRACE_S
    with _deadline(cluster.timeout_s, message):
        try:
            # At exit the processes wait for each other as long as it takes: the watch ends a wait for a dead one.
            jax.distributed.initialize(cluster.coordinator, cluster.processes, cluster.process_id,
                                       initialization_timeout=limit, heartbeat_timeout_seconds=limit,
                                       shutdown_timeout_seconds=_EXIT_WAIT_S)
        except Exception as exc:  # refused at once (a port in use, a backend already started)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClusterError(f"{message}: {first}") from None
    from jax._src import distributed  # the client: JAX has no public handle on it

    _WATCH.append(ClusterWatch(cluster, distributed.global_state.client).start())
    return cluster.describe()


class ClusterWatch:
    """Every process of a cluster beats once a second in JAX's coordination service and watches
    the others' beats: a process silent for ``timeout_s`` (dead, or hung with its machine), or a
    coordinator out of reach that long, ends this one with one ``error:`` line and status 2.

    JAX's own heartbeat would also notice, ``_JAX_GRACE_S`` later, and abort the process with a
    page of C++ log; a collective whose peer died fails at once (:func:`cluster_guard`), but a
    process compiling, evaluating or waiting at exit would only learn of it this way.
    """

    PREFIX = "suite/beat/"

    def __init__(self, cluster: Cluster, client, interval_s: float = 1.0):
        self.cluster, self.client, self.interval_s = cluster, client, interval_s

    def start(self) -> ClusterWatch:
        import threading

        self._stop = threading.Event()
        threading.Thread(target=self._run, name="suite-cluster-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import time

        me, peers = self.cluster.process_id, set(range(self.cluster.processes)) - {self.cluster.process_id}
        beat, contact = 0, time.monotonic()
        seen = {peer: (None, contact) for peer in peers}  # last beat seen, and when it changed
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                beat += 1
                self.client.key_value_set(f"{self.PREFIX}{me}", str(beat), allow_overwrite=True)
                beats = {key.rsplit("/", 1)[-1]: value for key, value in self.client.key_value_dir_get(self.PREFIX)}
                contact = now
            except Exception:  # the coordinator (process 0) does not answer
                if now - contact > self.cluster.timeout_s and not self._stop.is_set():
                    self._fail(f"process 0, the coordinator at {self.cluster.coordinator}, has been out of reach "
                               f"for {self.cluster.timeout_s}s (it died or left)")
                continue
            for peer in sorted(peers):
                value = beats.get(str(peer))
                if value != seen[peer][0]:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > self.cluster.timeout_s and not self._stop.is_set():
                    self._fail(f"process {peer} has been silent for {self.cluster.timeout_s}s (it died, hung or left)")

    def _fail(self, why: str) -> None:
        message = f"process {self.cluster.process_id} of {self.cluster.processes} stopped: {why}"
        for last_words in list(_LAST_WORDS):  # e.g. mark the run folder failed
            try:
                last_words(message)
            except Exception:
                pass
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(EXIT_CLUSTER)


_LAST_WORDS: list = []


@contextlib.contextmanager
def if_cluster_lost(record) -> Iterator[None]:
    """Within the block, call ``record(message)`` before the process ends because the cluster lost a process."""
    _LAST_WORDS.append(record)
    try:
        yield
    finally:
        _LAST_WORDS.remove(record)


@contextlib.contextmanager
def _deadline(seconds: float, message: str) -> Iterator[None]:
    """End the process with ``error: message`` if the block still runs after ``seconds``.

    For waits inside JAX's C++ runtime, which no Python exception can interrupt.
    """
    import threading

    def expire():
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(EXIT_CLUSTER)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def cluster() -> Cluster | None:
    """The cluster this process joined, or ``None`` when it trains alone."""
    joined = _CONFIGURED.get("cluster")
    return Cluster(**joined) if joined else None


def is_lead_process() -> bool:
    """True unless this process is a non-zero member of a cluster (only process 0 writes run folders)."""
    joined = cluster()
    return joined is None or joined.lead


def refuse_multiworker(strategy: str | None, command: str) -> None:
    """Stop ``command`` before it starts if it would train across processes.

    Only ``suite run`` (one seed) knows that process 0 alone keeps the folder; comparisons,
    cross-validation, tuning and benchmarks would write one on every process.
    """
    backend = os.environ.get("KERAS_BACKEND") or _keras_backend()
    if cluster() is not None or resolve_strategy(strategy or "auto", backend, 1) == "multiworker":
        raise SuiteError(f"{command} does not run multi-worker; train across processes with `suite run` "
                         "(one --seeds), or unset JAX_COORDINATOR_ADDRESS and pick another --strategy")


def leave_cluster(status: int) -> None:
    """Leave the cluster at the end of a command that ended with ``status``; nothing without a cluster.

    At exit JAX waits for every process to arrive, and aborts with a page of C++ log when
    one never does. A failed process has said why in one line and ends at once, with
    ``status``; a finished one waits for the others while they live (:class:`ClusterWatch`).
    """
    if cluster() is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if status:
        os._exit(status)
    import jax

    jax.distributed.shutdown()
    for watch in _WATCH:
        watch.stop()


def _configure_tensorflow(cpu_devices: int | None) -> dict:
    import tensorflow as tf

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

    joined = cluster()
    if name == "multiworker" and joined is None:
        raise SuiteError("--strategy multiworker must be chosen before the backend starts (on the command line)")
    devices = [d for d in jax.devices() if d.platform != "cpu"] or jax.devices("cpu")  # every process's
    # Multi-worker: each process passes its own share of every global batch (Distribution.share),
    # so Keras must not shard the data again.
    strategy = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=joined is None)
    return Distribution(name, len(devices), tuple(str(d) for d in devices),
                        "keras.distribution.DataParallel", strategy,
                        processes=joined.processes if joined else 1, process_id=joined.process_id if joined else 0)


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


# How the backend's error reads when a collective's peer is gone (gloo over TCP on CPUs).
_PEER_GONE = re.compile(r"gloo|connection (reset|closed|refused)|broken pipe|peer", re.IGNORECASE)


@contextlib.contextmanager
def cluster_guard(dist: Distribution) -> Iterator[None]:
    """Turn the backend's error from a collective whose peer is gone into one clear :class:`ClusterError`."""
    if dist.processes == 1:
        yield
        return
    try:
        yield
    except SuiteError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not _PEER_GONE.search(first):
            raise
        raise ClusterError(f"process {dist.process_id} of {dist.processes} stopped: another process of the cluster "
                           f"failed or left ({first})") from exc


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
