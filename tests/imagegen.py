"""Write small, real image datasets for tests: learnable classes, odd files, odd names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# The smallest real training run: every test that trains uses it.
TINY_RUN = {"image_size": 32, "epochs": 1, "batch_size": 8, "weights": "none"}

# Kaggle-style folder names, so label aliasing is exercised everywhere.
FOLDERS = ("glioma_tumor", "meningioma_tumor", "pituitary_tumor", "no_tumor")


def class_image(class_index: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A noisy greyscale slice with a bright square whose position encodes the class."""
    img = (rng.random((size, size)) * 60).astype(np.uint8)
    if class_index < 3:
        y = 4 + class_index * (size // 3)
        img[y:y + size // 4, size // 4: size // 2] = 230
    return img


def make_dataset(
    root: str | Path,
    *,
    layout: str = "split",
    folders=FOLDERS,
    n_train: int = 10,
    n_test: int = 4,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write ``root/Training/<folder>/`` + ``root/Testing/<folder>/`` (``split``) or ``root/<folder>/`` (``flat``).

    File names carry spaces, parentheses and a non-ASCII letter, as real data does.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    parts = {"Training": n_train, "Testing": n_test} if layout == "split" else {"": n_train + n_test}
    for part, n in parts.items():
        for c, folder in enumerate(folders):
            d = root / part / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext = "jpg" if i % 2 else "png"
                Image.fromarray(class_image(c, rng, size)).save(d / f"image({i}) é.{ext}")
    return root
