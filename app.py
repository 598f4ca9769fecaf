"""A local web page for searching a folder of photos with a drawn sketch and text feedback.

    python app.py --checkpoint outputs/Market_finetune/checkpoint_best.pth --gallery photos/
    # then open http://127.0.0.1:8000/ in a browser

The page (web/) lets a witness draw or upload a sketch, add feedback sentences one round at
a time and see the best photos re-ranked after every change. It talks to a small JSON API
served here with the standard library's ``http.server``; the gallery index and the queries
are those of ``search.py`` (``engine.gallery.SearchEngine``):

    POST /api/search   {"sketch": "<PNG/JPEG, base64 or data URL>", "feedback": [...],
                        "topk": 10}
                       -> {"results": [{"rank", "id", "score"}, ...], "query": "..."}
    GET  /api/photo?id=<gallery-relative path>   the photo itself
    GET  /api/health   -> {"ok": true, "gallery": <number of photos>}

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
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from utils.errors import UserError, exit_on_user_error
from engine.gallery import SearchEngine, add_engine_arguments
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
DRAIN_BYTES = 32 * 1024 * 1024       # after a 413, this much of the body is read and dropped
# The page may only load what this server serves (no external scripts, fonts or images).
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
               "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class RequestError(Exception):
    """A request the client got wrong: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------- request checks
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


