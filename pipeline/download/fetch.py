"""One URL -> its image bytes, or BadImage with the reason it could not be had.

urllib3 (a pool of kept-alive connections, shared by a process's download threads) with
the rules of DownloadOptions: redirects followed by hand (a loop ends as redirect_loop),
a deadline per attempt checked while the body streams in (so a slow trickle times out),
the byte cap checked against Content-Length and while reading (never read past it),
X-Robots-Tag read as img2dataset reads it, retries with backoff for timeouts, connection
errors, bodies cut short and 5xx answers. The pixel cap is the decoder's: it reads the
size from the header before decoding (pipeline/imaging/decode.py, too_large).

Why urllib3 and not httpx (also a dependency): measured on the 2-core development machine
(busy: load 6), 64 threads fetching 640 small JPEGs from tools/loopback_images.py in another
process, medians of 3 rounds. With 200 ms added per answer both are bound by the wait (320/s
at most): urllib3 305 images/s, this module 300, httpx 279. But the client's CPU per image
is 0.52 ms with urllib3 (0.58 here) and 1.46 ms with httpx, and a URL build shares its
cores with decoding; with no latency urllib3 fetches 2,073 images/s (this module 2,181),
httpx 550. urllib3's read1 also lets the body be read against a deadline and a byte cap.
"""

import threading
import time
from urllib.parse import urljoin, urlsplit

import urllib3

from pipeline.download.options import DownloadOptions
from pipeline.imaging.decode import BadImage

REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 16
# How image files start (JPEG, PNG, GIF, BMP, TIFF both byte orders, WebP in RIFF, ICO):
# a body that starts otherwise is not_an_image, whatever its Content-Type says.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*", b"\0\0\1\0")


class _Retry(Exception):
    """A failure worth another attempt; .reason is counted if none is left."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def looks_like_image(data: bytes) -> bool:
    """Whether the bytes start as an image file does (what decides, not the Content-Type)."""
    return data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def disallowed(values: list[str], directives, token: str = "capgen") -> bool:
    """img2dataset's rule: an X-Robots-Tag value 'a, b' or 'agent: a, b' (agent being this
    crawler's token) naming one of the directives (case-insensitive)."""
    for value in values:
        agent_directives = value.split(":", 1)
        names = [x.strip().lower() for x in agent_directives[-1].split(",")]
        agent = agent_directives[0].strip().lower() if len(agent_directives) == 2 else None
        if (agent is None or agent == token) and any(n in directives for n in names):
            return True
    return False


class HostSlots:
    """At most `per_host` requests in flight to one host (host:port) at a time."""

    def __init__(self, per_host):
        self.per_host = per_host
        self._lock = threading.Lock()
        self._slots = {}

    def __call__(self, url):
        host = urlsplit(url).netloc.lower()
        with self._lock:
            if host not in self._slots:
                self._slots[host] = threading.BoundedSemaphore(self.per_host)
            return self._slots[host]


def new_pool(opts: DownloadOptions) -> urllib3.PoolManager:
    """A connection pool for opts.concurrency threads (connections kept per host up to per_host)."""
    return urllib3.PoolManager(num_pools=max(16, opts.concurrency), maxsize=opts.per_host, block=False, retries=False)


def fetch(url: str, opts: DownloadOptions, pool: urllib3.PoolManager, slots: HostSlots) -> bytes:
    """The image bytes at url; BadImage(reason) when there are none after opts.retries retries."""
    reason = "connection_error"
    for attempt in range(opts.retries + 1):
        if attempt:
            time.sleep(opts.backoff * 2 ** (attempt - 1))
        try:
            return _follow(url, opts, pool, slots)
        except _Retry as err:
            reason = err.reason
    raise BadImage(reason, url)


def _follow(url, opts, pool, slots):
    """One attempt: redirects followed, then the body."""
    seen = {url}
    for _ in range(opts.max_redirects + 1):
        with slots(url):
            status, location, body = _get(url, opts, pool)
        if status not in REDIRECTS:
            return body
        if not location:
            raise BadImage("bad_redirect", url)
        url = urljoin(url, location)
        if urlsplit(url).scheme not in ("http", "https"):
            raise BadImage("bad_redirect", url)
        if url in seen:
            raise BadImage("redirect_loop", url)
        seen.add(url)
    raise BadImage("too_many_redirects", url)


def _get(url, opts, pool):
    """(status, Location, body) of one GET; the body only for a 200 that passes every check."""
    deadline = time.monotonic() + opts.timeout
    timeout = urllib3.Timeout(connect=min(opts.connect_timeout, opts.timeout), read=opts.timeout)
    headers = {"User-Agent": opts.user_agent, "Accept": "image/*,*/*;q=0.8"}
    try:
        resp = pool.request(
            "GET", url, headers=headers, redirect=False, retries=False, preload_content=False, timeout=timeout
        )
    except urllib3.exceptions.NewConnectionError:  # refused, no such host (a ConnectTimeoutError subclass)
        raise _Retry("connection_error") from None
    except urllib3.exceptions.TimeoutError:
        raise _Retry("timeout") from None
    except (urllib3.exceptions.HTTPError, OSError):
        raise _Retry("connection_error") from None
    done = False
    try:
        if resp.status in REDIRECTS:
            return resp.status, resp.headers.get("Location"), None
        if resp.status >= 500:
            raise _Retry(f"http_{resp.status}")
        if resp.status != 200:
            raise BadImage(f"http_{resp.status}", url)
        if disallowed(resp.headers.getlist("X-Robots-Tag"), opts.disallowed_directives):
            raise BadImage("robots", url)
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > opts.max_bytes:
            raise BadImage("too_many_bytes", url)
        body = _read(resp, opts, deadline, url)
        done = True
        return resp.status, None, body
    finally:
        if not done:
            resp.close()  # a body left unread (a redirect's, an error page's): this connection is not reused
        resp.release_conn()


def _read(resp, opts, deadline, url):
    """The body, at most max_bytes, within the deadline."""
    chunks, size = [], 0
    try:
        while chunk := resp.read1(CHUNK):
            size += len(chunk)
            if size > opts.max_bytes:
                raise BadImage("too_many_bytes", url)
            if time.monotonic() > deadline:
                raise _Retry("timeout")
            chunks.append(chunk)
    except urllib3.exceptions.TimeoutError:
        raise _Retry("timeout") from None
    except urllib3.exceptions.ProtocolError:
        raise _Retry("incomplete_body") from None
    except (urllib3.exceptions.HTTPError, OSError):
        raise _Retry("connection_error") from None
    body = b"".join(chunks)
    if not looks_like_image(body):
        raise BadImage("not_an_image", url)
    return body
