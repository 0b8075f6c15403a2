"""Micro-batching: tools/serve/batcher.py on plain functions, and the server's batched answers on a real tiny model."""

import io
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from serve_checkpoint import make_checkpoint
from test_serve_api import assert_same_answer, encode, picture, post, without_time

from model.infer.captioner import Captioner
from tools.serve.app import create_app
from tools.serve.batcher import Batcher

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_items_within_the_window_share_one_batch_up_to_the_limit():
    calls = []
    batcher = Batcher(lambda items: calls.append(list(items)) or [i * 10 for i in items], window=0.3, max_batch=4)
    futures = [batcher.submit(i) for i in range(6)]
    results = [f.result(timeout=5) for f in futures]
    batcher.close()
    assert calls == [[0, 1, 2, 3], [4, 5]]
    assert [r[0] for r in results] == [0, 10, 20, 30, 40, 50]
    assert [r[1] for r in results] == [4, 4, 4, 4, 2, 2]
    assert batcher.batch_sizes == {4: 1, 2: 1}


def test_a_request_waits_at_most_the_window_plus_one_batch():
    def slow(items):
        time.sleep(0.2)
        return items

    batcher = Batcher(slow, window=0.05, max_batch=8)
    start = time.monotonic()
    assert batcher.submit("a").result(timeout=5)[0] == "a"
    assert time.monotonic() - start < 0.05 + 0.2 + 0.1
    batcher.close()


def test_a_failing_item_fails_alone():
    def run(items):
        if "bad" in items:
            raise ValueError("cannot caption 'bad'")
        return [item.upper() for item in items]

    batcher = Batcher(run, window=0.3, max_batch=8)
    futures = {item: batcher.submit(item) for item in ("a", "bad", "c")}
    assert futures["a"].result(timeout=5)[0] == "A" and futures["c"].result(timeout=5)[0] == "C"
    with pytest.raises(ValueError, match="cannot caption 'bad'"):
        futures["bad"].result(timeout=5)
    batcher.close()


def test_an_upload_on_its_way_joins_the_next_batch_however_long_the_oldest_waited():
    calls, started, release = [], threading.Event(), threading.Event()

    def run(items):
        calls.append(list(items))
        if items == ["a"]:
            started.set()
            release.wait(10)
        return items

    batcher = Batcher(run, window=0.5, max_batch=8)
    first = batcher.submit("a")
    assert started.wait(10)
    waiting = batcher.submit("b")  # waits through a's batch, long past its own window
    with batcher.coming():  # "c" is being prepared when the model thread turns to "b"
        time.sleep(2.2)
        release.set()
        time.sleep(0.05)
        on_its_way = batcher.submit("c")
    assert [f.result(timeout=10)[0] for f in (first, waiting, on_its_way)] == ["a", "b", "c"]
    batcher.close()
    assert calls == [["a"], ["b", "c"]]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Captioner.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run"))
    torch.set_num_threads(threads)


def concurrently(client, uploads):
    """POST every (name, bytes) at the same moment; the replies in order."""
    start = threading.Barrier(len(uploads))

    def one(upload):
        start.wait()
        return post(client, *upload)

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(one, uploads))


def test_concurrent_clients_get_their_own_unbatched_caption(captioner):
    images = [picture(seed=200 + i) for i in range(8)]
    uploads = [(f"{i}.jpg", encode(img, "JPEG", quality=90)) for i, img in enumerate(images)]
    alone = [captioner.caption([Image.open(io.BytesIO(data))])[0] for _, data in uploads]
    assert len({a["captions"][0]["text"] + str(a["attention"][0][:2]) for a in alone}) == 8
    with TestClient(create_app(captioner, batch_window_ms=300, max_batch=8)) as client:
        replies = concurrently(client, uploads)
        sizes = client.app.state.batcher.batch_sizes
    assert max(sizes) > 1 and sum(k * v for k, v in sizes.items()) == 8  # batched, each image once
    for reply, expected in zip(replies, alone):
        assert reply.status_code == 200
        body = without_time(reply.json())
        assert_same_answer({k: v for k, v in body.items() if k not in ("image", "region")}, expected)
        assert body["image"] == {"width": 320, "height": 240}


def test_a_bad_image_among_good_ones_fails_only_its_own_request(captioner):
    good = [(f"{i}.jpg", encode(picture(seed=300 + i), "JPEG")) for i in range(5)]
    truncated = ("cut.jpg", encode(picture(seed=9), "JPEG")[:300])
    text = ("notes.jpg", b"not a picture at all" * 20)
    uploads = good[:2] + [truncated] + good[2:4] + [text] + good[4:]
    with TestClient(create_app(captioner, batch_window_ms=300, max_batch=8)) as client:
        replies = concurrently(client, uploads)
        sizes = client.app.state.batcher.batch_sizes
    assert [r.status_code for r in replies] == [200, 200, 400, 200, 200, 415, 200]
    assert "corrupt" in replies[2].json()["error"] and "not an image" in replies[5].json()["error"]
    assert sum(k * v for k, v in sizes.items()) == 5  # the bad ones never reached the model
    for (_, data), reply in zip(good, [r for r in replies if r.status_code == 200]):
        expected = captioner.caption([Image.open(io.BytesIO(data))])[0]
        assert [c["text"] for c in reply.json()["captions"]] == [c["text"] for c in expected["captions"]]


def test_max_batch_1_is_unbatched_and_exact(captioner):
    uploads = [(f"{i}.jpg", encode(picture(seed=400 + i), "JPEG")) for i in range(3)]
    with TestClient(create_app(captioner, max_batch=1)) as client:
        replies = concurrently(client, uploads)
        assert client.app.state.batcher.batch_sizes == {1: 3}
        assert client.get("/healthz").json()["max_batch"] == 1
    for (_, data), reply in zip(uploads, replies):
        expected = captioner.caption([Image.open(io.BytesIO(data))])[0]
        assert {k: v for k, v in without_time(reply.json()).items() if k not in ("image", "region")} == expected
