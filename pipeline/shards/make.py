"""`capgen shards build`'s arguments -> a shard set: the command line and the Python API call `build_shards`.

It reads the records (a COCO split, a Karpathy split or your own captions file), names the
set, records the arguments in the manifest's build_args and runs pipeline/shards/build.py.
"""

import os
from collections.abc import Callable
from os import PathLike

from pipeline.cluster.jobs import array_job
from pipeline.download.options import DownloadOptions
from pipeline.errors import WARNING, UsageError, say
from pipeline.imaging.convert import QUALITY
from pipeline.shards import build as sh

# What the manifest's build_args record, in this order (then what the records' reader adds).
RECORDED = (
    "coco_root",
    "split",
    "karpathy",
    "karpathy_split",
    "name",
    "image_size",
    "resize_mode",
    "quality",
    "shard_size",
    "vocab",
    "preset",
    "min_freq",
    "captions_per_image",
)


def build_shards(
    out: str | PathLike | None = None,
    *,
    coco_root: str | PathLike | None = None,
    split: str | None = None,
    karpathy: str | PathLike | None = None,
    karpathy_split: str | None = None,
    captions: str | PathLike | None = None,
    images: str | PathLike | None = None,
    captions_split: str = "train",
    file_column: str | None = None,
    caption_column: str | None = None,
    split_column: str | None = None,
    val_fraction: float | None = None,
    urls: str | PathLike | None = None,
    url_column: str | None = None,
    download: DownloadOptions | None = None,
    name: str | None = None,
    image_size: int = 256,
    resize_mode: str = "stretch",
    quality: int = QUALITY,
    shard_size: int = 1000,
    workers: int | None = None,
    num_jobs: int | None = None,
    job_index: int | None = None,
    vocab: str | PathLike | None = None,
    preset: str = "seed",
    min_freq: int = 5,
    captions_per_image: int = 5,
    index: bool = True,
    progress: bool = False,
    ray: str | None = None,
    note: Callable[[str], None] = say,
) -> dict:
    """Decode a COCO 2014 split (coco_root + split), a Karpathy split (karpathy + karpathy_split),
    your own captions file (captions, a metadata.jsonl / .csv / .tsv) or an image URL list (urls,
    a .tsv / .csv / .jsonl / .parquet of url and caption columns, downloaded with `download`,
    default DownloadOptions()) once into a shard set at `out` (default shards/NAME), as
    `capgen shards build` does with the same options.
    ray: a Ray cluster's address ("auto": the one started on this machine) to run one task per
    shard on, instead of `workers` local processes; the same set.

    Returns build()'s summary ({"job", "elapsed", "built", "reused", and for a single job
    "manifest"}) with "out", "num_jobs" and "job_index". note(line) gets the captions file's
    row counts and the warning about a held-out set's own vocabulary. UsageError: arguments
    that do not go together.

    Example::

        >>> capgen.synthesize("data", images=40, seed=0, width=64, height=48)
        >>> r = capgen.build_shards("shards/train", coco_root="data", split="train2014", image_size=32)
        >>> r["manifest"]["counts"]["images"]
        32
    """
    return _build(dict(locals()), note)


# sh.build's own keyword arguments, passed through; the options of a captions file
PASSED = ("workers", "vocab", "preset", "min_freq", "captions_per_image", "index", "progress", "ray")
TABLE_OPTIONS = ("file_column", "caption_column", "split_column", "val_fraction")


