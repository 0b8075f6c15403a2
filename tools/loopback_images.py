"""A loopback image server for tests and benchmarks: a folder's images over HTTP on
127.0.0.1 (an ephemeral port), optional latency per request, and fault routes.

    with LoopbackImages("data/train2014", latency=0.2) as server:
        server.url("COCO_train2014_000000000001.jpg")  # http://127.0.0.1:PORT/img/...
        server.faults("COCO_train2014_000000000001.jpg")  # {name: (url, expected skip reason or "ok")}

Fault routes (what a URL build must survive; FAULTS names each one's expected outcome):
404; 500 always; 500 then 200 (per URL, the first request fails); no answer at all (until
`hang` seconds pass or the server stops); a slow trickle (a byte every 0.1 s); a body cut
short (Content-Length larger than what is sent); a redirect loop; an HTML page; image bytes
labelled text/html (the bytes decide: kept); a 50 MB body without a Content-Length; a PNG header claiming 40,000 x
40,000 pixels; an image with X-Robots-Tag: noai. Bounded: the server stops itself after
`lifetime` seconds, a hanging or trickling answer after `hang` seconds.
"""

import csv
import mimetypes
import os
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

# fault route -> the skip reason a URL build counts it under ("ok": the image is kept).
# Routes ending in "/" take an image name of the folder.
FAULTS = {
    "404": ("/fault/404", "http_404"),
    "500": ("/fault/500", "http_500"),
    "flaky": ("/fault/flaky/", "ok"),
    "hang": ("/fault/hang", "timeout"),
    "trickle": ("/fault/trickle", "timeout"),
    "short": ("/fault/short/", "incomplete_body"),
    "redirect_loop": ("/fault/loop/a", "redirect_loop"),
    "html": ("/fault/html", "not_an_image"),
    "mislabeled": ("/fault/mislabeled/", "ok"),
    "huge": ("/fault/huge", "too_many_bytes"),
    "giant": ("/fault/giant.png", "too_large"),
    "noai": ("/fault/noai/", "robots"),
}
HUGE_BYTES = 50 * 1000 * 1000
GIANT_SIDE = 40_000
HTML = b"<!doctype html><html><head><title>Not here</title></head><body>Moved.</body></html>"


def giant_png(side: int = GIANT_SIDE) -> bytes:
    """A tiny PNG whose header claims side x side grayscale pixels (the data holds one row):
    a decoder that trusts it before checking the size would need side**2 bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(side + 1)))
        + chunk(b"IEND", b"")
    )


class LoopbackImages:
    """Serve the images of `folder` (its files, not subfolders) on 127.0.0.1 with fault routes.

    latency: seconds slept before every answer; hang: how long a hanging or trickling answer
    lasts at most; lifetime: the server stops itself after this many seconds. Use it as a
    context manager (or start()/stop()). .base is http://127.0.0.1:PORT; .requests counts the
    paths asked for, .user_agents the User-Agent headers seen, .most_in_flight the most
    requests answered at once."""

    def __init__(self, folder: str, latency: float = 0.0, hang: float = 30.0, lifetime: float = 600.0):
        self.folder = os.fspath(folder)
        self.names = {n for n in os.listdir(self.folder) if os.path.isfile(os.path.join(self.folder, n))}
        self.latency, self.hang, self.lifetime = latency, hang, lifetime
        self.requests, self.user_agents = Counter(), Counter()
        self.in_flight = self.most_in_flight = 0  # requests being answered now, and the most at once
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._giant = giant_png()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.block_on_close = False  # stop() does not wait for a client's idle keep-alive connection
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = None

    def start(self) -> "LoopbackImages":
        """Serve in a background thread (until stop() or `lifetime` seconds)."""
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving: hanging answers end, the port is closed."""
        self.stopping.set()
        self._timer.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def url(self, name: str) -> str:
        """The URL of one image of the folder."""
        return f"{self.base}/img/{quote(name)}"

    def faults(self, name: str) -> dict:
        """fault name -> (URL, expected skip reason or "ok"); routes that take an image use `name`."""
        return {
            k: (self.base + route + (quote(name) if route.endswith("/") else ""), r) for k, (route, r) in FAULTS.items()
        }

    def _image(self, name):
        name = unquote(name)
        if name not in self.names:
            return None
        with open(os.path.join(self.folder, name), "rb") as f:
            return f.read()

    def _first_time(self, path):
        with self._lock:
            return self.requests[path] == 1

    def _count(self, path, agent, n=1):
        with self._lock:
            if path:
                self.requests[path] += 1
                self.user_agents[agent] += 1
            self.in_flight += n
            self.most_in_flight = max(self.most_in_flight, self.in_flight)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: the default 5 drops the SYNs of a client opening 64 connections at once


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's pool reuses connections
        timeout = 10  # an idle kept-alive connection is closed after this many seconds

        def setup(self):
            super().setup()
            # Headers and body go out as separate writes: without this, Nagle's algorithm and the
            # client's delayed ACK hold every answer back 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = urlsplit(self.path).path
            server._count(path, self.headers.get("User-Agent", ""))
            try:
                if server.latency:
                    time.sleep(server.latency)
                _answer(self, server, path)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: that is its right
                self.close_connection = True
            finally:
                server._count(None, None, -1)

    return Handler


