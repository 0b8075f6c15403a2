"""`capgen eval --html` and the demo's report page, opened in Debian's Chromium through Playwright."""

import json
import os

import pytest
from click.testing import CliRunner

from pipeline.shards.shardset import read_captions
from tools.cli.main import cli

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DECODED = "() => Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/browser_setup.sh` (apt-get install chromium)")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo at toy size: 30 synthetic images (6 held out), one epoch, on a frozen ResNet's
    feature cache (so that eval --html is tested from a cache as well as from the shards)."""
    from tools.demo import run_demo

    out = str(tmp_path_factory.mktemp("demo") / "demo")
    lines = []
    summary = run_demo(
        out,
        images=30,
        epochs=1,
        echo=lines.append,
        val_fraction=0.2,
        synth_size=(48, 40),
        image_size=32,
        batch_size=4,
        dims=16,
        shard_size=8,
        min_freq=1,
        beam=2,
        encoder="resnet18",
        fine_tune=False,
    )
    return out, summary, lines


def open_page(browser, path):
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"file://{os.path.abspath(path)}")
    page.wait_for_load_state("load")
    assert errors == []
    return page


def test_demo_writes_the_report_and_an_attention_figure(demo, browser):
    out, summary, lines = demo
    report, figure = os.path.join(out, "report.html"), os.path.join(out, "attention.png")
    assert (summary["report"], summary["attention_figure"]) == (os.path.abspath(report), os.path.abspath(figure))
    assert f"report              {os.path.abspath(report)}" in lines[-1].splitlines()
    with open(figure, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "results_val.json")) as f:
        results = {r["image_id"]: r["caption"] for r in json.load(f)}
    page = open_page(browser, report)
    cards = page.locator(".card")
    assert cards.count() == len(results) == summary["images"]["val"] == 6
    first = min(results)
    card = page.locator(f'.card[data-image-id="{first}"]')
    assert card.locator(".caption").inner_text() == results[first]
    refs = read_captions(os.path.join(out, "shards", "val"))[first]
    assert card.locator(".refs li").all_inner_texts() == refs and len(refs) >= 5
    assert page.evaluate(DECODED) == [True] * 6
    page.close()


def test_eval_html_from_a_feature_cache_and_a_shard_set(demo, browser, tmp_path):
    out, summary, _ = demo
    for data in (os.path.join(out, "features", "val.h5"), os.path.join(out, "shards", "val")):
        page_path = str(tmp_path / "page.html")
        r = CliRunner().invoke(
            cli,
            [
                "eval",
                "--checkpoint",
                summary["checkpoint"],
                "--data",
                data,
                "--out",
                str(tmp_path / "results.json"),
                "--beam",
                1,
                "--html",
                page_path,
                "--html-images",
                4,
                "--quiet",
            ],
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[-1] == f"{page_path}: 4 images, 4 thumbnails"
        with open(tmp_path / "results.json") as f:
            results = sorted((row["image_id"], row["caption"]) for row in json.load(f))
        page = open_page(browser, page_path)
        assert page.locator(".card").count() == 4
        assert page.locator(".card .caption").all_inner_texts() == [c for _, c in results[:4]]
        assert all(s.startswith("Bleu_4 ") and " CIDEr " in s for s in page.locator(".score").all_inner_texts())
        widths = page.evaluate("() => Array.from(document.images).map(i => i.naturalWidth)")
        assert widths == [32] * 4  # the 32 px samples of the shard set, not enlarged
        page.close()
