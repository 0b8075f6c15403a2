"""A soak of a running `capgen serve`: thousands of uploads from concurrent clients, good images
mixed with every kind of bad upload and with oversized ones (`capgen bench serve --soak`).

Each answer is held to what its kind must get: a good image 200 and its captions, the same best
caption every time that image is sent; every other kind its 4xx status (EXPECTED) and the JSON
body {"error": one line}. Anything else, a timeout or a dropped connection included, is an error
of that kind. The server's resident memory (RSS) is read after a warm-up of the same mix and
again after the soak: growth past MAX_RSS_GROWTH_PCT is a leak.
"""

import asyncio
import io
import random
import struct
import time
import zlib
from collections import Counter, defaultdict

import httpx
from PIL import Image

from tools.serve.process import resident_mb

# kind -> the status each of its answers must have
EXPECTED = {
    "good": 200,
    "not_image": 415,
    "not_multipart": 415,
    "empty": 400,
    "truncated_jpeg": 400,
    "zero_pixels": 400,
    "wrong_field": 400,
    "huge_dimensions": 413,
    "decompression_bomb": 413,
    "oversized": 413,
}
GOOD_WEIGHT = 6  # good requests per request of each other kind: 40% of them good
MAX_RSS_GROWTH_PCT = 10.0
TIMEOUT_S = 60  # one answer; longer is a hang, counted as an error


def png_header(width, height):
    """A PNG of only its header: width x height, no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def bomb_png(side=7500):
    """A real PNG of side x side black pixels (56M at 7500) in a few KB: over the server's 50M pixels."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def bad_requests(good_jpeg, max_upload_bytes):
    """kind -> the request (httpx keyword arguments) of every kind but good; good_jpeg: one good JPEG."""

    def upload(data, name="a.jpg", field="image", content_type="image/jpeg"):
        return {"files": {field: (name, data, content_type)}}

    return {
        "not_image": upload(
            b"capgen soak: these bytes are text, not an image\n" * 20, "a.txt", content_type="text/plain"
        ),
        "not_multipart": {"content": good_jpeg, "headers": {"content-type": "image/jpeg"}},
        "empty": upload(b""),
        "truncated_jpeg": upload(good_jpeg[: len(good_jpeg) * 2 // 3]),
        "zero_pixels": upload(png_header(0, 0), "a.png", content_type="image/png"),
        "wrong_field": upload(good_jpeg, field="file"),
        "huge_dimensions": upload(png_header(100_000, 100_000), "a.png", content_type="image/png"),
        "decompression_bomb": upload(bomb_png(), "a.png", content_type="image/png"),
        # Past the limit by one byte (read, then refused) and twice the limit (refused by its length).
        "oversized": [upload(bytes(max_upload_bytes + 1)), upload(bytes(2 * max_upload_bytes))],
    }


def plan(n, seed):
    """The kinds of n requests in a seeded mix: GOOD_WEIGHT good ones to one of each other kind."""
    kinds = list(EXPECTED)
    return random.Random(seed).choices(kinds, weights=[GOOD_WEIGHT if k == "good" else 1 for k in kinds], k=n)


class Tally:
    """Answers seen: per kind and status, the refusals' reasons, errors, and the good ones' latencies."""

    def __init__(self):
        self.kinds, self.statuses, self.errors = Counter(), Counter(), Counter()
        self.reasons = defaultdict(Counter)  # kind -> error line -> times
        self.first_errors, self.latencies, self.best = [], [], {}

    def error(self, kind, message):
        self.errors[kind] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{kind}: {message}")

    def check(self, kind, image, reply, seconds):
        """Hold one answer to what its kind must get."""
        self.statuses[str(reply.status_code)] += 1
        expected = EXPECTED[kind]
        is_json = reply.headers.get("content-type", "").startswith("application/json")
        if reply.status_code != expected or not is_json:
            return self.error(kind, f"HTTP {reply.status_code} (expected {expected} JSON): {reply.text[:120]!r}")
        try:
            body = reply.json()
        except ValueError:
            return self.error(kind, f"HTTP {reply.status_code}: not JSON: {reply.text[:120]!r}")
        if kind == "good":
            self.latencies.append(seconds)
            text = body["captions"][0].get("text") if isinstance(body, dict) and body.get("captions") else None
            if text is None or self.best.setdefault(image, text) != text:
                return self.error(kind, f"image {image}: caption {text!r}, before {self.best[image]!r}")
            return None
        line = body.get("error") if isinstance(body, dict) and list(body) == ["error"] else None
        if not isinstance(line, str) or not line or "\n" in line:
            return self.error(kind, f"not a one-line {{'error': ...}} answer: {reply.text[:120]!r}")
        self.reasons[kind][line] += 1


async def send(url, kinds, first, good, bad, clients, tally):
    """Send one request per entry of kinds (numbered from `first`), `clients` at a time, each answer
    checked into tally."""
    order = iter(enumerate(kinds, first))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=limits) as client:

        async def worker():
            for i, kind in order:
                tally.kinds[kind] += 1
                image = i % len(good)
                if kind == "good":
                    request = {"files": {"image": (f"{image}.jpg", good[image], "image/jpeg")}}
                else:
                    request = bad[kind][i % len(bad[kind])] if isinstance(bad[kind], list) else bad[kind]
                start = time.perf_counter()
                try:
                    reply = await client.post("/api/caption", **request)
                except httpx.HTTPError as err:
                    tally.error(kind, f"request {i}: {type(err).__name__}: {err}")
                    continue
                tally.check(kind, image, reply, time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(clients)))


def soak(url, pid, good_jpegs, requests, clients=16, warmup=None, max_upload_bytes=1024 * 1024, seed=0):
    """Soak the server at url (process pid, serving with this upload limit) with `requests` requests,
    every answer checked; its RSS is read after the first `warmup` of them (default a quarter: the RSS
    settles as the server's threads start) and at the end.

    Returns the figures: requests, clients, warmup, kinds and statuses (counts over all requests),
    good_errors, refusal_errors, errors (the first few), reasons (kind -> one-line error -> count),
    rss_warm_mb, rss_end_mb, rss_growth_pct, rps and wall_s (after the warm-up), and
    good_latencies_s (each good request's)."""
    warmup = requests // 4 if warmup is None else warmup
    bad = bad_requests(good_jpegs[0], max_upload_bytes)
    kinds, tally = plan(requests, seed), Tally()
    asyncio.run(send(url, kinds[:warmup], 0, good_jpegs, bad, clients, tally))
    rss_warm = round(resident_mb(pid), 1)
    start = time.perf_counter()
    asyncio.run(send(url, kinds[warmup:], warmup, good_jpegs, bad, clients, tally))
    wall = time.perf_counter() - start
    rss_end = round(resident_mb(pid), 1)
    return {
        "requests": requests,
        "clients": clients,
        "warmup": warmup,
        "kinds": dict(sorted(tally.kinds.items())),
        "statuses": dict(sorted(tally.statuses.items())),
        "good_errors": tally.errors["good"],
        "refusal_errors": sum(n for kind, n in tally.errors.items() if kind != "good"),
        "errors": tally.first_errors,
        "reasons": {kind: dict(lines) for kind, lines in sorted(tally.reasons.items())},
        "rss_warm_mb": rss_warm,
        "rss_end_mb": rss_end,
        "rss_growth_pct": round((rss_end - rss_warm) / rss_warm * 100, 2),
        "rps": round((requests - warmup) / wall, 1),
        "wall_s": round(wall, 1),
        "good_latencies_s": tally.latencies,
    }
