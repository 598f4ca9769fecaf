"""app.py: the API called directly, without sockets (every answer and every refusal, with
its status and message; each query mode on a stage-2, a stage-1 and a zero-shot CLIP
engine), the same API against a live server (and what only the HTTP layer does: bodies,
connections, logging), the command line, and the page end to end in a headless Chromium
(with a stage-2 model and with a stage-1 model)."""
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
from types import SimpleNamespace
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

import app
from engine.api import Retriever
from utils.config import REPO_ROOT

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
    """The retriever of the stage-2 run, the gallery indexed."""
    checkpoint = market_run / "checkpoint_best.pth"
    return Retriever.load(checkpoint, device="cpu").index(gallery, index_file)


@pytest.fixture(scope="module")
def engines(engine, stage1_run, tiny_clip_path, gallery, tmp_path_factory):
    """The same gallery searched by each kind of model the app serves."""
    folder = tmp_path_factory.mktemp("indexes")
    return {"stage2": engine,
            "stage1": Retriever.load(stage1_run / "checkpoint_best.pth", device="cpu")
            .index(gallery, folder / "stage1.pt"),
            "clip": Retriever.load(tiny_clip_path, ["model.image_size=[32,16]"], device="cpu")
            .index(gallery, folder / "clip.pt")}


@contextlib.contextmanager
def serving(engine):
    """The app for ``engine`` on a free port of 127.0.0.1, served by a background thread."""
    httpd = app.make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(engine):
    with serving(engine) as httpd:
        yield httpd


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


def with_sketch(payload, sketch_file):
    """``payload`` with a stand-in for "sketch" replaced by base64 image data: SKETCH (the
    JPEG sketch), GIF, TRUNCATED (the start of a PNG) or HUGE (a PNG of 4001x4000 pixels)."""
    if not isinstance(payload, dict) or payload.get("sketch") not in (
            "SKETCH", "GIF", "TRUNCATED", "HUGE"):
        return payload
    buffer = io.BytesIO()
    if payload["sketch"] == "SKETCH":
        buffer.write(sketch_file.read_bytes())
    elif payload["sketch"] == "GIF":
        Image.open(sketch_file).save(buffer, format="GIF")
    elif payload["sketch"] == "TRUNCATED":
        Image.open(sketch_file).save(buffer, format="PNG")
        buffer = io.BytesIO(buffer.getvalue()[:200])
    else:
        Image.new("1", (4001, 4000)).save(buffer, format="PNG")
    return {**payload, "sketch": b64(buffer.getvalue())}


# --------------------------------------------------------------- the API without sockets
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api(engine):
    return app.SearchAPI(engine)


def post(payload=None, body=None, headers=None, target="/api/search") -> app.Request:
    """A POST of ``payload`` as JSON (or of the bytes ``body``) with its Content-Length."""
    body = json.dumps(payload).encode() if body is None else body
    return app.Request("POST", target, {**JSON, "Content-Length": str(len(body)),
                                        **(headers or {})}, body)


def refusal(api, request) -> tuple:
    """(status, message, headers) of the RequestError that ``request`` gets."""
    with pytest.raises(app.RequestError) as info:
        api.answer(request)
    return info.value.status, info.value.message, info.value.headers


def json_of(answer: app.Answer):
    assert answer.content_type == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    return json.loads(answer.body)


def test_api_search(api, engine, sketch_file, sketch_png_url):
    feedback = ["a young woman", "wearing a red top"]
    answer = api.answer(post({"sketch": sketch_png_url, "feedback": feedback, "topk": 5}))
    assert answer.status == 200
    payload = json_of(answer)
    assert set(payload) == {"results", "query", "mode"}
    assert payload["query"] == "a photo of * , and a young woman, wearing a red top"
    assert payload["mode"] == "composed"
    direct = engine.search(Image.open(sketch_file), feedback, topk=5)
    assert [(r["rank"], r["id"]) for r in payload["results"]] == \
        [(rank, path) for rank, (path, _) in enumerate(direct, start=1)]
    assert all(set(r) == {"rank", "id", "score"} for r in payload["results"])
    assert all(math.isclose(r["score"], s, abs_tol=1e-5)
               for r, (_, s) in zip(payload["results"], direct))