# --------------------------------------------------------------------------- the server
class AppServer(ThreadingHTTPServer):
    """Serves one ``SearchEngine``; its gallery index is only read while serving."""

    daemon_threads = True

    def __init__(self, engine, host: str, port: int, verbose: bool = False):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.engine = engine
        self.gallery_root = Path(engine.gallery).resolve()
        self.photo_ids = frozenset(engine.paths)
        self.photo_count = len(engine.paths)
        self.verbose = verbose
        self.check_host = is_loopback(host)
        super().__init__((host, port), AppHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(engine, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A server for ``engine`` bound to ``host:port`` (port 0: a free one), not yet serving:
    call ``serve_forever()`` (in a thread if you like), then ``shutdown()`` and
    ``server_close()``."""
    return AppServer(engine, host, port, verbose)


class AppHandler(BaseHTTPRequestHandler):
    server: AppServer
    server_version = "InteractReID"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stall (a slow or stuck client frees its thread)

    # ------------------------------------------------------------------ dispatching
    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def __getattr__(self, name):
        # Any other method (PUT, DELETE, OPTIONS, ...) is answered 405 rather than 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self):
        self._started = time.monotonic()
        self._status = 0
        self._bytes_sent = 0
        self._head = self.command == "HEAD"
        self._body_done = False
        route = urlsplit(self.path).path
        try:
            if self.command not in ("GET", "HEAD", "POST"):
                raise RequestError(405, f"method {self.command} is not allowed",
                                   {"Allow": "GET, HEAD, POST"})
            self._check_host()
            if self.command == "POST":
                if route in API_POST:
                    self._search()
                elif route in API_GET or route in STATIC_FILES:
                    raise RequestError(405, f"{route} takes GET", {"Allow": "GET, HEAD"})
                else:
                    raise RequestError(404, f"no such route: POST {route}")
            elif route in API_POST:
                raise RequestError(405, f"{route} takes POST", {"Allow": "POST"})
            else:
                self._drain_body()  # a GET has no body; should one come, it is dropped
                if route == "/api/health":
                    self._send_json(200, {"ok": True, "gallery": self.server.photo_count})
                elif route == "/api/photo":
                    self._photo()
                elif route in STATIC_FILES:
                    self._static(*STATIC_FILES[route])
                else:
                    raise RequestError(404, f"no such route: {route}")
        except RequestError as error:
            if not self._body_done:
                self._drain_body()  # so that the next request on this connection is read
            self._send_error_json(error)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client went away; nothing to answer
        except Exception:  # a bug: logged here with its traceback, never sent to the client
            log.exception("error while answering %s %s", self.command, self.path)
            self.close_connection = True
            if not self._status:
                try:
                    self._send_json(500, {"error": "internal server error"})
                except OSError:
                    pass
        self._log_request()

    def _check_host(self):
        """On a loopback address, only requests for a loopback name are answered: a web page
        elsewhere cannot reach this server through a name that it re-points here."""
        if not self.server.check_host:
            return
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.startswith("[") and "]" in name:
            name = name[1:name.index("]")]
        if host and name.lower() not in LOOPBACK_NAMES and not is_loopback(name):
            raise RequestError(403, "this server answers only requests addressed to "
                                    "127.0.0.1 or localhost")

    # -------------------------------------------------------------------- endpoints
    def _search(self):
        request = self._read_json()
        if "sketch" not in request:
            raise RequestError(400, "missing field 'sketch' (a base64 PNG or JPEG image)")
        feedback = check_feedback(request.get("feedback"))
        topk = check_topk(request.get("topk"))
        sketch = decode_sketch(request["sketch"])
        engine = self.server.engine
        ranking = engine.search(sketch, feedback, topk)
        results = [{"rank": rank, "id": path, "score": round(score, 6)}
                   for rank, (path, score) in enumerate(ranking, start=1)]
        self._send_json(200, {"results": results, "query": engine.query_text(feedback)})

    def _read_json(self) -> dict:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RequestError(415, "the request body must be JSON (Content-Type: "
                                    "application/json)")
        length = self._content_length()
        if length is None:
            raise RequestError(411, "a Content-Length header is required (no chunked bodies)")
        if length > MAX_BODY_BYTES:
            # Refused before reading; then what the client keeps sending is dropped (up to a
            # bound) so that it reads this answer rather than a reset connection.
            self.close_connection = True
            self._send_error_json(RequestError(
                413, f"the request is {length:,} bytes; at most {MAX_BODY_BYTES:,} are "
                     "accepted"))
            self._drain_body()
            raise RequestError(413, "")  # answered already
        body = self.rfile.read(length)  # at most MAX_BODY_BYTES
        self._body_done = True
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, "the request body ended early")
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise RequestError(400, "the request body is not valid JSON") from None
        if not isinstance(request, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return request

    def _content_length(self) -> int | None:
        """The declared body length; None (and the connection closes after the answer)
        when it is missing, malformed or the body is chunked."""
        header = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if header is None and not chunked:
            if self.command != "POST":
                return 0
            self.close_connection = True
            return None
        try:
            length = int(header)
        except (TypeError, ValueError):
            length = -1
        if chunked or length < 0:
            self.close_connection = True
            return None
        return length

    def _drain_body(self):
        """Read and drop the request body (at most DRAIN_BYTES of it; with more, or with an
        unknown length, the connection closes after the answer)."""
        self._body_done = True
        length = self._content_length()
        if not length:
            return
        if length > DRAIN_BYTES:
            self.close_connection = True
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

    def _photo(self):
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        ids = query.get("id", [])
        if len(ids) != 1 or not ids[0]:
            raise RequestError(400, "give one photo as ?id=<gallery-relative path>")
        photo_id = ids[0]
        parts = PurePosixPath(photo_id).parts
        if ("\x00" in photo_id or "\\" in photo_id or photo_id.startswith("/")
                or ":" in photo_id.split("/")[0] or ".." in parts
                or any(part in ("", ".") for part in photo_id.split("/"))):
            raise RequestError(403, "the photo id must be a relative path inside the gallery")
        if photo_id not in self.server.photo_ids:
            raise RequestError(404, f"no such photo in the gallery: {photo_id}")
        root = self.server.gallery_root
        try:
            resolved = (root / photo_id).resolve(strict=True)
        except (OSError, RuntimeError):
            raise RequestError(404, f"photo no longer there: {photo_id}") from None
        if not resolved.is_relative_to(root):
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
        self._send_bytes(200, data, content_type, {"Cache-Control": "private, max-age=300"})

    def _static(self, name: str, content_type: str):
        try:
            data = (WEB_DIR / name).read_bytes()
        except OSError:
            raise RequestError(404, f"missing page file: web/{name}") from None
        self._send_bytes(200, data, content_type, {"Content-Security-Policy": PAGE_POLICY,
                                                   "Cache-Control": "no-cache"})

    # ------------------------------------------------------------------- responses
    def _send_json(self, status: int, payload: dict, headers: dict | None = None):
        body = json.dumps(payload).encode()
        self._send_bytes(status, body, "application/json", dict(headers or {},
                                                                **{"Cache-Control": "no-store"}))

    def _send_error_json(self, error: RequestError):
        if self._status:  # an answer has already gone out
            return
        self._send_json(error.status, {"error": error.message}, error.headers)

    def _send_bytes(self, status: int, body: bytes, content_type: str, headers: dict):
        self._status = status
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not self._head:
            self.wfile.write(body)
        self._bytes_sent = len(body)

    def send_error(self, code, message=None, explain=None):
        """Errors found by ``http.server`` itself (a bad request line, headers too long):
        JSON like every other answer."""
        self._started = time.monotonic()
        self._status = 0
        self._bytes_sent = 0
        self._head = self.command == "HEAD"
        self.close_connection = True
        try:
            reason = message or HTTPStatus(code).phrase
        except ValueError:
            reason = "error"
        self._send_error_json(RequestError(code, reason))
        self._log_request()

    # --------------------------------------------------------------------- logging
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
@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument("--verbose", action="store_true",
                        help="log every request (default: only refused or failed ones)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    setup_logging(None)
    logging.getLogger().setLevel(logging.WARNING)
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)

    engine = SearchEngine(args.checkpoint, args.gallery, args.index, args.device)
    try:
        server = make_server(engine, args.host, args.port, args.verbose)
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port}: "
                        f"{error.strerror or error}") from None
    reach = (f"bound to {args.host} only" if is_loopback(args.host)
             else f"listening on {args.host}: other machines may reach it")
    print(f"serving {server.url} (gallery: {len(engine.paths)} photos; {reach})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
