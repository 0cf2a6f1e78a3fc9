"""Whatever a user can cause ends in one clear line and a non-zero exit, and leaves nothing half-made."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from suite import runs
from suite.cli import main
from suite.errors import SuiteError
from tests.imagegen import make_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--backbone", "mobilenetv2", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
              "--weights", "none", "--quiet"]


def _suite(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _last_error_line(stderr: str) -> str:
    """After the status lines a command printed while it worked, the one line of its error."""
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr
    return line


# -- bad values stop at the boundary ----------------------------------------------------------------

@pytest.mark.parametrize("flag, value, says", [
    ("--learning-rate", "0", "expected a positive number"),
    ("--learning-rate", "-0.1", "expected a positive number"),
    ("--learning-rate", "nan", "expected a finite number"),
    ("--dropout", "1.0", "dropout rate in [0, 1)"),
    ("--epochs", "zero", "expected a positive integer"),
    ("--image-size", "16", "at least 32"),
])
def test_bad_values_are_one_line_and_make_no_folder(tmp_path, capsys, flag, value, says):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as stop:
        main(["run", "--out", str(out), flag, value])
    assert stop.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert says in line and flag in line
    assert not out.exists()


@pytest.mark.parametrize("backend, says", [("foo", "is not a Keras backend"),
                                           ("openvino", "which is not installed")])
def test_an_unknown_or_missing_backend_is_one_line_and_makes_no_folder(tmp_path, backend, says):
    out = tmp_path / "runs"
    done = _suite("run", "--out", str(out), env={"KERAS_BACKEND": backend}, timeout=60)
    assert done.returncode == 2
    assert says in _one_error_line(done.stderr) and "KERAS_BACKEND" in done.stderr
    assert not out.exists()


def test_a_config_built_in_code_fails_with_the_suites_error():
    from suite.config import resolve_config

    with pytest.raises(SuiteError, match="learning_rate must be positive"):
        resolve_config({"learning_rate": 0.0})


# -- folders that are not what they claim -------------------------------------------------------------

@pytest.mark.parametrize("manifest", [None, "{half", "[]"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_on_a_broken_run_folder_are_one_line(tmp_path, capsys, manifest, command):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if manifest is not None:
        (run_dir / runs.MANIFEST).write_text(manifest, encoding="utf-8")
    data = make_dataset(tmp_path / "data", n_train=2, n_test=1)
    args = [str(run_dir), str(next(data.rglob("*.png")))] if command == "predict" else \
        [str(run_dir), "--data", str(data), "--out", str(tmp_path / "evals")]
    assert main([command, *args]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and str(run_dir) in line


def test_report_on_a_folder_of_no_kind_names_the_kinds(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "run" in line and "cv" in line and "audit" in line


def test_a_model_with_code_in_it_is_refused_in_one_line(tmp_path, capsys):
    """A tampered model.keras with a Lambda layer: Keras's safe mode refuses it; so does the suite, in one line."""
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Lambda(lambda x: x * 2.0)(inputs)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keras.Model(inputs, outputs).save(run_dir / runs.MODEL)
    (run_dir / runs.MANIFEST).write_text(json.dumps({
        "status": "completed", "backbone": "x", "dataset": {"labels": ["a", "b", "c", "d"]},
        "config": {"image_size": 32}}), encoding="utf-8")
    data = make_dataset(tmp_path / "data", n_train=2, n_test=1)
    assert main(["predict", str(run_dir), str(next(data.rglob("*.png")))]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot load {run_dir / runs.MODEL}") and "Lambda" in line


def test_output_inside_the_dataset_is_refused(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_train=3, n_test=1)
    assert main(["run", "--data", str(data), "--out", str(data / "runs"), *TINY_FLAGS]) == 2
    assert "inside the dataset folder" in _one_error_line(capsys.readouterr().err)
    assert not (data / "runs").exists()


def test_predict_keeps_one_image_per_line_whatever_its_name(tmp_path):
    from suite.commands.predict import printable

    name = "a\nb\tc\\d" + os.fsdecode(b"\xff") + ".png"
    assert "\n" not in printable(name) and "\t" not in printable(name)
    assert printable(name) == "a\\nb\\tc\\\\d\\udcff.png"


# -- locks ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_process_on_a_locked_folder_is_told_who_holds_it(tiny_data, tmp_path, capsys):
    """A CV folder held by another live process: `cv --resume` on it exits naming the holder's PID."""
    cv_dir = tmp_path / "runs" / "20260101-000000-cv-mobilenetv2"
    cv_dir.mkdir(parents=True)
    (cv_dir / runs.CV).write_text(json.dumps({"status": "running", "folds": []}), encoding="utf-8")
    with _live_process() as pid:
        (cv_dir / runs.LOCK).write_text(json.dumps({"pid": pid, "host": runs.process_stamp()["host"],
                                                    "command": "cv", "since": "now"}), encoding="utf-8")
        code = main(["cv", "--folds", "2", "--data", str(tiny_data), "--out", str(tmp_path / "runs"),
                     "--resume", str(cv_dir), *TINY_FLAGS])
    assert code == 2
    line = _last_error_line(capsys.readouterr().err)
    assert f"in use by process {pid}" in line
    assert sorted(p.name for p in cv_dir.iterdir()) == sorted([runs.CV, runs.LOCK])  # nothing trained


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / runs.LOCK).write_text(json.dumps({"pid": int(done.stdout), "host": runs.process_stamp()["host"]}),
                                      encoding="utf-8")
    with runs.folder_lock(tmp_path, "cv") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(SuiteError, match=f"in use by process {os.getpid()}"):
            with runs.folder_lock(tmp_path, "tune"):
                pass
    assert not (tmp_path / runs.LOCK).exists()


