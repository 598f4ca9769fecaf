"""app.py: the JSON API against a live server (search, photos, health and every kind of bad
request), the command line, and the page end to end in a headless Chromium."""
from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

import app
from utils.config import REPO_ROOT
from engine.gallery import SearchEngine

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO_ROOT / "image" / "app_screenshot.png"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def gallery(synthetic_root, tmp_path_factory):
    """Market-Sketch-1K query photos, one PNG, and a link that points out of the folder."""
    base = tmp_path_factory.mktemp("app")
    folder = base / "gallery"
    shutil.copytree(synthetic_root / "Market-Sketch-1K" / "photo" / "query", folder / "cam")
    first = sorted((folder / "cam").iterdir())[0]
    Image.open(first).save(folder / "extra.png")
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(first, outside / "secret.jpg")
    (folder / "cam" / "zz_escape.jpg").symlink_to(outside / "secret.jpg")
    return folder


@pytest.fixture(scope="module")
def index_file(tmp_path_factory):
    return tmp_path_factory.mktemp("index") / "gallery.pt"


@pytest.fixture(scope="module")
def engine(market_run, gallery, index_file):
    return SearchEngine(market_run / "checkpoint_best.pth", gallery, index_file, "cpu")


@pytest.fixture(scope="module")
def server(engine):
    """The app on a free port of 127.0.0.1, served by a background thread."""
    httpd = app.make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def sketch_file(synthetic_root):
    return sorted((synthetic_root / "Market-Sketch-1K" / "sketch" / "A" / "query").iterdir())[0]


@pytest.fixture(scope="module")
def sketch_png_url(sketch_file):
    buffer = io.BytesIO()
    Image.open(sketch_file).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------- helpers
