"""Tests for the comparison report, the runs index and report dispatch.

The fixture (``tests/comparefixture.py``) writes a realistic output folder: three
completed runs, one failed backbone, a comparison with Grad-CAM maps, and clutter.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import reports
from reports import (
    comparison,
    comparison_context,
    load_comparison,
    plots,
    write_comparison_report,
    write_index,
    write_report,
)
from tests.comparefixture import (
    BACKBONES,
    COMPARE_DIR,
    EVIL,
    FAILED,
    FAILED_ERROR,
    LABELS,
    SENTENCES,
    build_comparison,
    slice_image,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The output folder with the comparison report and the index written (once)."""
    paths = build_comparison(tmp_path_factory.mktemp("compare"))
    paths["report"] = write_comparison_report(paths["comp"])
    paths["html"] = paths["report"].read_text(encoding="utf-8")
    paths["index"] = write_index(paths["out"])
    paths["index_html"] = paths["index"].read_text(encoding="utf-8")
    return paths


@pytest.fixture
def fresh(tmp_path):
    """A fresh output folder (no reports written) that a test may change."""
    return build_comparison(tmp_path)


# ----------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------


def _members(n=2):
    from tests.comparefixture import metrics_for

    out = []
    for k in range(n):
        metrics = metrics_for(0.9 + 0.025 * k, (0.8, 0.95), 5.0 + k, 0.5)
        out.append({"name": f"net{k} $x$", "curves": metrics["roc_curves"], "reliability": metrics["reliability"],
                    "ece": metrics["ece"], "history": [{"epoch": 0, "val_accuracy": 0.5, "val_loss": 1.0},
                                                       {"epoch": 1, "val_accuracy": 0.7, "val_loss": 0.6}]})
    return out


@pytest.mark.parametrize("draw", [
    lambda: plots.per_class_f1_png(["a", "b"], [{"name": "n $1", "f1": [0.5, None], "ci": [[0.4, 0.6], None]},
                                                {"name": "m", "f1": [0.7, 0.8]}]),
    lambda: plots.roc_curves_png(LABELS, _members()),
    lambda: plots.reliability_png(_members(3)),
    lambda: plots.overlaid_curves_png(_members()),
    lambda: plots.accuracy_latency_png([{"name": "a", "latency_ms": 3, "accuracy": 0.9, "ci": [0.85, 0.93]},
                                        {"name": "b", "latency_ms": 9, "accuracy": 0.95},
                                        {"name": "c", "latency_ms": None, "accuracy": 0.99}]),
], ids=["per_class_f1", "roc", "reliability", "overlaid_curves", "accuracy_latency"])
def test_comparison_plots_return_png(draw):
    assert draw().startswith(PNG_MAGIC)


@pytest.mark.parametrize("draw", [
    lambda: plots.per_class_f1_png(["a"], [{"name": "n", "f1": [None]}]),
    lambda: plots.roc_curves_png(["a"], [{"name": "n", "curves": {}}]),
    lambda: plots.reliability_png([{"name": "n", "reliability": {"bin_lower": [0], "bin_upper": [1],
                                                                  "accuracy": [None], "confidence": [None]}}]),
    lambda: plots.overlaid_curves_png([{"name": "n", "history": [{"epoch": 0, "accuracy": 0.5}]}]),
    lambda: plots.accuracy_latency_png([{"name": "n", "latency_ms": None, "accuracy": 0.9}]),
], ids=["per_class_f1", "roc", "reliability", "overlaid_curves", "accuracy_latency"])
def test_comparison_plots_refuse_empty_input(draw):
    with pytest.raises(plots.NothingToPlot):
        draw()


@pytest.mark.parametrize("points, front", [
    ([(5, 0.9), (10, 0.95), (12, 0.93)], [0, 1]),
    ([(5, 0.9), (5, 0.9)], [0, 1]),  # identical points do not dominate each other
    ([(10, 0.95), (5, 0.96)], [1]),
    ([(5, None), (None, 0.9), (7, 0.8)], [2]),
    ([], []),
])
def test_pareto_front(points, front):
    assert plots.pareto_front([{"latency_ms": x, "accuracy": y} for x, y in points]) == front


