"""Seeded fuzzing of the data layer: damaged JPEG and PNG files among good ones.

A few hundred files are made from real JPEG and PNG files (written here by Pillow) by flipping
random bytes, truncating, or both, and placed in a dataset's class folders beside enough good
images, with a few decompression bombs. ``suite audit`` and the data stage of ``suite run`` must
finish, every file must be either used or listed as skipped with its reason, and decoding must
stay within a memory bound. Seeded: ``SUITE_FUZZ_SEED`` replays another case, and every failure
message names the seed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite.cli import main
from suite.runs import AUDIT
from tests.imagegen import TINY_RUN, class_image, make_dataset
from tests.test_data import png_with_size

SEED = int(os.environ.get("SUITE_FUZZ_SEED", "20261202"))
N_FUZZED = 300
CLASSES = ("glioma", "meningioma", "pituitary", "no_tumor")
# Peak RSS of a process decoding every file below (two threads). Python with NumPy and Pillow takes
# about 35 MB and the whole decode about 45 MB; decoding the 81-megapixel PNG planted among the files
# (over suite.data.decode.MAX_PIXELS, under Pillow's own limit) would take more than 300 MB on its
# own, so a decoder that let it through fails here.
PEAK_RSS_BOUND_MB = 250


def _originals(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Real files in the formats and modes scans come in: ``(extension, bytes)``."""
    grey = Image.fromarray(class_image(0, rng, 64))
    colour = Image.fromarray(np.stack([class_image(c, rng, 64) for c in range(3)], axis=-1))
    variants = [("jpg", grey, {"quality": 90}), ("jpg", colour, {"quality": 75, "progressive": True}),
                ("jpg", colour, {"quality": 95, "subsampling": 0}), ("png", grey, {}),
                ("png", colour.convert("RGBA"), {}), ("png", colour.convert("P"), {}),
                ("png", Image.fromarray(class_image(1, rng, 64).astype(np.uint16) * 200), {})]
    out = []
    for ext, image, options in variants:
        buf = io.BytesIO()
        image.save(buf, "JPEG" if ext == "jpg" else "PNG", **options)
        out.append((ext, buf.getvalue()))
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """Flip random bytes (anywhere, or in the header), truncate, or both."""
    kind = str(rng.choice(["flip", "flip-header", "truncate", "flip+truncate"]))
    out = bytearray(data)
    if kind.startswith("flip"):
        span = min(len(out), 64) if kind == "flip-header" else len(out)
        for at in rng.integers(0, span, size=int(rng.integers(1, 24))):
            out[at] ^= int(rng.integers(1, 256))
    if kind.endswith("truncate"):
        del out[int(rng.integers(0, len(out))):]
    return kind, bytes(out)


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory) -> tuple[Path, int]:
    """The dataset and how many files it holds."""
    rng = np.random.default_rng(SEED)
    root = make_dataset(tmp_path_factory.mktemp("fuzz") / "data", layout="flat", folders=CLASSES,
                        n_train=10, n_test=0, size=48, seed=SEED % 1000)
    originals = _originals(rng)
    for i in range(N_FUZZED):
        ext, data = originals[int(rng.integers(len(originals)))]
        kind, damaged = _mutate(data, rng)
        (root / CLASSES[i % len(CLASSES)] / f"fuzz-{i:03d}-{kind}.{ext}").write_bytes(damaged)
    png_with_size(root / "glioma" / "bomb-81mpx.png", 9000, 9000, pixels=True)
    png_with_size(root / "meningioma" / "bomb-144mpx.png", 12000, 12000)
    png_with_size(root / "pituitary" / "bomb-400mpx.png", 20000, 20000)
    return root, sum(len(files) for _, _, files in os.walk(root))


def _all_files(root: Path) -> set[str]:
    return {os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names}


def test_audit_finishes_and_accounts_for_every_file(fuzz_data, tmp_path, capsys):
    root, n_files = fuzz_data
    assert main(["audit", "--data", str(root), "--out", str(tmp_path), "--quiet"]) == 0, f"seed {SEED}"
    result = json.loads((Path(capsys.readouterr().out.strip()) / AUDIT).read_text(encoding="utf-8"))
    counts, skipped = result["counts"], result["skipped"]
    assert counts["files"] == n_files and counts["images"] + len(skipped) == n_files, f"seed {SEED}"
    assert all(isinstance(s["reason"], str) and s["reason"] for s in skipped), f"seed {SEED}"
    assert {str(root / f["path"]) for f in result["files"]} == _all_files(root), f"seed {SEED}"
    assert len(skipped) > N_FUZZED // 4, f"seed {SEED}: the fuzzing damaged too little to test anything"


def test_the_data_stage_uses_or_skips_every_file_with_a_reason(fuzz_data, tmp_path):
    from suite.commands.run import prepare

    root, n_files = fuzz_data
    data = prepare({"data": str(root), "out": str(tmp_path), **TINY_RUN}, progress=False, log=lambda m: None).data
    used, skipped = {str(e.path) for e in data.entries}, {s["path"]: s["reason"] for s in data.skipped}
    assert len(used) + len(skipped) == n_files and not used & set(skipped), f"seed {SEED}"
    assert used | set(skipped) == _all_files(root), f"seed {SEED}"
    assert all(isinstance(r, str) and r for r in skipped.values()), f"seed {SEED}"
    for name in ("bomb-81mpx.png", "bomb-144mpx.png", "bomb-400mpx.png"):
        reason = next(r for p, r in skipped.items() if p.endswith(name))
        assert reason.startswith("image too large") and "limit of" in reason, reason


DECODE_AND_MEASURE = """
import json, re, sys
from pathlib import Path
from suite.data.decode import load_images
decoded = load_images(sys.argv[1:], 64, workers=2, progress=False)
peak_kb = int(re.search(r"VmHWM:\\s*(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"peak_mb": peak_kb / 1024, "skipped": sum(r is not None for r in decoded.reasons)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc/self/status")
def test_decoding_memory_stays_bounded(fuzz_data, tmp_path):
    """Measured in a process of its own, from its own memory's high-water mark (VmHWM). Not from
    ``getrusage``: Linux carries the RSS of the process that forked a child into the child's
    ``ru_maxrss`` (at exec), and so into ``RUSAGE_CHILDREN``, and this test process holds
    TensorFlow (700 MB) once the data stage has run."""
    root, n_files = fuzz_data
    env = {**os.environ, "SUITE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", DECODE_AND_MEASURE, *sorted(_all_files(root))],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, f"seed {SEED}: {done.stderr[-2000:]}"
    assert "DecompressionBomb" not in done.stderr
    report = json.loads(done.stdout)
    assert report["peak_mb"] < PEAK_RSS_BOUND_MB, f"seed {SEED}: peak RSS {report['peak_mb']:.0f} MB"
    assert 0 < report["skipped"] < n_files