def call(server, path, body=None, method=None, headers=None):
    """(status, headers, body bytes) of one request; error answers are returned too."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(server.base + path, data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def search(server, payload):
    status, headers, body = call(server, "/api/search", payload)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def assert_json_error(status, headers, body, expected_status):
    assert status == expected_status, body
    assert headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"error"} and answer["error"]
    assert "Traceback" not in answer["error"]
    return answer["error"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------- the API
def test_search_ranks_the_gallery(server, engine, sketch_file, sketch_png_url):
    feedback = ["a young woman", "wearing a red top"]
    status, answer = search(server, {"sketch": sketch_png_url, "feedback": feedback, "topk": 5})
    assert status == 200
    assert answer["query"] == engine.query_text(feedback) == \
        "a photo of * , and a young woman, wearing a red top"
    results = answer["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert all(r["id"] in engine.paths for r in results)
    direct = engine.search(Image.open(sketch_file), feedback, 5)  # the same code path
    assert [r["id"] for r in results] == [path for path, _ in direct]
    assert all(math.isclose(r["score"], s, abs_tol=1e-5) for r, (_, s) in zip(results, direct))


def test_search_takes_raw_base64_and_defaults(server, engine, sketch_file):
    status, answer = search(server, {"sketch": b64(sketch_file.read_bytes())})  # raw JPEG
    assert status == 200
    assert len(answer["results"]) == 10 and answer["query"] == "a photo of *"
    status, every = search(server, {"sketch": b64(sketch_file.read_bytes()), "topk": 100,
                                    "feedback": ["  a man  ", " "]})
    assert status == 200 and every["query"] == "a photo of * , and a man"
    assert len(every["results"]) == min(100, len(engine.paths))


def test_photo_health_and_page(server, engine, gallery):
    photo = engine.paths[0]
    status, headers, body = call(server, "/api/photo?id=" + quote(photo))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == (gallery / photo).read_bytes()
    status, headers, body = call(server, "/api/photo?id=extra.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == (gallery / "extra.png").read_bytes()

    status, headers, body = call(server, "/api/health")
    assert status == 200 and json.loads(body) == {"ok": True, "gallery": len(engine.paths)}

    types = {"/": "text/html", "/app.js": "text/javascript", "/style.css": "text/css"}
    for route, content_type in types.items():
        status, headers, body = call(server, route)
        assert status == 200 and headers["Content-Type"].startswith(content_type)
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        text = body.decode()
        # nothing is loaded from elsewhere: no absolute or protocol-relative URLs
        assert not re.search(r"https?:|(src|href)=[\"']//|url\(", text), route
    assert b'src="/app.js"' in call(server, "/")[2]


@pytest.mark.parametrize("payload, expected", [
    ({"feedback": []}, "missing field 'sketch'"),
    ({"sketch": 123}, "'sketch' must be"),
    ({"sketch": "@@not base64@@"}, "not valid base64"),
    ({"sketch": "data:image/png,abc"}, "must be base64"),
    ({"sketch": b64(b"plain text, not a picture")}, "not a readable PNG or JPEG"),
    ({"sketch": "GIF"}, "must be a PNG or JPEG image, not GIF"),
    ({"sketch": "TRUNCATED"}, "not a readable PNG or JPEG"),
    ({"sketch": "SKETCH", "topk": 0}, "'topk' must be between 1 and 100"),
    ({"sketch": "SKETCH", "topk": 101}, "'topk' must be between 1 and 100"),
    ({"sketch": "SKETCH", "topk": "5"}, "'topk' must be an integer"),
    ({"sketch": "SKETCH", "topk": True}, "'topk' must be an integer"),
    ({"sketch": "SKETCH", "feedback": "a red coat"}, "'feedback' must be a list of strings"),
    ({"sketch": "SKETCH", "feedback": ["a red coat", 7]}, "'feedback' must be a list"),
    ({"sketch": "SKETCH", "feedback": ["x"] * 21}, "at most 20"),
    ({"sketch": "SKETCH", "feedback": ["x" * 301]}, "at most 300"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_search_requests(server, sketch_file, payload, expected):
    good = b64(sketch_file.read_bytes())
    if isinstance(payload, dict) and isinstance(payload.get("sketch"), str):
        buffer = io.BytesIO()
        if payload["sketch"] == "GIF":
            Image.open(sketch_file).save(buffer, format="GIF")
            payload["sketch"] = b64(buffer.getvalue())
        elif payload["sketch"] == "TRUNCATED":
            Image.open(sketch_file).save(buffer, format="PNG")
            payload["sketch"] = b64(buffer.getvalue()[:200])
        elif payload["sketch"] == "SKETCH":
            payload["sketch"] = good
    message = assert_json_error(*call(server, "/api/search", payload), 400)
    assert expected in message


def test_malformed_and_oversized_bodies(server):
    headers = {"Content-Type": "application/json"}
    message = assert_json_error(*call(server, "/api/search", b'{"sketch": ', headers=headers),
                                400)
    assert "not valid JSON" in message
    assert_json_error(*call(server, "/api/search", b"\xff\xfe", headers=headers), 400)
    assert_json_error(*call(server, "/api/search", b"{}", headers={"Content-Type": "text/plain"}),
                      415)

    big = json.dumps({"sketch": "A" * (6 * 1024 * 1024)}).encode()  # 6 MB, sent in full
    message = assert_json_error(*call(server, "/api/search", big, headers=headers), 413)
    assert "at most 5,242,880" in message

    # Refused from the Content-Length alone: the server answers without waiting for a body.
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.putrequest("POST", "/api/search")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(6 * 1024 * 1024))
    connection.endheaders()
    started = time.monotonic()
    response = connection.getresponse()
    assert response.status == 413 and time.monotonic() - started < 5
    assert "error" in json.loads(response.read())
    connection.close()


@pytest.mark.parametrize("photo_id, status", [
    ("../secret.jpg", 403),
    ("cam/../extra.png", 403),
    ("ABSOLUTE", 403),
    ("cam\\PHOTO", 403),
    ("cam/PHOTO\x00.txt", 403),
    ("./extra.png", 403),
    ("cam/zz_escape.jpg", 403),  # a link inside the gallery to a file outside it
    ("cam/no_such_photo.jpg", 404),
    ("config.yaml", 404),
    ("", 400),
])
def test_photo_ids_outside_the_index_are_refused(server, engine, gallery, photo_id, status):
    name = Path(engine.paths[0]).name
    photo_id = photo_id.replace("PHOTO", name).replace(
        "ABSOLUTE", str((gallery / "cam" / name).resolve()))
    if photo_id == "cam/zz_escape.jpg":
        assert photo_id in engine.paths  # listed, but it resolves outside: never served
    assert_json_error(*call(server, "/api/photo?id=" + quote(photo_id)), status)


def test_unknown_routes_and_methods(server):
    assert_json_error(*call(server, "/nothing/here"), 404)
    assert_json_error(*call(server, "/api/nothing"), 404)
    assert_json_error(*call(server, "/nothing", {"a": 1}), 404)
    status, headers, body = call(server, "/api/search")
    assert_json_error(status, headers, body, 405)
    assert headers["Allow"] == "POST"
    assert_json_error(*call(server, "/api/health", {"a": 1}), 405)
    assert_json_error(*call(server, "/", method="DELETE"), 405)
    assert_json_error(*call(server, "/api/search", b"{}", method="PUT"), 405)
    assert_json_error(*call(server, "/api/health", headers={"Host": "attacker.example"}), 403)
    # What http.server itself refuses (here a header line over 64 KiB) is JSON as well.
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as raw:
        raw.sendall(b"GET /api/health HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"Content-Type: application/json" in head
    assert "error" in json.loads(body)


def test_errors_keep_the_connection_usable(server, sketch_file):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    for method, path, body in [("POST", "/nowhere", b'{"x": 1}'),
                               ("POST", "/api/search", b"{broken"),
                               ("PUT", "/api/search", b"{}"),
                               ("GET", "/api/health", None)]:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert (response.status == 200) == (path == "/api/health"), answer
        assert not response.will_close  # the same connection carries the next request
    connection.close()


def test_concurrent_searches(server, sketch_file):
    payload = {"sketch": b64(sketch_file.read_bytes()), "feedback": ["a man"], "topk": 7}
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: search(server, payload), range(12)))
    assert all(status == 200 for status, _ in answers)
    assert all(answer == answers[0][1] for _, answer in answers)


def test_internal_errors_stay_on_the_server(server, sketch_file, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(server.engine, "search", broken)
    with caplog.at_level(logging.ERROR, logger="app"):
        status, headers, body = call(server, "/api/search",
                                     {"sketch": b64(sketch_file.read_bytes())})
        assert_json_error(status, headers, body, 500)
        assert b"secret" not in body
        wait_until(lambda: any("secret detail" in r.exc_text for r in caplog.records
                               if r.exc_text))
        wait_until(lambda: any("POST /api/search 500" in r.getMessage()
                               for r in caplog.records))


def wait_until(condition, timeout=5.0):
    """The server logs a request just after answering it: wait a moment for the line."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("verbose", [False, True])
