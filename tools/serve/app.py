"""The web page and JSON API: upload an image, get its captions and each word's attention.

`create_app(captioner)` builds the FastAPI app around an already loaded model;
`load_app(...)` loads a checkpoint once into it, `serve(...)` runs that under uvicorn.
Bad uploads get a 4xx answer `{"error": "..."}` (tools/serve/upload.py) and the server
keeps serving. Uploads are
decoded, preprocessed and encoded in request threads (a bad one fails there, alone);
the model thread captions those that arrive within a few ms as one batch
(tools/serve/batcher.py).
"""

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import threading
import time
from typing import Protocol

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from model.export.runtime import OnnxCaptioner
from model.infer.attention_figure import attention_region
from model.infer.captioner import Captioner
from pipeline.errors import CapgenError
from tools.serve.batcher import MAX_BATCH, WINDOW_S, Batcher
from tools.serve.names import public_name
from tools.serve.search_box import load_search, mount_search
from tools.serve.upload import DRAIN_BYTES, MAX_PIXELS, MAX_UPLOAD_BYTES, BadUpload, drain, read_image, read_upload

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_CONNECTIONS = 64
WORKERS = 2  # uploads decoded at once unless told (load_app: one per core the model may use)
log = logging.getLogger("capgen.serve")


class ImageCaptioner(Protocol):
    """What create_app needs of a model: one result dict per image (Captioner.caption's)."""

    def caption(self, images: list, beam: int = 3, topk: int = 3) -> list[dict]: ...


def _model_calls(captioner, beam, topk):
    """(prepare(image) -> item, run(items) -> results): a real Captioner preprocesses and encodes each
    image in its request thread (encoders run while the model thread searches, several uploads at once)
    and beam-searches the concatenated features as one batch; an
    OnnxCaptioner preprocesses there and captions the stacked arrays; anything else with caption(images)
    gets the images."""
    if hasattr(captioner, "caption_features"):
        return (
            lambda image: captioner.encode(captioner.preprocess(image)[None]),
            lambda fs: captioner.caption_features(torch.cat(fs), beam=beam, topk=topk),
        )
    if hasattr(captioner, "caption_arrays"):  # model/export/runtime.py's OnnxCaptioner
        return captioner.preprocess, lambda xs: captioner.caption_arrays(np.stack(xs), beam=beam, topk=topk)
    return (lambda image: image), lambda images: captioner.caption(images, beam=beam, topk=topk)


class CaptionService:
    """The app's captioning: uploads decoded (and encoded) `workers` at a time in request threads, then
    captioned by the model thread in batches (tools/serve/batcher.py)."""

    def __init__(self, captioner, beam, topk, max_pixels, batch_window_ms, max_batch, workers):
        self.prepare, run = _model_calls(captioner, beam, topk)
        self.batcher = Batcher(run, window=batch_window_ms / 1000, max_batch=max_batch)
        # At most `workers` uploads decoded at once (a full-size image is large); the batch holds model-sized tensors.
        self.admitted = threading.BoundedSemaphore(workers)
        self.max_pixels = max_pixels
        self.resize_mode = getattr(captioner, "image", {}).get("resize_mode", "stretch")

    def prepare_bytes(self, data):
        with self.admitted:
            image = read_image(data, self.max_pixels)
            try:
                return self.prepare(image), image.size
            except CapgenError as err:  # the captioner's word for an image it cannot use
                raise BadUpload(400, str(err)) from None

    def prepare_and_submit(self, data):
        with self.batcher.coming():
            item, size = self.prepare_bytes(data)
            return self.batcher.submit(item), size

    async def caption_bytes(self, data):
        future, size = await run_in_threadpool(self.prepare_and_submit, data)
        result, _, seconds = await asyncio.wrap_future(future)
        # region: the box of the image (in its pixels) that the attention grid covers;
        # model_ms: the model time of the batch this image was captioned in.
        return dict(
            result,
            image={"width": size[0], "height": size[1]},
            region=attention_region(size, self.resize_mode),
            model_ms=round(seconds * 1000, 2),
        )


def add_pages(app, service, settings):
    """GET / (the web page) and /healthz (the settings and the batch sizes so far)."""

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", **settings, "batches": dict(sorted(service.batcher.batch_sizes.items()))}


def add_caption_route(app, service, max_upload_bytes):
    """POST /api/caption: an upload's captions, or a 4xx answer {"error": ...} for a bad one."""

    @app.post("/api/caption")
    async def caption(request: Request):
        try:
            data = await read_upload(request, max_upload_bytes)
            # Decoding and the model run in other threads so the event loop keeps answering. JSONResponse
            # directly: the result is plain lists and floats, FastAPI's encoder walk would cost more.
            return JSONResponse(await service.caption_bytes(data))
        except BadUpload as err:
            log.info("refused upload: %s %s", err.status, err.message)
            headers = None if await drain(request, max_upload_bytes + DRAIN_BYTES) else {"Connection": "close"}
            return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)
        except ClientDisconnect:  # nobody to answer; one line, not a traceback
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            log.info("upload aborted: %s closed the connection", client)
            return JSONResponse({"error": "upload aborted"}, status_code=400)


