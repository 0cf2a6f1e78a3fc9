"""A multi-worker run's processes: who they are (``JAX_*`` variables), joining them before JAX
starts, watching that every one still lives, and leaving without hanging when one does not.

JAX does the work (``jax.distributed``: its coordination service on process 0, gloo collectives
on CPUs); this module bounds every wait so that a failure ends each process with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Iterator

from suite.errors import ClusterError, SuiteError

# The environment that describes the cluster, read by the suite (JAX reads only the first).
CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Seconds to wait for every process to join, and for a silent process to count as dead;
# SUITE_CLUSTER_TIMEOUT overrides it.
CLUSTER_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes a multi-worker run spans, as ``JAX_*`` variables describe them.

    Attributes:
        coordinator: ``host:port`` of process 0, where the others connect.
        processes: how many processes train together.
        process_id: this process's number, 0 to ``processes - 1``; process 0 keeps the run folder.
        timeout_s: seconds allowed for all processes to join, and for a silent one to count
            as dead (``SUITE_CLUSTER_TIMEOUT``).
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


# JAX's own deadlines come this much later than the suite's, which end the process with one line;
# JAX's end it with a page of C++ log.
_JAX_GRACE_S = 30
_EXIT_WAIT_S = 24 * 3600
_JOINED: list = []  # (Cluster, ClusterWatch or None) once this process joined
EXIT_CLUSTER = 2  # the CLI's status for an error the user can act on


def join(cluster: Cluster) -> dict:
    """Connect this process to the others (``jax.distributed.initialize``); return what the manifest keeps.

    CPU processes exchange gradients over gloo (TCP), which must be chosen before JAX starts
    its backends. A process that has not met all the others within ``cluster.timeout_s``
    ends with one ``error:`` line (a watchdog: JAX would abort the process itself, later).
    """
    import jax

    _runtime_lines_to_stderr()
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

    client = getattr(getattr(distributed, "global_state", None), "client", None)
    # Without the client (a JAX that moved it), JAX's own heartbeat still ends a wait for a dead process.
    _JOINED.append((cluster, ClusterWatch(cluster, client).start() if client is not None else None))
    return cluster.describe()


def _runtime_lines_to_stderr() -> None:
    """Keep stdout for the command's results: the C++ runtime's own lines (gloo prints "[Gloo] Rank 0 is
    connected ..." to file descriptor 1) go to stderr, while Python's ``sys.stdout`` keeps the original stdout."""
    sys.stdout.flush()
    try:
        results = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors to move (an embedding host): the lines stay where they are
        return
    sys.stdout = open(results, "w", buffering=1, encoding=sys.stdout.encoding or "utf-8",  # noqa: SIM115
                      errors=sys.stdout.errors or "strict", closefd=True)


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


def joined() -> Cluster | None:
    """The cluster this process joined, or ``None`` when it trains alone."""
    return _JOINED[0][0] if _JOINED else None


def is_lead_process() -> bool:
    """True unless this process is a non-zero member of a cluster (only process 0 writes run folders)."""
    cluster = joined()
    return cluster is None or cluster.lead


def leave(status: int) -> None:
    """Leave the cluster at the end of a command that ended with ``status``; nothing without a cluster.

    At exit JAX waits for every process to arrive, and aborts with a page of C++ log when
    one never does. A failed process has said why in one line and ends at once, with
    ``status``; a finished one waits for the others while they live (:class:`ClusterWatch`).
    """
    if not _JOINED:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if status:
        os._exit(status)
    import jax

    jax.distributed.shutdown()
    if _JOINED[0][1] is not None:
        _JOINED[0][1].stop()


# How the backend's error reads when a collective's peer is gone (gloo over TCP on CPUs).
_PEER_GONE = re.compile(r"gloo|connection (reset|closed|refused)|broken pipe|peer", re.IGNORECASE)


@contextlib.contextmanager
def cluster_guard(dist) -> Iterator[None]:
    """Turn the backend's error from a collective whose peer is gone into one clear :class:`ClusterError`.

    ``dist``: the run's :class:`suite.runtime.Distribution` (its ``processes`` and ``process_id``).
    """
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
