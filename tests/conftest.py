"""Shared fixtures. The environment is fixed before anything imports Keras."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Isolate every cache the suite or Keras would touch, and make any download attempt
# fail at once on a closed local port: tests never fetch models or data.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="suite-tests-"))
os.environ["SUITE_CACHE_DIR"] = str(_SESSION_TMP / "cache")
os.environ["KERAS_HOME"] = str(_SESSION_TMP / "keras")
for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ[var] = "http://127.0.0.1:9"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tests.imagegen import TINY_RUN, make_dataset  # noqa: E402

SEED = int(os.environ.get("SUITE_TEST_SEED", "0"))

# Fixtures that train real models: a test using any of them is marked slow, so
# `python -m pytest -m "not slow"` (the quick tier) never trains. Tests that train
# without one of these carry @pytest.mark.slow themselves.
TRAINING_FIXTURES = ("comparison", "runs_by_backbone", "full_search", "resumed_search", "head_trials",
                     "killed_cv")
# Not training, but seconds each (a browser start, the real dataset): kept out of the quick tier too.
SLOW_MARKERS = ("browser", "realdata")


def pytest_collection_modifyitems(config, items):
    for item in items:
        trains = set(TRAINING_FIXTURES) & set(getattr(item, "fixturenames", ()))
        if trains or any(item.get_closest_marker(m) for m in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed numpy, random and (when loaded) Keras; override with SUITE_TEST_SEED."""
    random.seed(SEED)
    np.random.seed(SEED)
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(SEED)
    yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small split-layout dataset: 4 classes under Kaggle-style folder names."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    make_dataset(root, layout="split", n_train=10, n_test=4)
    return root


@pytest.fixture(scope="session")
def comparison(tiny_data, tmp_path_factory) -> Path:
    """One real `compare` over the three reference backbones on the tiny data (one epoch, 32 px).

    Shared by the run-folder, comparison and evaluation tests, so each backbone trains once.
    """
    from backbones import expand_backbones
    from suite.commands.compare import compare

    out = tmp_path_factory.mktemp("runs")
    return compare({"data": str(tiny_data), "out": str(out), **TINY_RUN}, expand_backbones("reference"),
                   progress=False, log=lambda message: None)


@pytest.fixture(scope="session")
def runs_by_backbone(comparison) -> dict[str, Path]:
    import json

    runs = json.loads((comparison / "comparison.json").read_text())["runs"]
    return {r["backbone"]: (comparison / r["run_dir"]).resolve() for r in runs}


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real MRI dataset named by $SUITE_REAL_DATA; the test is skipped without it."""
    value = os.environ.get("SUITE_REAL_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("real data not available: set SUITE_REAL_DATA to the dataset folder")
    return Path(value)