def add_error_handlers(app):
    """Every error as JSON {"error": ...}: HTTP errors with their status, anything else a logged 500."""

    @app.exception_handler(HTTPException)
    async def http_error(request, err):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def server_error(request, err):
        log.exception("error answering %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(err).__name__}"}, status_code=500)


def create_app(
    captioner: ImageCaptioner,
    *,
    beam: int = 3,
    topk: int = 3,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    info: dict | None = None,
    batch_window_ms: float = WINDOW_S * 1000,
    max_batch: int = MAX_BATCH,
    workers: int = WORKERS,
) -> FastAPI:
    """The FastAPI app around a loaded captioner: the web page at /, POST /api/caption, /healthz.

    captioner: a Captioner (model/infer/captioner.py), or anything with `caption(images, beam, topk)`
    returning one result dict per image. beam, topk: the search's beam width and the words kept per
    step. max_upload_bytes, max_pixels: larger uploads get 413. info: extra entries for /healthz.
    batch_window_ms, max_batch: how long the model thread gathers uploads into one batch, and its
    largest batch. workers: uploads decoded (and, with a Captioner, encoded) at once, in request
    threads: the cores the app may keep busy besides the model thread. The app's lifespan closes the
    batcher (app.state.batcher); use it as an ASGI app (uvicorn, or starlette's TestClient as a
    context manager).
    """
    service = CaptionService(captioner, beam, topk, max_pixels, batch_window_ms, max_batch, workers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(service.batcher.close)

    app = FastAPI(title="capgen", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = service.batcher
    settings = {
        "beam": beam,
        "topk": topk,
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "resize_mode": service.resize_mode,
        "batch_window_ms": batch_window_ms,
        "max_batch": max_batch,
        "workers": workers,
    }
    settings.update(info or {})
    add_pages(app, service, settings)
    add_caption_route(app, service, max_upload_bytes)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def listening_socket(host, port):
    """A socket bound to host:port, before the model loads: a port in use is one line at once."""
    if not host:  # getaddrinfo would take '' for every interface
        raise CapgenError("--host: empty (127.0.0.1 serves this machine only, 0.0.0.0 every interface)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise CapgenError(f"{host}:{port}: cannot listen ({err.strerror or err})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: no wait after a restart
        sock.bind(address)
    except OSError as err:
        sock.close()
        cause = "port in use" if err.errno == errno.EADDRINUSE else err.strerror or err
        raise CapgenError(f"{host}:{port}: cannot listen ({cause})") from None
    return sock


def load_app(
    checkpoint: str | None,
    onnx_dir: str | None = None,
    index: str | None = None,
    *,
    beam: int = 3,
    topk: int = 3,
    max_upload_mb: float = MAX_UPLOAD_BYTES / 1024 / 1024,
    max_pixels: int = MAX_PIXELS,
    threads: int | None = None,
    batch_window_ms: float = WINDOW_S * 1000,
    max_batch: int = MAX_BATCH,
    progress: bool = True,
) -> FastAPI:
    """The app `capgen serve` runs: the checkpoint (or the `capgen export` folder onnx_dir, run by
    onnxruntime) loaded once and warmed up; `index`: a feature cache or shard set for the search box
    (tools/serve/search_box.py; with a checkpoint). The page and the API name the checkpoint and the
    set by their last path component (tools/serve/names.py), never by their path."""
    workers = WORKERS
    if not onnx_dir:  # as many uploads encoded at once as torch has threads
        workers = threads or torch.get_num_threads()
        torch.set_num_threads(workers)
    captioner = OnnxCaptioner.load(onnx_dir, threads) if onnx_dir else Captioner.load(checkpoint)
    captioner.caption([Image.new("RGB", (64, 64), (127, 127, 127))], beam=beam, topk=topk)
    app = create_app(
        captioner,
        beam=beam,
        topk=topk,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        info={"checkpoint": public_name(onnx_dir or checkpoint), "runtime": "onnxruntime" if onnx_dir else "torch"},
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        workers=workers,
    )
    if index:
        mount_search(app, load_search(checkpoint, index, captioner, progress=progress))
    return app


def serve(checkpoint, onnx_dir=None, host="127.0.0.1", port=8000, log_level="info", **options):
    """Load the app (load_app, with `options`) and serve it on host:port until interrupted."""
    sock = listening_socket(host, port)  # before the model loads: a port in use is one line at once
    handler = logging.StreamHandler()  # our lines (refusals, aborted uploads) as uvicorn writes its own
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    port = sock.getsockname()[1]  # the one given, or the free one chosen for port 0

    start = time.perf_counter()
    app = load_app(checkpoint, onnx_dir, **options)
    print(
        f"capgen serve: loaded {onnx_dir or checkpoint} in {time.perf_counter() - start:.1f}s; http://{host}:{port}/",
        file=sys.stderr,
        flush=True,
    )
    # Connections past the limit get 503 at once instead of queueing uploads in memory.
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, access_log=log_level == "info", limit_concurrency=MAX_CONNECTIONS)
    )
    with sock:
        server.run(sockets=[sock])
    if not server.started:
        raise CapgenError(f"{host}:{port}: the server did not start (see the messages above)")
