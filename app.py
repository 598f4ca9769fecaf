"""A local web page for searching a folder of photos with a drawn sketch, text feedback, or
both.

    python app.py --checkpoint outputs/Market_finetune/checkpoint_best.pth --gallery photos/
    python app.py --checkpoint checkpoint/ViT-B-16.pt --gallery photos/   # zero-shot CLIP
    python app.py --checkpoint open_clip.bin --gallery photos/ model.quick_gelu=false
    python app.py --checkpoint CKPT --gallery photos/ --ann ivf    # a big gallery (faiss-cpu)
    python app.py --checkpoint CKPT --gallery photos/ --rerank     # k-reciprocal re-ranking
    python app.py --onnx market_onnx --gallery photos/   # an ONNX export, run by onnxruntime
    # then open http://127.0.0.1:8000/ in a browser

The page (web/) lets a witness draw or upload a sketch, add feedback sentences one round at
a time and see the best photos re-ranked after every change. A stage-2 checkpoint composes
the sketch with the text; a stage-1 checkpoint or plain CLIP weights search by the sketch
alone or by the text alone, never both (any model searches by text alone). The page talks
to a small JSON API served here with the standard library's ``http.server``; the gallery
index and the queries are those of ``search.py`` (``engine.api.Retriever``):

    POST /api/search   {"sketch": "<PNG/JPEG, base64 or data URL>", "feedback": [...],
                        "topk": 10}    (a sketch, feedback or both; null is the same as absent)
                       -> {"results": [{"rank", "id", "score"}, ...],
                           "query": "<the text encoded, or the sketch (image tower)>",
                           "mode": "composed" | "sketch" | "text"}
    GET  /api/photo?id=<gallery-relative path>   the photo itself
    GET  /api/health   -> {"ok": true, "gallery": <number of photos>,
                           "composes": <whether sketch and text combine>, "model": <kind>}

Two layers: ``SearchAPI.answer(Request)`` is the API and the page, without sockets (it
returns an ``Answer`` or raises ``RequestError``); ``AppHandler`` reads a request off the
connection, asks the API and writes the answer.

The server binds to 127.0.0.1 unless ``--host`` says otherwise: anyone who can reach the
port can search the gallery and see its photos.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from engine.api import (
    add_retriever_arguments,
    check_retriever_arguments,
    index_from_args,
    retriever_from_args,
)
from utils.errors import UserError, exit_on_user_error
from utils.logger import setup_logging

log = logging.getLogger("app")

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_FILES = {  # route -> (file under web/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
API_GET = {"/api/photo", "/api/health"}
API_POST = {"/api/search"}
PHOTO_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
               ".bmp": "image/bmp", ".webp": "image/webp"}
SKETCH_FORMATS = {"PNG", "JPEG"}

MAX_BODY_BYTES = 5 * 1024 * 1024     # a larger request body is refused (413) unread
MAX_SKETCH_PIXELS = 16_000_000       # a bigger decoded sketch is refused (decompression bombs)
MAX_TOPK = 100
MAX_ROUNDS = 20                      # feedback sentences per query
MAX_ROUND_CHARS = 300                # characters per feedback sentence
DRAIN_BYTES = 32 * 1024 * 1024       # of a body not read, this much is read and dropped
NO_QUERY = ("give 'sketch' (a base64 PNG or JPEG image), 'feedback' (a list of sentences), "
            "or both")
# The page may only load what this server serves (no external scripts, fonts or images).
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
               "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


# ------------------------------------------------------------------ requests and answers
class RequestError(Exception):
    """A request the client got wrong: answered with ``status`` and ``{"error": message}``
    (and ``headers``; ``Connection: close`` closes the connection after the answer)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Request:
    """One request as the API sees it. Of the headers only Host, Content-Type,
    Content-Length and Transfer-Encoding are read (spelled so in a plain dict; the server
    passes its case-insensitive ``http.client.HTTPMessage``)."""

    method: str                                  # GET, HEAD, POST, ...
    target: str                                  # as in the request line: "/api/photo?id=a.jpg"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""                            # empty when over MAX_BODY_BYTES (left unread)

    @property
    def route(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict:
        """{name: [value, ...]} of the query string, blank values kept."""
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclass(frozen=True)
class Answer:
    """What goes back: ``body`` is sent as is (not at all for a HEAD request)."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


def json_answer(status: int, payload: dict, headers: dict | None = None) -> Answer:
    return Answer(status, json.dumps(payload).encode(), "application/json",
                  {**(headers or {}), "Cache-Control": "no-store"})


def error_answer(error: RequestError) -> Answer:
    """``{"error": message}`` with the error's status and headers."""
    return json_answer(error.status, {"error": error.message}, error.headers)


# ----------------------------------------------------------------------- request checks
def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host_header(host: str | None) -> None:
    """For a server on a loopback address: only requests for a loopback name are answered,
    so that a web page elsewhere cannot reach it through a name that it re-points here."""
    host = (host or "").strip()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name.startswith("[") and "]" in name:
        name = name[1:name.index("]")]
    if host and name.lower() not in LOOPBACK_NAMES and not is_loopback(name):
        raise RequestError(403, "this server answers only requests addressed to "
                                "127.0.0.1 or localhost")


def body_length(method: str, headers: Mapping[str, str]) -> int | None:
    """The body length that the headers declare: 0 for no body; None when it cannot be
    known (chunked, a malformed Content-Length, or a POST without one)."""
    header = headers.get("Content-Length")
    chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
    if header is None and not chunked:
        return None if method == "POST" else 0
    try:
        length = int(header)
    except (TypeError, ValueError):
        return None
    return None if chunked or length < 0 else length


def read_json(request: Request) -> dict:
    """The JSON object in the body of ``request``."""
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise RequestError(415, "the request body must be JSON (Content-Type: "
                                "application/json)")
    length = body_length(request.method, request.headers)
    if length is None:
        raise RequestError(411, "a Content-Length header is required (no chunked bodies)")
    if length > MAX_BODY_BYTES:
        raise RequestError(413, f"the request is {length:,} bytes; at most {MAX_BODY_BYTES:,} "
                                "are accepted", {"Connection": "close"})
    if len(request.body) < length:
        raise RequestError(400, "the request body ended early")
    try:
        payload = json.loads(request.body)
    except (UnicodeDecodeError, ValueError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return payload


def decode_sketch(value) -> Image.Image:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) of a PNG or JPEG
    -> an RGB image (transparent parts on white, like paper)."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(400, "'sketch' must be a non-empty string: a base64 PNG or JPEG "
                                "image or a data URL")
    text = value.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise RequestError(400, "'sketch' data URL must be base64 encoded "
                                    "(data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "'sketch' is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in SKETCH_FORMATS:
                raise RequestError(400, f"'sketch' must be a PNG or JPEG image, "
                                        f"not {image.format}")
            width, height = image.size
            if width < 1 or height < 1 or width * height > MAX_SKETCH_PIXELS:
                raise RequestError(400, f"'sketch' is {width}x{height} pixels; at most "
                                        f"{MAX_SKETCH_PIXELS:,} pixels are accepted")
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(paper, rgba).convert("RGB")
            return image.convert("RGB")
    except RequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise RequestError(400, "'sketch' is not a readable PNG or JPEG image") from None


def check_feedback(value) -> list:
    """The feedback rounds: a list of at most MAX_ROUNDS strings; blank ones are dropped."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError(400, "'feedback' must be a list of strings")
    if len(value) > MAX_ROUNDS:
        raise RequestError(400, f"'feedback' has {len(value)} sentences; at most {MAX_ROUNDS}")
    rounds = []
    for number, item in enumerate(value, start=1):
        if "\x00" in item:
            raise RequestError(400, f"feedback sentence {number} contains a NUL character")
        if len(item) > MAX_ROUND_CHARS:
            raise RequestError(400, f"feedback sentence {number} has {len(item)} characters; "
                                    f"at most {MAX_ROUND_CHARS}")
        if item.strip():
            rounds.append(" ".join(item.split()))
    return rounds


def check_topk(value) -> int:
    if value is None:
        return 10
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, "'topk' must be an integer")
    if not 1 <= value <= MAX_TOPK:
        raise RequestError(400, f"'topk' must be between 1 and {MAX_TOPK}, got {value}")
    return value


# ------------------------------------------------------------------------------ the API
class SearchAPI:
    """The JSON API and the page over one ``engine.api.Retriever`` with a gallery folder
    (whose index is only read): ``answer(request)`` returns an ``Answer`` or raises
    ``RequestError``. With ``loopback_only`` (a server on a loopback address) the Host
    header is checked."""

    def __init__(self, retriever, loopback_only: bool = True, web_dir: Path = WEB_DIR):
        self.retriever = retriever
        self.gallery_root = Path(retriever.gallery.folder).resolve()
        self.photo_ids = frozenset(retriever.paths)
        self.loopback_only = loopback_only
        self.web_dir = Path(web_dir)

    def answer(self, request: Request) -> Answer:
        method, route = request.method, request.route
        if method not in ("GET", "HEAD", "POST"):
            raise RequestError(405, f"method {method} is not allowed",
                               {"Allow": "GET, HEAD, POST"})
        if self.loopback_only:
            check_host_header(request.headers.get("Host"))
        if method == "POST":
            if route in API_POST:
                return json_answer(200, self.search(read_json(request)))
            if route in API_GET or route in STATIC_FILES:
                raise RequestError(405, f"{route} takes GET", {"Allow": "GET, HEAD"})
            raise RequestError(404, f"no such route: POST {route}")
        if route in API_POST:
            raise RequestError(405, f"{route} takes POST", {"Allow": "POST"})
        if route == "/api/health":
            return json_answer(200, self.health())
        if route == "/api/photo":
            return self.photo(request.query)
        if route in STATIC_FILES:
            return self.page(route)
        raise RequestError(404, f"no such route: {route}")

    def search(self, request: dict) -> dict:
        """{"sketch", "feedback", "topk"} -> {"results": [{"rank", "id", "score"}, ...],
        "query": the text encoded (or the sketch alone, image tower), "mode"}."""
        feedback = check_feedback(request.get("feedback"))
        topk = check_topk(request.get("topk"))
        given = request.get("sketch") is not None
        if not given and not feedback:
            raise RequestError(400, NO_QUERY)
        sketch = decode_sketch(request["sketch"]) if given else None
        try:
            self.retriever.check_query(given, feedback)  # a stage-1 model: not both
        except UserError as error:
            raise RequestError(400, str(error)) from None
        ranking = self.retriever.search(sketch, feedback, topk=topk)  # under its lock
        results = [{"rank": rank, "id": path, "score": round(score, 6)}
                   for rank, (path, score) in enumerate(ranking, start=1)]
        mode = "composed" if given and feedback else "sketch" if given else "text"
        query = ("the sketch (image tower)" if mode == "sketch" and not self.retriever.composes
                 else self.retriever.query_text(feedback, sketch=given))
        return {"results": results, "query": query, "mode": mode}

    def health(self) -> dict:
        """What the page adapts to: whether the model composes a sketch with text."""
        return {"ok": True, "gallery": len(self.photo_ids),
                "composes": self.retriever.composes, "model": self.retriever.kind}

    def photo(self, query: dict) -> Answer:
        """The photo ``query["id"]`` names: listed in the index, and still inside the
        gallery folder once links are followed."""
        ids = query.get("id", [])
        if len(ids) != 1 or not ids[0]:
            raise RequestError(400, "give one photo as ?id=<gallery-relative path>")
        photo_id = ids[0]
        parts = PurePosixPath(photo_id).parts
        if ("\x00" in photo_id or "\\" in photo_id or photo_id.startswith("/")
                or ":" in photo_id.split("/")[0] or ".." in parts
                or any(part in ("", ".") for part in photo_id.split("/"))):
            raise RequestError(403, "the photo id must be a relative path inside the gallery")
        if photo_id not in self.photo_ids:
            raise RequestError(404, f"no such photo in the gallery: {photo_id}")
        try:
            resolved = (self.gallery_root / photo_id).resolve(strict=True)
        except (OSError, RuntimeError):
            raise RequestError(404, f"photo no longer there: {photo_id}") from None
        if not resolved.is_relative_to(self.gallery_root):
            raise RequestError(403, "the photo lies outside the gallery folder")
        content_type = PHOTO_TYPES.get(resolved.suffix.lower())
        if content_type is None:
            raise RequestError(403, "not a photo file")
        try:
            fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise RequestError(404, f"photo not readable: {photo_id}") from None
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
        return Answer(200, data, content_type, {"Cache-Control": "private, max-age=300"})

    def page(self, route: str) -> Answer:
        """A file of the page (web/), which may load only what this server serves."""
        name, content_type = STATIC_FILES[route]
        try:
            data = (self.web_dir / name).read_bytes()
        except OSError:
            raise RequestError(404, f"missing page file: web/{name}") from None
        return Answer(200, data, content_type, {"Content-Security-Policy": PAGE_POLICY,
                                                "Cache-Control": "no-cache"})


# ------------------------------------------------------------------------ the HTTP layer
class AppServer(ThreadingHTTPServer):
    """Serves one ``Retriever`` through a ``SearchAPI``."""

    daemon_threads = True

    def __init__(self, retriever, host: str, port: int, verbose: bool = False):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.retriever = retriever
        self.api = SearchAPI(retriever, loopback_only=is_loopback(host))
        self.verbose = verbose
        super().__init__((host, port), AppHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(retriever, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A server for ``retriever`` (indexed, a gallery folder) bound to ``host:port`` (port 0:
    a free one), not yet serving: call ``serve_forever()`` (in a thread if you like), then
    ``shutdown()`` and ``server_close()``."""
    return AppServer(retriever, host, port, verbose)


class AppHandler(BaseHTTPRequestHandler):
    """Reads a request, asks ``server.api`` and writes its answer, all in JSON but the page
    and the photos; one log line per request."""

    server: AppServer
    server_version = "InteractReID"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stall (a slow or stuck client frees its thread)

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def __getattr__(self, name):
        # Any other method (PUT, DELETE, OPTIONS, ...) goes to the API too (405, not 501).
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self):
        self._started = time.monotonic()
        self._status = self._bytes_sent = 0
        try:
            body, unread = self._read_body()
            try:
                answer = self.server.api.answer(Request(self.command, self.path, self.headers,
                                                        body))
            except RequestError as error:
                answer = error_answer(error)
            self._send(answer)
            if unread:
                self._drain(unread)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to answer
        except Exception:  # a bug: logged here with its traceback, never sent to the client
            log.exception("error while answering %s %s", self.command, self.path)
            self.close_connection = True
            if not self._status:
                try:
                    self._send(error_answer(RequestError(500, "internal server error")))
                except OSError:
                    pass
        self._log_request()

    def _read_body(self) -> tuple[bytes, int]:
        """(the body, read when it is at most MAX_BODY_BYTES; the length of a longer one,
        left unread for the API to refuse from its headers and drained after the answer)."""
        length = body_length(self.command, self.headers)
        if length is None:
            self.close_connection = True  # where the body ends is unknown: read none of it
            return b"", 0
        if length > MAX_BODY_BYTES:
            if length > DRAIN_BYTES:
                self.close_connection = True
            return b"", length
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True  # the client stopped sending
        return body, 0

    def _drain(self, length: int):
        """Read and drop a body that was not read (at most DRAIN_BYTES of it), so that a
        client still sending reads the answer rather than a reset connection."""
        left = min(length, DRAIN_BYTES)
        try:
            self.connection.settimeout(2.0)
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            self.connection.settimeout(self.timeout)
        except OSError:
            self.close_connection = True

    def _send(self, answer: Answer):
        headers = dict(answer.headers)
        if headers.pop("Connection", "").lower() == "close":  # sent below, once
            self.close_connection = True
        self._status = answer.status
        self.send_response_only(answer.status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)
        self._bytes_sent = len(answer.body)

    def send_error(self, code, message=None, explain=None):
        """Errors found by ``http.server`` itself (a bad request line, headers too long):
        JSON like every other answer."""
        self._started = time.monotonic()
        self._status = self._bytes_sent = 0
        self.close_connection = True
        try:
            reason = message or HTTPStatus(code).phrase
        except ValueError:
            reason = "error"
        self._send(error_answer(RequestError(code, reason)))
        self._log_request()

    def _log_request(self):
        status = getattr(self, "_status", 0)
        if not (self.server.verbose or status >= 400):
            return
        elapsed = (time.monotonic() - getattr(self, "_started", time.monotonic())) * 1000
        request = f"{self.command} {self.path}" if self.command else repr(self.requestline)
        if len(request) > 200:
            request = request[:200] + "..."
        level = logging.ERROR if status >= 500 else (
            logging.WARNING if status >= 400 else logging.INFO)
        log.log(level, "%s %s %d %dB %.0fms", self.client_address[0], request, status,
                getattr(self, "_bytes_sent", 0), elapsed)

    def log_request(self, code="-", size="-"):
        pass  # one line per request comes from _log_request

    def log_message(self, format, *args):
        log.debug("%s " + format, self.client_address[0], *args)


# ---------------------------------------------------------------------------- command
def stop_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (kill, process managers) stop serving cleanly, also
    when the app was started from a script in the background, which ignores SIGINT."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_retriever_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument("--verbose", action="store_true",
                        help="log every request (default: only refused or failed ones)")
    args = parser.parse_args(argv)
    check_retriever_arguments(parser, args)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    setup_logging(None)
    logging.getLogger().setLevel(logging.WARNING)
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)

    retriever = index_from_args(retriever_from_args(args), args)
    try:
        server = make_server(retriever, args.host, args.port, args.verbose)
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port}: "
                        f"{error.strerror or error}") from None
    reach = (f"bound to {args.host} only" if is_loopback(args.host)
             else f"listening on {args.host}: other machines may reach it")
    print(f"serving {server.url} (gallery: {len(retriever.paths)} photos; {reach})", flush=True)
    stop_on_signals()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
