"""``suite run --strategy multiworker`` under JAX: two processes on this machine form a real cluster
(JAX's coordination service, gradients over gloo on 127.0.0.1), as two machines would."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from suite.cluster import cluster_from_env
from suite.errors import SuiteError
from suite.runtime import Distribution

ROOT = Path(__file__).resolve().parents[1]
# One step per epoch: the global batch (64) holds every training image of the tiny data (36), so
# the two processes' halves together are exactly the one process's batch. Dropout off and no
# augmentation, so no randomness differs between the runs; the whole backbone trains, so
# BatchNorm's batch statistics must be reduced across the processes to match.
RECIPE = ["--backbone", "mobilenetv2", "--image-size", "32", "--epochs", "2", "--batch-size", "64",
          "--weights", "none", "--finetune", "all", "--dropout", "0", "--augment", "none", "--quiet"]
# Relative difference allowed between the 2-process and the 1-process losses: only the order of
# float additions differs (measured: about 3e-7 on epoch 1).
LOSS_RTOL = 1e-3
TIMEOUT_S = 540  # every wait in these tests is bounded
CLUSTER_TIMEOUT_S = 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, port: int | None = None, process_id: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", SUITE_CLUSTER_TIMEOUT=str(CLUSTER_TIMEOUT_S),
               # The tests' dead proxy (no downloads) must not carry the cluster's own gRPC traffic.
               no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost",
               # Cheaper compiles (every run here uses the same flags, so the comparison stays fair).
               XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    if port is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id))
        scratch = tmp_path / f"tmp{process_id}"  # where a worker's temporary run folder goes
        scratch.mkdir(exist_ok=True)
        env["TMPDIR"] = str(scratch)
    return env


def _start(tmp_path: Path, data: Path, out: Path, name: str, env: dict, strategy: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "suite", "run", "--data", str(data), "--out", str(out), "--strategy", strategy,
           *RECIPE]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(tmp_path / f"{name}.out", "w"),
                            stderr=open(tmp_path / f"{name}.err", "w"))


def _wait(procs: dict[str, subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _losses(run_dir: Path) -> list[tuple[float, float]]:
    with open(run_dir / "history.csv", newline="") as f:
        return [(float(row["loss"]), float(row["val_loss"])) for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------------
# The cluster's description and each process's share (no backend started)
# ----------------------------------------------------------------------------------


CLUSTER = {"JAX_COORDINATOR_ADDRESS": "10.0.0.5:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}


def test_the_cluster_is_read_from_the_jax_variables():
    cluster = cluster_from_env({**CLUSTER, "SUITE_CLUSTER_TIMEOUT": "15"})
    assert (cluster.coordinator, cluster.processes, cluster.process_id, cluster.timeout_s) == \
        ("10.0.0.5:1234", 2, 1, 15)
    assert not cluster.lead and cluster_from_env(CLUSTER).timeout_s == 120


@pytest.mark.parametrize(("change", "message"), [
    ({"JAX_PROCESS_ID": None}, "needs JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.5"}, "not host:port"),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES=two must be a whole number"),
    ({"JAX_PROCESS_ID": "2"}, "must be below JAX_NUM_PROCESSES=2"),
    ({"SUITE_CLUSTER_TIMEOUT": "0"}, "SUITE_CLUSTER_TIMEOUT=0"),
])
def test_a_bad_cluster_description_is_one_clear_error(change, message):
    environ = {k: v for k, v in {**CLUSTER, **change}.items() if v is not None}
    with pytest.raises(SuiteError, match=message):
        cluster_from_env(environ)


def test_each_process_feeds_an_equal_share_of_every_global_batch():
    x, y = np.arange(7)[:, None], np.arange(7)
    shares = [Distribution("multiworker", 2, ("cpu:0", "cpu:1"), "test", processes=2, process_id=i).share(x, y)
              for i in (0, 1)]
    assert [list(share[1]) for share in shares] == [[0, 2, 4], [1, 3, 5]]  # the same length: one image left out
    assert Distribution("multiworker", 2, (), "test", processes=2).local_batch(64) == 32
    with pytest.raises(SuiteError, match="multiple of 2"):
        Distribution("multiworker", 2, (), "test", processes=2).local_batch(9)


# ----------------------------------------------------------------------------------
# Two local processes (JAX, gloo over 127.0.0.1)
# ----------------------------------------------------------------------------------


@pytest.mark.jax
@pytest.mark.slow
def test_two_processes_train_like_one_and_only_process_0_keeps_a_folder(tmp_path, tiny_data):
    pytest.importorskip("jax")
    port = _free_port()
    procs = {
        "p0": _start(tmp_path, tiny_data, tmp_path / "out0", "p0", _env(tmp_path, port, 0), "multiworker"),
        "p1": _start(tmp_path, tiny_data, tmp_path / "out1", "p1", _env(tmp_path, port, 1), "multiworker"),
        "single": _start(tmp_path, tiny_data, tmp_path / "single", "single", _env(tmp_path), "none"),
    }
    _wait(procs, TIMEOUT_S)
    text = {name: ((tmp_path / f"{name}.out").read_text(), (tmp_path / f"{name}.err").read_text())
            for name in procs}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {text[name][1][-3000:]}"

    assert len(text["p0"][0].strip().splitlines()) == 1, text["p0"][0]  # stdout: the run folder alone
    run_dir = Path(text["p0"][0].strip())
    assert run_dir.parent == tmp_path / "out0"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["strategy"] == "multiworker"
    assert manifest["replicas"] == 2 and manifest["distribution"]["processes"] == 2
    assert manifest["runtime"]["cluster"]["processes"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["n_test"] > 0

    # Process 1 trained and evaluated too, and kept nothing: no run folder, its scratch folder removed.
    assert "process 1 of 2 done" in text["p1"][1]
    assert not (tmp_path / "out1").exists()
    assert list((tmp_path / "tmp1").iterdir()) == []
    assert str(tmp_path) not in text["p1"][0]

    single_dir = Path(text["single"][0].strip().splitlines()[-1])
    two, one = _losses(run_dir), _losses(single_dir)
    print(f"2 processes: {two}; 1 process: {one}")
    # Epoch 1: the loss of the initial model on the whole batch (BatchNorm over both halves);
    # epoch 2: after one update with the gradient summed over both processes.
    for (loss2, _), (loss1, _) in zip(two, one, strict=True):
        assert loss2 == pytest.approx(loss1, rel=LOSS_RTOL)


@pytest.mark.jax
@pytest.mark.slow
def test_a_dead_worker_ends_the_other_with_one_error_line(tmp_path, tiny_data):
    pytest.importorskip("jax")
    port = _free_port()
    procs = {f"p{i}": _start(tmp_path, tiny_data, tmp_path / f"out{i}", f"p{i}", _env(tmp_path, port, i),
                             "multiworker") for i in (0, 1)}
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # Kill process 1 mid-run: once it has its data (the cluster has formed) and process 0 has made
        # its run folder (on a loaded machine process 0 can still be preparing its data then).
        while ("data ready" not in (tmp_path / "p1.err").read_text()
               or not any((tmp_path / "out0").glob("*/manifest.json"))):
            assert procs["p1"].poll() is None and procs["p0"].poll() is None, (tmp_path / "p0.err").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        procs["p1"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs["p0"].wait(timeout=120)
        waited = time.monotonic() - killed
    finally:
        _wait(procs, 1)
    err = (tmp_path / "p0.err").read_text()
    print(f"process 0 exited {waited:.1f}s after process 1 was killed")
    assert procs["p0"].returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: process 0 of 2 stopped") and "Traceback" not in err, err[-3000:]
    assert waited < 60
    manifest = json.loads(next((tmp_path / "out0").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "failed" and "process 0 of 2 stopped" in manifest["error"]
