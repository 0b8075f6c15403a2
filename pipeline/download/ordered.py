"""Many URLs -> their bytes in input order: a thread pool keeps opts.concurrency requests in
flight while the caller converts what has arrived, so the shard's contents follow the
records' order, never the order in which responses complete."""

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.download.fetch import HostSlots, fetch, new_pool
from pipeline.download.options import DownloadOptions
from pipeline.imaging.decode import BadImage


def _fetch_or_failure(url, opts, pool, slots):
    try:
        return fetch(url, opts, pool, slots)
    except BadImage as bad:
        return bad


def fetch_in_order(urls: Iterable[str], opts: DownloadOptions) -> Iterator[bytes | BadImage]:
    """For each url, in order: its bytes, or the BadImage saying why there are none.

    Up to 2 * concurrency downloads run ahead of the one handed out; leaving the loop early
    cancels those not started and waits for those in flight (each bounded by the timeout)."""
    pool, slots = new_pool(opts), HostSlots(opts.per_host)
    ahead = deque()
    ex = ThreadPoolExecutor(opts.concurrency, thread_name_prefix="capgen-download")
    try:
        for url in urls:
            ahead.append(ex.submit(_fetch_or_failure, url, opts, pool, slots))
            if len(ahead) >= 2 * opts.concurrency:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        pool.clear()