def test_one_log_line_per_request(engine, caplog, verbose):
    httpd = app.make_server(engine, "127.0.0.1", 0, verbose=verbose)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with caplog.at_level(logging.INFO, logger="app"):
            assert call(httpd, "/api/health")[0] == 200
            assert call(httpd, "/missing")[0] == 404
            wait_until(lambda: any("/missing 404" in r.getMessage() for r in caplog.records))
            lines = [r.getMessage() for r in caplog.records if r.name == "app"
                     and re.search(r" GET /(api/health|missing) ", r.getMessage())]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert len(lines) == (2 if verbose else 1), lines
    assert lines[-1].startswith("127.0.0.1 GET /missing 404 ")
    if verbose:
        assert lines[0].startswith("127.0.0.1 GET /api/health 200 ")


# ------------------------------------------------------------------------ command line
def test_command_line_serves_and_stops(market_run, gallery, index_file):
    command = [sys.executable, "app.py", "--checkpoint", str(market_run / "checkpoint_best.pth"),
               "--gallery", str(gallery), "--index", str(index_file), "--port", "0",
               "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"serving http://127\.0\.0\.1:(\d+)/ \(gallery: (\d+) photos; "
                             r"bound to 127\.0\.0\.1 only\)\n", line)
        if not match:
            process.kill()
            pytest.fail(f"unexpected first line {line!r}; stderr: {process.communicate()[1]}")
        url = f"http://127.0.0.1:{match[1]}/api/health"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.loads(response.read())["gallery"] == int(match[2])
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0 and "stopped" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def restore_logging():
    """main() sets up logging to the (captured) standard output; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    app_level = app.log.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    app.log.setLevel(app_level)


@pytest.mark.parametrize("problem", ["missing", "stage", "gallery"])
def test_bad_startup_input_gets_one_line(market_run, stage1_run, gallery, tmp_path, capsys,
                                         restore_logging, problem):
    checkpoint = market_run / "checkpoint_best.pth"
    if problem == "missing":
        checkpoint, expected = tmp_path / "nothing.pth", "checkpoint not found"
    elif problem == "stage":
        checkpoint = stage1_run / "checkpoint_best.pth"
        expected = "is a stage 1 (train_adapt.py) checkpoint; expected a stage 2"
    else:
        gallery = tmp_path / "empty"
        gallery.mkdir()
        expected = "holds no images"
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery), "--port", "0",
                  "--device", "cpu", "--index", str(tmp_path / "i.pt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------------ in a browser
@contextlib.contextmanager
def headless_chromium(tmp_path, monkeypatch):
    """Debian's Chromium through its own chromedriver (nothing is downloaded). Started in
    the test itself, so that a browser that cannot start fails the test."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver); "
                    "under CI this test fails instead")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        pytest.fail(f"the browser test needs selenium (pip install -r requirements-dev.txt): "
                    f"{error}")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,800",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options,
                                  service=Service(executable_path=str(CHROMEDRIVER)))
    except Exception as error:  # noqa: BLE001 - any failure to start is the message
        pytest.fail(f"headless Chromium did not start ({CHROMIUM} with {CHROMEDRIVER}): "
                    f"{type(error).__name__}: {str(error).strip()[:800]}")
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def viewport(driver, width, height, mobile=False):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1,
                            "mobile": mobile})


