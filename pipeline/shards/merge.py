"""Finishing a shard set: job manifests, finalize (manifest.json, skipped.txt and the text
files from the jobs' records), and merge (the jobs of a --num-jobs build into one set)."""

import glob
import json
import os
import re
import shutil

from pipeline.atomic import atomic_write, discard, link_or_copy
from pipeline.errors import CapgenError, writing
from pipeline.folder_lock import folder_lock
from pipeline.shards.shardset import (
    FORMAT,
    PARTS,
    job_manifest_path,
    job_manifests,
    part_path,
    read_captions,
    shard_name,
    verify,
    write_manifest,
)
from pipeline.shards.text_files import write_text
from pipeline.sources.coco import skip_order


def write_job_manifest(out, job):
    """This job's manifest in out/.parts/; those of an earlier build with another job count go."""
    num_jobs = job["job"]["count"]
    discard(p for p in job_manifests(out) if not p.endswith(f"-of-{num_jobs:04d}.json"))
    path = job_manifest_path(out, job["job"]["index"], num_jobs)
    with writing(path), atomic_write(path, "w") as f:
        json.dump(job, f, indent=1)


def finalize(out, jobs, captions_by_id=None):
    """Join job manifests into manifest.json + skipped.txt + vocab.json + tokens.npz."""
    jobs = sorted(jobs, key=lambda j: j["job"]["index"])
    first = jobs[0]
    _remove_stale(out, first["fingerprint"]["name"], first["num_shards"])
    shards = sorted((s for j in jobs for s in j["shards"]), key=lambda s: s["name"])
    skipped = sorted((s for j in jobs for s in j["skipped"]), key=skip_order)
    reasons = {}
    for s in skipped:
        reasons[s[2]] = reasons.get(s[2], 0) + 1
    skipped_txt = os.path.join(out, "skipped.txt")
    with writing(skipped_txt), atomic_write(skipped_txt, "w") as f:
        f.writelines(f"{image_id}\t{path}\t{reason}\n" for image_id, path, reason in skipped)
    if not any(s["samples"] for s in shards):
        raise CapgenError(
            f"{out}: none of the {len(skipped)} images could be used "
            f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}; see {skipped_txt})"
        )
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
            "bad_captions": first.get("bad_captions", 0),  # job manifests from before it was counted lack it
        },
        "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shards],
    }
    text = first["text"]
    if captions_by_id is None:
        captions_by_id = read_captions(out, [s["name"] for s in shards])
    manifest["text"] = write_text(
        out, captions_by_id, text["preset"], text["min_freq"], text["captions_per_image"], text["vocab_from"]
    )
    write_manifest(out, manifest)
    return manifest


def _remove_stale(out, name, num_shards):
    """Shards of an earlier build of this set beyond this build's count, and temp files."""
    pattern = re.compile(re.escape(name) + r"-(\d{6})\.(tar|idx)")
    for path in glob.glob(os.path.join(glob.escape(out), name + "-*")):
        m = pattern.fullmatch(os.path.basename(path))
        if m and int(m.group(1)) >= num_shards:
            discard([path, part_path(out, os.path.basename(path))])
    discard(glob.glob(os.path.join(glob.escape(out), "*.tmp")))


def merge(dirs, out=None):
    """Join the job manifests found in dirs (their .parts/) into one shard set in out
    (default: the only dir). Shards from other folders are hard-linked or copied."""
    dirs = [os.fspath(d) for d in dirs]
    out = os.fspath(out) if out else None
    if out is None:
        if len(set(map(os.path.abspath, dirs))) != 1:
            raise CapgenError(f"{dirs[0]}: merging several folders needs --out")
        out = dirs[0]
    jobs = _read_jobs(dirs)
    _check_jobs(jobs, dirs[0], out)
    with folder_lock(out):
        with writing(os.path.join(out, PARTS)):
            os.makedirs(os.path.join(out, PARTS), exist_ok=True)
        borrowed_vocab = bool(next(iter(jobs.values()))["text"]["vocab_from"])
        for job in jobs.values():
            _gather(job, out, borrowed_vocab)
        manifest = finalize(out, [{k: v for k, v in j.items() if k != "_dir"} for j in jobs.values()])
        problems = verify(out)
    if problems:
        raise CapgenError(problems[0])
    return manifest


def _read_jobs(dirs):
    """job index -> job manifest (with the folder it came from as "_dir")."""
    jobs = {}
    for d in dirs:
        found = job_manifests(d)
        if not found:
            raise CapgenError(f"{d}: no job manifests in {PARTS}/ (not a shards build folder?)")
        for path in found:
            try:
                with open(path) as f:
                    job = json.load(f)
                index = job["job"]["index"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise CapgenError(f"{path}: not a readable job manifest ({err})") from None
            job["_dir"] = d
            if index in jobs and os.path.abspath(jobs[index]["_dir"]) != os.path.abspath(d):
                raise CapgenError(f"{path}: job {index} also in {jobs[index]['_dir']}")
            jobs[index] = job
    return jobs


def _check_jobs(jobs, first_dir, out):
    """Every job of one build is there, and together they hold every shard."""
    first = next(iter(jobs.values()))
    count = first["job"]["count"]
    for index, job in jobs.items():
        if job["job"]["count"] != count or job["fingerprint"] != first["fingerprint"]:
            raise CapgenError(
                f"{job_manifest_path(job['_dir'], index, job['job']['count'])}: "
                "built with other options than job "
                f"{first['job']['index']} (see its fingerprint)"
            )
    missing = sorted(set(range(count)) - set(jobs))
    if missing:
        raise CapgenError(f"{first_dir}: job manifests missing for job(s) {', '.join(map(str, missing))} of {count}")
    names = sorted(s["name"] for j in jobs.values() for s in j["shards"])
    expected = [shard_name(first["fingerprint"]["name"], k) for k in range(first["num_shards"])]
    if names != expected:
        raise CapgenError(f"{out}: jobs hold {len(names)} shards, expected {len(expected)}")


def _gather(job, out, borrowed_vocab):
    """A job's shards (and index files), its manifest and a borrowed vocabulary into out."""
    for s in job["shards"]:
        _bring(job["_dir"], out, s["name"])
    if os.path.abspath(job["_dir"]) != os.path.abspath(out):
        index, count = job["job"]["index"], job["job"]["count"]
        with writing(job_manifest_path(out, index, count)):
            shutil.copy2(job_manifest_path(job["_dir"], index, count), job_manifest_path(out, index, count))
        if borrowed_vocab:
            _bring(job["_dir"], out, "vocab.json")


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
        with writing(dst):
            link_or_copy(src, dst)