def test_gradcam_overlay_colours_the_hot_region(tmp_path):
    from PIL import Image

    path = tmp_path / "slice.png"
    Image.fromarray(slice_image(0, seed=1)).save(path)
    heat = np.zeros((7, 7), np.float32)
    heat[:3, :3] = 1.0  # top-left hot, the rest cold
    with Image.open(io.BytesIO(plots.gradcam_overlay_png(path, heat, size=70))) as image:
        assert image.size == (70, 70) and image.mode == "RGB"
        hot, cold = image.getpixel((10, 10)), image.getpixel((60, 60))
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where hot, blue where cold
    assert plots.gradcam_overlay_png(tmp_path / "missing.png", heat) is None
    assert plots.gradcam_overlay_png(path, np.zeros((2, 3, 4))) is None


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def test_load_comparison_reads_everything(built):
    comp = load_comparison(built["comp"])
    assert comp["comparison"]["comparison_id"] == COMPARE_DIR
    assert set(comp["runs"]) == {*BACKBONES, FAILED[0]}
    assert comp["runs"][EVIL]["metrics"]["accuracy"] == pytest.approx(0.95)
    assert comp["runs"][FAILED[0]]["metrics"] is None
    assert [row["backbone"] for row in comp["leaderboard"]] == [*BACKBONES, FAILED[0]]
    arrays = comp["gradcam"]["arrays"]
    assert arrays[EVIL].shape == (4, 7, 7) and arrays[f"{EVIL}__pred"].shape == (4,)
    assert comp["problems"] == []


def test_load_comparison_requires_comparison_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a comparison folder"):
        load_comparison(tmp_path)


def test_csv_leaderboard_gives_the_same_rows(fresh):
    comp = fresh["comp"]
    from_json = load_comparison(comp)
    (comp / "leaderboard.json").unlink()
    from_csv = load_comparison(comp)
    entries = comparison.run_entries(from_json["comparison"])
    rows = [comparison.leaderboard_rows(c["leaderboard"], entries, c["runs"], LABELS) for c in (from_json, from_csv)]
    assert rows[0] == rows[1]
    assert from_csv["problems"] == []


def test_missing_leaderboard_is_rebuilt_from_run_folders(fresh):
    comp = fresh["comp"]
    (comp / "leaderboard.json").unlink()
    (comp / "leaderboard.csv").unlink()
    loaded = load_comparison(comp)
    assert "no leaderboard file" in loaded["problems"][0]
    rows = comparison.leaderboard_rows([], comparison.run_entries(loaded["comparison"]), loaded["runs"], LABELS)
    by_name = {row["backbone"]: row for row in rows}
    assert by_name["efficientnetb0"]["accuracy_ci_high"] == pytest.approx(0.996)
    assert by_name[EVIL][f"recall_{EVIL}"] == pytest.approx(1.0)
    assert by_name[FAILED[0]]["status"] == "failed" and by_name[FAILED[0]]["error"] == FAILED_ERROR
    assert rows[-1]["backbone"] == FAILED[0]  # failed last, still listed


# ----------------------------------------------------------------------------------
# The comparison report
# ----------------------------------------------------------------------------------


def test_report_is_written_and_self_contained(built):
    html = built["html"]
    assert built["report"] == built["comp"] / "report.html"
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"""src\s*=\s*["'](?!data:image/png;base64,)""", html)  # every image embedded
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "<script" not in html.lower()
    assert not [p for p in built["comp"].iterdir() if p.name.endswith(".tmp")]


def test_every_figure_is_embedded(built):
    html = built["html"]
    counts = {section: _section(html, section).count(f'src="{DATA_PNG}')
              for section in ("confusion", "per-class", "roc", "calibration", "training", "speed", "gradcam")}
    assert counts == {"confusion": 3, "per-class": 1, "roc": 1, "calibration": 1, "training": 1, "speed": 1,
                      "gradcam": 4 + 4 * 3}  # thumbnails + one overlay per image and backbone
    for uri in re.findall(r'src="(data:image/png;base64,[^"]+)"', html):
        assert base64.b64decode(uri[len(DATA_PNG):]).startswith(PNG_MAGIC)


def test_calibration_table_sets_each_backbone_side_by_side(fresh):
    from suite import calibration, runs

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(700, len(LABELS))) * 2
    y = np.array([rng.choice(len(LABELS), p=p) for p in calibration.apply_temperature(logits, 1.0)])
    probs = calibration.apply_temperature(logits * 3, 1.0)  # over-confident: T > 1 fits
    fitted = calibration.calibrate(probs[:300], y[:300], probs[300:], y[300:], LABELS)
    skipped = calibration.calibrate(probs[:5], y[:5], probs[300:], y[300:], LABELS)
    (fresh["runs"]["efficientnetb0"] / runs.CALIBRATION).write_text(json.dumps(fitted), encoding="utf-8")
    (fresh["runs"]["mobilenetv2"] / runs.CALIBRATION).write_text(json.dumps(skipped), encoding="utf-8")

    section = _section(write_comparison_report(fresh["comp"]).read_text(encoding="utf-8"), "calibration")
    table = section[section.index("Temperature scaling and prediction sets"):]
    assert table.count("<tr>") == 1 + 3  # the header, then the three completed backbones; the failed one is not
    assert "coverage at 90.0%" in table and "coverage at 95.0%" in table
    row = table[table.index("efficientnetb0"):].split("</tr>")[0]
    assert f"{fitted['temperature']:.3f}" in row and fitted["temperature"] > 1
    assert f"{fitted['ece_test_before']:.3f}" in row and f"{fitted['ece_test_after']:.3f}" in row
    for level in fitted["conformal"]["levels"]:
        assert f"{level['coverage']:.3f}" in row and f"{level['mean_set_size']:.2f}" in row
    assert "skipped: " + skipped["reason"].replace("'", "&#39;") in table
    assert f"no {runs.CALIBRATION} in its run folder" in table  # the third member, an older run
    assert FAILED[0] not in table


