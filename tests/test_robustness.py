"""``suite robustness``: the corruptions do what their names say, and the command scores a run under them.

The corruption tests work on phantom slices in memory (no training, milliseconds each). The
command tests share one robustness folder made from the tiny mobilenetv2 run of the
``comparison`` fixture (trained once for the whole session).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from suite import runs
from suite.cli import build_parser, main
from suite.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_names, get_corruption
from tests.comparefixture import slice_image

NAMES = corruption_names()


def _slices(n: int = 4, size: int = 64) -> np.ndarray:
    """``n`` grey phantom slices as uint8 RGB, as the decoder gives them."""
    return np.stack([slice_image(i % 4, i, size) for i in range(n)])[..., None].repeat(3, axis=3)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def _high_frequency(images: np.ndarray) -> float:
    """Energy of the discrete Laplacian: what blur and resolution loss take away."""
    x = images[..., 0].astype(np.float64)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float((lap ** 2).mean())


def _centre_of_mass(images: np.ndarray) -> np.ndarray:
    x = images[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0:x.shape[1], 0:x.shape[2]]
    total = x.sum(axis=(1, 2))
    return np.stack([(x * yy).sum(axis=(1, 2)) / total, (x * xx).sum(axis=(1, 2)) / total], axis=1)


# -- every corruption -----------------------------------------------------------------------------

def test_the_registry_holds_the_nine_mri_corruptions_with_five_severities_each():
    assert set(NAMES) == {"bias_field", "rician_noise", "gaussian_blur", "motion_ghosting", "gamma", "jpeg",
                          "resolution", "rotation", "translation"}
    assert all(len(c.values) == len(SEVERITIES) for c in CORRUPTIONS.values())
    with pytest.raises(KeyError, match="did you mean 'gaussian_blur'"):
        get_corruption("gausian_blur")


@pytest.mark.parametrize("name", NAMES)
def test_a_corruption_is_deterministic_keeps_shape_and_dtype_and_leaves_its_input_alone(name):
    x = _slices()
    before = x.copy()
    a, b = corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7)
    assert a.dtype == np.uint8 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(corrupt(x, name, 0), x)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all(), "a grey scan stays grey"


@pytest.mark.parametrize("name", NAMES)
def test_distance_from_the_clean_image_grows_with_severity(name):
    x = _slices()
    distances = [_distance(corrupt(x, name, s), x) for s in (0, *SEVERITIES)]
    assert distances[1] > 0
    assert all(later >= earlier for earlier, later in zip(distances, distances[1:])), distances
    assert distances[-1] > distances[1], distances


@pytest.mark.parametrize("name", NAMES)
def test_a_colour_batch_is_corrupted_channel_by_channel_as_well(name):
    x = _slices(2)
    x[..., 1] //= 2  # no longer grey: every channel is worked on
    out = corrupt(x, name, 2)
    assert out.shape == x.shape and out.dtype == np.uint8 and _distance(out, x) > 0


@pytest.mark.parametrize("name", ["gaussian_blur", "resolution"])
def test_blur_and_resolution_loss_lower_high_frequency_energy(name):
    x = _slices()
    energy = [_high_frequency(corrupt(x, name, s)) for s in (0, 1, 3, 5)]
    assert energy == sorted(energy, reverse=True) and energy[-1] < 0.5 * energy[0], energy


def test_rician_noise_raises_variance_in_flat_regions_and_lifts_the_dark_background():
    flat = np.full((8, 32, 32, 3), 120, dtype=np.uint8)
    flat[:, :, :16] = 0  # black background, as outside the head
    out = [corrupt(flat, "rician_noise", s).astype(np.float64) for s in (1, 3, 5)]
    stds = [o[:, :, 16:, 0].std() for o in out]
    assert 0 < stds[0] < stds[1] < stds[2]
    assert all(o[:, :, :16].mean() > 1 for o in out), "Rician noise is positive: a zero background rises"


def test_jpeg_at_low_quality_leaves_8x8_block_artefacts():
    x = _slices(4, 64)
    error = corrupt(x, "jpeg", 5).astype(np.float64)[..., 0]
    jumps = np.abs(np.diff(error, axis=2))  # jumps between horizontal neighbours
    across = jumps[:, :, 7::8].mean()  # between columns 7|8, 15|16, ...: across a block edge
    within = np.delete(jumps, np.s_[7::8], axis=2).mean()
    assert across > 1.2 * within, (across, within)


@pytest.mark.parametrize("name", ["rotation", "translation"])
def test_rotation_and_translation_move_the_centre_of_mass(name):
    x = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    x[:, 10:22, 40:52] = 200  # an off-centre blob: rotating about the centre moves it
    shift = [np.linalg.norm(_centre_of_mass(corrupt(x, name, s)) - _centre_of_mass(x), axis=1).min()
             for s in (1, 3, 5)]
    assert 0.3 < shift[0] < shift[1] < shift[2], shift
    if name == "translation":  # 12% of the side at severity 5
        assert shift[2] == pytest.approx(0.12 * 64, rel=0.15)


def test_gamma_darkens_mid_tones_and_keeps_black_and_white():
    x = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (1, 4, 256, 3)).copy()
    means = [corrupt(x, "gamma", s).mean() for s in (0, *SEVERITIES)]
    assert means == sorted(means, reverse=True) and means[-1] < 0.6 * means[0]
    out = corrupt(x, "gamma", 5)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 255, 0] == 255


def test_bias_field_is_one_smooth_multiplicative_field():
    """The same draws on two different images give the same gain per pixel, and that gain varies smoothly."""
    a, b = _slices(2)[:1], _slices(2)[1:]
    a, b = np.maximum(a, 60), np.maximum(b, 60)  # bright enough for the ratio to be exact to rounding
    gain_a = corrupt(a, "bias_field", 5).astype(np.float64) / a
    gain_b = corrupt(b, "bias_field", 5).astype(np.float64) / b
    np.testing.assert_allclose(gain_a, gain_b, atol=0.02)
    assert gain_a.max() / gain_a.min() > 1.5, "severity 5 is a visible inhomogeneity"
    assert np.abs(np.diff(gain_a[0, :, :, 0], axis=1)).max() < 0.06, "smooth: no pixel-to-pixel jumps"


def test_motion_ghosting_puts_signal_into_the_background_along_the_phase_encode_direction():
    x = _slices()
    background = [corrupt(x, "motion_ghosting", s)[:, :5].astype(np.float64).mean() for s in (0, 1, 5)]
    assert background[0] < background[1] < background[2]


def test_leak_free_figures_are_those_of_the_unseen_images_and_absent_when_unknown():
    from suite.commands.robustness import _figures, summarise

    labels = ["a", "b"]
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])  # right, wrong, right, wrong
    unseen = np.array([True, False, True, True])
    clean = _figures(probs, y, labels, unseen)
    assert clean["accuracy"] == 0.5 and clean["leak_free_accuracy"] == pytest.approx(2 / 3)
    cell = {"severity": 1, **_figures(probs[[1, 1, 2, 3]], y, labels, unseen)}  # wrong, wrong, right, wrong
    corruptions = [{"name": "x", "results": [cell], "mean_accuracy": cell["accuracy"]}]
    record = summarise(clean, corruptions, unseen)
    assert record["leak_free"]["n_images"] == 3 and record["leak_free_mean_corruption_accuracy"] == pytest.approx(1 / 3)
    assert record["leak_free"]["relative_robustness"] == pytest.approx(0.5)
    every_image_seen = np.zeros(4, dtype=bool)
    assert _figures(probs, y, labels, every_image_seen)["leak_free_accuracy"] is None
    unknown = summarise({**clean, "leak_free_accuracy": None},
                        [{"name": "x", "results": [{**cell, "leak_free_accuracy": None}], "mean_accuracy": 0.25}])
    assert unknown["leak_free"] is None and unknown["leak_free_mean_corruption_accuracy"] is None


# -- the command ----------------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def robustness_run(runs_by_backbone, tiny_data, tmp_path_factory):
    """``suite robustness RUN --out DIR`` on the tiny mobilenetv2 run; with the data's snapshot before and after."""
    out = tmp_path_factory.mktemp("robustness")
    run_dir = runs_by_backbone["mobilenetv2"]
    before = _snapshot(tiny_data)
    assert main(["robustness", str(run_dir), "--out", str(out), "--quiet"]) == 0
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1
    return {"folder": folders[0], "run_dir": run_dir, "out": out, "before": before, "after": _snapshot(tiny_data)}