def test_api_search_defaults_and_limits(api, engine, sketch_file):
    raw = b64(sketch_file.read_bytes())  # a JPEG, plain base64
    payload = json_of(api.answer(post({"sketch": raw})))
    assert len(payload["results"]) == 10 and payload["query"] == "a photo of *"
    assert payload["mode"] == "sketch"
    payload = json_of(api.answer(post({"sketch": raw, "feedback": None, "topk": None})))
    assert len(payload["results"]) == 10 and payload["query"] == "a photo of *"
    # blank rounds dropped, white space folded; the largest topk; a charset is fine
    payload = json_of(api.answer(post({"sketch": f" {raw[:40]}\n{raw[40:]} ", "topk": 100,
                                       "feedback": ["  a \t man  ", " ", ""]},
                                      headers={"Content-Type": "Application/JSON; "
                                                               "charset=utf-8"})))
    assert payload["query"] == "a photo of * , and a man"
    assert len(payload["results"]) == min(100, len(engine.paths))
    assert [r["rank"] for r in payload["results"]] == list(range(1, len(payload["results"]) + 1))
    # the most that is accepted: 20 sentences of 300 characters, topk 1
    payload = json_of(api.answer(post({"sketch": raw, "feedback": ["x" * 300] * 20, "topk": 1})))
    assert len(payload["results"]) == 1
    # a body of exactly MAX_BODY_BYTES is read (and then judged on its content)
    body = b'{"sketch": 1}'.ljust(app.MAX_BODY_BYTES)
    assert refusal(api, post(body=body))[:2] == (400, "'sketch' must be a non-empty string: a "
                                                      "base64 PNG or JPEG image or a data URL")


KINDS = {"stage2": "stage-2 checkpoint", "stage1": "stage-1 checkpoint",
         "clip": "CLIP (zero-shot)"}


def ranked(payload) -> list:
    return [(r["rank"], r["id"], r["score"]) for r in payload["results"]]


def ranked_directly(engine, sketch, feedback, topk) -> list:
    """``engine.search`` as the API answers it (scores rounded)."""
    return [(rank, path, round(score, 6)) for rank, (path, score) in
            enumerate(engine.search(sketch, feedback, topk=topk), start=1)]


@pytest.mark.parametrize("source", ["stage2", "stage1", "clip"])
def test_api_searches_by_any_mix(engines, source, sketch_file, sketch_png_url):
    """A sketch alone and text alone on every model; both together only on stage 2 (a
    stage-1 model and zero-shot CLIP refuse them with the engine's message); neither is
    refused everywhere."""
    engine = engines[source]
    api = app.SearchAPI(engine)
    composes = source == "stage2"
    assert json_of(api.answer(app.Request("GET", "/api/health"))) == {
        "ok": True, "gallery": len(engine.paths), "composes": composes, "model": KINDS[source]}
    words = ["a young woman", "wearing a red top"]

    text = json_of(api.answer(post({"feedback": words, "topk": 5})))
    assert (text["mode"], text["query"]) == ("text", "a young woman, wearing a red top")
    assert ranked(text) == ranked_directly(engine, None, words, 5)

    for extra in [{}, {"feedback": []}, {"feedback": [" "]}, {"feedback": None}]:
        sketch = json_of(api.answer(post({"sketch": sketch_png_url, "topk": 5, **extra})))
        assert sketch["mode"] == "sketch"
        assert sketch["query"] == ("a photo of *" if composes else "the sketch (image tower)")
        assert ranked(sketch) == ranked_directly(engine, Image.open(sketch_file), [], 5)

    both = post({"sketch": sketch_png_url, "feedback": words, "topk": 5})
    if composes:
        composed = json_of(api.answer(both))
        assert composed["mode"] == "composed"
        assert composed["query"] == "a photo of * , and a young woman, wearing a red top"
        assert ranked(composed) == ranked_directly(engine, Image.open(sketch_file), words, 5)
    else:
        assert refusal(api, both) == (
            400, f"this {KINDS[source]} searches by a sketch or by text, not both; composing "
                 "them needs a stage-2 checkpoint (train_token.py)", {})
    for neither in [{}, {"topk": 5}, {"sketch": None, "feedback": ["", "  "]}]:
        assert refusal(api, post(neither)) == (400, NO_QUERY, {})


def test_api_refuses_both_before_searching(engines, sketch_png_url, monkeypatch):
    engine = engines["stage1"]
    monkeypatch.setattr(engine, "search", lambda *args: pytest.fail("searched"))
    status, message, _ = refusal(app.SearchAPI(engine),
                                 post({"sketch": sketch_png_url, "feedback": ["a red coat"]}))
    assert status == 400 and "not both" in message


