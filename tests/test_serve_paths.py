"""The page and the API name sets and checkpoints, never a path on the server's disk: the app that
`capgen serve --index` runs (load_app), its checkpoint and shard set in a tmp folder, the set's images
recorded under absolute names; every route of app.routes asked, good requests and bad, every answer
read for the tmp folder, the home folder, the checkpoint's and the set's paths."""

import os
import re
import sys
import warnings

import pytest
from serve_checkpoint import make_checkpoint

from pipeline.shards import build as shards
from pipeline.sources.caption_table import read_caption_table
from tools.bench.serve import make_images
from tools.serve.app import STATIC, load_app
from tools.serve.soak import bad_requests

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette prefers httpx2; httpx is what we have
    from fastapi.testclient import TestClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a red circle", "a blue square left of a green star", "a large yellow circle", "the small purple square"]
UPLOAD_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(TestClient, tmp folder, checkpoint, shard set, the set's image ids by file) of the served app."""
    root = tmp_path_factory.mktemp("served")
    (root / "photos").mkdir()
    rows = ["file_name,caption"]
    for i, (jpeg, caption) in enumerate(zip(make_images(len(CAPTIONS), size=(64, 48)), CAPTIONS)):
        path = root / "photos" / f"p{i}.jpg"
        path.write_bytes(jpeg)
        rows.append(f"{path},{caption}")  # absolute names, as a table of full paths gives them
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    table = read_caption_table(root / "captions.csv", "train")
    index = str(root / "sets" / "val")
    options = shards.Options(name="val", image_size=128, shard_size=3)
    shards.build(table, index, options, {}, workers=1, preset="coco", min_freq=1, progress=False)
    checkpoint = str(make_checkpoint(root / "run"))
    ids = {os.path.basename(r.file_name): r.image_id for r in table.records}
    app = load_app(checkpoint, index=index, threads=1, max_upload_mb=UPLOAD_LIMIT / 1024 / 1024, progress=False)
    with TestClient(app) as client:
        yield client, root, checkpoint, index, ids


def requests_by_route(ids, good_jpeg):
    """route path -> the requests (method, url, httpx keywords) asked of it: good and bad."""
    image_id = ids["p1.jpg"]
    uploads = [{"files": {"image": ("p0.jpg", good_jpeg, "image/jpeg")}}]
    for kind, request in bad_requests(good_jpeg, UPLOAD_LIMIT).items():
        uploads += request if kind == "oversized" else [request]
    return {
        "/": [("GET", "/", {}), ("POST", "/", {})],
        "/healthz": [("GET", "/healthz", {})],
        "/api/caption": [("POST", "/api/caption", u) for u in uploads] + [("GET", "/api/caption", {})],
        "/api/search/info": [("GET", "/api/search/info", {})],
        "/api/search": [
            ("GET", "/api/search", {"params": params})
            for params in ({"q": "a red circle"}, {"q": ""}, {"q": "zorg"}, {"q": "red", "k": "0"}, {"k": "x"})
        ],
        "/api/image/{image_id}": [("GET", f"/api/image/{i}", {}) for i in (image_id, 999_999, "x", "-1")],
        "/static": [("GET", f"/static/{name}", {}) for name in sorted(os.listdir(STATIC))]
        + [("GET", "/static/nothing.js", {}), ("GET", "/static/../app.py", {})],
        "(none)": [("GET", "/nothing", {}), ("GET", "/api/image", {})],
    }


def leaks(text, paths):
    """The server paths in one answer: /tmp/, the home folder, the given paths, this checkout, Python's."""
    found = re.findall(r"/tmp/\S*", text)
    return found + [p for p in (*paths, os.path.expanduser("~") + "/", ROOT, sys.prefix) if p in text]


def test_every_route_answers_without_a_server_path(served):
    client, root, checkpoint, index, ids = served
    asked = requests_by_route(ids, (root / "photos" / "p0.jpg").read_bytes())
    routes = {route.path for route in client.app.routes}
    assert routes == set(asked) - {"(none)"}, "a route without requests here: add them"
    statuses = set()
    for method, url, options in (request for requests in asked.values() for request in requests):
        reply = client.request(method, url, **options)
        statuses.add(reply.status_code)
        text = reply.content.decode("latin-1")
        assert leaks(text, [str(root), checkpoint, index]) == [], f"{method} {url} -> {reply.status_code}"
        if reply.headers["content-type"].startswith("application/json") and reply.status_code >= 400:
            assert list(reply.json()) == ["error"] and "\n" not in reply.json()["error"]
    assert statuses == {200, 400, 404, 405, 413, 415}


def test_the_set_and_the_checkpoint_are_named_by_their_last_component(served):
    client, _, _, _, ids = served
    health = client.get("/healthz").json()
    assert (health["checkpoint"], health["runtime"]) == ("run", "torch")
    assert client.get("/api/search/info").json() == {"images": 4, "index": "val", "thumbnails": True, "max_k": 100}
    hits = client.get("/api/search", params={"q": "a red circle", "k": "4"}).json()["results"]
    assert sorted(hit["file_name"] for hit in hits) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    assert all(ids[hit["file_name"]] == hit["image_id"] for hit in hits)  # the thumbnail's URL: /api/image/<id>
    assert client.get("/api/image/999999").json() == {"error": "val: no image id 999999"}


def test_an_unreadable_shard_is_named_by_its_set(served):
    client, _, _, index, ids = served
    for name in os.listdir(index):
        if name.endswith(".tar"):
            os.truncate(os.path.join(index, name), 0)
    reply = client.get(f"/api/image/{ids['p0.jpg']}")
    assert (reply.status_code, reply.json()) == (500, {"error": f"val: image id {ids['p0.jpg']} cannot be read"})