# -- signals and full disks ------------------------------------------------------------------------------

def _no_temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


@pytest.mark.slow
def test_sigterm_during_training_leaves_a_failed_manifest(tiny_data, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "suite", "run", "--data", str(tiny_data), "--out", str(out), *TINY_FLAGS,
           "--epochs", "200"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("*/" + runs.HISTORY)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "terminated by SIGTERM"
    run_dir = next(out.glob("*-mobilenetv2"))
    manifest = json.loads((run_dir / runs.MANIFEST).read_text())
    assert (manifest["status"], manifest["error"]) == ("failed", "terminated by SIGTERM")
    assert runs.status_of(manifest) == "failed"
    assert not _no_temporary_files(run_dir)
    assert "failed" in (out / runs.INDEX).read_text(encoding="utf-8")


def test_a_running_manifest_whose_process_is_gone_reads_as_stopped(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    manifest = {"status": "running", "pid": int(done.stdout), "host": runs.process_stamp()["host"]}
    assert runs.status_of(manifest) == "stopped" and "is gone" in runs.status_text(manifest)
    assert runs.status_of({**manifest, **runs.process_stamp()}) == "running"
    assert runs.status_of({"status": "running"}) == "running"  # no pid recorded: cannot tell


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("full", ["out", "cache"])
def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tiny_data, tmp_path, full):
    """A real small file system: for --out, model.keras (about 9 MB) cannot fit in 2 MB; for the cache, the
    decoded images (56 images at 64 px, about 0.7 MB) cannot fit in 128 KB."""
    small = tmp_path / "small"
    with _small_filesystem(small, "2m" if full == "out" else "128k"):
        out = small / "runs" if full == "out" else tmp_path / "runs"
        env = {"SUITE_CACHE_DIR": str(small / "cache" if full == "cache" else tmp_path / "cache")}
        done = _suite("run", "--data", str(tiny_data), "--out", str(out), *TINY_FLAGS, "--image-size", "64",
                      env=env)
        assert done.returncode == 2, done.stderr[-3000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("error: no space left on device writing ") and "MB free" in line
        assert "Traceback" not in done.stderr
        assert not _no_temporary_files(small)
        if full == "out":
            manifest = json.loads(next(out.glob("*-mobilenetv2/" + runs.MANIFEST)).read_text())
            assert manifest["status"] == "failed" and manifest["error"].startswith("disk full: ")
        else:
            assert not out.exists() or not list(out.glob("*-mobilenetv2"))  # stopped before a run folder