def test_api_searches_run_under_the_engine_lock(api, engine, sketch_file):
    request = post({"sketch": b64(sketch_file.read_bytes()), "topk": 3})
    with ThreadPoolExecutor(max_workers=1) as pool:
        with engine.lock:
            pending = pool.submit(api.answer, request)
            time.sleep(0.3)
            assert not pending.done()  # waiting for the lock
        assert pending.result(timeout=60).status == 200


def test_transparent_sketches_are_drawn_on_paper():
    image = Image.new("RGBA", (4, 8), (0, 0, 0, 0))
    image.putpixel((1, 1), (0, 0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    sketch = app.decode_sketch("data:image/png;base64," + b64(buffer.getvalue()))
    assert sketch.mode == "RGB" and sketch.size == (4, 8)
    assert sketch.getpixel((0, 0)) == (255, 255, 255) and sketch.getpixel((1, 1)) == (0, 0, 0)


NON_EMPTY = "'sketch' must be a non-empty string: a base64 PNG or JPEG image or a data URL"
NO_QUERY = "give 'sketch' (a base64 PNG or JPEG image), 'feedback' (a list of sentences), or both"
UNREADABLE = "'sketch' is not a readable PNG or JPEG image"
NOT_A_LIST = "'feedback' must be a list of strings"


@pytest.mark.parametrize("payload, message", [
    ({}, NO_QUERY),
    ({"feedback": []}, NO_QUERY),
    ({"feedback": [" ", ""], "topk": 5}, NO_QUERY),  # blank sentences are no text
    ({"sketch": None}, NO_QUERY),  # null is the same as absent, as for 'feedback' and 'topk'
    ({"sketch": None, "feedback": None}, NO_QUERY),
    ({"sketch": 123}, NON_EMPTY),
    ({"sketch": " \n "}, NON_EMPTY),
    ({"sketch": "", "feedback": ["a red coat"]}, NON_EMPTY),
    ({"sketch": "@@not base64@@"}, "'sketch' is not valid base64"),
    ({"sketch": "data:image/png,abc"},
     "'sketch' data URL must be base64 encoded (data:image/png;base64,...)"),
    ({"sketch": "data:image/png;base64"},
     "'sketch' data URL must be base64 encoded (data:image/png;base64,...)"),
    ({"sketch": b64(b"plain text, not a picture")}, UNREADABLE),
    ({"sketch": "TRUNCATED"}, UNREADABLE),
    ({"sketch": "GIF"}, "'sketch' must be a PNG or JPEG image, not GIF"),
    ({"sketch": "HUGE"}, "'sketch' is 4001x4000 pixels; at most 16,000,000 pixels are accepted"),
    ({"sketch": "SKETCH", "topk": 0}, "'topk' must be between 1 and 100, got 0"),
    ({"sketch": "SKETCH", "topk": 101}, "'topk' must be between 1 and 100, got 101"),
    ({"sketch": "SKETCH", "topk": "5"}, "'topk' must be an integer"),
    ({"sketch": "SKETCH", "topk": 5.0}, "'topk' must be an integer"),
    ({"sketch": "SKETCH", "topk": True}, "'topk' must be an integer"),
    ({"sketch": "SKETCH", "feedback": "a red coat"}, NOT_A_LIST),
    ({"sketch": "SKETCH", "feedback": {"a": "red coat"}}, NOT_A_LIST),
    ({"sketch": "SKETCH", "feedback": ["a red coat", 7]}, NOT_A_LIST),
    ({"sketch": "SKETCH", "feedback": ["x"] * 21}, "'feedback' has 21 sentences; at most 20"),
    ({"sketch": "SKETCH", "feedback": ["fine", "x" * 301]},
     "feedback sentence 2 has 301 characters; at most 300"),
    ({"sketch": "SKETCH", "feedback": ["a red\x00coat"]},
     "feedback sentence 1 contains a NUL character"),
    ({"feedback": ["a red coat"], "topk": 0}, "'topk' must be between 1 and 100, got 0"),
    ({"feedback": "a red coat"}, NOT_A_LIST),
    (["not", "an", "object"], "the request body must be a JSON object"),
    ("a string", "the request body must be a JSON object"),
])
def test_api_refuses_bad_searches(api, sketch_file, payload, message):
    assert refusal(api, post(with_sketch(payload, sketch_file))) == (400, message, {})


TOO_LONG = f"the request is {6 * 1024 * 1024:,} bytes; at most 5,242,880 are accepted"
NOT_JSON = "the request body must be JSON (Content-Type: application/json)"
NO_LENGTH = "a Content-Length header is required (no chunked bodies)"


@pytest.mark.parametrize("headers, body, status, message, answer_headers", [
    ({"Content-Type": "text/plain", "Content-Length": "2"}, b"{}", 415, NOT_JSON, {}),
    ({"Content-Length": "2"}, b"{}", 415, NOT_JSON, {}),
    (JSON, b"", 411, NO_LENGTH, {}),
    ({**JSON, "Transfer-Encoding": "chunked"}, b"", 411, NO_LENGTH, {}),
    ({**JSON, "Content-Length": "2", "Transfer-Encoding": "chunked"}, b"{}", 411, NO_LENGTH,
     {}),
    ({**JSON, "Content-Length": "two"}, b"{}", 411, NO_LENGTH, {}),
    ({**JSON, "Content-Length": "-2"}, b"{}", 411, NO_LENGTH, {}),
    # a body over the limit is not read: refused from its Content-Length alone
    ({**JSON, "Content-Length": str(6 * 1024 * 1024)}, b"", 413, TOO_LONG,
     {"Connection": "close"}),
    ({**JSON, "Content-Length": "100"}, b'{"sketch": "', 400, "the request body ended early",
     {}),
    ({**JSON, "Content-Length": "11"}, b'{"sketch": ', 400, "the request body is not valid JSON",
     {}),
    ({**JSON, "Content-Length": "2"}, b"\xff\xfe", 400, "the request body is not valid JSON",
     {}),
    ({**JSON, "Content-Length": "0"}, b"", 400, "the request body is not valid JSON", {}),
])
def test_api_refuses_bad_bodies(api, headers, body, status, message, answer_headers):
    request = app.Request("POST", "/api/search", headers, body)
    assert refusal(api, request) == (status, message, answer_headers)


@pytest.mark.parametrize("method, headers, length", [
    ("GET", {}, 0),
    ("HEAD", {}, 0),
    ("POST", {}, None),
    ("POST", {"Content-Length": "12"}, 12),
    ("GET", {"Content-Length": "12"}, 12),
    ("POST", {"Content-Length": "0"}, 0),
    ("POST", {"Content-Length": "twelve"}, None),
    ("POST", {"Content-Length": "-1"}, None),
    ("GET", {"Transfer-Encoding": "chunked"}, None),
    ("POST", {"Content-Length": "12", "Transfer-Encoding": "gzip, Chunked"}, None),
])
def test_body_length(method, headers, length):
    assert app.body_length(method, headers) == length


def test_api_health_photos_and_page(api, engine, gallery):
    health = api.answer(app.Request("GET", "/api/health"))
    assert health.status == 200
    assert json_of(health) == {"ok": True, "gallery": len(engine.paths), "composes": True,
                               "model": "stage-2 checkpoint"}
    assert api.answer(app.Request("GET", "/api/health?x=1")) == health
    assert api.answer(app.Request("HEAD", "/api/health")) == health  # the server drops the body

    for photo_id, content_type in [(engine.paths[0], "image/jpeg"), ("extra.png", "image/png")]:
        answer = api.answer(app.Request("GET", "/api/photo?id=" + quote(photo_id)))
        assert (answer.status, answer.content_type) == (200, content_type)
        assert answer.body == (gallery / photo_id).read_bytes()
        assert answer.headers == {"Cache-Control": "private, max-age=300"}

    for route, (name, content_type) in app.STATIC_FILES.items():
        answer = api.answer(app.Request("GET", route))
        assert (answer.status, answer.content_type) == (200, content_type)
        assert answer.body == (app.WEB_DIR / name).read_bytes()
        assert answer.headers == {"Content-Security-Policy": app.PAGE_POLICY,
                                  "Cache-Control": "no-cache"}


def test_api_missing_page_file(engine, tmp_path):
    api = app.SearchAPI(engine, web_dir=tmp_path)
    for route, (name, _) in app.STATIC_FILES.items():
        assert refusal(api, app.Request("GET", route)) == (404, f"missing page file: web/{name}",
                                                           {})


NOT_INSIDE = "the photo id must be a relative path inside the gallery"
ONE_PHOTO = "give one photo as ?id=<gallery-relative path>"


@pytest.mark.parametrize("query, status, message", [
    ("id=" + quote("../secret.jpg"), 403, NOT_INSIDE),
    ("id=" + quote("cam/../extra.png"), 403, NOT_INSIDE),
    ("id=ABSOLUTE", 403, NOT_INSIDE),
    ("id=" + quote("cam\\PHOTO"), 403, NOT_INSIDE),
    ("id=" + quote("cam/PHOTO\x00.txt"), 403, NOT_INSIDE),
    ("id=" + quote("./extra.png"), 403, NOT_INSIDE),
    ("id=" + quote("cam//PHOTO"), 403, NOT_INSIDE),
    ("id=" + quote("C:/extra.png"), 403, NOT_INSIDE),
    ("id=" + quote("cam/zz_escape.jpg"), 403, "the photo lies outside the gallery folder"),
    ("id=" + quote("cam/no_such_photo.jpg"), 404,
     "no such photo in the gallery: cam/no_such_photo.jpg"),
    ("id=config.yaml", 404, "no such photo in the gallery: config.yaml"),
    ("id=", 400, ONE_PHOTO),
    ("", 400, ONE_PHOTO),
    ("photo=extra.png", 400, ONE_PHOTO),
    ("id=extra.png&id=extra.png", 400, ONE_PHOTO),
])
def test_api_refuses_photo_ids(api, engine, gallery, query, status, message):
    name = Path(engine.paths[0]).name
    query = query.replace("PHOTO", name).replace(
        "ABSOLUTE", quote(str((gallery / "cam" / name).resolve())))
    assert refusal(api, app.Request("GET", "/api/photo?" + query)) == (status, message, {})


def test_api_photos_changed_since_indexing(tmp_path, sketch_file, monkeypatch):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for name in ["kept.jpg", "gone.jpg", "locked.jpg"]:
        shutil.copy(sketch_file, folder / name)
    (folder / "notes.txt").write_text("not a photo")
    (folder / "notes.jpg").symlink_to(folder / "notes.txt")  # inside, but not a photo
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    indexed = SimpleNamespace(gallery=SimpleNamespace(folder=folder),
                              paths=["kept.jpg", "gone.jpg", "locked.jpg", "notes.jpg", "loop.jpg"])
    api = app.SearchAPI(indexed)
    (folder / "gone.jpg").unlink()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if Path(path).name == "locked.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(app.os, "open", refusing_open)
    photo = api.answer(app.Request("GET", "/api/photo?id=kept.jpg"))
    assert (photo.status, photo.body) == (200, sketch_file.read_bytes())
    for photo_id, status, message in [
            ("gone.jpg", 404, "photo no longer there: gone.jpg"),
            ("loop.jpg", 404, "photo no longer there: loop.jpg"),
            ("notes.jpg", 403, "not a photo file"),
            ("locked.jpg", 404, "photo not readable: locked.jpg")]:
        request = app.Request("GET", "/api/photo?id=" + photo_id)
        assert refusal(api, request) == (status, message, {}), photo_id


@pytest.mark.parametrize("method, target, status, message, allow", [
    ("DELETE", "/", 405, "method DELETE is not allowed", "GET, HEAD, POST"),
    ("PUT", "/api/search", 405, "method PUT is not allowed", "GET, HEAD, POST"),
    ("OPTIONS", "/nothing", 405, "method OPTIONS is not allowed", "GET, HEAD, POST"),
    ("GET", "/nothing/here", 404, "no such route: /nothing/here", None),
    ("HEAD", "/api/nothing", 404, "no such route: /api/nothing", None),
    ("GET", "/web/app.js", 404, "no such route: /web/app.js", None),
    ("POST", "/nothing", 404, "no such route: POST /nothing", None),
    ("POST", "/api/health", 405, "/api/health takes GET", "GET, HEAD"),
    ("POST", "/api/photo?id=extra.png", 405, "/api/photo takes GET", "GET, HEAD"),
    ("POST", "/", 405, "/ takes GET", "GET, HEAD"),
    ("POST", "/app.js", 405, "/app.js takes GET", "GET, HEAD"),
    ("GET", "/api/search", 405, "/api/search takes POST", "POST"),
    ("HEAD", "/api/search?sketch=x", 405, "/api/search takes POST", "POST"),
])
def test_api_refuses_unknown_routes_and_methods(api, method, target, status, message, allow):
    headers = {"Allow": allow} if allow else {}
    assert refusal(api, app.Request(method, target, JSON)) == (status, message, headers)


FOREIGN_HOST = "this server answers only requests addressed to 127.0.0.1 or localhost"


@pytest.mark.parametrize("host, loopback", [
    (None, True), ("", True), ("127.0.0.1:8000", True), ("localhost", True),
    ("LocalHost:80", True), ("[::1]:8000", True), ("[::1]", True), ("127.8.9.1", True),
    ("attacker.example", False), ("attacker.example:8000", False),
    ("localhost.attacker.example", False), ("192.168.1.5:8000", False),
    ("[2001:db8::1]:8000", False),
])
def test_api_answers_only_loopback_hosts(engine, host, loopback):
    """A server on a loopback address refuses other Host names (DNS rebinding)."""
    request = app.Request("GET", "/api/health", {} if host is None else {"Host": host})
    guarded, open_to_all = app.SearchAPI(engine), app.SearchAPI(engine, loopback_only=False)
    assert open_to_all.answer(request).status == 200
    if loopback:
        assert guarded.answer(request).status == 200
    else:
        assert refusal(guarded, request) == (403, FOREIGN_HOST, {})
        # before the route is looked at, after the method
        assert refusal(guarded, app.Request("GET", "/nothing", {"Host": host}))[0] == 403
        assert refusal(guarded, app.Request("PUT", "/", {"Host": host}))[0] == 405


def test_error_answers_are_json():
    error = app.RequestError(405, "/api/search takes POST", {"Allow": "POST"})
    assert app.error_answer(error) == app.Answer(
        405, b'{"error": "/api/search takes POST"}', "application/json",
        {"Allow": "POST", "Cache-Control": "no-store"})


# ------------------------------------------------------------------------ the API over HTTP
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
    direct = engine.search(Image.open(sketch_file), feedback, topk=5)  # the same code path
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
    status, words = search(server, {"feedback": ["a man", "in a red coat"], "topk": 4})
    assert status == 200 and (words["mode"], words["query"]) == ("text", "a man, in a red coat")
    assert [r["id"] for r in words["results"]] == \
        [path for path, _ in engine.search(None, ["a man", "in a red coat"], topk=4)]


def test_photo_health_and_page(server, engine, gallery):
    photo = engine.paths[0]
    status, headers, body = call(server, "/api/photo?id=" + quote(photo))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == (gallery / photo).read_bytes()
    status, headers, body = call(server, "/api/photo?id=extra.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == (gallery / "extra.png").read_bytes()

    status, headers, body = call(server, "/api/health")
    assert status == 200 and json.loads(body) == {"ok": True, "gallery": len(engine.paths),
                                                  "composes": True,
                                                  "model": "stage-2 checkpoint"}

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
    ({"feedback": []}, "give 'sketch'"),
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
    payload = with_sketch(payload, sketch_file)
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
    assert response.will_close  # what the client may still send is not read as a request
    assert "error" in json.loads(response.read())
    connection.close()


def test_head_answers_without_a_body(server, engine):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    for route in ["/api/health", "/", "/api/photo?id=" + quote(engine.paths[0])]:
        connection.request("GET", route)
        response = connection.getresponse()
        body = response.read()
        connection.request("HEAD", route)
        head = connection.getresponse()
        assert head.status == response.status == 200 and head.read() == b""
        assert head.headers["Content-Length"] == str(len(body)) != "0"
        assert head.headers["Content-Type"] == response.headers["Content-Type"]
        assert not head.will_close
    connection.close()


def test_the_host_check_follows_the_bound_address(engine):
    for host, loopback_only in [("127.0.0.1", True), ("0.0.0.0", False)]:
        httpd = app.make_server(engine, host, 0)
        try:
            assert httpd.api.loopback_only is loopback_only and httpd.api.retriever is engine
        finally:
            httpd.server_close()


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

    monkeypatch.setattr(server.retriever, "search", broken)
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
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_command_line_serves_and_stops(market_run, gallery, index_file, stop):
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
        process.send_signal(stop)
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


@pytest.mark.parametrize("problem", ["missing", "override", "gallery"])
def test_bad_startup_input_gets_one_line(market_run, gallery, tmp_path, capsys,
                                         restore_logging, problem):
    checkpoint, overrides = market_run / "checkpoint_best.pth", []
    if problem == "missing":
        checkpoint, expected = tmp_path / "nothing.pth", "checkpoint not found"
    elif problem == "override":
        overrides = ["model.quick_gelus=false"]
        expected = "unknown config key 'model.quick_gelus'; did you mean 'model.quick_gelu'?"
    else:
        gallery = tmp_path / "empty"
        gallery.mkdir()
        expected = "holds no images"
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery), "--port", "0",
                  "--device", "cpu", "--index", str(tmp_path / "i.pt"), *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("source", ["stage1", "clip"])
def test_command_line_serves_any_model_with_overrides(source, stage1_run, tiny_clip_path,
                                                      gallery, tmp_path, served_once, capsys,
                                                      restore_logging):
    """A stage-1 checkpoint or plain CLIP weights are served; KEY=VALUE overrides reach the
    engine (here the tiny CLIP's image size)."""
    checkpoint = {"stage1": stage1_run / "checkpoint_best.pth", "clip": tiny_clip_path}[source]
    app.main(["--checkpoint", str(checkpoint), "--gallery", str(gallery), "--port", "0",
              "--device", "cpu", "--index", str(tmp_path / "i.pt"), "model.image_size=[32,16]"])
    engine = served_once["retriever"]
    assert (engine.kind, engine.composes) == (KINDS[source], False)
    assert list(engine.cfg.model.image_size) == [32, 16]
    assert served_once["closed"] and "stopped" in capsys.readouterr().out


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
  mode: document.getElementById('results').dataset.mode || null,
  searchBy: !document.getElementById('search-by').hidden,
  pressed: [...document.querySelectorAll('#search-by [aria-pressed="true"]')].map(b => b.id),
  aside: [...document.querySelectorAll('.set-aside')].map(
    e => e.querySelector('canvas') ? 'sketch' : e.id),
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


def record_queries(httpd, monkeypatch) -> list:
    """The fields (sketch, feedback) of every search the server is asked for, in order."""
    asked, search_ = [], httpd.api.search

    def recording(request):
        asked.append({name for name in ("sketch", "feedback") if request.get(name)})
        return search_(request)

    monkeypatch.setattr(httpd.api, "search", recording)
    return asked


def page_ranking(server, payload) -> list:
    """The photo URLs the page should show for ``payload``, as the API ranks them."""
    status, answer = search(server, payload)
    assert status == 200, answer
    return [photo_url(r["id"]) for r in answer["results"]]


def test_page_end_to_end(server, engine, engines, sketch_file, tmp_path, monkeypatch):
    asked = record_queries(server, monkeypatch)
    with headless_chromium(tmp_path, monkeypatch) as driver:
        check_the_page(driver, server, engine, sketch_file, tmp_path)
        assert {"sketch", "feedback"} in asked and {"feedback"} in asked  # composed, words
        with serving(engines["stage1"]) as stage1_server:
            asked = record_queries(stage1_server, monkeypatch)
            check_alternatives(driver, stage1_server, engines["stage1"], tmp_path)
        assert {"sketch"} in asked and {"feedback"} in asked
        assert {"sketch", "feedback"} not in asked  # never both to a model that cannot compose


def check_phone_layout(driver, tmp_path, name):
    """A phone-sized screen: one column, nothing wider than the screen."""
    viewport(driver, 390, 844, mobile=True)
    layout = driver.execute_script("""
        const canvas = document.getElementById('sketch').getBoundingClientRect();
        const results = document.getElementById('results').getBoundingClientRect();
        return {overflow: document.documentElement.scrollWidth - window.innerWidth,
                canvasWidth: canvas.width, stacked: results.top >= canvas.bottom};""")
    assert layout["overflow"] <= 0 and layout["canvasWidth"] > 100 and layout["stacked"]
    driver.save_screenshot(str(tmp_path / name))


def check_the_page(driver, server, engine, sketch_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    viewport(driver, 1280, 800)
    driver.get(server.base + "/")
    wait_for(driver, lambda s: "Draw the person" in s["status"] and not s["srcs"],
             "its first hint")
    k = 10

    # Words alone, before anything is drawn: the page searches by the text.
    box = driver.find_element(By.ID, "feedback-input")
    sentences = ["a young woman with long hair", "wearing a red top and a black skirt"]
    box.send_keys(sentences[0], Keys.ENTER)
    expected = page_ranking(server, {"feedback": sentences[:1], "topk": k})
    state = wait_for(driver, lambda s: s["mode"] == "text" and s["srcs"] == expected
                     and s["loaded"] and not s["busy"], "the ranking of the words alone")
    assert state["query"] == sentences[0] and "words alone: 1 feedback round" in state["status"]
    assert not state["searchBy"] and not state["aside"]  # stage 2 composes: nothing to choose
    note = driver.find_element(By.ID, "model-note").text
    assert "stage-2 checkpoint" in note and "together" in note

    # Then a sketch, and a second sentence: both are composed.
    canvas = driver.find_element(By.ID, "sketch")
    draw(driver, canvas, STICK_FIGURE)
    box.send_keys(sentences[1], Keys.ENTER)
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

    # Without the sketch the words alone are searched; undo brings the figure back.
    composed = wait_for(driver, lambda s: not s["busy"], "the ranking settled")["srcs"]
    driver.find_element(By.ID, "clear").click()
    expected = page_ranking(server, {"feedback": sentences[1:], "topk": k})
    wait_for(driver, lambda s: s["mode"] == "text" and s["query"] == sentences[1]
             and s["srcs"] == expected and not s["busy"], "the words alone once cleared")
    driver.find_element(By.ID, "undo").click()
    wait_for(driver, lambda s: s["mode"] == "composed" and s["srcs"] == composed
             and s["query"] == engine.query_text(sentences[1:]) and not s["busy"],
             "the composed results again")

    # An uploaded sketch replaces the drawing and is searched in its turn.
    driver.find_element(By.ID, "upload").send_keys(str(sketch_file))
    uploaded = wait_for_canvas_change(driver, drawn)
    status, answer = search(server, {"sketch": uploaded, "feedback": sentences[1:], "topk": k})
    expected = [photo_url(r["id"]) for r in answer["results"]]
    wait_for(driver, lambda s: s["srcs"] == expected and not s["busy"], "the uploaded sketch's "
             "ranking")

    check_phone_layout(driver, tmp_path, "app_phone.png")
    problems = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not problems, problems  # no script errors, no refused (external) loads


def check_alternatives(driver, server, engine, tmp_path):
    """A stage-1 model: the sketch or the words, whichever was changed last; the other is
    kept, faded, and the Search by buttons switch."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    viewport(driver, 1280, 800)
    driver.get(server.base + "/")
    wait_for(driver, lambda s: "Draw the person" in s["status"] and s["searchBy"]
             and not s["pressed"], "the Search by buttons")
    note = driver.find_element(By.ID, "model-note").text
    assert "stage-1 checkpoint" in note and "not both" in note
    k = 10

    draw(driver, driver.find_element(By.ID, "sketch"), STICK_FIGURE)
    state = wait_for(driver, lambda s: s["mode"] == "sketch" and len(s["srcs"]) == k
                     and not s["busy"], "the ranking of the sketch")
    drawn = driver.execute_script("return document.getElementById('sketch').toDataURL()")
    by_sketch = page_ranking(server, {"sketch": drawn, "topk": k})
    assert state["srcs"] == by_sketch and state["query"] == "the sketch (image tower)"
    assert state["pressed"] == ["by-sketch"] and not state["aside"]

    # Adding words switches to them; the sketch stays on the canvas, faded.
    sentence = "a man in a blue jacket"
    driver.find_element(By.ID, "feedback-input").send_keys(sentence, Keys.ENTER)
    by_text = page_ranking(server, {"feedback": [sentence], "topk": k})
    state = wait_for(driver, lambda s: s["mode"] == "text" and s["srcs"] == by_text
                     and not s["busy"], "the words' ranking")
    assert state["query"] == sentence and state["pressed"] == ["by-text"]
    assert state["aside"] == ["sketch"] and "sketch is kept" in \
        driver.find_element(By.ID, "mode-note").text
    assert driver.execute_script("return document.getElementById('sketch').toDataURL()") == drawn
    driver.save_screenshot(str(tmp_path / "app_stage1.png"))

    # The Search by buttons switch back to the sketch, keeping the words.
    driver.find_element(By.ID, "by-sketch").click()
    wait_for(driver, lambda s: s["mode"] == "sketch" and s["srcs"] == by_sketch
             and s["aside"] == ["chips"] and s["chips"] == [sentence] and not s["busy"],
             "the sketch's ranking again")
    driver.find_element(By.ID, "by-text").click()
    wait_for(driver, lambda s: s["mode"] == "text" and s["srcs"] == by_text
             and s["aside"] == ["sketch"] and not s["busy"], "the words' ranking again")

    # Drawing again switches to the sketch; a cleared canvas leaves the words.
    draw(driver, driver.find_element(By.ID, "sketch"), [[(40, 600), (280, 600)]])
    redrawn = driver.execute_script("return document.getElementById('sketch').toDataURL()")
    by_redrawn = page_ranking(server, {"sketch": redrawn, "topk": k})
    wait_for(driver, lambda s: s["mode"] == "sketch" and s["srcs"] == by_redrawn
             and s["pressed"] == ["by-sketch"] and not s["busy"], "the new sketch's ranking")
    driver.find_element(By.ID, "clear").click()
    wait_for(driver, lambda s: s["mode"] == "text" and s["srcs"] == by_text
             and not s["aside"] and not s["busy"], "the words alone once cleared")
    assert driver.find_element(By.ID, "by-sketch").get_attribute("disabled")

    check_phone_layout(driver, tmp_path, "app_stage1_phone.png")
    problems = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not problems, problems  # no refused searches, no script errors