def _send(h, status, body=b"", content_type="application/octet-stream", headers=(), length=None):
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    for k, v in headers:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def _answer(h, server, path):
    """One request's answer by route."""
    head, _, rest = path[1:].partition("/")
    kind, _, name = rest.partition("/")
    if head == "img" and (data := server._image(rest)) is not None:
        return _send(h, 200, data, mimetypes.guess_type(rest)[0] or "application/octet-stream")
    if head != "fault":
        return _send(h, 404, b"not found", "text/plain")
    image = server._image(name) if name else None
    if kind == "500" or (kind == "flaky" and server._first_time(path)):
        return _send(h, 500, b"server error", "text/plain")
    if kind in ("flaky", "mislabeled", "noai") and image is not None:
        robots = [("X-Robots-Tag", "noai")] if kind == "noai" else []
        return _send(h, 200, image, "text/html" if kind == "mislabeled" else "image/jpeg", robots)
    if kind == "short" and image is not None:
        h.close_connection = True
        return _send(h, 200, image, "image/jpeg", length=len(image) + 1000)
    if kind == "loop":
        h.send_response(302)
        h.send_header("Location", f"/fault/loop/{'b' if name == 'a' else 'a'}")
        h.send_header("Content-Length", "0")
        return h.end_headers()
    if kind == "html":
        return _send(h, 200, HTML, "text/html; charset=utf-8")
    if kind == "giant.png":
        return _send(h, 200, server._giant, "image/png")
    if kind in ("hang", "trickle", "huge"):
        return _endless(h, server, kind)
    return _send(h, 404, b"not found", "text/plain")


def _endless(h, server, kind):
    """No answer, a trickle or a 50 MB body; each ends when the client leaves, the server
    stops or `hang` seconds pass (the 50 MB body when it is all sent)."""
    h.close_connection = True
    end = time.monotonic() + server.hang
    if kind == "hang":
        server.stopping.wait(server.hang)
        return
    size = HUGE_BYTES if kind == "huge" else 1_000_000
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    if kind == "trickle":
        h.send_header("Content-Length", str(size))
    else:  # no length: the body ends when the connection closes, so only counting the bytes read stops a client
        h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(b"\xff\xd8\xff")
    sent, block = 3, bytes(1 << 16)
    while sent < size and not server.stopping.is_set() and time.monotonic() < end:
        if kind == "trickle":
            h.wfile.write(b"\0")
            h.wfile.flush()
            sent += 1
            server.stopping.wait(0.1)
        else:
            h.wfile.write(block[: size - sent])
            sent += min(len(block), size - sent)


def write_url_list(path, server, names):
    """CSV with header url,caption: one row per image, the column names both tools default to."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for i, name in enumerate(names):
            w.writerow([server.url(name), f"a photograph number {i}"])
