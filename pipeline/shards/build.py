"""Build a shard set: records -> WebDataset tar shards, one process per core, resumable.

Records (in the source's order: image-id order from COCO, Karpathy and captions files, the
rows' order from a URL list; those without captions set aside) are cut into
shards before any parallelism: shard k holds records[k*S:(k+1)*S], so the
bytes do not depend on the worker count or on how many jobs share the work.
Each shard is written atomically (pipeline/atomic.py); then a small record of
it (hash, samples, skipped images) lands in .parts/. A rerun keeps every shard
whose hash matches its record, so a killed build resumes and ends with the
same bytes. A single job finishes the set itself; the jobs of a --num-jobs
build are joined by pipeline/shards/merge.py. The folder's layout: pipeline/shards/shardset.py.

From Python: `build(read_coco(root, "train2014"), "shards/train", Options(name="coco-train2014"), {})`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from tqdm import tqdm

from pipeline.errors import CapgenError, writing
from pipeline.folder_lock import folder_lock
from pipeline.imaging import pixels
from pipeline.shards.merge import finalize, write_job_manifest
from pipeline.shards.shardset import FORMAT, PARTS, file_sha256
from pipeline.shards.task import Options, Task, build_task, discard_temps
from pipeline.sources.coco import skip_order
from pipeline.text import Vocabulary

if TYPE_CHECKING:
    from pipeline.download.options import DownloadOptions
    from pipeline.sources.coco import ImageRecord, Source


# ---------------------------------------------------------------- running the tasks


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), the default number of workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run(tasks, total, workers, progress, ray=None):
    bar = tqdm(total=total, unit="img", disable=not progress, smoothing=0.1, dynamic_ncols=True)
    try:
        if ray is not None:
            return _run_ray(tasks, bar, ray)
        if workers <= 1 or len(tasks) <= 1:
            return _run_here(tasks, bar)
        return _run_pool(tasks, bar, min(workers, len(tasks)))
    except BaseException:  # a full disk, Ctrl-C: no temp file of a stopped worker stays behind
        for task in tasks:
            discard_temps(task)
        raise
    finally:
        bar.close()


def _run_here(tasks, bar):
    return [build_task(task, bar.update) for task in tasks]  # imaging resizes on one thread everywhere


# A pool worker's count of images done, which the parent polls for its bar: a shared
# value reaches a worker only as it starts, so _init_worker keeps it here, once per process.
_done = None


def _init_worker(done):
    global _done
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _done = done


def _count_done(n):
    with _done.get_lock():
        _done.value += n


def _build_in_worker(task):
    return build_task(task, _count_done)


def _run_pool(tasks, bar, workers):
    # Not fork: a forked child could inherit a lock held mid-use by another thread of the parent
    # (tqdm's monitor, a library's pool: a hang). A fork server, started clean with this module
    # loaded (imports done once), forks the workers instead.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["pipeline.shards.build"])
    done_count = ctx.Value("q", 0)
    parts = []
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(done_count,)) as pool:
        pending = {pool.submit(_build_in_worker, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                parts += [f.result() for f in done]
                bar.update(done_count.value - bar.n)
        except BrokenProcessPool:
            raise CapgenError(
                f"{tasks[0].out}: a worker process died (out of memory?); the same command resumes the build"
            ) from None
        except BaseException:  # Ctrl-C: stop now; finished shards are kept for the rerun
            procs = list(pool._processes.values())  # no public way before Python 3.14
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(5)  # gone before their temp files are removed
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return sorted(parts, key=lambda p: p["name"])


def build_unwatched(task):
    """One shard, its progress uncounted: a Ray task's work (the driver counts whole shards)."""
    return build_task(task, lambda n: None)


def _run_ray(tasks, bar, address):
    from pipeline.cluster.ray_tasks import run_tasks  # imports ray: only a --ray build pays for it

    parts = run_tasks(
        build_unwatched,
        tasks,
        address,
        done=lambda task, part: bar.update(len(task.records)),
        label=lambda task: os.path.join(task.out, task.shard),
    )
    return sorted(parts, key=lambda p: p["name"])


# ---------------------------------------------------------------- a build


def plan(records: list[ImageRecord], shard_size: int) -> tuple[list[list[ImageRecord]], list[ImageRecord]]:
    """(shards, no_captions): the records with captions in the source's order, cut into shards of
    shard_size (shard k holds records[k*S:(k+1)*S]); and those without captions."""
    keep = [r for r in records if r.captions]
    no_captions = [r for r in records if not r.captions]
    chunks = [keep[i : i + shard_size] for i in range(0, len(keep), shard_size)]
    return chunks, no_captions


def _as_dict(r):
    return {
        "image_id": int(r.image_id),
        "file_name": r.file_name,
        "path": r.path,
        "split": r.split,
        "captions": list(r.captions),
    }


def _check(out, opts, num_jobs, job_index, download=None, ray=None):
    if download is not None:
        download.check(out)
    if ray is not None:
        from pipeline.cluster.ray_tasks import require_ray

        require_ray()  # before any work: a plain install has no Ray
        if num_jobs > 1:
            raise CapgenError(f"{out}: --ray runs the whole build (one task per shard); it takes no --num-jobs")
    if not 0 <= job_index < num_jobs:
        raise CapgenError(f"{out}: --job-index must be in [0, {num_jobs}), got {job_index}")
    if opts.resize_mode not in pixels.RESIZE_MODES:
        raise CapgenError(f"{out}: unknown resize mode {opts.resize_mode!r}")
    if opts.image_size < 8 or opts.shard_size < 1 or not 1 <= opts.quality <= 100:
        raise CapgenError(f"{out}: need image size >= 8, shard size >= 1, quality in 1..100")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", opts.name):
        raise CapgenError(f"{out}: shard set name {opts.name!r} must be letters, digits, '_', '.', '-'")


