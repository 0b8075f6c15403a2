"""Micro-batching for the server: requests that arrive close together share one model call.

A request thread submits one prepared item and gets a Future. The model thread
takes the oldest waiting item, then everything else that arrives until that
item has waited `window` seconds (or `max_batch` items are in hand), and runs
them as one batch. Items that waited through a batch go at once, except that
requests announced as on their way (`coming()`: being decoded and encoded) are
waited for up to one window from when the model thread turned to the batch
(a request waits at most two windows plus the batch before its own): clients
answered together come back together, their uploads are prepared a few ms
apart, and a larger batch costs the model less per image. If a batch call fails,
its items run one by one, so only the item at fault fails.
"""

import contextlib
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future

WINDOW_S = 0.005
MAX_BATCH = 16


class Batcher:
    """run(items) -> one result per item, always called from the one model thread."""

    def __init__(self, run, window=WINDOW_S, max_batch=MAX_BATCH, name="capgen-model"):
        if max_batch < 1 or window < 0:
            raise ValueError("need max_batch >= 1 and window >= 0")
        self.run, self.window, self.max_batch = run, window, max_batch
        self._queue = queue.Queue()
        self.batch_sizes = Counter()  # batch size -> batches run (for tests and logs)
        self._coming, self._lock = 0, threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item):
        """A Future of (result, batch size, model seconds) for this item."""
        future = Future()
        self._queue.put((time.monotonic(), item, future))
        return future

    @contextlib.contextmanager
    def coming(self):
        """Around preparing an item and submitting it: the batch being collected waits for it."""
        with self._lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._lock:
                self._coming -= 1

    def close(self):
        self._queue.put(None)
        self._thread.join()

    def _collect(self, first):
        """The first waiting entry and those that join it within its window, up to max_batch."""
        batch = [first]
        deadline = first[0] + self.window
        hold = max(deadline, time.monotonic() + self.window)  # how long those on their way are waited for
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                now = time.monotonic()
                wait = deadline - now
                polling = wait <= 0 and self._coming and now < hold
                if polling:
                    wait = 0.0005  # one is on its way: poll for it
                if wait <= 0:
                    break
                try:
                    entry = self._queue.get(timeout=wait)
                except queue.Empty:
                    if polling:
                        continue
                    break
            if entry is None:  # close(): finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(entry)
        return batch

    def _loop(self):
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [e for e in self._collect(first) if e[2].set_running_or_notify_cancel()]
            if batch:
                self._answer(batch)

    def _answer(self, batch):
        start = time.perf_counter()
        try:
            results = self.run([item for _, item, _ in batch])
        except Exception as err:  # noqa: BLE001 -- the request's own failure, raised in its thread
            if len(batch) == 1:
                batch[0][2].set_exception(err)
            else:  # find the item at fault: each alone
                for entry in batch:
                    self._answer([entry])
            return
        seconds = time.perf_counter() - start
        self.batch_sizes[len(batch)] += 1
        for (_, _, future), result in zip(batch, results, strict=True):
            future.set_result((result, len(batch), seconds))