def _build(a, note):
    """build_shards with its arguments as one dict."""
    for key in ("coco_root", "karpathy", "captions", "urls", "images", "vocab"):
        a[key] = None if a[key] is None else os.fspath(a[key])  # build_args go into JSON
    if a["ray"] is not None and a["workers"] is not None:
        raise UsageError("--ray runs one task per shard on the cluster's CPUs; it takes no --workers")
    num_jobs, job_index = array_job(a["num_jobs"], a["job_index"])
    source, name, evaluation, table = _read_source(a, note)
    a["name"] = a["name"] or name
    out = os.fspath(a["out"]) if a["out"] else os.path.join("shards", a["name"])
    if evaluation and not a["vocab"] and num_jobs == 1:
        note(f"{WARNING}{a['name']} builds its own vocabulary; pass --vocab TRAIN/vocab.json to share the training one")
    args = {**{k: a[k] for k in RECORDED}, **table}
    opts = sh.Options(**{k: a[k] for k in ("name", "image_size", "resize_mode", "quality", "shard_size")})
    download = (a["download"] or DownloadOptions()) if a["urls"] else None
    passed = {k: a[k] for k in PASSED}
    r = sh.build(source, out, opts, args, num_jobs=num_jobs, job_index=job_index, download=download, **passed)
    return {**r, "out": out, "num_jobs": num_jobs, "job_index": job_index}


def _read_source(a, note):
    """(records, default set name, whether a held-out split, what build_args record of a captions file)."""
    from pipeline.sources.coco import read_coco, read_karpathy

    if a["captions"] and a["urls"]:
        raise UsageError("give --captions or --urls, not both")
    if a["urls"]:
        return _urls_source(a, note)
    if a["url_column"] is not None or a["download"] is not None:
        raise UsageError("--url-column and the download options need --urls")
    if a["captions"]:
        return _captions_source(a, note)
    if any(a[k] is not None for k in TABLE_OPTIONS):
        raise UsageError("--file-column, --caption-column, --split-column and --val-fraction need --captions")
    if a["karpathy"] and a["karpathy_split"]:
        split, images = a["karpathy_split"], a["images"]
        source = read_karpathy(a["karpathy"], split, image_root=images or a["coco_root"])
        return source, f"karpathy-{split}", split != "train", {"images": images} if images else {}
    if a["coco_root"] and a["split"]:
        return read_coco(a["coco_root"], a["split"]), f"coco-{a['split']}", a["split"] != "train2014", {}
    raise UsageError("give --coco-root with --split, --karpathy with --karpathy-split, --captions or --urls")


def _captions_source(a, note):
    """Your own captions file's records (and the rest of _read_source's answer, with what the
    manifest's build_args record of the file)."""
    from pipeline.sources.caption_table import read_caption_table

    captions, split = a["captions"], a["captions_split"]
    columns = {k: a[k] for k in TABLE_OPTIONS}
    source = read_caption_table(captions, split, a["images"], **columns)
    set_aside = ", ".join(f"{k} {v}" for k, v in source.dropped.items()) or "none"
    note(f"{captions}: {source.rows} rows, {len(source.records)} {split} images; set aside: {set_aside}")
    table = {
        "captions": captions,
        "images": a["images"],
        "captions_split": split,
        **columns,
        "rows": source.rows,
        "rows_set_aside": source.dropped,
    }
    return source, f"captions-{split}", split != "train", table


def _urls_source(a, note):
    """An image URL list's records (and the rest of _read_source's answer, with what the
    manifest's build_args record of the list and the download options)."""
    from pipeline.sources.url_list import read_url_list

    if any(a[k] is not None for k in ("file_column", "split_column", "val_fraction")):
        raise UsageError("--file-column, --split-column and --val-fraction are for --captions, not --urls")
    urls = a["urls"]
    source = read_url_list(urls, a["url_column"], a["caption_column"])
    set_aside = ", ".join(f"{k} {v}" for k, v in source.dropped.items()) or "none"
    note(f"{urls}: {source.rows} rows, {len(source.records)} image URLs; set aside: {set_aside}")
    table = {
        "urls": urls,
        "url_column": a["url_column"],
        "caption_column": a["caption_column"],
        "rows": source.rows,
        "rows_set_aside": source.dropped,
        "download": (a["download"] or DownloadOptions()).recorded(),
    }
    return source, "urls", False, table
