"""``suite serve``: the JSON API on a real uvicorn server, the page in headless Chromium, the command's edges.

The API tests run the app in a thread of this process (httpx, which Starlette's TestClient
needs, is not a dependency) and talk to it with urllib. The browser test starts the real
command as a subprocess and drives Debian's chromium through Selenium, offline.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn, python-multipart) is not installed")

from suite.commands.serve import bind, is_loopback, url  # noqa: E402
from suite.serve import ServeLimits  # noqa: E402

LIMITS = ServeLimits(max_files=3, max_request_bytes=256 * 1024)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
START_TIMEOUT_S = 120
# The tests' environment points every proxy at a closed port (no download may succeed): the local
# server is reached directly.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- helpers -------------------------------------------------------------------------------------


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body of ``files`` (name, bytes) as a browser sends it, and its content type."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post(base: str, route: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of a POST, 4xx and 5xx included."""
    request = urllib.request.Request(base + route, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with DIRECT.open(request, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` pixels, with (almost) no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def run_dir(runs_by_backbone) -> Path:
    """The tiny mobilenetv2 run the comparison fixture trains (shared with the other tests)."""
    return runs_by_backbone["mobilenetv2"]


@pytest.fixture(scope="module")
def test_images(tiny_data) -> list[Path]:
    return sorted((tiny_data / "Testing").glob("*/*"))[:2]


@pytest.fixture(scope="module")
def predictor(run_dir):
    """The run's model, loaded once for this module (the server's, and the browser test's reference)."""
    from suite.inference import Predictor

    return Predictor(run_dir)


@pytest.fixture(scope="module")
def server(run_dir, predictor):
    """The app on a real uvicorn server in a thread, at a free loopback port; yields its base URL."""
    import uvicorn

    from suite.serve import create_app

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(run_dir, LIMITS, predictor=predictor), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    yield url("127.0.0.1", sock)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


# -- the API -----------------------------------------------------------------------------------


def test_predict_returns_the_json_of_suite_predict(server, run_dir, test_images, capsys):
    from suite.cli import main

    body, content_type = multipart([(p.name, p.read_bytes()) for p in test_images])
    status, kind, answer = post(server, "predict", body, content_type)
    assert status == 200 and kind == "application/json", answer[:300]
    assert main(["predict", str(run_dir), *map(str, test_images), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    for entry, path in zip(expected, test_images):
        entry["path"] = path.name  # the API names a file as uploaded
    assert json.loads(answer) == expected
    assert all("error" not in e and "probabilities" in e and "calibration" in e for e in expected)

    status, kind, png = post(server, "gradcam", *multipart([(test_images[0].name, test_images[0].read_bytes())]))
    assert status == 200 and kind == "image/png"
    from PIL import Image

    with Image.open(io.BytesIO(png)) as overlay:
        assert overlay.format == "PNG" and min(overlay.size) > 0

    with DIRECT.open(server, timeout=30) as response:
        page = response.read().decode()
    assert "mobilenetv2" in page and 'type="file"' in page
    assert "http://" not in page.replace(server, "") and "https://" not in page  # no external asset


def _bad_request(test_images, case: str) -> tuple[bytes, str]:
    good = test_images[0].read_bytes()
    if case == "text file":
        return multipart([("notes.jpg", b"not an image, just some text\n")])
    if case == "truncated JPEG":
        jpeg = next(p for p in test_images[0].parent.parent.glob("*/*.jpg")).read_bytes()
        return multipart([("cut.jpg", jpeg[: len(jpeg) // 2])])
    if case == "100-megapixel image":
        return multipart([("huge.png", png_claiming(10_000, 10_000))])
    if case == "too many files":
        return multipart([(f"{i}.png", good) for i in range(LIMITS.max_files + 1)])
    if case == "too many bytes":
        return multipart([("big.png", good + b"\0" * LIMITS.max_request_bytes)])
    if case == "empty file":
        return multipart([("empty.png", b"")])
    if case == "no file":
        return multipart([], {"label": "glioma"})
    if case == "not multipart":
        return b'{"image": "x"}', "application/json"
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "status", "says"), [
    ("text file", 415, "not an image"),
    ("truncated JPEG", 422, "truncated"),
    ("100-megapixel image", 413, "10000x10000 px"),
    ("too many files", 413, f"at most {LIMITS.max_files}"),
    ("too many bytes", 413, "request too large"),
    ("empty file", 400, "empty file"),
    ("no file", 400, "no image"),
    ("not multipart", 415, "multipart/form-data"),
])
def test_a_bad_upload_gets_a_4xx_with_a_message(server, test_images, case, status, says):
    _assert_refused(server, "predict", _bad_request(test_images, case), status, says)


@pytest.mark.parametrize(("case", "status", "says"), [
    ("text file", 415, "not an image"),
    ("truncated JPEG", 422, "truncated"),
    ("100-megapixel image", 413, "10000x10000 px"),
])
def test_gradcam_refuses_bad_uploads_alike(server, test_images, case, status, says):
    _assert_refused(server, "gradcam", _bad_request(test_images, case), status, says)


def _assert_refused(server: str, route: str, request: tuple[bytes, str], status: int, says: str) -> None:
    code, kind, answer = post(server, route, *request)
    assert code == status, answer[:300]
    assert kind == "application/json"
    error = json.loads(answer)["error"]
    assert says in error and "\n" not in error
    with DIRECT.open(server, timeout=30) as response:  # the server goes on
        assert response.status == 200


def test_the_model_still_answers_after_the_bad_uploads(server, test_images):
    for case in ("text file", "truncated JPEG", "100-megapixel image", "too many bytes"):
        post(server, "predict", *_bad_request(test_images, case))
    code, _, answer = post(server, "predict", *multipart([(test_images[0].name, test_images[0].read_bytes())]))
    assert code == 200 and json.loads(answer)[0]["predicted"]


def test_one_bad_file_among_good_ones_is_named(server, test_images):
    files = [(p.name, p.read_bytes()) for p in test_images] + [("notes.jpg", b"text")]
    code, _, answer = post(server, "predict", *multipart(files))
    body = json.loads(answer)
    assert code == 415 and body["files"] == [{"path": "notes.jpg", "error": "not an image (unrecognised format)"}]


def test_gradcam_takes_one_image_of_a_known_class(server, test_images):
    code, _, answer = post(server, "gradcam", *multipart([(p.name, p.read_bytes()) for p in test_images]))
    assert code == 400 and "exactly one image" in json.loads(answer)["error"]
    code, _, answer = post(server, "gradcam", *multipart([("a.png", test_images[0].read_bytes())], {"label": "x"}))
    assert code == 400 and "unknown class 'x'" in json.loads(answer)["error"]


def test_a_folder_that_is_no_run_is_one_error_line(server, tmp_path, capsys):
    from suite.cli import main

    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a run folder" in err and "\n" not in err


# -- the command's edges, without a model ----------------------------------------------------------


def test_a_port_in_use_is_one_error():
    from suite.errors import ConfigError

    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:"):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


@pytest.mark.parametrize(("host", "loopback", "shown"), [
    ("127.0.0.1", True, "http://127.0.0.1:"),
    ("localhost", True, "http://localhost:"),
    ("0.0.0.0", False, "http://127.0.0.1:"),
])
def test_only_loopback_counts_as_local(host, loopback, shown):
    sock = bind(host, 0)
    try:
        assert is_loopback(sock) is loopback
        assert url(host, sock).startswith(shown)
    finally:
        sock.close()


def test_limits_are_positive():
    with pytest.raises(ValueError, match="max_files"):
        ServeLimits(max_files=0)


# -- the page, in a browser --------------------------------------------------------------------------


def _browser_missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@pytest.fixture
def served(run_dir):
    """``python -m suite serve RUN --port 0`` as a subprocess; yields ``(url, process)``; stops it with Ctrl-C."""
    process = subprocess.Popen([sys.executable, "-m", "suite", "serve", str(run_dir), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    line = ""
    while time.monotonic() - started < START_TIMEOUT_S and process.poll() is None:
        if select.select([process.stdout], [], [], 0.5)[0]:
            line = process.stdout.readline()
            if line.startswith("serving "):
                break
    if not line.startswith("serving "):
        process.kill()
        pytest.fail(f"no URL line from suite serve: {line!r} {process.stderr.read()[-2000:]}")
    print(f"server ready in {time.monotonic() - started:.1f} s")
    yield line.split()[1], process
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]


@pytest.mark.browser
@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_the_page_predicts_an_uploaded_image(served, predictor, test_images, tmp_path, capsys, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    address, _ = served
    image = test_images[0]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server",
                 "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must never try to download a driver
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # selenium talks to chromedriver directly
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(address)
        assert "mobilenetv2" in driver.title
        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(image))
        card = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=done], .result[data-state=error]"))
        assert card.get_attribute("data-state") == "done", card.text
        shown = {row.get_attribute("data-label"): float(row.get_attribute("data-value"))
                 for row in card.find_elements(By.CSS_SELECTOR, ".probs tbody tr")}
        predicted = card.find_element(By.CSS_SELECTOR, ".predicted").text
        latency_ms = float(card.get_attribute("data-latency-ms"))
        cam_width = driver.execute_script("return arguments[0].querySelector('.gradcam img').naturalWidth", card)

        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(_text_file(tmp_path)))
        failed = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, ".result.failed"))
        assert "not an image" in failed.text

        shot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    if os.environ.get("SUITE_SCREENSHOT_DIR"):
        target = Path(os.environ["SUITE_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)

    expected = predictor.predict([(image, str(image))])[0]  # what `suite predict --json` prints for it
    assert predicted == expected["predicted"]
    assert shown == expected["probabilities"]
    assert cam_width > 0
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\npage latency per image: {latency_ms:.0f} ms (upload to result and Grad-CAM shown); screenshot {shot}")


def _text_file(folder: Path) -> Path:
    path = folder / "notes.png"
    path.write_text("not an image")
    return path
