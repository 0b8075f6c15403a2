"""Build, verify and merge WebDataset shard sets.

A shard set is a folder: NAME-000000.tar ... (one sample per image, key = the
COCO image id, components `jpg` and `json`), manifest.json, skipped.txt,
vocab.json, tokens.npz and DALI index files NAME-000000.idx.

Records (sorted by image id, those without captions set aside) are cut into
shards before any parallelism: shard k holds records[k*S:(k+1)*S], so the
bytes do not depend on the worker count or on how many jobs share the work.
Each shard is written to a temp file, fsynced and renamed; then a small
record of it (hash, samples, skipped images) lands in .parts/. A rerun keeps
every shard whose hash matches its record, so a killed build resumes and
ends with the same bytes.
"""
import glob
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass

from pipeline import imaging
from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError

FORMAT = "capgen-shards/1"
PARTS = ".parts"
MTIME = 1_400_000_000  # fixed member time (2014-05-13): same input, same bytes


@dataclass
class Options:
    """What decides the bytes of a shard set (and is recorded in its manifest)."""
    name: str
    image_size: int = 256
    resize_mode: str = "stretch"
    quality: int = imaging.QUALITY
    shard_size: int = 1000

    def fingerprint(self, annotation_sha256):
        return {"format": FORMAT, "name": self.name, "image_size": self.image_size,
                "resize_mode": self.resize_mode, "quality": self.quality,
                "shard_size": self.shard_size, "annotation_sha256": annotation_sha256,
                "software": imaging.versions()}


def shard_name(name, k):
    return f"{name}-{k:06d}.tar"


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- one shard

