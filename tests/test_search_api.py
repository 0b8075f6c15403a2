"""GET /api/search and /api/image/{id} through FastAPI's TestClient, on a tiny real checkpoint
and a shard set indexed through its encoder; concurrent queries are scored together."""

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from serve_checkpoint import make_checkpoint

from model.infer.captioner import Captioner
from model.retrieval.index import encode_query
from pipeline.shards.members import ShardMembers
from pipeline.shards.shardset import read_jpegs
from tools.serve.app import create_app
from tools.serve.search_box import load_search, mount_search

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette prefers httpx2; httpx is what we have
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards(images=12, seed=21, width=64, height=48, image_size=128, shard_size=5, preset="coco")


@pytest.fixture(scope="module")
def search(tiny_shards, shards, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    captioner = Captioner.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run"))
    yield captioner, load_search(None, shards, captioner, progress=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(search):
    captioner, found = search
    app = create_app(captioner)
    mount_search(app, found)
    with TestClient(app) as client:
        yield client


def test_search_answers_the_cli_json(client, search, shards):
    _, found = search
    r = client.get("/api/search", params={"q": "a red zorg circle", "k": "4"})
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["query", "unknown_words", "results"]
    assert body["query"] == "a red zorg circle" and body["unknown_words"] == ["zorg"]
    direct = found.index.search([encode_query("a red zorg circle", found.vocab)], 4)[0]
    assert body == direct
    assert [list(hit) for hit in body["results"]] == [["image_id", "file_name", "score"]] * 4
    info = client.get("/api/search/info").json()
    assert info == {"images": 12, "index": os.path.basename(shards), "thumbnails": True, "max_k": 100}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"q": ""}, "query '': no words after cleaning (text preset coco)"),
        ({"q": "zorg blip"}, "query 'zorg blip': every word is unknown to the checkpoint's vocabulary (zorg, blip)"),
        ({"q": "red", "k": "0"}, "k: must be 1 to 100 (got 0)"),
        ({"q": "red", "k": "101"}, "k: must be 1 to 100 (got 101)"),
        ({"q": "red", "k": "ten"}, "k: not a whole number ('ten')"),
    ],
)
def test_bad_queries_get_400_with_one_line(client, params, message):
    r = client.get("/api/search", params=params)
    assert (r.status_code, r.json()) == (400, {"error": message})


def test_image_endpoint_serves_the_shards_jpeg(client, shards):
    members = ShardMembers(shards)
    image_id = sorted(members.members)[7]
    r = client.get(f"/api/image/{image_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == read_jpegs(shards, [image_id])[image_id]
    assert Image.open(io.BytesIO(r.content)).size == (128, 128)
    missing = client.get("/api/image/7")
    assert (missing.status_code, missing.json()) == (404, {"error": f"{os.path.basename(shards)}: no image id 7"})
    assert client.get("/api/image/x").status_code == 400


def test_concurrent_queries_are_scored_in_one_pass(client, search):
    _, found = search
    queries = ["a red circle", "a blue square", "green star", "a large heart", "purple", "the small triangle"]
    alone = {q: client.get("/api/search", params={"q": q, "k": "3"}).json() for q in queries}
    found.batcher.window = 0.2  # wide, so that the pool's requests surely meet
    found.batcher.batch_sizes.clear()
    try:
        with ThreadPoolExecutor(len(queries)) as pool:
            together = list(pool.map(lambda q: client.get("/api/search", params={"q": q, "k": "3"}).json(), queries))
    finally:
        found.batcher.window = 0.005
    sizes = found.batcher.batch_sizes  # batch size -> batches scored
    assert max(sizes) > 1 and sum(size * n for size, n in sizes.items()) == len(queries)
    for q, answer in zip(queries, together):
        assert answer["query"] == q
        assert [h["image_id"] for h in answer["results"]] == [h["image_id"] for h in alone[q]["results"]]
        for a, b in zip(answer["results"], alone[q]["results"]):
            assert a["score"] == pytest.approx(b["score"], abs=2e-4)
