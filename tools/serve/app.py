"""The web page and JSON API: upload an image, get its captions and each word's attention.

`create_app(captioner)` builds the FastAPI app around an already loaded model;
`serve(...)` loads a checkpoint once and runs it under uvicorn. Bad uploads get
a 4xx answer `{"error": "..."}` and the server keeps serving. Uploads are
decoded and preprocessed in request threads (a bad one fails there, alone);
the model thread captions those that arrive within a few ms as one batch
(tools/serve/batcher.py).
"""

import asyncio
import contextlib
import errno
import io
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
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from model.export.runtime import OnnxCaptioner
from model.infer.attention_figure import attention_region
from model.infer.captioner import Captioner
from pipeline.errors import CapgenError
from tools.serve.batcher import MAX_BATCH, WINDOW_S, Batcher
from tools.serve.search_box import load_search, mount_search

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 50_000_000
MAX_CONNECTIONS = 64
# Only formats with plain decoders: no EPS (Ghostscript), no PDF, no exotic plugins.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MULTIPART_SLACK = 64 * 1024  # part headers and boundaries around the file
# A refused upload's body is read and dropped, up to the upload limit plus this many bytes, before
# the answer, so that a client still sending (Python's urllib) reads it instead of a connection reset.
DRAIN_BYTES = 16 * 1024 * 1024
# Leading bytes of the accepted formats: a file that starts like an image but will not open is corrupt (400),
# anything else is not an image (415).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
log = logging.getLogger("capgen.serve")


class ImageCaptioner(Protocol):
    """What create_app needs of a model: one result dict per image (Captioner.caption's)."""

    def caption(self, images: list, beam: int = 3, topk: int = 3) -> list[dict]: ...


