"""The comparison report of a comparison trained under several seeds (``suite compare --seeds N``).

The fixture (``build_seeded_comparison`` in ``tests/comparefixture.py``) writes three
replicates per backbone by hand, one of ``resnet50``'s failed, with the leaderboards and
the bootstrap tests the suite writes; nothing is trained.
"""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
from html import escape

import pytest

from reports import comparison, comparison_context, load_comparison, plots, write_comparison_report, write_index
from suite.stats import SEED_METHOD
from tests.comparefixture import (
    BOOTSTRAP,
    CONFIG_SEED,
    EVIL,
    N_SEEDS,
    SEED_FAILED_ERROR,
    SEEDED,
    SEEDED_DIR,
    SEEDED_SENTENCES,
    _ci,
    build_comparison,
    build_seeded_comparison,
    seed_run_folder,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
COMPLETED = [name for name, (accuracies, _, _) in SEEDED.items() if None not in accuracies]


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


def _escaped(text: str) -> str:
    return escape(text, quote=False)


def _done(backbone: str) -> list[float]:
    return [a for a in SEEDED[backbone][0] if a is not None]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The seeded comparison with its report (and every replicate's run report) written once."""
    paths = build_seeded_comparison(tmp_path_factory.mktemp("seeded"))
    paths["report"] = write_comparison_report(paths["comp"])
    paths["html"] = paths["report"].read_text(encoding="utf-8")
    return paths


@pytest.fixture
def fresh_seeded(tmp_path):
    """A seeded comparison folder, no reports written, that a test may change."""
    return build_seeded_comparison(tmp_path)


# ----------------------------------------------------------------------------------
# Leaderboard: mean ± SD over seeds, and what it means
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", COMPLETED)
def test_leaderboard_shows_mean_sd_and_mean_interval(seeded, backbone):
    accuracies = _done(backbone)
    low = statistics.mean(_ci(a, 0.1)[0] for a in accuracies)
    high = statistics.mean(_ci(a, 0.1)[1] for a in accuracies)
    expected = (f"{statistics.mean(accuracies):.3f} \u00b1 {statistics.stdev(accuracies):.3f} ({N_SEEDS} seeds) "
                f"[{low:.3f}, {high:.3f}]")
    board = _section(seeded["html"], "leaderboard")
    row = board[board.index(f"</span>{_escaped(backbone)}</td>"):]
    assert row[: row.index("</tr>")].count(expected) == 1  # accuracy (macro-F1's interval differs)
    assert "accuracy: mean ± SD (seeds) [95% CI]" in board and "macro F1: mean ± SD (seeds) [95% CI]" in board


def test_leaderboard_order_tiers_and_failed_backbone(seeded):
    board = _section(seeded["html"], "leaderboard")
    order = [board.index(f"</span>{_escaped(name)}</td>") for name in ("efficientnetb0", EVIL, "mobilenetv2",
                                                                        "resnet50")]
    assert order == sorted(order)
    assert board.index("Tier 1") < order[0] and order[1] < board.index("Tier 2") < order[2] < board.index("Failed")
    assert _escaped(SEED_FAILED_ERROR) in board
    assert board.count('href="#seeds"') == len(SEEDED)  # a row is a mean: it points at the per-seed table


def test_note_under_the_table_says_what_the_columns_mean(seeded):
    board = _section(seeded["html"], "leaderboard")
    note = board[board.index("</table>"):]
    note = note[note.index('<p class="note">'):]
    note = note[: note.index("</p>")]
    for text in (f"trained under {N_SEEDS} seeds", "the mean over the backbone&#39;s seeds",
                 "± the standard deviation across them", "test-set uncertainty of one training",
                 "Tiers come from the bootstrap over test images (paired) and seeds", "Holm-corrected"):
        assert text in note, text


# ----------------------------------------------------------------------------------
# Seed spread: every replicate, a table and a strip plot
# ----------------------------------------------------------------------------------


def test_seed_spread_follows_the_leaderboard(seeded):
    html = seeded["html"]
    assert html.index('<section id="leaderboard">') < html.index('<section id="seeds">') < html.index(
        '<section id="tests">')
    assert "Seed spread" in _section(html, "seeds")


@pytest.mark.parametrize("backbone", list(SEEDED))
def test_seed_table_lists_every_replicate(seeded, backbone):
    spread = _section(seeded["html"], "seeds")
    start = spread.index(f"</span>{_escaped(backbone)}</td>")
    group = spread[start: spread.index("</tbody>", start)]
    for k, accuracy in enumerate(SEEDED[backbone][0]):
        value = "\u2014" if accuracy is None else f"{accuracy:.3f}"
        cells = rf'<td class="num">{k}</td><td class="num">{CONFIG_SEED + k}</td>\s*<td class="num">{value}</td>'
        assert re.search(cells, group), cells
    accuracies = _done(backbone)
    assert f"{statistics.mean(accuracies):.3f} \u00b1 {statistics.stdev(accuracies):.3f}" in group


def test_seed_table_shows_the_failed_replicate(seeded):
    spread = _section(seeded["html"], "seeds")
    assert spread.count('<span class="badge failed">failed</span>') == 1
    assert f'<span class="badge failed">failed</span> {_escaped(SEED_FAILED_ERROR)}' in spread
    assert spread.count('<span class="badge completed">completed</span>') == sum(map(len, map(_done, SEEDED)))


def test_seed_plot_is_a_real_png(seeded):
    from PIL import Image

    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', _section(seeded["html"], "seeds"))
    assert len(uris) == 1
    data = base64.b64decode(uris[0][len(DATA_PNG):])
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.width > 600 and image.height > 200
        assert image.convert("RGB").getcolors(maxcolors=64) is None  # dots, bars and text: not blank


@pytest.mark.parametrize("series", [
    [{"name": "a", "accuracy": [0.9, 0.92, 0.91], "macro_f1": [0.88, 0.9, 0.89]},
     {"name": "b $x$", "colour": "#123456", "accuracy": [0.85, 0.85], "macro_f1": [None, 0.8]}],
    [{"name": "only accuracy", "accuracy": [0.9], "macro_f1": []}],
    [{"name": "no seeds", "accuracy": [], "macro_f1": []}, {"name": "one", "accuracy": [0.5, 0.6]}],
], ids=["two-backbones", "one-seed", "first-empty"])
def test_seed_strip_png(series):
    assert plots.seed_strip_png(series).startswith(PNG_MAGIC)


@pytest.mark.parametrize("series", [[], [{"name": "a", "accuracy": [None], "macro_f1": [float("nan")]}]],
                         ids=["no-backbone", "no-value"])
def test_seed_strip_png_refuses_empty_input(series):
    with pytest.raises(plots.NothingToPlot):
        plots.seed_strip_png(series)


# ----------------------------------------------------------------------------------
# Pairwise tests: the test actually used
# ----------------------------------------------------------------------------------


def test_pairwise_section_names_the_seed_bootstrap(seeded):
    tests = _section(seeded["html"], "tests")
    assert f"Holm-corrected p-value of the {BOOTSTRAP} between" in tests
    assert tests.count(f"<td>{BOOTSTRAP}</td>") == len(SEEDED_SENTENCES)
    for sentence in SEEDED_SENTENCES.values():
        assert _escaped(sentence) in tests
    assert "McNemar" not in tests and "only A right" not in tests


def test_pairwise_details_show_the_difference_interval(seeded):
    tests = _section(seeded["html"], "tests")
    assert "A − B [95% CI]" in tests and "seeds A / B" in tests
    assert '<td class="num">+0.092 [+0.042, +0.142]</td><td class="num">3 / 3</td>' in tests
    assert '<td class="num">+0.017 [-0.025, +0.058]</td>' in tests
    assert re.search(r'class="win"[^>]*>0\.003<', tests)


@pytest.mark.parametrize("method, name", [
    ("exact", "McNemar (exact binomial)"), ("chi2", "McNemar (chi-square)"), (SEED_METHOD, SEED_METHOD),
    ("permutation", "permutation"), (None, "\u2014"),
])
def test_pairwise_test_name(method, name):
    assert comparison.pairwise_test_name(method) == name


@pytest.mark.parametrize("methods, phrase", [
    (["exact", "chi2"], "McNemar's test"), ([SEED_METHOD], f"the {SEED_METHOD}"),
    (["exact", SEED_METHOD], f"McNemar's test or the {SEED_METHOD}"), ([], "the paired test"),
])
def test_pairwise_test_phrase(methods, phrase):
    assert comparison.pairwise_test_phrase(methods) == phrase


# ----------------------------------------------------------------------------------
# Links to every replicate's run report
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["runs", "seeds"])
def test_every_replicate_report_is_linked(seeded, section):
    hrefs = re.findall(r'href="([^"#][^"]*)"', _section(seeded["html"], section))
    expected = {f"../{seed_run_folder(b, k)}/report.html" for b in SEEDED for k in range(N_SEEDS)}
    assert sorted(hrefs) == sorted(expected)  # the failed replicate's report too
    for href in hrefs:
        assert (seeded["comp"] / href).resolve().is_file(), href


def test_run_links_name_replicate_and_training_seed(seeded):
    runs = _section(seeded["html"], "runs")
    for k in range(N_SEEDS):
        assert runs.count(f"replicate {k} (training seed {CONFIG_SEED + k})") == len(SEEDED)


# ----------------------------------------------------------------------------------
# Missing files: the seed spread is rebuilt from the run folders
# ----------------------------------------------------------------------------------


def test_missing_tables_are_rebuilt_from_the_replicates(fresh_seeded):
    comp = fresh_seeded["comp"]
    want = comparison_context(load_comparison(comp))
    for name in ("leaderboard.json", "leaderboard.csv", "leaderboard_seeds.json", "leaderboard_seeds.csv"):
        (comp / name).unlink()
    loaded = load_comparison(comp)
    assert any("no per-seed leaderboard file" in text for text in loaded["problems"])
    got = comparison_context(loaded)
    assert got["seed_groups"] == want["seed_groups"]

    def figures(context):  # the tiers are the leaderboard file's: without it every backbone is unranked
        return {row["backbone"]: (row["accuracy"], row["macro_f1"]) for group in context["tier_groups"]
                for row in group["rows"]}

    assert figures(got) == figures(want)


def test_csv_tables_give_the_same_report(fresh_seeded):
    comp = fresh_seeded["comp"]
    want = comparison_context(load_comparison(comp))
    (comp / "leaderboard.json").unlink()
    (comp / "leaderboard_seeds.json").unlink()
    got = comparison_context(load_comparison(comp))
    assert got["seed_groups"] == want["seed_groups"] and got["tier_groups"] == want["tier_groups"]


def test_context_is_plain_values(seeded):
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

    check(comparison_context(load_comparison(seeded["comp"])))


def test_index_lists_the_seeded_comparison(seeded):
    html = write_index(seeded["out"]).read_text(encoding="utf-8")
    assert SEEDED_DIR in html and "best: efficientnetb0" in html


# ----------------------------------------------------------------------------------
# A comparison without seeds renders as before
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    paths = build_comparison(tmp_path_factory.mktemp("plain"))
    paths["html"] = write_comparison_report(paths["comp"]).read_text(encoding="utf-8")
    return paths


def test_seedless_comparison_has_no_seed_parts(plain):
    html = plain["html"]
    assert '<section id="seeds">' not in html and "\u00b1" not in html and 'class="note"' not in html
    board = _section(html, "leaderboard")
    assert "accuracy [95% CI]</th>" in board and "0.975 [0.871, 0.996]" in board
    assert board.count(">run report</a>") == 4 and "#seeds" not in board
    tests = _section(html, "tests")
    assert "p-value of McNemar&#39;s test between" in tests
    assert tests.count("<td>McNemar (exact binomial)</td>") == 3 and "only A right" in tests
    assert "replicate" not in _section(html, "runs")


@pytest.mark.parametrize("seeds", [1, None, "junk"], ids=["one", "null", "junk"])
def test_seeds_key_of_one_renders_like_no_key(plain, seeds):
    record_path = plain["comp"] / "comparison.json"
    original = record_path.read_text(encoding="utf-8")
    try:
        record_path.write_text(json.dumps({**json.loads(original), "seeds": seeds}), encoding="utf-8")
        html = write_comparison_report(plain["comp"], write_run_reports=False).read_text(encoding="utf-8")
    finally:
        record_path.write_text(original, encoding="utf-8")
    assert html == plain["html"]


@pytest.mark.parametrize("record, count", [
    ({}, 1), ({"seeds": 3}, 3), ({"seeds": "3"}, 3), ({"seeds": 0}, 1), ({"seeds": True}, 1),
    ({"runs": [{"backbone": "a", "seeds": [{}, {}]}]}, 2),
], ids=["absent", "three", "text", "zero", "bool", "from-lists"])
def test_seed_count(record, count):
    assert comparison.seed_count(record) == count


def test_one_backbone_under_seeds(fresh_seeded):
    """``suite run --seeds N``: a comparison of one backbone's replicates, with no pairwise test."""
    comp = fresh_seeded["comp"]
    record = json.loads((comp / "comparison.json").read_text(encoding="utf-8"))
    record.update(runs=record["runs"][:1], pairwise=[], p_matrix={"names": [], "values": []}, tiers={})
    (comp / "comparison.json").write_text(json.dumps(record), encoding="utf-8")
    for name in ("leaderboard", "leaderboard_seeds"):
        rows = json.loads((comp / f"{name}.json").read_text(encoding="utf-8"))
        (comp / f"{name}.json").write_text(json.dumps([r for r in rows if r["backbone"] == "efficientnetb0"]))
    html = write_comparison_report(comp, write_run_reports=False).read_text(encoding="utf-8")
    assert "0.967 \u00b1 0.014 (3 seeds)" in _section(html, "leaderboard")
    assert "Tiers come from" not in html and "no pairwise tests recorded" in _section(html, "tests")
    spread = _section(html, "seeds")
    assert spread.count("</tbody>") == 1 and spread.count('src="data:image/png;base64,') == 1
    assert _section(html, "runs").count("replicate ") == N_SEEDS
