"""The real MRI dataset (``$SUITE_REAL_DATA``): layout, labels, decoding, cache. No training."""

from __future__ import annotations

import pytest

from suite.data.dataset import prepare_data
from suite.data.discover import CANONICAL_LABELS, discover

pytestmark = pytest.mark.realdata


def test_official_split_and_canonical_labels(real_data):
    index = discover(real_data)
    assert index.layout == "split"
    assert index.labels == CANONICAL_LABELS
    assert sum(e.split == "test" for e in index.entries) == 394
    assert sum(e.split == "train" for e in index.entries) == 2870


def test_decode_then_cache_hit(real_data):
    index = discover(real_data)
    kw = dict(image_size=32, val_fraction=0.1, test_fraction=0.2, seed=0, progress=False)
    first = prepare_data(index, **kw)
    second = prepare_data(index, **kw)
    assert second.cache_hit and second.split_fingerprint == first.split_fingerprint
    assert sum(first.class_counts()["test"].values()) == 394
    assert first.class_counts()["test"] == {"glioma": 100, "meningioma": 115, "pituitary": 74, "no_tumor": 105}
    assert second.seconds < first.seconds
