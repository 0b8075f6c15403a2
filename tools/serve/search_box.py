"""The page's search box: `GET /api/search?q=...&k=...` and thumbnails by image id; queries
arriving together are scored in one pass over the indexed images (tools/serve/batcher.py).

`mount_search(app, search)` adds the routes to the app of tools/serve/app.py.
"""

import logging

from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from model.retrieval.index import encode_query
from model.retrieval.source import load_index
from pipeline.errors import CapgenError
from tools.serve.batcher import Batcher
from tools.serve.names import image_name, public_name

WINDOW_S = 0.005  # how long the first query of a batch waits for others
MAX_BATCH = 32  # queries scored in one pass
MAX_TOP = 100
log = logging.getLogger("capgen.serve")


def _scorer(index):
    """Batcher's run for search items (query, top): every query against the index in one pass."""

    def run(items):
        answers = index.search([query for query, _ in items], max(top for _, top in items))
        return [{**answer, "results": _shown(answer["results"][:top])} for (_, top), answer in zip(items, answers)]

    return run


def _shown(results):
    """The hits as the API gives them: each image by its set-relative name, never an absolute path."""
    return [{**hit, "file_name": image_name(hit["file_name"])} for hit in results]


class NotFound(CapgenError):
    """An image id the set does not hold."""


class Search:
    """What the routes need: the vocabulary, the batched index, and the shard set's images;
    `name`: the set's name on the page and in every answer (tools/serve/names.py), not its path."""

    def __init__(self, index, vocab, members=None, name=""):
        self.index, self.vocab, self.members, self.name = index, vocab, members, name
        self.batcher = Batcher(_scorer(index), window=WINDOW_S, max_batch=MAX_BATCH, name="search-batcher")

    def query(self, text, top):
        """The JSON answer for one query; CapgenError for a bad query or k."""
        if top < 1 or top > MAX_TOP:
            raise CapgenError(f"k: must be 1 to {MAX_TOP} (got {top})")
        result, _, _ = self.batcher.submit((encode_query(text, self.vocab), top)).result()
        return result

    def jpeg(self, image_id):
        """The JPEG of one image of the set; NotFound (404) or, when its shard cannot be read, a
        CapgenError naming the set only (the shard's path goes to the server's log)."""
        if self.members is None:
            raise NotFound(f"{self.name}: no shard set to read images from")
        if image_id not in self.members:
            raise NotFound(f"{self.name}: no image id {image_id}")
        try:
            return self.members.read(image_id, "jpg")
        except CapgenError as err:
            log.error("thumbnail: %s", err)
            raise CapgenError(f"{self.name}: image id {image_id} cannot be read") from None


def _bad(message, status=400):
    return JSONResponse({"error": message}, status_code=status)


def mount_search(app, search):
    """Add /api/search, /api/search/info and /api/image/{id} to the app."""

    @app.get("/api/search/info")
    def info():
        return {
            "images": len(search.index),
            "index": search.name,
            "thumbnails": search.members is not None,
            "max_k": MAX_TOP,
        }

    @app.get("/api/search")
    async def find(q: str = "", k: str = "10"):
        if not k.strip().lstrip("-").isdigit():
            return _bad(f"k: not a whole number ({k!r})")
        try:
            return JSONResponse(await run_in_threadpool(search.query, q, int(k)))
        except CapgenError as err:
            return _bad(str(err))

    @app.get("/api/image/{image_id}")
    def image(image_id: str):
        if not image_id.isdigit():
            return _bad(f"image id: not a number ({image_id!r})")
        try:
            data = search.jpeg(int(image_id))
        except NotFound as err:
            return _bad(str(err), 404)
        except CapgenError as err:
            return _bad(str(err), 500)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def load_search(checkpoint, data, captioner, progress=True):
    """The Search over `data` (.h5 cache or shard set) for the server's loaded captioner."""
    index, _, members = load_index(checkpoint, data, captioner.device, progress=progress, captioner=captioner)
    return Search(index, captioner.vocab, members, name=public_name(data))
