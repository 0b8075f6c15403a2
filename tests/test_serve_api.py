"""POST /api/caption through FastAPI's TestClient, on a tiny real checkpoint (random init)."""

import io
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps
from serve_checkpoint import GRID, make_checkpoint

from model.infer.captioner import Captioner
from tools.serve.app import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette prefers httpx2; httpx is what we have
    from fastapi.testclient import TestClient

LIMIT = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and immune to a busy machine
    yield Captioner.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run"))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(captioner):
    with TestClient(create_app(captioner)) as client:
        yield client


def picture(size=(320, 240), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(40, 200, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        r = max(1, min(size) // 5)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img.convert(mode)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg():
    """A 160x80 JPEG whose EXIF says: show it turned 90 degrees (a 80x160 upright picture)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(picture((160, 80), seed=3), "JPEG", exif=exif.tobytes())


def rgba_png():
    img = picture((200, 150), seed=4, mode="RGBA")
    alpha = Image.new("L", img.size, 0)
    ImageDraw.Draw(alpha).rectangle((50, 40, 150, 110), fill=255)
    img.putalpha(alpha)
    return encode(img, "PNG")


def gray16_png():
    ramp = np.tile(np.linspace(0, 65535, 120, dtype=np.uint16), (90, 1))
    return encode(Image.fromarray(ramp), "PNG")  # mode I;16


def png_bomb(width, height):
    """A 1-bit PNG of width x height zeros: some kilobytes on the wire, huge once decoded."""

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD = {  # name -> (file name, bytes, upright size as the server must report it)
    "jpeg_rgb": ("photo.jpg", lambda: encode(picture(), "JPEG", quality=90), (320, 240)),
    "jpeg_gray": ("gray.jpg", lambda: encode(picture(seed=1, mode="L"), "JPEG"), (320, 240)),
    "png_rgba": ("alpha.png", rgba_png, (200, 150)),
    "png_named_jpg": ("really_a_png.jpg", lambda: encode(picture(seed=5), "PNG"), (320, 240)),
    "jpeg_exif_rotated": ("rotated.jpg", exif_rotated_jpeg, (80, 160)),
    "png_gray16": ("deep.png", gray16_png, (120, 90)),
    "gif_palette": ("anim.gif", lambda: encode(picture(seed=6).convert("P"), "GIF", transparency=0), (320, 240)),
    "webp": ("pic.webp", lambda: encode(picture(seed=7), "WEBP"), (320, 240)),
    "bmp": ("pic.bmp", lambda: encode(picture(seed=8), "BMP"), (320, 240)),
    "tiff_cmyk": ("pic.tif", lambda: encode(picture(seed=9, mode="CMYK"), "TIFF"), (320, 240)),
    "huge_allowed": ("big.jpg", lambda: encode(picture((4000, 3000), seed=10), "JPEG", quality=80), (4000, 3000)),
    "tiny_1x1": ("dot.png", lambda: encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), (1, 1)),
}


def post(client, name, data, content_type="application/octet-stream"):
    return client.post("/api/caption", files={"image": (name, data, content_type)})


def check_answer(body, size):
    assert set(body) == {"captions", "words", "attention", "grid", "image", "region", "model_ms"}
    assert len(body["captions"]) == 3
    scores = [c["score"] for c in body["captions"]]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert body["captions"][0]["text"] == " ".join(body["words"])
    assert 1 <= len(body["words"]) <= 8  # the fixture vocabulary's max_len
    assert len(body["attention"]) == len(body["words"])
    assert body["grid"] == GRID
    for row in body["attention"]:
        assert len(row) == GRID[0] * GRID[1]
        assert min(row) >= 0 and sum(row) == pytest.approx(1.0, abs=1e-4)
    assert body["image"] == {"width": size[0], "height": size[1]}
    assert body["region"] == [0, 0, size[0], size[1]]  # stretch: the grid covers the whole image
    assert body["model_ms"] > 0


def without_time(body):
    return {k: v for k, v in body.items() if k != "model_ms"}


@pytest.mark.parametrize("kind", list(GOOD))
def test_every_kind_of_image_is_captioned(client, captioner, kind):
    name, make, size = GOOD[kind]
    data = make()
    reply = post(client, name, data, "image/jpeg" if name.endswith(".jpg") else "application/octet-stream")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    check_answer(body, size)
    # Exactly what the model says in process for the upright picture.
    expected = captioner.caption([ImageOps.exif_transpose(Image.open(io.BytesIO(data)))])[0]
    assert without_time(body) == dict(expected, image=body["image"], region=body["region"])


def test_same_image_same_answer(client):
    data = encode(picture(seed=11), "JPEG")
    first, second = (post(client, "a.jpg", data).json() for _ in range(2))
    assert without_time(first) == without_time(second)


def test_the_exif_rotation_is_applied_before_captioning(client, captioner):
    body = post(client, "rotated.jpg", exif_rotated_jpeg()).json()
    sideways = Image.open(io.BytesIO(exif_rotated_jpeg()))
    sideways.getexif().clear()  # what a server ignoring EXIF would caption
    sideways.info.pop("exif", None)
    assert body["image"] == {"width": 80, "height": 160}
    assert body["attention"] != captioner.caption([sideways.convert("RGB")])[0]["attention"]


BAD = {  # name -> (file name, bytes, status, words the error must contain)
    "oversize": ("big.jpg", lambda: b"\xff\xd8\xff" + bytes(LIMIT), 413, "larger than the limit"),
    "text_file": ("notes.txt", lambda: b"hello, this is not a picture\n" * 10, 415, "not an image"),
    "text_named_jpg": ("fake.jpg", lambda: b"<html>nope</html>", 415, "not an image"),
    "truncated_jpeg": (
        "cut.jpg",
        lambda: (lambda d: d[: len(d) // 2])(encode(picture(seed=12), "JPEG")),
        400,
        "corrupt JPEG",
    ),
    "jpeg_header_only": ("head.jpg", lambda: encode(picture(seed=12), "JPEG")[:40], 400, "corrupt"),
    "empty": ("empty.jpg", lambda: b"", 400, "empty"),
    "bomb_over_limit": (
        "bomb.png",
        lambda: png_bomb(8000, 8000),
        413,
        "image too large: 8000x8000 = 64000000 pixels; the limit is 50000000",
    ),
    "bomb_400_megapixels": (
        "giga.png",
        lambda: png_bomb(20000, 20000),
        413,
        "image too large: over 178956970 pixels; the limit is 50000000",  # PIL's guard, our limit named
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_upload_gets_its_status_and_the_server_keeps_serving(client, kind):
    name, make, status, words = BAD[kind]
    reply = post(client, name, make())
    assert reply.status_code == status
    assert set(reply.json()) == {"error"} and words in reply.json()["error"]
    good = post(client, "ok.jpg", encode(picture(seed=13), "JPEG"))
    assert good.status_code == 200 and len(good.json()["captions"]) == 3


def test_oversize_without_content_length_is_cut_off(client):
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'

    def chunks():  # no Content-Length: the server must count what it reads
        yield body
        for _ in range(12):
            yield bytes(1024 * 1024)
        yield b"\r\n--xyz--\r\n"

    reply = client.post("/api/caption", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert reply.status_code == 413 and "larger than the limit" in reply.json()["error"]


@pytest.mark.parametrize(
    "request_kwargs, status, words",
    [
        ({"data": {"image": "x"}}, 415, "multipart/form-data"),  # urlencoded form
        (
            {"data": {"image": "x"}, "files": {"other": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}},
            400,
            "no file in form field 'image'",
        ),
        ({"files": {"picture": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}}, 400, "no file in form field 'image'"),
        ({"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}}, 415, "multipart/form-data"),
        ({"content": b"junk", "headers": {"content-type": "multipart/form-data"}}, 400, "bad multipart form"),
    ],
)
def test_malformed_requests(client, request_kwargs, status, words):
    reply = client.post("/api/caption", **request_kwargs)
    assert reply.status_code == status and words in reply.json()["error"]


def test_unknown_route_and_method_answer_json(client):
    assert client.get("/api/nothing").json() == {"error": "Not Found"}
    reply = client.get("/api/caption")
    assert reply.status_code == 405 and set(reply.json()) == {"error"}


def test_page_health_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and 'id="overlay"' in page.text
    assert client.get("/static/app.js").status_code == 200
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["max_upload_bytes"] == LIMIT and health["beam"] == 3


def test_concurrent_requests_each_get_their_own_caption(client):
    images = [encode(picture(seed=100 + i), "JPEG") for i in range(8)]
    sequential = [without_time(post(client, f"{i}.jpg", d).json()) for i, d in enumerate(images)]
    assert len({s["captions"][0]["text"] + str(s["attention"][0][:3]) for s in sequential}) > 1
    start = threading.Barrier(8)

    def one(i):
        start.wait()
        return without_time(post(client, f"{i}.jpg", images[i]).json())

    with ThreadPoolExecutor(8) as pool:
        for got, alone in zip(pool.map(one, range(8)), sequential):
            assert_same_answer(got, alone)


def assert_same_answer(got, alone):
    """A batched answer is the unbatched one: the same captions in the same order, the same words;
    scores and attention as float32 sums in another order give them (conv and matmul over a batch)."""
    assert [c["text"] for c in got["captions"]] == [c["text"] for c in alone["captions"]]
    assert {k: v for k, v in got.items() if k not in ("captions", "attention")} == {
        k: v for k, v in alone.items() if k not in ("captions", "attention")
    }
    assert [c["score"] for c in got["captions"]] == pytest.approx([c["score"] for c in alone["captions"]], abs=1e-4)
    np.testing.assert_allclose(got["attention"], alone["attention"], atol=1e-5)


class SlowCaptioner:
    """Holds the model for a while, to show the event loop is free meanwhile."""

    def __init__(self, seconds):
        self.seconds = seconds

    def caption(self, images, beam=3, topk=3):
        time.sleep(self.seconds)
        return [
            {"captions": [{"text": "x", "score": -1.0}], "words": ["x"], "attention": [[1.0]], "grid": [1, 1]}
            for _ in images
        ]


def test_health_answers_while_the_model_is_busy():
    with TestClient(create_app(SlowCaptioner(1.0))) as client, ThreadPoolExecutor(2) as pool:
        busy = pool.submit(post, client, "a.png", encode(picture((8, 8)), "PNG"))
        time.sleep(0.3)
        start = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        assert time.perf_counter() - start < 0.5
        assert not busy.done()
        assert busy.result().json()["words"] == ["x"]


def test_limits_are_settings(captioner):
    with TestClient(create_app(captioner, max_upload_bytes=1000, max_pixels=100)) as client:
        assert post(client, "a.png", encode(picture((20, 20)), "PNG", compress_level=0)).status_code == 413
        reply = post(client, "a.png", encode(picture((11, 10)), "PNG"))
        assert reply.status_code == 413 and "11x10 = 110 pixels; the limit is 100" in reply.json()["error"]
        assert post(client, "a.png", encode(picture((10, 10)), "PNG")).status_code == 200


class CroppingCaptioner(SlowCaptioner):
    image = {"resize_mode": "crop"}


def test_region_is_the_centre_square_when_the_model_crops():
    with TestClient(create_app(CroppingCaptioner(0))) as client:
        body = post(client, "wide.png", encode(picture((300, 100)), "PNG")).json()
        assert body["region"] == [100, 0, 200, 100]
        assert client.get("/healthz").json()["resize_mode"] == "crop"


# ---------------------------------------------------------------- a real server: clients, aborted uploads, the port


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    from tools.serve.process import running_server

    checkpoint = make_checkpoint(tmp_path_factory.mktemp("live") / "run")
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with running_server(checkpoint, ["--max-upload-mb", "1", "--threads", "1"], log_path=log) as url:
        yield url, log, checkpoint


def multipart(data, boundary="capgenboundary"):
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("size", [2 * 1024 * 1024, 12 * 1024 * 1024])  # past the socket buffers
def test_an_oversized_upload_gets_its_413_through_urllib(live_server, size):
    import json
    import urllib.error
    import urllib.request

    url, _, _ = live_server
    body, content_type = multipart(bytes(size))
    request = urllib.request.Request(url + "/api/caption", data=body, headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert json.loads(refused.value.read()) == {"error": "upload larger than the limit of 1048576 bytes"}
    body, content_type = multipart(encode(picture(seed=20), "JPEG"))
    good = urllib.request.urlopen(
        urllib.request.Request(url + "/api/caption", data=body, headers={"Content-Type": content_type}), timeout=60
    )
    assert good.status == 200 and len(json.loads(good.read())["captions"]) == 3


def test_an_aborted_upload_logs_one_line_and_the_server_keeps_serving(live_server):
    import socket

    import httpx

    url, log, _ = live_server
    host, port = url.removeprefix("http://").split(":")
    body, content_type = multipart(bytes(200_000))
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            f"POST /api/caption HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:50_000]
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while "upload aborted" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = httpx.post(url + "/api/caption", files={"image": ("a.jpg", encode(picture(seed=21), "JPEG"))}, timeout=60)
    assert reply.status_code == 200 and len(reply.json()["captions"]) == 3
    text = log.read_text()
    assert [line for line in text.splitlines() if "aborted" in line] == [
        line for line in text.splitlines() if line.startswith("INFO:     upload aborted: 127.0.0.1:")
    ]
    assert text.count("upload aborted") == 1 and "Traceback" not in text


def test_a_port_in_use_is_a_one_line_error(live_server):
    import subprocess

    from tools.serve.process import capgen_command

    url, _, checkpoint = live_server
    port = url.rsplit(":", 1)[1]
    run = subprocess.run(
        capgen_command() + ["serve", "--checkpoint", str(checkpoint), "--port", port],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (run.returncode, run.stderr) == (1, f"capgen: error: 127.0.0.1:{port}: cannot listen (port in use)\n")