class BadUpload(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def read_image(data, max_pixels=MAX_PIXELS):
    """Upload bytes -> decoded upright image (any mode: the captioner converts).

    BadUpload: 415 not an image, 413 too many pixels (checked from the header), 400 corrupt."""
    if not data:
        raise BadUpload(400, "empty upload")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        raise BadUpload(413, f"image too large: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise BadUpload(400, "corrupt image: the header cannot be read") from None
        raise BadUpload(415, "not an image (expected JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    width, height = image.size
    # The header gives the size; refuse before decoding a single pixel.
    if width * height > max_pixels:
        raise BadUpload(413, f"image too large: {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width == 0 or height == 0:
        raise BadUpload(400, f"corrupt image: size {width}x{height}")
    try:
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise BadUpload(400, f"corrupt {image.format} image: {err}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        pass
    return image


async def read_upload(request, max_bytes):
    """The bytes of form field `image`; the body is cut off as soon as it passes the limit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadUpload(415, "expected a multipart/form-data upload with the image in field 'image'")
    body_limit = max_bytes + MULTIPART_SLACK
    too_large = f"upload larger than the limit of {max_bytes} bytes"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > body_limit:
        raise BadUpload(413, too_large)

    async def bounded():
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:  # Content-Length may lie or be absent (chunked)
                raise BadUpload(413, too_large)
            yield chunk

    parser = MultiPartParser(request.headers, bounded(), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise BadUpload(400, f"bad multipart form: {err.message}") from None
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadUpload(400, "no file in form field 'image'")
        if upload.size is not None and upload.size > max_bytes:
            raise BadUpload(413, too_large)
        return await upload.read()
    finally:
        await form.close()


async def drain(request, limit):
    """Read and drop the rest of the request body; False when it was left unread (too long, the
    client went away, or it waits for '100 Continue' and so has sent nothing): close then."""
    length = request.headers.get("content-length", "")
    if request.headers.get("expect", "").lower() == "100-continue" or (length.isdigit() and int(length) > limit):
        return False
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return False
    except RuntimeError:  # starlette's "Stream consumed": the whole body was read already
        pass
    except ClientDisconnect:
        return False
    return True


def _model_calls(captioner, beam, topk):
    """(prepare(image) -> item, run(items) -> results): a real Captioner (or OnnxCaptioner) preprocesses
    in the request thread and captions the stacked tensors; anything else with caption(images) gets the images."""
    if hasattr(captioner, "caption_tensors"):
        return captioner.preprocess, lambda xs: captioner.caption_tensors(torch.stack(xs), beam=beam, topk=topk)
    if hasattr(captioner, "caption_arrays"):  # model/export/runtime.py's OnnxCaptioner
        return captioner.preprocess, lambda xs: captioner.caption_arrays(np.stack(xs), beam=beam, topk=topk)
    return (lambda image: image), lambda images: captioner.caption(images, beam=beam, topk=topk)


class CaptionService:
    """The app's captioning: uploads decoded two at a time in request threads, then captioned by the
    model thread in batches (tools/serve/batcher.py)."""

    def __init__(self, captioner, beam, topk, max_pixels, batch_window_ms, max_batch):
        self.prepare, run = _model_calls(captioner, beam, topk)
        self.batcher = Batcher(run, window=batch_window_ms / 1000, max_batch=max_batch)
        # At most two uploads decoded at once (a full-size image is large); the batch holds model-sized tensors.
        self.admitted = threading.BoundedSemaphore(2)
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
) -> FastAPI:
    """The FastAPI app around a loaded captioner: the web page at /, POST /api/caption, /healthz.

    captioner: a Captioner (model/infer/captioner.py), or anything with `caption(images, beam, topk)`
    returning one result dict per image. beam, topk: the search's beam width and the words kept per
    step. max_upload_bytes, max_pixels: larger uploads get 413. info: extra entries for /healthz.
    batch_window_ms, max_batch: how long the model thread gathers uploads into one batch, and its
    largest batch. The app's lifespan closes the batcher (app.state.batcher); use it as an ASGI app
    (uvicorn, or starlette's TestClient as a context manager).
    """
    service = CaptionService(captioner, beam, topk, max_pixels, batch_window_ms, max_batch)

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


def serve(
    checkpoint,
    onnx_dir=None,
    host="127.0.0.1",
    port=8000,
    beam=3,
    topk=3,
    max_upload_mb=10,
    max_pixels=MAX_PIXELS,
    threads=None,
    log_level="info",
    batch_window_ms=WINDOW_S * 1000,
    max_batch=MAX_BATCH,
    index=None,
):
    """Load the checkpoint (or the `capgen export` folder onnx_dir, run by onnxruntime) once, warm it
    up, and serve until interrupted; `index`: a feature cache or shard set for the search box
    (tools/serve/search_box.py; with a checkpoint)."""
    if threads and not onnx_dir:
        torch.set_num_threads(threads)
    sock = listening_socket(host, port)
    handler = logging.StreamHandler()  # our lines (refusals, aborted uploads) as uvicorn writes its own
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(handler)
    log.setLevel(log_level.upper())
    port = sock.getsockname()[1]  # the one given, or the free one chosen for port 0

    start = time.perf_counter()
    captioner = OnnxCaptioner.load(onnx_dir, threads) if onnx_dir else Captioner.load(checkpoint)
    captioner.caption([Image.new("RGB", (64, 64), (127, 127, 127))], beam=beam, topk=topk)
    print(
        f"capgen serve: loaded {onnx_dir or checkpoint} in {time.perf_counter() - start:.1f}s; http://{host}:{port}/",
        file=sys.stderr,
        flush=True,
    )
    app = create_app(
        captioner,
        beam=beam,
        topk=topk,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        info={
            "checkpoint": os.path.basename(os.path.normpath(onnx_dir or checkpoint)),
            "runtime": "onnxruntime" if onnx_dir else "torch",
        },
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
    )
    if index:
        mount_search(app, load_search(checkpoint, index, captioner))
    # Connections past the limit get 503 at once instead of queueing uploads in memory.
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, access_log=log_level == "info", limit_concurrency=MAX_CONNECTIONS)
    )
    with sock:
        server.run(sockets=[sock])
    if not server.started:
        raise CapgenError(f"{host}:{port}: the server did not start (see the messages above)")
