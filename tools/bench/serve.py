"""`capgen bench serve`: HTTP load on a local `capgen serve` against the model alone.

Baseline: the same JPEGs decoded and captioned in this process, one after the
other (model time only). Then, over loopback to a server started here on a free
port: as many uploads one at a time (the per-request overhead), and `requests`
uploads `concurrency` at a time (throughput). Every answer must be 200 and
carry the baseline's best caption for its image; anything else is an error.
Client and server share this machine's cores, which the figures include.

`--soak` (run_soak): thousands of good, bad and oversized uploads from 16 clients
(tools/serve/soak.py), each held to its answer, and the server's RSS after against
after warm-up.
"""

import asyncio
import contextlib
import io
import random
import time

import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw

from model.infer.captioner import Captioner
from pipeline.errors import CapgenError
from tools.bench.timing import seconds
from tools.serve.process import running_server, server_process
from tools.serve.soak import MAX_RSS_GROWTH_PCT, soak

COLOURS = ((220, 40, 40), (40, 170, 60), (40, 80, 220), (240, 210, 40), (150, 60, 180), (250, 250, 250))


def make_images(n, size=(640, 480), seed=0):
    """n distinct JPEGs of a few coloured shapes on a grey ground."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        img = Image.new("RGB", size, (rng.randint(60, 140),) * 3)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            r = rng.randint(min(size) // 16, min(size) // 4)  # 30 to 120 px at 640x480
            x, y = rng.randint(r, size[0] - r), rng.randint(r, size[1] - r)
            box = (x - r, y - r, x + r, y + r)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=rng.choice(COLOURS))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def baseline(captioner, images, calls, beam):
    """Caption `calls` images (cycling) in process, one at a time: (best captions, latencies s, wall s)."""
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    best = [captioner.caption([img], beam=beam)[0]["captions"][0]["text"] for img in decoded]  # also warms up
    start = time.perf_counter()
    images = [decoded[i % len(decoded)] for i in range(calls)]
    latencies = [
        seconds(lambda image=image: captioner.caption([image], beam=beam), captioner.device) for image in images
    ]
    return best, latencies, time.perf_counter() - start


async def load(url, images, expected, requests, concurrency):
    """Send `requests` uploads, `concurrency` in flight: (latencies s, errors [str], wall s)."""
    latencies, errors = [], []
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker():
            for i in next_index:
                k = i % len(images)
                t = time.perf_counter()
                try:
                    reply = await client.post("/api/caption", files={"image": (f"{k}.jpg", images[k], "image/jpeg")})
                    latencies.append(time.perf_counter() - t)
                    if reply.status_code != 200:
                        errors.append(f"request {i}: HTTP {reply.status_code} {reply.text[:100]}")
                    elif reply.json()["captions"][0]["text"] != expected[k]:
                        errors.append(f"request {i}: image {k} got another caption than in process")
                except httpx.HTTPError as err:
                    errors.append(f"request {i}: {type(err).__name__}: {err}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


def run(
    checkpoint, requests=500, concurrency=8, n_images=8, baseline_calls=None, beam=3, threads=None, url=None, echo=print
):
    """url: bench that running server (serving `checkpoint` with `beam`) instead of starting one."""
    if threads:
        torch.set_num_threads(threads)  # the server gets the same below

    if requests < 1 or concurrency < 1 or n_images < 1:
        raise CapgenError("bench serve: --requests, --concurrency and --images must be at least 1")
    images = make_images(n_images)
    calls = baseline_calls or min(requests, 100)
    echo(
        f"bench serve: {checkpoint}, {n_images} distinct 640x480 JPEGs, beam {beam}, "
        f"cpu, torch threads {torch.get_num_threads()}"
    )
    captioner = Captioner.load(checkpoint)
    expected, model_lat, model_wall = baseline(captioner, images, calls, beam)
    del captioner
    model_rate = calls / model_wall
    echo(
        f"in process (model only, sequential): {calls} captions, {model_rate:.1f}/s, "
        f"p50 {percentile(model_lat, 50):.1f} ms, p95 {percentile(model_lat, 95):.1f} ms"
    )
    args = ["--beam", str(beam), "--threads", str(torch.get_num_threads()), "--log-level", "warning"]
    with contextlib.nullcontext(url) if url else running_server(checkpoint, args) as url:
        one_lat, one_errors, _ = asyncio.run(load(url, images, expected, calls, 1))
        latencies, errors, wall = asyncio.run(load(url, images, expected, requests, concurrency))
    errors = one_errors + errors
    extra = percentile(one_lat, 50) - percentile(model_lat, 50)
    echo(
        f"server (HTTP, 1 at a time): {calls} requests, p50 {percentile(one_lat, 50):.1f} ms, "
        f"p95 {percentile(one_lat, 95):.1f} ms: {extra:+.1f} ms per request over the model "
        "(upload, decode, HTTP, JSON)"
    )
    rate = requests / wall
    echo(
        f"server (HTTP, {concurrency} concurrent): {requests} requests, {rate:.1f}/s, "
        f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms, "
        f"errors {len(errors)}"
    )
    # Requests share the one model (micro-batched), so their latency includes the wait; throughput is the figure.
    echo(f"throughput server / in process: {rate / model_rate:.2f}x")
    for line in errors[:5]:
        echo("  " + line)
    return {
        "baseline_rps": model_rate,
        "rps": rate,
        "ratio": rate / model_rate,
        "requests": requests,
        "concurrency": concurrency,
        "rate": rate,
        "model_rate": model_rate,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "model_p50_ms": percentile(model_lat, 50),
        "one_p50_ms": percentile(one_lat, 50),
        "errors": len(errors),
    }


SOAK_UPLOAD_MB = 0.25  # the soak's server limit: its oversized uploads are a quarter and half a MB
SOAK_IMAGE_SIZE = (128, 96)  # the good images: small, so the soak loads the server more than the model
FIGURES = (
    "requests",
    "clients",
    "warmup",
    "kinds",
    "statuses",
    "good_errors",
    "refusal_errors",
    "reasons",
    "rss_warm_mb",
    "rss_end_mb",
    "rss_growth_pct",
    "p50_ms",
    "p95_ms",
    "rps",
    "errors",
)


def run_soak(checkpoint, requests=3000, clients=16, threads=None, echo=print):
    """`capgen bench serve --soak`: start `capgen serve` on loopback and soak it (tools/serve/soak.py).
    The figures (FIGURES); CapgenError after printing them when a good image failed, a refusal was not
    its 4xx JSON, or the server's RSS grew more than MAX_RSS_GROWTH_PCT from after warm-up."""
    threads = threads or torch.get_num_threads()
    images = make_images(8, size=SOAK_IMAGE_SIZE)
    args = ["--max-upload-mb", str(SOAK_UPLOAD_MB), "--threads", str(threads), "--log-level", "warning"]
    echo(f"bench serve --soak: {checkpoint}, {requests} requests from {clients} clients, torch threads {threads}")
    with server_process(checkpoint, args) as (url, proc):
        r = soak(url, proc.pid, images, requests, clients, max_upload_bytes=int(SOAK_UPLOAD_MB * 1024 * 1024))
    latencies = r.pop("good_latencies_s") or [float("nan")]
    r["p50_ms"], r["p95_ms"] = round(percentile(latencies, 50), 1), round(percentile(latencies, 95), 1)
    echo(f"{requests} requests: RSS read after the first {r['warmup']} (warm-up) and after the rest, {r['rps']:.1f}/s")
    echo("kinds: " + ", ".join(f"{kind} {n}" for kind, n in r["kinds"].items()))
    echo("statuses: " + ", ".join(f"{code} x{n}" for code, n in r["statuses"].items()))
    for kind, lines in r["reasons"].items():
        for line, n in lines.items():
            echo(f"  {kind} ({n}): {line}")
    echo(f"errors: {r['good_errors']} on good images, {r['refusal_errors']} refusals not their 4xx JSON")
    for line in r["errors"][:5]:
        echo("  " + line)
    echo(
        f"server RSS: {r['rss_warm_mb']:.1f} MiB after warm-up, {r['rss_end_mb']:.1f} MiB after "
        f"({r['rss_growth_pct']:+.2f}%; at most +{MAX_RSS_GROWTH_PCT:g}%)"
    )
    echo(f"good images: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms")
    return {k: r[k] for k in FIGURES}


def soak_failures(r):
    """What failed the soak (one line), or '' when it held."""
    failed = []
    if r["good_errors"]:
        failed.append(f"{r['good_errors']} good images failed")
    if r["refusal_errors"]:
        failed.append(f"{r['refusal_errors']} refusals were not their 4xx JSON")
    if r["rss_growth_pct"] > MAX_RSS_GROWTH_PCT:
        failed.append(f"the server's RSS grew {r['rss_growth_pct']:.1f}% (limit {MAX_RSS_GROWTH_PCT:g}%)")
    return "; ".join(failed)