def test_leaderboard_values_order_and_tiers(built):
    board = _section(built["html"], "leaderboard")
    for text in ("0.975 [0.871, 0.996]", "0.950 [0.835, 0.986]", "0.900 [0.769, 0.960]", "7.8 ms", "243.9 img/s",
                 "2.26 M", "1 min 35 s", "240 px", "Tier 1", "2 backbones tied with the leader", "Tier 2", "Failed",
                 "not shown worse than its leader"):
        assert text in board, text
    order = [board.index(name) for name in ("efficientnetb0", ESCAPED, "mobilenetv2", FAILED[0])]
    assert order == sorted(order)
    assert board.index("Tier 1") < order[0] and order[1] < board.index("Tier 2") < order[2]


def test_pairwise_matrix_and_sentences(built):
    tests = _section(built["html"], "tests")
    for sentence in SENTENCES.values():
        assert sentence.replace(EVIL, ESCAPED) in tests
    assert tests.count('class="win"') == 1 and tests.count('class="loss"') == 1
    assert re.search(r'class="win"[^>]*>0\.012<', tests)  # efficientnetb0 (row) beat mobilenetv2
    assert tests.count("<td>McNemar (exact binomial)</td>") == 3  # the test used, in the details table
    assert "p-value of McNemar&#39;s test between" in tests  # and above the matrix


def test_failed_backbone_and_error_shown(built):
    html = built["html"]
    error = "ResourceExhaustedError: OOM when allocating tensor &lt;shape [32, 2048, 7, 7]&gt; &amp; more"
    top = html[: html.index('<section id="leaderboard">')]
    assert "resnet50 failed" in top and error in top
    assert error in _section(html, "leaderboard")
    assert FAILED_ERROR not in html


def test_synthetic_banner_comes_first(built):
    html = built["html"]
    top = html[: html.index('<section id="leaderboard">')]
    assert 'class="banner synthetic"' in top and "Synthetic ellipse phantoms" in top
    assert "Different test splits" not in html


@pytest.mark.parametrize("section", ["leaderboard", "tests", "confusion", "gradcam", "runs", "setup"])
def test_evil_names_escaped_everywhere(built, section):
    assert EVIL not in built["html"]
    assert ESCAPED in _section(built["html"], section)


def test_evil_class_name_in_table_headers_and_gradcam(built):
    board = _section(built["html"], "leaderboard")
    assert f'<th colspan="2" class="num">{ESCAPED}</th>' in board  # class header
    cam = _section(built["html"], "gradcam")
    assert f'true <span class="true">{ESCAPED}</span>' in cam
    assert f"<th>{ESCAPED}</th>" in cam  # backbone column


def test_gradcam_marks_right_and_wrong(built):
    cam = _section(built["html"], "gradcam")
    assert cam.count('class="right"') == 11 and cam.count('class="wrong"') == 1
    assert "✗ glioma (0.850)" in cam


def test_run_report_links_resolve(built):
    runs = _section(built["html"], "runs")
    hrefs = re.findall(r'href="([^"]+)"', runs)
    assert len(hrefs) == 4  # the failed run's report too
    for href in hrefs:
        assert not href.startswith(("/", "file:", "http"))
        assert (built["comp"] / href).resolve().is_file(), href


