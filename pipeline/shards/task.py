"""What decides a shard set's bytes (Options), and one shard of a build: the task (shard k
of a set, from its records), writing it atomically, and keeping it on a rerun when its record in .parts/ still matches.

pipeline/shards/build.py plans the tasks and runs them, one process per core.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass

from pipeline.atomic import atomic_write, discard
from pipeline.download.options import DownloadOptions
from pipeline.download.ordered import fetch_in_order
from pipeline.errors import CapgenError, writing
from pipeline.imaging import convert as imaging
from pipeline.imaging import decode as imaging_decode
from pipeline.shards import wds_index
from pipeline.shards.shardset import FORMAT, PARTS, file_sha256, part_path, shard_name
from pipeline.shards.tar_writer import TarWriter

MTIME = 1_400_000_000  # fixed member time (2014-05-13): same input, same bytes


@dataclass
class Options:
    """What decides the bytes of a shard set (and is recorded in its manifest)."""

    name: str
    image_size: int = 256
    resize_mode: str = "stretch"
    quality: int = imaging.QUALITY
    shard_size: int = 1000

    def fingerprint(self, annotation_sha256: str) -> dict:
        """What a shard's bytes depend on: these options, the annotation file's hash, the software."""
        return {
            "format": FORMAT,
            "name": self.name,
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "quality": self.quality,
            "shard_size": self.shard_size,
            "annotation_sha256": annotation_sha256,
            "software": imaging.versions(),
        }


@dataclass(frozen=True)
class Task:
    """One shard of a build: shard k of the set in out, from these records."""

    out: str
    k: int
    records: list  # dicts (image_id, file_name, path, split, captions) in the source's order
    opts: Options
    fingerprint: dict  # the set's; the shard's own adds the hash of its records
    index: bool  # also write the shard's DALI index file
    download: DownloadOptions | None = None  # the records' paths are URLs, fetched so

    @property
    def shard(self):
        return shard_name(self.opts.name, self.k)


# ---------------------------------------------------------------- one shard


def _record_meta(rec, width, height):
    meta = {
        "image_id": rec["image_id"],
        "file_name": rec["file_name"],
        "split": rec["split"],
        "width": width,
        "height": height,
        "captions": rec["captions"],
    }
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _read_or_failure(path):
    try:
        return imaging_decode.read(path)
    except imaging_decode.BadImage as bad:
        return bad


def contents(records, download=None):
    """Each record's image bytes, or the BadImage saying why there are none, in the records'
    order: files read one by one, URLs downloaded many at a time (pipeline/download/)."""
    if download is None:
        return (_read_or_failure(rec["path"]) for rec in records)
    return fetch_in_order((rec["path"] for rec in records), download)


def write_shard(path, records, opts, progress, download=None):
    """Write one shard atomically; returns its part record and its members
    [(name, data_offset, size)] (for its index). progress(1) after each image.
    download: the records' paths are URLs, downloaded so (else files)."""
    skipped, samples, captions = [], 0, 0
    with atomic_write(path, "wb") as f:
        tar = TarWriter(f, MTIME)
        for rec, data in zip(records, contents(records, download)):
            try:
                if isinstance(data, imaging_decode.BadImage):
                    raise data
                jpg, width, height = imaging.convert(data, opts.image_size, opts.resize_mode, opts.quality)
            except imaging_decode.BadImage as bad:
                skipped.append([rec["image_id"], rec["path"], bad.reason])
            else:
                key = str(rec["image_id"])
                tar.add(key + ".jpg", jpg)
                tar.add(key + ".json", _record_meta(rec, width, height))
                samples += 1
                captions += len(rec["captions"])
            progress(1)
        tar.close()
    part = {
        "name": os.path.basename(path),
        "samples": samples,
        "captions": captions,
        "bytes": tar.bytes,
        "sha256": tar.sha256.hexdigest(),
        "skipped": skipped,
    }
    return part, tar.members


def _load_part(out, shard, fingerprint):
    """The part record of a complete shard whose bytes still match it, else None."""
    try:
        with open(part_path(out, shard)) as f:
            part = json.load(f)
        path = os.path.join(out, shard)
        if (
            part.get("fingerprint") == fingerprint
            and os.path.getsize(path) == part["bytes"]
            and file_sha256(path) == part["sha256"]
        ):
            return part
    except (OSError, ValueError, KeyError):
        pass
    return None


def discard_temps(task):
    """The temp files of this task's shard, its index and its part record."""
    stem = os.path.splitext(task.shard)[0]
    discard(
        glob.glob(os.path.join(glob.escape(task.out), stem + ".*tmp"))
        + glob.glob(os.path.join(glob.escape(task.out), PARTS, stem + ".json.*tmp"))
    )


def build_task(task, progress):
    """A shard already complete is kept (after checking its hash), else written; returns
    its part record. progress(n) counts the images done."""
    out, shard = task.out, task.shard
    path = os.path.join(out, shard)
    discard_temps(task)  # left by a killed build
    # Same options, software, records (ids, paths, captions): same bytes. The image
    # files themselves are trusted to be unchanged; delete a shard to rebuild it.
    fingerprint = dict(
        task.fingerprint, records_sha256=hashlib.sha256(json.dumps(task.records, sort_keys=True).encode()).hexdigest()
    )
    part, members = _load_part(out, shard, fingerprint), None
    if part is None:
        try:
            part, members = write_shard(path, task.records, task.opts, progress, task.download)
            part["fingerprint"] = fingerprint
            with atomic_write(part_path(out, shard), "w") as f:
                json.dump(part, f)
        except OSError as err:  # disk full, read-only folder: one line, not a traceback
            raise CapgenError(f"{path}: cannot write ({err.strerror or err})") from None
        part["reused"] = False
    else:
        progress(len(task.records))
        part["reused"] = True
    # A shard whose every image failed has no samples, and so no index. A shard
    # just written is indexed from its writer's members; a reused one is read.
    if task.index and part["samples"] and not wds_index.is_current(path, wds_index.index_path(path)):
        with writing(wds_index.index_path(path)):
            wds_index.write_index(path, members=members)
    return part