def build(
    source: Source,
    out: str,
    opts: Options,
    build_args: dict,
    workers: int | None = None,
    num_jobs: int = 1,
    job_index: int = 0,
    vocab: str | None = None,
    preset: str = "seed",
    min_freq: int = 5,
    captions_per_image: int = 5,
    index: bool = True,
    progress: bool = True,
    download: DownloadOptions | None = None,
    ray: str | None = None,
) -> dict:
    """Build this job's shards into out; a single job also finalizes the set
    (manifest.json, skipped.txt, vocab.json, tokens.npz).

    source: the records (pipeline/sources: read_coco, read_karpathy, read_caption_table);
    opts: what decides the bytes (name, image size, resize mode, JPEG quality, shard size);
    build_args: recorded as is in the manifest (e.g. the command's options). workers:
    processes (default: available_cores()). num_jobs, job_index: this job builds shards
    k with k % num_jobs == job_index (join them with pipeline/shards/merge.py). vocab: a
    training vocab.json to reuse, else the set's own from preset and min_freq, keeping
    captions_per_image per image. index: write DALI index files; progress: a tqdm bar.
    download: the records' paths are image URLs (pipeline/sources/url_list.py), downloaded
    with these options; a failed download is skipped and counted by reason, as a bad file is.
    ray: a Ray cluster's address ("auto", "host:port", "ray://host:port"): one task per shard
    there (pipeline/cluster/ray_tasks.py), out on a file system every node sees; same bytes.

    Returns {"job": this job's manifest, "elapsed": seconds, "built", "reused": shard counts},
    with "manifest" (the set's) for a single job. The build holds out's lock (a job of a
    --num-jobs build: its own slot's), so a second build into the same folder stops at once.
    CapgenError for bad options, no images with captions, or a folder that cannot be written."""
    _check(out, opts, num_jobs, job_index, download, ray)
    vocab_obj = Vocabulary.load(vocab) if vocab else None
    chunks, no_captions = plan(source.records, opts.shard_size)
    if not chunks:
        raise _nothing_to_build(source)
    lock = out if num_jobs == 1 else os.path.join(out, PARTS, f"job-{job_index:04d}-of-{num_jobs:04d}")
    start = time.perf_counter()
    with folder_lock(lock):
        with writing(os.path.join(out, PARTS)):
            os.makedirs(os.path.join(out, PARTS), exist_ok=True)
        fingerprint = opts.fingerprint(file_sha256(source.annotation_path))
        tasks = [
            Task(out, k, [_as_dict(r) for r in chunks[k]], opts, fingerprint, index, download)
            for k in range(len(chunks))
            if k % num_jobs == job_index
        ]
        parts = _run(tasks, sum(len(t.records) for t in tasks), workers or available_cores(), progress, ray)
        text = {"preset": preset, "min_freq": min_freq, "captions_per_image": captions_per_image}
        text["vocab_from"] = os.path.abspath(vocab) if vocab else None
        job = _job_manifest(source, fingerprint, build_args, job_index, num_jobs, len(chunks), parts, no_captions, text)
        summary = _finish_job(out, source, job, parts, vocab_obj)
    summary["elapsed"] = time.perf_counter() - start
    return summary


def _nothing_to_build(source):
    return CapgenError(
        f"{source.annotation_path}: no images with captions to build "
        f"({len(source.records)} images listed, {len(source.skipped)} left out, "
        f"{source.bad_captions} bad captions)"
    )


def _finish_job(out, source, job, parts, vocab_obj):
    """Write this job's manifest (and the borrowed vocabulary); a single job also finalizes the
    set. Returns build()'s summary, less its time."""
    if vocab_obj is not None:
        with writing(os.path.join(out, "vocab.json")):
            vocab_obj.save(os.path.join(out, "vocab.json"))
    write_job_manifest(out, job)
    summary = {
        "job": job,
        "reused": sum(p["reused"] for p in parts),
        "built": sum(not p["reused"] for p in parts),
    }
    if job["job"]["count"] == 1:
        written = {r.image_id: list(r.captions) for r in source.records if r.captions}
        for s in job["skipped"]:
            written.pop(s[0], None)
        summary["manifest"] = finalize(out, [job], written)
    return summary


def _job_manifest(source, fingerprint, build_args, job_index, num_jobs, num_shards, parts, no_captions, text):
    """What this job built and skipped, and how: what merge and finalize join."""
    skipped = [s for p in parts for s in p["skipped"]]
    if job_index == 0:  # what no shard holds: job 0 reports it
        skipped += [[r.image_id, r.path, "no_captions"] for r in no_captions] + list(source.skipped)
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "build_args": build_args,
        "annotation": source.annotation_path,
        "annotation_sha256": fingerprint["annotation_sha256"],
        "job": {"index": job_index, "count": num_jobs},
        "num_shards": num_shards,
        "records": len(source.records) + len(source.skipped),
        "orphan_captions": source.orphan_captions,
        "bad_captions": source.bad_captions,
        "shards": [{k: p[k] for k in ("name", "samples", "captions", "bytes", "sha256")} for p in parts],
        "skipped": sorted(skipped, key=skip_order),
        "text": text,
    }
