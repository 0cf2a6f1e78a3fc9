"""Open the comparison report in headless Chromium: it renders, every image decodes, nothing runs.

Both fixture comparisons are opened: the plain one and the one trained under several seeds
(with its seed spread plot).

The product report has no JavaScript. To see what the browser made of it, the test
writes a *copy* with two small scripts added (a probe for ``alert`` and an image
counter) and reads the resulting DOM back with ``--dump-dom``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from reports import write_comparison_report
from tests.comparefixture import EVIL, build_comparison, build_seeded_comparison


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find_chromium()
TIMEOUT_S = 60
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium, chromium-browser or google-chrome on PATH"),
]

# Defined before the page's content: records any call, so an injected alert would leave a trace.
ALERT_PROBE = """<script>
window.alert = function (message) {
  var mark = document.createElement("meta");
  mark.name = "alert-called";
  mark.content = String(message);
  document.head.appendChild(mark);
};
</script>"""

# After everything has loaded: count images that decoded, and check the hostile name reads as text.
IMAGE_CHECK = """<img id="broken-probe" src="data:image/png;base64,AAAA" alt="">
<script>
window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images);
  var page = all.filter(function (img) { return img.id !== "broken-probe"; });
  var loaded = page.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  var probe = document.getElementById("broken-probe");
  var out = document.createElement("div");
  out.id = "image-check";
  out.setAttribute("data-loaded", String(loaded.length));
  out.setAttribute("data-total", String(page.length));
  out.setAttribute("data-probe-loaded", String(probe.complete && probe.naturalWidth > 0));
  var seeds = Array.prototype.slice.call(document.querySelectorAll("#seeds img"));
  out.setAttribute("data-seed-plots", String(seeds.filter(function (img) { return img.naturalWidth > 0; }).length));
  var evil = ["<", "script>alert(1)<", "/script>"].join("");  // a literal end tag would close this script
  out.setAttribute("data-evil-as-text", String(document.body.innerText.indexOf(evil) >= 0));
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The written comparison report of the standard fixture."""
    paths = build_comparison(tmp_path_factory.mktemp("browser"))
    return write_comparison_report(paths["comp"])


@pytest.fixture(scope="module")
def seeded_report(tmp_path_factory):
    """The written comparison report of the fixture trained under three seeds."""
    paths = build_seeded_comparison(tmp_path_factory.mktemp("browser-seeds"))
    return write_comparison_report(paths["comp"])


def _chromium(tmp_path, page, *flags) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *flags, page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path, report, "--window-size=1280,4000", "--virtual-time-budget=5000",
                       f"--screenshot={shot}")
    assert shot.is_file(), result.stderr[-2000:]
    assert shot.stat().st_size > 100_000
    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        rgb = image.convert("RGB")
    assert rgb.getcolors(maxcolors=2000) is None  # more than 2000 distinct colours: figures drew
    background = rgb.getpixel((2, 2))
    plain = sum(n for n, colour in rgb.getcolors(maxcolors=1 << 24) if colour in (background, (255, 255, 255)))
    assert plain < 0.9 * rgb.width * rgb.height


@pytest.mark.parametrize("which", ["report", "seeded_report"], ids=["plain", "seeded"])
def test_every_image_loads_and_names_stay_text(request, which, tmp_path):
    report = request.getfixturevalue(which)
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html.lower()  # the product page itself has no JavaScript
    n_images = html.count("<img ")
    probe_copy = report.with_name("report.browser-test.html")
    instrumented = html.replace("<head>", "<head>\n" + ALERT_PROBE, 1).replace("</body>", IMAGE_CHECK + "\n</body>", 1)
    probe_copy.write_text(instrumented, encoding="utf-8")

    result = _chromium(tmp_path, probe_copy, "--virtual-time-budget=5000", "--dump-dom")
    dom = result.stdout
    check = re.search(r'<div id="image-check"([^>]*)>', dom)
    assert check, f"the check script did not run: {result.stderr[-2000:]}"
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', check.group(1)))
    assert attributes["total"] == str(n_images) and n_images > 20
    assert attributes["loaded"] == attributes["total"], attributes
    assert attributes["probe-loaded"] == "false"  # the counter does notice a broken image
    assert attributes["seed-plots"] == ("1" if which == "seeded_report" else "0")  # the seed spread drew
    assert attributes["evil-as-text"] == "true"  # the hostile name is shown as text
    assert ESCAPED in dom and EVIL not in dom
    assert 'name="alert-called"' not in dom
    assert dom.lower().count("<script") == 2  # only the two test scripts
