"""The page's search box: `GET /api/search?q=...&k=...`, thumbnails by image id, and the
batcher that scores queries arriving together in one pass over the indexed images.

`mount_search(app, search)` adds the routes to the app of tools/serve.py.
"""
import queue
import threading
import time
from concurrent.futures import Future

from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from model.retrieval import encode_query
from model.retrieval_source import load_index
from pipeline.errors import CapgenError

WINDOW_S = 0.005     # how long the first query of a batch waits for others
MAX_BATCH = 32       # queries scored in one pass
MAX_TOP = 100


class SearchBatcher:
    """One worker thread: takes the queries that arrive within WINDOW_S of each other
    (at most MAX_BATCH) and scores them against the index in one pass."""

    def __init__(self, index, window=WINDOW_S, max_batch=MAX_BATCH):
        self.index, self.window, self.max_batch = index, window, max_batch
        self.pending = queue.Queue()
        self.batches = []  # sizes of the batches scored (the tests read it)
        threading.Thread(target=self._run, daemon=True, name="search-batcher").start()

    def search(self, query, top):
        """Blocks until the query's batch is scored; the index's search answer for it."""
        done = Future()
        self.pending.put((query, top, done))
        return done.result()

    def _take(self):
        batch = [self.pending.get()]
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.pending.get(timeout=left) if left > 0 else self.pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self):
        while True:
            batch = self._take()
            self.batches.append(len(batch))
            try:
                answers = self.index.search([q for q, _, _ in batch], max(top for _, top, _ in batch))
            except Exception as err:  # noqa: BLE001 -- every waiting request gets the error
                for _, _, done in batch:
                    done.set_exception(err)
                continue
            for (_, top, done), answer in zip(batch, answers):
                done.set_result({**answer, "results": answer["results"][:top]})


class Search:
    """What the routes need: the vocabulary, the batched index, and the shard set's images."""

    def __init__(self, index, vocab, members=None, name=""):
        self.index, self.vocab, self.members, self.name = index, vocab, members, name
        self.batcher = SearchBatcher(index)

    def query(self, text, top):
        """The JSON answer for one query; CapgenError for a bad query or k."""
        if top < 1 or top > MAX_TOP:
            raise CapgenError(f"k: must be 1 to {MAX_TOP} (got {top})")
        return self.batcher.search(encode_query(text, self.vocab), top)

    def jpeg(self, image_id):
        if self.members is None:
            raise CapgenError(f"{self.name}: no shard set to read images from")
        return self.members.read(image_id, "jpg")


def _bad(message, status=400):
    return JSONResponse({"error": message}, status_code=status)


def mount_search(app, search):
    """Add /api/search, /api/search/info and /api/image/{id} to the app."""

    @app.get("/api/search/info")
    def info():
        return {"images": len(search.index), "index": search.name, "thumbnails": search.members is not None,
                "max_k": MAX_TOP}

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
        except CapgenError as err:
            return _bad(str(err), 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def load_search(checkpoint, data, captioner, progress=True):
    """The Search over `data` (.h5 cache or shard set) for the server's loaded captioner."""
    index, _, members = load_index(checkpoint, data, captioner.device, progress=progress, captioner=captioner)
    return Search(index, captioner.vocab, members, name=data)
