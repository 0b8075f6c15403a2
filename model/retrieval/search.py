"""`capgen search`: sentences -> the top images of a set, as `capgen search --json` prints them.

The command line and the Python API (`capgen.search`) call this module: it loads the
checkpoint, encodes every query first (a bad one fails before any work), builds the
image index (model/retrieval/source.py) and ranks (model/retrieval/index.py).
"""

from collections.abc import Sequence
from os import PathLike

from model.device import default_device
from model.infer.captioner import Captioner
from model.retrieval.index import encode_query
from model.retrieval.source import load_index
from pipeline.errors import CapgenError


def rank_images(
    checkpoint: str | PathLike,
    data: str | PathLike,
    queries: Sequence[str],
    top: int = 10,
    device: str | None = None,
    cache: str | PathLike | None = None,
    progress: bool = False,
) -> tuple[int, list[dict]]:
    """(images searched, search's answer): what `capgen search` prints."""
    if top < 1:
        raise CapgenError(f"--top: must be at least 1 (got {top})")
    captioner = Captioner.load(checkpoint, default_device(device))
    encoded = [encode_query(q, captioner.vocab) for q in queries]  # bad queries fail before any work
    index, _, _ = load_index(checkpoint, data, device, cache, progress=progress, captioner=captioner)
    return len(index), index.search(encoded, top, progress=progress)


def search(
    checkpoint: str | PathLike,
    data: str | PathLike,
    queries: str | Sequence[str],
    top: int = 10,
    device: str | None = None,
    cache: str | PathLike | None = None,
    progress: bool = False,
) -> list[dict]:
    """Rank the images of `data` (a shard set folder, or a feature cache .h5 of the checkpoint's
    encoder) for each query (a string: one query) by log p(query | image), the mean per token;
    as `capgen search`.

    Returns one dict per query, as `capgen search --json` prints them: {"query",
    "unknown_words", "results": [{"image_id", "file_name", "score"}, ...]} with the `top`
    best images first. A shard set runs through the checkpoint's encoder once (`cache`: also
    write its features to that .h5, for next time). device: default cuda when present.
    CapgenError: an empty query, one of only unknown words, top below 1, a cache of another encoder.

    Example::

        >>> hits = capgen.search("run/best", "shards/val", ["a red circle"], top=2)  # README's "From Python"
        >>> [(h["file_name"], h["score"]) for h in hits[0]["results"]]
        [('COCO_val2014_000000001643.jpg', -2.4947), ('COCO_val2014_000000271453.jpg', -2.5079)]
    """
    if isinstance(queries, str):
        queries = [queries]
    return rank_images(checkpoint, data, queries, top, device, cache, progress)[1]