# A stick figure in the canvas's own pixels (320 x 640): head, body, arms, legs, feet.
HEAD = [(160 + 44 * math.cos(a / 20 * 2 * math.pi), 100 + 48 * math.sin(a / 20 * 2 * math.pi))
        for a in range(21)]
STICK_FIGURE = [HEAD, [(160, 148), (160, 250), (160, 370)],
                [(72, 300), (112, 240), (160, 200), (208, 240), (248, 300)],
                [(96, 580), (128, 475), (160, 370), (192, 475), (224, 580)],
                [(96, 580), (70, 585)], [(224, 580), (250, 585)]]


def draw(driver, canvas, strokes):
    from selenium.webdriver.common.action_chains import ActionChains
    width, height = canvas.size["width"], canvas.size["height"]

    def offset(x, y):  # from the canvas's centre, in CSS pixels
        return round(x * width / 320 - width / 2), round(y * height / 640 - height / 2)

    for points in strokes:
        actions = ActionChains(driver, duration=0)
        actions.move_to_element_with_offset(canvas, *offset(*points[0])).click_and_hold()
        for point in points[1:]:
            actions.move_to_element_with_offset(canvas, *offset(*point))
        actions.release().perform()


PAGE_STATE = """
const items = [...document.querySelectorAll('#results li')];
return {
  chips: [...document.querySelectorAll('#chips .chip-text')].map(c => c.textContent),
  query: document.getElementById('query').textContent,
  busy: document.getElementById('results').hasAttribute('aria-busy'),
  srcs: items.map(li => li.querySelector('img').getAttribute('src')),
  loaded: items.every(li => li.querySelector('img').complete &&
                            li.querySelector('img').naturalWidth > 0),
  ranks: items.map(li => li.querySelector('.rank').textContent),
  scores: items.map(li => Number(li.querySelector('.score').textContent)),
  status: document.getElementById('status').textContent,
  lightbox: !document.getElementById('lightbox').hidden,
};"""


def wait_for(driver, condition, what, timeout=15):
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: (lambda state: state if condition(state) else None)(
                d.execute_script(PAGE_STATE)))
    except Exception:
        pytest.fail(f"the page never showed {what}; it shows {driver.execute_script(PAGE_STATE)}")


def photo_url(photo_id):
    return "/api/photo?id=" + quote(photo_id, safe="")