def _member(name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def _record_meta(rec, width, height):
    meta = {"image_id": rec["image_id"], "file_name": rec["file_name"], "split": rec["split"],
            "width": width, "height": height, "captions": rec["captions"]}
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_shard(path, records, opts, progress=None):
    """Write one shard (temp file, fsync, rename); returns its part record."""
    skipped, samples, captions = [], 0, 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for rec in records:
                try:
                    jpg, width, height = imaging.convert(imaging.read(rec["path"]), opts.image_size,
                                                         opts.resize_mode, opts.quality)
                except imaging.BadImage as bad:
                    skipped.append([rec["image_id"], rec["path"], bad.reason])
                else:
                    key = str(rec["image_id"])
                    tar.addfile(*_member(key + ".jpg", jpg))
                    tar.addfile(*_member(key + ".json", _record_meta(rec, width, height)))
                    samples += 1
                    captions += len(rec["captions"])
                if progress is not None:
                    progress(1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # (no directory fsync: a rename lost to a crash only costs a rebuild)
    return {"name": os.path.basename(path), "samples": samples, "captions": captions,
            "bytes": os.path.getsize(path), "sha256": file_sha256(path), "skipped": skipped}


def _part_path(out, shard):
    return os.path.join(out, PARTS, os.path.splitext(shard)[0] + ".json")


def _load_part(out, shard, fingerprint):
    """The part record of a complete shard whose bytes still match it, else None."""
    try:
        with open(_part_path(out, shard)) as f:
            part = json.load(f)
        path = os.path.join(out, shard)
        if (part.get("fingerprint") == fingerprint and os.path.getsize(path) == part["bytes"]
                and file_sha256(path) == part["sha256"]):
            return part
    except (OSError, ValueError, KeyError):
        pass
    return None


def build_task(task):
    """Worker entry: (out, k, records, opts, fingerprint, index) -> part record.
    A shard already complete is kept (after checking its hash), else written."""
    out, k, records, opts, fingerprint, index = task
    shard = shard_name(opts.name, k)
    stem = os.path.splitext(shard)[0]
    _remove(glob.glob(os.path.join(glob.escape(out), stem + ".*tmp"))  # left by a killed build
            + glob.glob(os.path.join(glob.escape(out), PARTS, stem + ".json.*tmp")))
    # Same options, software, records (ids, paths, captions): same bytes. The image
    # files themselves are trusted to be unchanged; delete a shard to rebuild it.
    fingerprint = dict(fingerprint, records_sha256=hashlib.sha256(
        json.dumps(records, sort_keys=True).encode()).hexdigest())
    part = _load_part(out, shard, fingerprint)
    if part is None:
        try:
            part = write_shard(os.path.join(out, shard), records, opts, _progress_tick)
            part["fingerprint"] = fingerprint
            with atomic_write(_part_path(out, shard), "w") as f:
                json.dump(part, f)
        except OSError as err:  # disk full, read-only folder: one line, not a traceback
            raise CapgenError(f"{os.path.join(out, shard)}: cannot write ({err.strerror or err})") from None
        part["reused"] = False
    else:
        _progress_tick(len(records))
        part["reused"] = True
    if index:
        _write_index(os.path.join(out, shard))
    return part


def _remove(paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _write_index(tar_path):
    from pipeline import wds_index

    idx = wds_index.index_path(tar_path)
    if not wds_index.is_current(tar_path, idx):
        wds_index.write_index(tar_path, idx)


# Progress: in a worker process, a shared counter the parent polls; in process, the bar.
_tick = None


def _progress_tick(n):
    if _tick is not None:
        _tick(n)


def _init_worker(counter):
    global _tick
    import signal

    import torch  # one thread per process: the processes are the parallelism

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    torch.set_num_threads(1)

    def tick(n):
        with counter.get_lock():
            counter.value += n
    _tick = tick


# ---------------------------------------------------------------- a build

def plan(records, shard_size):
    """Records with captions in image-id order, cut into shards; and those without."""
    records = sorted(records, key=lambda r: r.image_id)
    keep = [r for r in records if r.captions]
    no_captions = [r for r in records if not r.captions]
    chunks = [keep[i:i + shard_size] for i in range(0, len(keep), shard_size)]
    return chunks, no_captions


def _as_dict(r):
    return {"image_id": int(r.image_id), "file_name": r.file_name, "path": r.path,
            "split": r.split, "captions": list(r.captions)}


def build(source, out, opts, build_args, workers=None, num_jobs=1, job_index=0,
          vocab=None, preset="seed", min_freq=5, captions_per_image=5, index=True, progress=True):
    """Build this job's shards into out; a single job also finalizes the set
    (manifest.json, skipped.txt, vocab.json, tokens.npz). Returns a summary dict."""
    if not 0 <= job_index < num_jobs:
        raise CapgenError(f"{out}: --job-index must be in [0, {num_jobs}), got {job_index}")
    if opts.resize_mode not in imaging.RESIZE_MODES:
        raise CapgenError(f"{out}: unknown resize mode {opts.resize_mode!r}")
    if opts.image_size < 8 or opts.shard_size < 1 or not 1 <= opts.quality <= 100:
        raise CapgenError(f"{out}: need image size >= 8, shard size >= 1, quality in 1..100")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", opts.name):
        raise CapgenError(f"{out}: shard set name {opts.name!r} must be letters, digits, '_', '.', '-'")
    vocab_obj = _load_vocab(vocab) if vocab else None
    start = time.perf_counter()
    try:
        os.makedirs(os.path.join(out, PARTS), exist_ok=True)
    except OSError as err:
        raise CapgenError(f"{out}: cannot create the output folder ({err.strerror})") from None
    annotation_sha256 = file_sha256(source.annotation_path)
    fingerprint = opts.fingerprint(annotation_sha256)
    chunks, no_captions = plan(source.records, opts.shard_size)
    mine = [k for k in range(len(chunks)) if k % num_jobs == job_index]
    tasks = [(out, k, [_as_dict(r) for r in chunks[k]], opts, fingerprint, index) for k in mine]
    total = sum(len(chunks[k]) for k in mine)
    parts = _run(tasks, total, workers or available_cores(), progress)

    job = {
        "format": FORMAT, "fingerprint": fingerprint, "build_args": build_args,
        "annotation": source.annotation_path, "annotation_sha256": annotation_sha256,
        "job": {"index": job_index, "count": num_jobs}, "num_shards": len(chunks),
        "records": len(source.records), "orphan_captions": source.orphan_captions,
        "shards": [{k: p[k] for k in ("name", "samples", "captions", "bytes", "sha256")} for p in parts],
        "skipped": [s for p in parts for s in p["skipped"]]
        + ([[r.image_id, r.path, "no_captions"] for r in no_captions] if job_index == 0 else []),
        "text": {"preset": preset, "min_freq": min_freq, "captions_per_image": captions_per_image,
                 "vocab_from": os.path.abspath(vocab) if vocab else None},
    }
    job["skipped"].sort(key=lambda s: s[0])
    if vocab_obj is not None:
        vocab_obj.save(os.path.join(out, "vocab.json"))
    _remove(p for p in glob.glob(os.path.join(glob.escape(out), PARTS, "job-*-of-*.json"))
            if not p.endswith(f"-of-{num_jobs:04d}.json"))   # an earlier build with another job count
    with atomic_write(job_manifest_path(out, job_index, num_jobs), "w") as f:
        json.dump(job, f, indent=1)
    summary = {"job": job, "elapsed": time.perf_counter() - start,
               "reused": sum(p["reused"] for p in parts), "built": sum(not p["reused"] for p in parts)}
    if num_jobs == 1:
        written = {r.image_id: list(r.captions) for r in source.records if r.captions}
        for s in job["skipped"]:
            written.pop(s[0], None)
        summary["manifest"] = finalize(out, [job], written)
    return summary


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run(tasks, total, workers, progress):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=not progress, smoothing=0.1, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            return _run_here(tasks, bar)
        return _run_pool(tasks, bar, min(workers, len(tasks)))
    finally:
        bar.close()


def _run_here(tasks, bar):
    import torch

    global _tick
    threads, tick = torch.get_num_threads(), _tick
    torch.set_num_threads(1)  # the kernels a worker process runs: the same bytes
    _tick = bar.update
    try:
        return [build_task(task) for task in tasks]
    finally:
        torch.set_num_threads(threads)
        _tick = tick


def _run_pool(tasks, bar, workers):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    import torch  # noqa: F401 -- imported once here, inherited by the forked workers

    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    parts = []
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as pool:
        pending = {pool.submit(build_task, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                parts += [f.result() for f in done]
                bar.update(counter.value - bar.n)
        except BrokenProcessPool:
            raise CapgenError(f"{tasks[0][0]}: a worker process died (out of memory?); "
                              "the same command resumes the build") from None
        except BaseException:  # Ctrl-C: stop now; finished shards are kept for the rerun
            for proc in list(pool._processes.values()):  # no public way before Python 3.14
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return sorted(parts, key=lambda p: p["name"])


def job_manifest_path(out, job_index, num_jobs):
    return os.path.join(out, PARTS, f"job-{job_index:04d}-of-{num_jobs:04d}.json")


# ---------------------------------------------------------------- finishing a set

def finalize(out, jobs, captions_by_id=None):
    """Join job manifests into manifest.json + skipped.txt + vocab.json + tokens.npz."""
    jobs = sorted(jobs, key=lambda j: j["job"]["index"])
    first = jobs[0]
    _remove_stale(out, first["fingerprint"]["name"], first["num_shards"])
    shards = sorted((s for j in jobs for s in j["shards"]), key=lambda s: s["name"])
    skipped = sorted((s for j in jobs for s in j["skipped"]), key=lambda s: s[0])
    reasons = {}
    for s in skipped:
        reasons[s[2]] = reasons.get(s[2], 0) + 1
    with atomic_write(os.path.join(out, "skipped.txt"), "w") as f:
        f.writelines(f"{image_id}\t{path}\t{reason}\n" for image_id, path, reason in skipped)
    fp = first["fingerprint"]
    manifest = {
        "format": FORMAT,
        "name": fp["name"],
        "image_size": fp["image_size"],
        "resize_mode": fp["resize_mode"],
        "quality": fp["quality"],
        "shard_size": fp["shard_size"],
        "build_args": first["build_args"],
        "annotation": first["annotation"],
        "annotation_sha256": first["annotation_sha256"],
        "software": fp["software"],
        "counts": {
            "records": first["records"],
            "images": sum(s["samples"] for s in shards),
            "captions": sum(s["captions"] for s in shards),
            "skipped": dict(sorted(reasons.items())),
            "orphan_captions": first["orphan_captions"],
        },
        "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shards],
    }
    text = first["text"]
    if captions_by_id is None:
        captions_by_id = read_captions(out, [s["name"] for s in shards])
    manifest["text"] = write_text(out, captions_by_id, text["preset"], text["min_freq"],
                                  text["captions_per_image"], text["vocab_from"])
    write_manifest(out, manifest)
    return manifest


def _remove_stale(out, name, num_shards):
    """Shards of an earlier build of this set beyond this build's count, and temp files."""
    pattern = re.compile(re.escape(name) + r"-(\d{6})\.(tar|idx)")
    for path in glob.glob(os.path.join(glob.escape(out), name + "-*")):
        m = pattern.fullmatch(os.path.basename(path))
        if m and int(m.group(1)) >= num_shards:
            _remove([path, _part_path(out, os.path.basename(path))])
    _remove(glob.glob(os.path.join(glob.escape(out), "*.tmp")))


def write_text(out, captions_by_id, preset, min_freq, captions_per_image, vocab_from=None):
    """vocab.json (built from these captions, or the given training vocabulary) and
    tokens.npz over these images; returns the manifest's text section."""
    from pipeline.text import TokenTable, Vocabulary

    ids = sorted(captions_by_id)
    if vocab_from:
        vocab = _load_vocab(vocab_from)
    else:
        vocab = Vocabulary.build((c for i in ids for c in captions_by_id[i]), preset, min_freq)
    vocab.save(os.path.join(out, "vocab.json"))
    TokenTable.build(captions_by_id, vocab, captions_per_image).save(os.path.join(out, "tokens.npz"))
    return {"vocab": "vocab.json", "tokens": "tokens.npz", "vocab_size": len(vocab),
            "preset": vocab.preset, "min_freq": vocab.min_freq, "max_len": vocab.max_len,
            "captions_per_image": captions_per_image, "vocab_from": vocab_from}


def _load_vocab(path):
    from pipeline.text import Vocabulary

    return Vocabulary.load(path)


def write_manifest(out, manifest):
    with atomic_write(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")


def rebuild_text(shard_dir, preset=None, min_freq=None, vocab=None, captions_per_image=None):
    """`capgen vocab`: vocab.json and tokens.npz again from the captions in the shards.
    Options not given keep the set's; a set that borrowed a training vocabulary keeps
    it unless a new vocabulary, preset or min freq is asked for."""
    manifest = read_manifest(shard_dir)
    old = manifest.get("text", {})
    borrowed = old.get("vocab_from") if vocab is None and preset is None and min_freq is None else None
    preset = preset or old.get("preset", "seed")
    min_freq = min_freq if min_freq is not None else old.get("min_freq", 5)
    per_image = captions_per_image or old.get("captions_per_image", 5)
    captions = read_captions(shard_dir)
    source = os.path.join(shard_dir, "vocab.json") if borrowed else os.path.abspath(vocab) if vocab else None
    text = write_text(shard_dir, captions, preset, min_freq, per_image, source)
    manifest["text"] = dict(text, vocab_from=borrowed) if borrowed else text
    write_manifest(shard_dir, manifest)
    return manifest


def read_captions(shard_dir, names=None):
    """image id -> raw captions, from the json components (the images are not read)."""
    paths = [os.path.join(shard_dir, n) for n in names] if names is not None else shard_paths(shard_dir)
    captions = {}
    for path in paths:
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if member.isreg() and member.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(member).read())
                        captions[int(meta["image_id"])] = list(meta["captions"])
        except (tarfile.TarError, OSError, ValueError, KeyError) as err:
            raise CapgenError(f"{path}: cannot read captions ({err})") from None
    return captions


# ---------------------------------------------------------------- reading a set

def read_manifest(shard_dir):
    path = os.path.join(shard_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        if glob.glob(os.path.join(glob.escape(os.fspath(shard_dir)), PARTS, "job-*-of-*.json")):
            raise CapgenError(f"{path}: not found (a multi-job build: run capgen shards merge)") from None
        raise CapgenError(f"{path}: not found (not a shard set folder?)") from None
    except (OSError, ValueError) as err:
        raise CapgenError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "shards" not in manifest:
        raise CapgenError(f"{path}: not a {FORMAT} manifest")
    return manifest


def shard_paths(shard_dir):
    """The shards of a set, sorted: those its manifest names, else every *.tar."""
    if os.path.isfile(os.path.join(shard_dir, "manifest.json")):
        return [os.path.join(shard_dir, s["name"]) for s in sorted(read_manifest(shard_dir)["shards"],
                                                                  key=lambda s: s["name"])]
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(shard_dir)), "*.tar")))


def sample_keys(path):
    """The sample keys of a tar in order, in webdataset's sense (name up to the first dot)."""
    keys = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key = member.name[:len(member.name) - len(base)] + base.split(".", 1)[0]
            if not keys or key != keys[-1]:
                keys.append(key)
    return keys


def verify(shard_dir):
    """Problems found, one line each naming the shard; empty when the set is intact."""
    manifest = read_manifest(shard_dir)
    problems, listed, keys = [], set(), []
    for s in manifest["shards"]:
        name = s["name"]
        listed.add(name)
        path = os.path.join(shard_dir, name)
        if not os.path.isfile(path):
            problems.append(f"{path}: missing")
            continue
        size = os.path.getsize(path)
        if size != s["bytes"]:
            problems.append(f"{path}: size {size} bytes, manifest says {s['bytes']}")
            continue
        digest = file_sha256(path)
        if digest != s["sha256"]:
            problems.append(f"{path}: sha256 {digest[:16]}..., manifest says {s['sha256'][:16]}...")
            continue
        try:
            found = sample_keys(path)
        except (tarfile.TarError, OSError) as err:
            problems.append(f"{path}: not a readable tar ({err})")
            continue
        keys += found
        if len(found) != s["samples"]:
            problems.append(f"{path}: {len(found)} samples, manifest says {s['samples']}")
    for path in sorted(glob.glob(os.path.join(glob.escape(os.fspath(shard_dir)), "*.tar"))):
        if os.path.basename(path) not in listed:
            problems.append(f"{path}: shard not in manifest.json")
    total = sum(s["samples"] for s in manifest["shards"])
    if total != manifest.get("counts", {}).get("images"):
        problems.append(f"{shard_dir}/manifest.json: shards hold {total} samples, counts.images says "
                        f"{manifest.get('counts', {}).get('images')}")
    tokens = os.path.join(shard_dir, "tokens.npz")
    if not problems and os.path.isfile(tokens):
        import numpy as np

        with np.load(tokens) as z:
            table_ids = z["image_ids"].tolist()
        if table_ids != sorted(int(k) for k in keys):
            problems.append(f"{tokens}: image ids differ from the shards' samples (run capgen vocab {shard_dir})")
    return problems


# ---------------------------------------------------------------- multi-job

def merge(dirs, out=None):
    """Join the job manifests found in dirs (their .parts/) into one shard set in out
    (default: the only dir). Shards from other folders are hard-linked or copied."""
    dirs = [os.fspath(d) for d in dirs]
    out = os.fspath(out) if out else None
    if out is None:
        if len(set(map(os.path.abspath, dirs))) != 1:
            raise CapgenError(f"{dirs[0]}: merging several folders needs --out")
        out = dirs[0]
    jobs = {}
    for d in dirs:
        found = sorted(glob.glob(os.path.join(glob.escape(d), PARTS, "job-*-of-*.json")))
        if not found:
            raise CapgenError(f"{d}: no job manifests in {PARTS}/ (not a shards build folder?)")
        for path in found:
            with open(path) as f:
                job = json.load(f)
            job["_dir"] = d
            index = job["job"]["index"]
            if index in jobs and os.path.abspath(jobs[index]["_dir"]) != os.path.abspath(d):
                raise CapgenError(f"{path}: job {index} also in {jobs[index]['_dir']}")
            jobs[index] = job
    first = next(iter(jobs.values()))
    count = first["job"]["count"]
    for index, job in jobs.items():
        if job["job"]["count"] != count or job["fingerprint"] != first["fingerprint"]:
            raise CapgenError(f"{job_manifest_path(job['_dir'], index, job['job']['count'])}: "
                              "built with other options than job "
                              f"{first['job']['index']} (see its fingerprint)")
    missing = sorted(set(range(count)) - set(jobs))
    if missing:
        raise CapgenError(f"{dirs[0]}: job manifests missing for job(s) {', '.join(map(str, missing))} of {count}")
    names = sorted(s["name"] for j in jobs.values() for s in j["shards"])
    expected = [shard_name(first["fingerprint"]["name"], k) for k in range(first["num_shards"])]
    if names != expected:
        raise CapgenError(f"{out}: jobs hold {len(names)} shards, expected {len(expected)}")
    os.makedirs(os.path.join(out, PARTS), exist_ok=True)
    for job in jobs.values():
        for s in job["shards"]:
            _bring(job["_dir"], out, s["name"])
        if os.path.abspath(job["_dir"]) != os.path.abspath(out):
            shutil.copy2(job_manifest_path(job["_dir"], job["job"]["index"], count),
                         job_manifest_path(out, job["job"]["index"], count))
            if first["text"]["vocab_from"]:
                _bring(job["_dir"], out, "vocab.json")
    manifest = finalize(out, [{k: v for k, v in j.items() if k != "_dir"} for j in jobs.values()])
    problems = verify(out)
    if problems:
        raise CapgenError(problems[0])
    return manifest


def _bring(src_dir, out, name):
    """Hard-link (else copy) a file and its DALI index from src_dir into out."""
    for n in (name, os.path.splitext(name)[0] + ".idx") if name.endswith(".tar") else (name,):
        src, dst = os.path.join(src_dir, n), os.path.join(out, n)
        if not os.path.exists(src):
            if n == name:
                raise CapgenError(f"{src}: missing")
            continue
        if os.path.exists(dst) and os.path.samefile(src, dst):
            continue
        tmp = dst + ".tmp"
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
