"""`capgen serve` as a real process, driven by Debian's Chromium through Playwright."""

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageDraw
from serve_checkpoint import make_checkpoint

from tools.serve.process import running_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UPLOAD_MB = 2

COUNT_INK = """() => {
  const c = document.getElementById("overlay");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let ink = 0, sum = 0;
  for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) ink++; sum = (sum * 31 + d[i]) % 1000000007; }
  const img = document.getElementById("preview");
  return {ink, sum, width: c.width, height: c.height, word: c.dataset.word ?? null,
          imgWidth: Math.round(img.clientWidth * devicePixelRatio),
          imgHeight: Math.round(img.clientHeight * devicePixelRatio)};
}"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run")


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    args = ["--threads", "1", "--max-upload-mb", str(UPLOAD_MB), "--log-level", "warning"]
    with running_server(checkpoint, args, log_path=tmp_path_factory.mktemp("log") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/browser_setup.sh` (apt-get install chromium)")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"  # never fetch a browser of playwright's own
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def picture(path):
    img = Image.new("RGB", (480, 320), (90, 110, 130))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 60, 200, 220), fill=(220, 40, 40))
    draw.rectangle((300, 80, 440, 260), fill=(40, 80, 220))
    img.save(path, "JPEG", quality=90)
    return path


def test_upload_caption_and_attention_overlay(server, browser, tmp_path):
    image = picture(tmp_path / "shapes.jpg")
    with open(image, "rb") as f:
        expected = httpx.post(server + "/api/caption", files={"image": ("shapes.jpg", f, "image/jpeg")}).json()
    page = browser.new_page(viewport={"width": 900, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server + "/")
    page.set_input_files("#file", str(image))

    page.locator("#captions li").nth(2).wait_for(timeout=30_000)
    assert page.locator("#captions .caption").all_inner_texts() == [c["text"] for c in expected["captions"]]
    scores = page.locator("#captions .score").all_inner_texts()
    assert scores == [f"{c['score']:.3f}" for c in expected["captions"]]
    words = page.locator("#words button")
    assert words.all_inner_texts() == expected["words"]
    page.wait_for_function("document.getElementById('preview').complete")
    assert page.evaluate(COUNT_INK)["ink"] == 0  # nothing painted until a word is chosen

    words.nth(0).hover()
    first = page.evaluate(COUNT_INK)
    assert first["word"] == "0" and first["ink"] > 0
    assert (first["width"], first["height"]) == (first["imgWidth"], first["imgHeight"])
    if expected["attention"][1] != expected["attention"][0]:
        words.nth(1).hover()
        assert page.evaluate(COUNT_INK)["sum"] != first["sum"]  # each word paints its own map

    page.mouse.move(5, 5)
    assert page.evaluate(COUNT_INK)["ink"] == 0  # hover shows, leaving hides
    words.nth(0).click()
    page.mouse.move(5, 5)
    assert page.evaluate(COUNT_INK)["word"] == "0"  # a click pins the word

    words.nth(0).hover()
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and Image.open(shot).size[0] == 900
    assert errors == []
    page.close()


def test_bad_upload_shows_the_error_and_the_next_upload_works(server, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    page = browser.new_page()
    page.goto(server + "/")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "not an image" in page.inner_text("#status") and "415" in page.inner_text("#status")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(UPLOAD_MB * 1024 * 1024 + 1))
    page.set_input_files("#file", str(big))  # refused by the page itself, before any upload
    page.wait_for_function("document.getElementById('status').textContent.includes('over the upload limit')")
    page.set_input_files("#file", str(picture(tmp_path / "ok.jpg")))
    page.locator("#captions li").nth(2).wait_for(timeout=30_000)
    assert not page.locator("#status.error").count()
    page.close()


def test_chunked_oversize_upload_is_cut_off_while_reading(server):
    host, port = server.removeprefix("http://").split(":")
    head = (
        f"POST /api/caption HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    ).encode()
    part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    chunk = bytes(256 * 1024)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        try:
            while sent < 200 * 1024 * 1024:  # far more than the limit; the server must stop reading
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while b"\r\n\r\n" not in reply:
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 50 * 1024 * 1024
    # And the server still answers.
    time.sleep(0.1)
    assert httpx.get(server + "/healthz").json()["status"] == "ok"


def test_bench_serve_quick_runs_clean(checkpoint, server):
    from tools.bench.serve import run

    lines = []
    # Against the running server (starting one is what the fixture tests), in a thread of its own:
    # this one has Playwright's event loop, and torch threads are set per thread.
    with ThreadPoolExecutor(1) as pool:
        report = pool.submit(
            run,
            checkpoint,
            requests=12,
            concurrency=4,
            n_images=3,
            baseline_calls=6,
            threads=1,
            url=server,
            echo=lines.append,
        ).result()
    assert report["errors"] == 0 and report["rate"] > 0 and report["model_rate"] > 0
    assert [line.split(" (")[0].split(":")[0] for line in lines] == [
        "bench serve",
        "in process",
        "server",
        "server",
        "throughput server / in process",
    ]