def wait_for_canvas_change(driver, before, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = driver.execute_script("return document.getElementById('sketch').toDataURL()")
        if now != before:
            return now
        time.sleep(0.1)
    pytest.fail("the uploaded sketch never reached the canvas")


def test_page_end_to_end(server, engine, sketch_file, tmp_path, monkeypatch):
    with headless_chromium(tmp_path, monkeypatch) as driver:
        check_the_page(driver, server, engine, sketch_file, tmp_path)


def check_the_page(driver, server, engine, sketch_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    viewport(driver, 1280, 800)
    driver.get(server.base + "/")
    wait_for(driver, lambda s: "Draw the person" in s["status"], "its first hint")

    canvas = driver.find_element(By.ID, "sketch")
    draw(driver, canvas, STICK_FIGURE)
    box = driver.find_element(By.ID, "feedback-input")
    sentences = ["a young woman with long hair", "wearing a red top and a black skirt"]
    for sentence in sentences:
        box.send_keys(sentence, Keys.ENTER)
    k = 10
    state = wait_for(driver, lambda s: s["chips"] == sentences and sentences[1] in s["query"]
                     and len(s["srcs"]) == k and s["loaded"] and not s["busy"],
                     f"{k} photos for the sketch and both sentences")
    assert state["query"] == engine.query_text(sentences)
    assert state["ranks"] == [f"#{rank}" for rank in range(1, k + 1)]
    assert state["scores"] == sorted(state["scores"], reverse=True)
    ids = []
    for src in state["srcs"]:
        parts = urlsplit(src)
        assert parts.path == "/api/photo" and not parts.netloc
        ids.append(parse_qs(parts.query)["id"][0])
    assert all(photo_id in engine.paths for photo_id in ids)
    assert driver.find_element(By.ID, "gallery-info").text == \
        f"Gallery: {len(engine.paths)} photos"

    # The page's ranking is the API's ranking of what is on the canvas.
    drawn = driver.execute_script("return document.getElementById('sketch').toDataURL()")
    assert drawn.startswith("data:image/png;base64,")
    status, answer = search(server, {"sketch": drawn, "feedback": sentences, "topk": k})
    assert status == 200 and [r["id"] for r in answer["results"]] == ids

    driver.save_screenshot(str(tmp_path / "app_screenshot.png"))
    if os.environ.get("SAVE_APP_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "app_screenshot.png", SCREENSHOT)

    # A photo opens large; Escape closes it.
    driver.find_element(By.CSS_SELECTOR, "#results li button").click()
    wait_for(driver, lambda s: s["lightbox"], "the photo overlay")
    driver.save_screenshot(str(tmp_path / "app_lightbox.png"))
    big = driver.find_element(By.ID, "lightbox-img").get_attribute("src")
    assert urlsplit(big).path == "/api/photo" and parse_qs(urlsplit(big).query)["id"] == ids[:1]
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(driver, lambda s: not s["lightbox"], "the overlay closed")

    # Removing a round re-ranks with the other one.
    driver.find_element(By.CSS_SELECTOR, "#chips .chip-remove").click()
    wait_for(driver, lambda s: s["chips"] == sentences[1:] and s["query"] ==
             engine.query_text(sentences[1:]) and not s["busy"], "the first round removed")

    # No ink, no search; undo brings the figure (and the results) back.
    driver.find_element(By.ID, "clear").click()
    wait_for(driver, lambda s: not s["srcs"] and "Draw the person" in s["status"], "a clear page")
    driver.find_element(By.ID, "undo").click()
    wait_for(driver, lambda s: len(s["srcs"]) == k and not s["busy"], "the results again")

    # An uploaded sketch replaces the drawing and is searched in its turn.
    driver.find_element(By.ID, "upload").send_keys(str(sketch_file))
    uploaded = wait_for_canvas_change(driver, drawn)
    status, answer = search(server, {"sketch": uploaded, "feedback": sentences[1:], "topk": k})
    expected = [photo_url(r["id"]) for r in answer["results"]]
    wait_for(driver, lambda s: s["srcs"] == expected and not s["busy"], "the uploaded sketch's "
             "ranking")

    # A phone-sized screen: one column, nothing wider than the screen.
    viewport(driver, 390, 844, mobile=True)
    layout = driver.execute_script("""
        const canvas = document.getElementById('sketch').getBoundingClientRect();
        const results = document.getElementById('results').getBoundingClientRect();
        return {overflow: document.documentElement.scrollWidth - window.innerWidth,
                canvasWidth: canvas.width, stacked: results.top >= canvas.bottom};""")
    assert layout["overflow"] <= 0 and layout["canvasWidth"] > 100 and layout["stacked"]
    driver.save_screenshot(str(tmp_path / "app_phone.png"))

    problems = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not problems, problems  # no script errors, no refused (external) loads
