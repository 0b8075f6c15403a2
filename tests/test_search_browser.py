"""The search box in Debian's Chromium (Playwright): `capgen serve --index SHARDS` as a real process;
type a sentence, see the result cards with their decoded thumbnails, click one to caption it."""

import os

import httpx
import pytest
from serve_checkpoint import make_checkpoint
from test_serve_browser import browser  # noqa: F401 -- the Chromium fixture, shared

from tools.serve.process import running_server


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards(images=12, seed=21, width=64, height=48, image_size=128, shard_size=5, preset="coco")


@pytest.fixture(scope="module")
def server(shards, tmp_path_factory):
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run")
    args = ["--threads", "1", "--log-level", "warning", "--index", shards]
    with running_server(checkpoint, args, log_path=tmp_path_factory.mktemp("log") / "serve.log") as url:
        yield url


def test_search_cards_then_caption_a_result(server, shards, browser):  # noqa: F811 -- pytest's fixture
    expected = httpx.get(server + "/api/search", params={"q": "a red circle", "k": "12"}).json()
    page = browser.new_page(viewport={"width": 900, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server + "/")
    page.wait_for_selector("#search:not([hidden])", timeout=30_000)
    assert page.inner_text("#search-status") == f"Search 12 images of {os.path.basename(shards)}"  # not its path
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    cards = page.locator("#search-results .card")
    cards.nth(11).wait_for(timeout=30_000)
    assert cards.count() == 12
    assert [
        int(i) for i in page.eval_on_selector_all("#search-results .card", "cs => cs.map(c => c.dataset.imageId)")
    ] == [h["image_id"] for h in expected["results"]]
    assert page.locator("#search-results .score").all_inner_texts() == [
        f"{h['score']:.3f}" for h in expected["results"]
    ]
    page.wait_for_function(
        "[...document.querySelectorAll('#search-results img')].every(i => i.complete && i.naturalWidth === 128)",
        timeout=30_000,
    )

    first = expected["results"][0]
    jpeg = httpx.get(f"{server}/api/image/{first['image_id']}").content
    captioned = httpx.post(server + "/api/caption", files={"image": ("a.jpg", jpeg, "image/jpeg")}).json()
    cards.nth(0).click()
    page.locator("#captions li").nth(2).wait_for(timeout=30_000)
    assert page.locator("#captions .caption").all_inner_texts() == [c["text"] for c in captioned["captions"]]
    assert page.locator("#words button").all_inner_texts() == captioned["words"]
    assert page.inner_text("#status").startswith(f"{first['file_name']}: 128x128, attention grid 8x8")

    page.fill("#query", "zorg")
    page.press("#query", "Enter")
    page.wait_for_selector("#search-status.error", timeout=30_000)
    assert "every word is unknown" in page.inner_text("#search-status") and "400" in page.inner_text("#search-status")
    assert cards.count() == 0 and errors == []
    page.close()