def test_different_split_fingerprints_warned(fresh):
    manifest_path = fresh["runs"]["mobilenetv2"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["split_fingerprint"] = "sha256:other-split"
    manifest_path.write_text(json.dumps(manifest))
    html = write_comparison_report(fresh["comp"], write_run_reports=False).read_text(encoding="utf-8")
    top = html[: html.index('<section id="leaderboard">')]
    assert "Different test splits" in top and "mobilenetv2: sha256:other-split" in top
    assert "<a href" not in _section(html, "runs")  # no run reports written: no dead links
    assert not (fresh["runs"]["mobilenetv2"] / "report.html").exists()


@pytest.mark.parametrize("record, manifests, warned", [
    ({"split_fingerprints": {"a": "s1", "b": "s2"}, "split_fingerprint": None}, {}, True),
    ({"split_fingerprints": {"a": "s1", "b": "s1"}, "split_fingerprint": "s1"}, {"a": "s1"}, False),
    ({"split_fingerprint": "s1"}, {"a": "s1", "b": "s2"}, True),
    ({"split_fingerprint": "s1"}, {"a": "s2"}, True),
    ({}, {}, False),
], ids=["recorded-differ", "all-same", "manifests-differ", "comparison-vs-run", "none-recorded"])
def test_fingerprint_banner(record, manifests, warned):
    runs = {name: {"manifest": {"split_fingerprint": value}} for name, value in manifests.items()}
    banner = comparison.fingerprint_banner(record, runs)
    assert (banner is not None) == warned


def test_context_is_plain_values(built):
    context = comparison_context(load_comparison(built["comp"]))

    def check(value):
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert value is None or isinstance(value, (str, int, float, bool)), type(value)

    check(context)


# ----------------------------------------------------------------------------------
# Index
# ----------------------------------------------------------------------------------


def test_index_lists_results_newest_first(built):
    html = built["index_html"]
    table = _section(html, "entries")
    names = ["20261127-180000-evaluate-efficientnetb0", COMPARE_DIR, FAILED[1]]
    names += [BACKBONES[b][0] for b in (EVIL, "efficientnetb0", "mobilenetv2")] + ["20261126-090000-densenet121"]
    positions = [table.index(name) for name in names]
    assert positions == sorted(positions)
    assert "notes" not in html and "README.txt" not in html
    assert "0.975 [0.871, 0.996]" in table and "best: efficientnetb0" in table  # the comparison's best
    assert "0.932 [0.910, 0.950]" in table  # the evaluation
    assert "1 of 4 failed" in table and "evaluation" in table and "comparison" in table
    assert ESCAPED in table and EVIL not in html
    assert "synthetic" in table


def test_index_links_resolve(built):
    hrefs = re.findall(r'href="([^"]+)"', built["index_html"])
    assert len(hrefs) == 5  # compare + 4 member runs; the evaluation and the old run have no report
    for href in hrefs:
        assert not href.startswith(("/", "file:", "http"))
        assert (built["out"] / href).is_file(), href
    assert "20261126-090000-densenet121</span> <span class=\"empty\">(no report)" in built["index_html"]


def test_index_lists_half_written_folder(built):
    unreadable = _section(built["index_html"], "unreadable")
    assert "20261127-175900-vgg16" in unreadable and "manifest.json could not be read" in unreadable


@pytest.mark.parametrize("name, content", [
    ("comparison.json", "[]"),
    ("comparison.json", '{"runs": "oops", "dataset": 3, "created": 5}'),
    ("comparison.json", ""),
    ("manifest.json", "null"),
    ("manifest.json", '{"created": 12345, "dataset": "x", "backbone": ["a"]}'),
    ("manifest.json", "\udcff"),
], ids=["comparison-list", "comparison-junk-fields", "comparison-empty", "manifest-null",
        "manifest-junk-fields", "manifest-binary"])
def test_index_survives_broken_folders(tmp_path, name, content):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    (tmp_path / "vacant-folder").mkdir()
    html = write_index(tmp_path).read_text(encoding="utf-8")
    assert "odd" in html and "vacant-folder" not in html


def test_index_of_empty_folder(tmp_path):
    assert "no result folders found" in write_index(tmp_path).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------
# Dispatch and imports
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, title", [("comparison", "Backbone comparison"), ("run", "Run summary"),
                                         ("evaluation", "Run summary")])
def test_write_report_dispatches(fresh, kind, title):
    folder = {"comparison": fresh["comp"], "run": fresh["runs"]["mobilenetv2"], "evaluation": fresh["evaluation"]}[kind]
    path = write_report(folder)
    assert path == folder / "report.html"
    assert title in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing", lambda p: p / "file.txt"],
                         ids=["empty-folder", "missing", "file"])
def test_write_report_rejects_other_paths(tmp_path, make):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="known kinds: comparison, cv, tuning, audit, robustness, evaluation, run"):
        write_report(make(tmp_path))


def test_public_api():
    for name in ("load_comparison", "comparison_context", "render_comparison", "write_comparison_report",
                 "write_index", "write_report", "finish", "load_run", "run_context", "render_run", "write_run_report"):
        assert callable(getattr(reports, name)), name


def test_comparison_reporting_does_not_import_keras_or_tensorflow(built):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import reports; reports.write_report(sys.argv[2]); reports.write_index(sys.argv[3]);"
        "bad = sorted(m for m in ('tensorflow', 'keras', 'matplotlib.pyplot') if m in sys.modules);"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), str(built["comp"]), str(built["out"])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