def test_robustness_writes_consistent_figures_report_and_index_and_touches_no_file(robustness_run, capsys):
    folder = robustness_run["folder"]
    assert robustness_run["after"] == robustness_run["before"], "the test images on disk must not change"
    assert runs.kind_of(folder).name == "robustness"
    record = json.loads((folder / runs.ROBUSTNESS).read_text())
    with open(folder / runs.ROBUSTNESS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    cells = [float(r["accuracy"]) for r in rows if r["corruption"] != "clean"]
    assert len(cells) == len(NAMES) * len(SEVERITIES)
    assert [r["corruption"] for r in rows][0] == "clean" and float(rows[0]["accuracy"]) == record["clean"]["accuracy"]
    assert record["mean_corruption_accuracy"] == pytest.approx(np.mean(cells))
    assert record["relative_robustness"] == pytest.approx(np.mean(cells) / record["clean"]["accuracy"])
    assert record["worst"]["corruption"] in NAMES and record["n_images"] == record["clean"]["n_test"] == 16
    assert record["source_run"] == str(robustness_run["run_dir"])
    seen = record["seen_in_training"]
    assert "test images" in seen["text"] and seen["n_evaluated"] == 16  # each checked against the training record
    leak_free = record["leak_free"]
    assert leak_free["n_images"] == 16 - seen["count"]
    if leak_free["n_images"]:
        free = [float(r["leak_free_accuracy"]) for r in rows if r["corruption"] != "clean"]
        assert record["leak_free_mean_corruption_accuracy"] == pytest.approx(np.mean(free))
        assert leak_free["relative_robustness"] == pytest.approx(np.mean(free) / leak_free["clean_accuracy"])
    with np.load(folder / runs.ROBUSTNESS_EXAMPLES) as examples:
        assert all(examples[name].shape == (1 + len(SEVERITIES), 32, 32, 3) for name in NAMES)
    report = (folder / runs.REPORT).read_text()
    assert all(f"{name} " in report for name in NAMES) and "data:image/png;base64," in report
    assert "mean corruption accuracy" in report and "seen in training" in report.lower()
    assert 'id="leak-free"' in report and "mean, leak-free" in report
    assert folder.name in (robustness_run["out"] / runs.INDEX).read_text()
    (folder / runs.REPORT).unlink()
    assert main(["report", str(folder)]) == 0  # re-rendered from the folder alone
    assert (folder / runs.REPORT).is_file() and str(folder / runs.REPORT) in capsys.readouterr().out


def test_robustness_on_another_dataset_says_how_much_of_it_copies_training_images(robustness_run, tiny_data,
                                                                                  tmp_path):
    """``--data``: a test set of 8 copies of training images and 16 new ones is reported as such, and its
    leak-free figures are those of the 16 new images alone."""
    external, new_only = tmp_path / "external", tmp_path / "new-only"
    for folder in sorted((tiny_data / "Training").iterdir()):
        target = external / "Testing" / folder.name
        target.mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            shutil.copy(image, target / image.name)
        (new_only / "Testing" / folder.name).mkdir(parents=True)
        for image in sorted((tiny_data / "Testing" / folder.name).iterdir()):
            for root in (external, new_only):
                shutil.copy(image, root / "Testing" / folder.name / f"new-{image.name}")
    records = {}
    for name, data in (("mixed", external), ("new", new_only)):
        out = tmp_path / f"out-{name}"
        assert main(["robustness", str(robustness_run["run_dir"]), "--data", str(data), "--out", str(out),
                     "--severities", "5", "--quiet"]) == 0
        records[name] = json.loads(next(out.glob("*/" + runs.ROBUSTNESS)).read_text())
    record = records["mixed"]
    assert record["severities"] == [5] and record["n_images"] == 24
    assert record["seen_in_training"]["count"] == 8 and record["seen_in_training"]["fraction"] == pytest.approx(1 / 3)
    assert record["leak_free"]["n_images"] == 16
    assert record["leak_free"]["clean_accuracy"] == pytest.approx(records["new"]["clean"]["accuracy"])
    assert records["new"]["leak_free"]["n_images"] == 16 and records["new"]["seen_in_training"]["count"] == 0


@pytest.mark.parametrize("argv, says", [
    (["--severities", "0"], "severities from 1 to 5"),
    (["--severities", "two"], "expected severities"),
    (["--bogus"], "unrecognized arguments"),
])
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as exc:
        main(["robustness", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


@pytest.mark.parametrize("manifest", [None, "{half", '{"status": "failed", "config": {"image_size": 32}}'])
def test_a_bad_run_folder_is_one_line_and_exit_2_and_makes_nothing(tmp_path, capsys, manifest):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if manifest is not None:
        (run_dir / runs.MANIFEST).write_text(manifest, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["robustness", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(run_dir) in err[0]
    assert not out.exists()


def test_compare_robustness_adds_its_columns_to_the_leaderboard_and_report(comparison, robustness_run, tmp_path):
    """The leaderboard of ``compare --robustness``, built from two tiny runs: one scored, one whose scoring failed."""
    from suite.commands.compare import write_comparison
    from suite.metrics import ROBUSTNESS_COLUMNS

    assert build_parser().parse_args(["compare", "--robustness"]).robustness
    members = json.loads((comparison / runs.COMPARISON).read_text())["runs"]
    members = sorted(members, key=lambda m: m["backbone"] != "mobilenetv2")[:2]  # two models: two Grad-CAM passes
    results = []
    for m in members:
        run_dir = (comparison / m["run_dir"]).resolve()
        scored = {"folder": robustness_run["folder"], "error": None} if m["backbone"] == "mobilenetv2" else \
            {"folder": None, "error": "SuiteError: could not be scored"}
        results.append({"backbone": m["backbone"], "replicate": 0, "run_dir": run_dir, "status": "completed",
                        "error": None, "robustness": scored})
    folder = write_comparison(tmp_path / "out", results, robustness=True, log=lambda message: None)
    with open(folder / runs.LEADERBOARD_CSV, newline="") as f:
        rows = {r["backbone"]: r for r in csv.DictReader(f)}
    record = json.loads((robustness_run["folder"] / runs.ROBUSTNESS).read_text())
    for column in ROBUSTNESS_COLUMNS:
        assert float(rows["mobilenetv2"][column]) == pytest.approx(record[column])
        assert all(row[column] == "" for name, row in rows.items() if name != "mobilenetv2")
    report = (folder / runs.REPORT).read_text()
    assert 'id="robustness"' in report and "could not be scored" in report and "robustness report" in report
