"""`suite tune` under Keras Tuner's own chief/worker mode: one chief, two workers, one shared folder."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_TRIALS = 4
WORKERS = ("tuner0", "tuner1")
WORKER_TIMEOUT_S = 300  # every trial done
CHIEF_RESULT_TIMEOUT_S = 240  # after the workers: the chief's tuning.json, with its retrained best
CHIEF_EXIT_GRACE_S = 30  # then it may hang on (a known Keras Tuner behaviour): it is stopped


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, procs: dict) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                 f"exit codes: { {k: p.poll() for k, p in procs.items()} }")
        time.sleep(1)


def finished_tuning(folder: Path) -> dict | None:
    try:
        tuning = json.loads((folder / "tuning.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return tuning if tuning.get("status") in ("completed", "failed") else None


@pytest.mark.slow
def test_chief_and_two_workers_run_every_trial_once(tiny_data, tmp_path):
    folder = tmp_path / "search"
    # gRPC honours http(s)_proxy, which conftest points at a closed port: exempt the oracle's address.
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port()),
           "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}
    cmd = [sys.executable, "-m", "suite", "tune", "--data", str(tiny_data), "--out", str(folder),
           "--backbone", "mobilenetv2", "--image-size", "32", "--epochs", "1", "--weights", "none",
           "--finetune", "head", "--max-trials", str(MAX_TRIALS), "--compare-default", "--quiet"]
    procs, logs = {}, {}
    try:
        for tuner_id in ("chief", *WORKERS):
            logs[tuner_id] = tmp_path / f"{tuner_id}.log"
            with open(logs[tuner_id], "w") as log:
                procs[tuner_id] = subprocess.Popen(cmd, env={**env, "KERASTUNER_TUNER_ID": tuner_id}, cwd=REPO,
                                                   stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: all(procs[w].poll() is not None for w in WORKERS), WORKER_TIMEOUT_S,
                 "the workers to finish", procs)
        for w in WORKERS:
            assert procs[w].returncode == 0, logs[w].read_text()[-3000:]
        wait_for(lambda: finished_tuning(folder) is not None, CHIEF_RESULT_TIMEOUT_S,
                 "the chief's tuning.json", procs)
        tuning = finished_tuning(folder)
        try:  # the chief may not exit by itself; what it had to write is written
            procs["chief"].wait(timeout=CHIEF_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    # Every trial ran exactly once, on a worker.
    ids = [t["trial_id"] for t in tuning["trials"]]
    assert len(ids) == MAX_TRIALS == len(set(ids)), ids
    assert all(t["status"] == "COMPLETED" for t in tuning["trials"]), tuning["trials"]
    assert {t["tuner_id"] for t in tuning["trials"]} <= set(WORKERS)
    ran = [m for w in WORKERS for m in re.findall(r"^trial (\w+): ", logs[w].read_text(), flags=re.M)]
    assert sorted(ran) == sorted(ids), "a trial ran twice or not at all"
    # The chief reports the best and retrains it.
    assert tuning["role"] == "chief" and tuning["status"] == "completed", tuning.get("error")
    assert tuning["best"]["score"] == max(t["score"] for t in tuning["trials"])
    assert tuning["test_metrics"]["n_test"] == 16
    # ... and, as asked, the default settings beside it.
    assert tuning["default_test_metrics"]["n_test"] == 16
    assert tuning["default_hyperparameters"]["dropout"] == 0.5  # the reference recipe's
    assert tuning["default_hyperparameters"]["finetune"] == "head"  # fixed for the search, so for it too
    assert "Best versus default settings" in (folder / "report.html").read_text(encoding="utf-8")
    assert not re.findall(r"^trial \w+: ", logs["chief"].read_text(), flags=re.M), "the chief ran a trial"
