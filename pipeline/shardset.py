"""A shard set folder: where its files lie, and reading and checking it.

    NAME-000000.tar ...   WebDataset shards: one sample per image, key = the COCO image id,
                          components `jpg` and `json`
    NAME-000000.idx ...   DALI index files (pipeline/wds_index.py)
    manifest.json         format, build arguments, counts, and name, samples, bytes and
                          sha256 of every shard
    skipped.txt           image id, path and reason of every image left out
    vocab.json, tokens.npz  the vocabulary and the token table (pipeline/text_files.py)
    .parts/               the build's resume records (one per shard) and job manifests

pipeline/shards.py builds a set, pipeline/merge.py joins the jobs of a split build.
"""
import glob
import hashlib
import json
import os
import tarfile

import numpy as np

from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError

FORMAT = "capgen-shards/1"
PARTS = ".parts"


def shard_name(name, k):
    return f"{name}-{k:06d}.tar"


def part_path(out, shard):
    """The resume record of one shard."""
    return os.path.join(out, PARTS, os.path.splitext(shard)[0] + ".json")


def job_manifest_path(out, job_index, num_jobs):
    return os.path.join(out, PARTS, f"job-{job_index:04d}-of-{num_jobs:04d}.json")


def job_manifests(out):
    """The job manifests in a folder, sorted."""
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(out)), PARTS, "job-*-of-*.json")))


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(shard_dir):
    path = os.path.join(shard_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        if job_manifests(shard_dir):
            raise CapgenError(f"{path}: not found (a multi-job build: run capgen shards merge)") from None
        raise CapgenError(f"{path}: not found (not a shard set folder?)") from None
    except (OSError, ValueError) as err:
        raise CapgenError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "shards" not in manifest:
        raise CapgenError(f"{path}: not a {FORMAT} manifest")
    return manifest


def write_manifest(out, manifest):
    with atomic_write(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")


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


def read_jpegs(shard_dir, image_ids):
    """image id -> the sample's JPEG bytes, for those of `image_ids` in the set (read in shard order)."""
    wanted, found = set(int(i) for i in image_ids), {}
    for path in shard_paths(shard_dir):
        if len(found) == len(wanted):
            break
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    key, _, ext = member.name.rpartition("/")[2].partition(".")
                    if member.isreg() and ext == "jpg" and key.isdigit() and int(key) in wanted:
                        found[int(key)] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as err:
            raise CapgenError(f"{path}: cannot read images ({err})") from None
    return found


def verify(shard_dir):
    """Problems found, one line each naming the shard; empty when the set is intact."""
    manifest = read_manifest(shard_dir)
    problems, keys = [], []
    for s in manifest["shards"]:
        found, problem = _check_shard(os.path.join(shard_dir, s["name"]), s)
        keys += found
        if problem:
            problems.append(problem)
    listed = {s["name"] for s in manifest["shards"]}
    for path in sorted(glob.glob(os.path.join(glob.escape(os.fspath(shard_dir)), "*.tar"))):
        if os.path.basename(path) not in listed:
            problems.append(f"{path}: shard not in manifest.json")
    total = sum(s["samples"] for s in manifest["shards"])
    if total != manifest.get("counts", {}).get("images"):
        problems.append(f"{shard_dir}/manifest.json: shards hold {total} samples, counts.images says "
                        f"{manifest.get('counts', {}).get('images')}")
    tokens = os.path.join(shard_dir, "tokens.npz")
    if not problems and os.path.isfile(tokens):
        with np.load(tokens) as z:
            table_ids = z["image_ids"].tolist()
        if table_ids != sorted(int(k) for k in keys):
            problems.append(f"{tokens}: image ids differ from the shards' samples (run capgen vocab {shard_dir})")
    return problems


def _check_shard(path, listed):
    """(sample keys, problem or None) of one shard against its manifest entry."""
    if not os.path.isfile(path):
        return [], f"{path}: missing"
    size = os.path.getsize(path)
    if size != listed["bytes"]:
        return [], f"{path}: size {size} bytes, manifest says {listed['bytes']}"
    digest = file_sha256(path)
    if digest != listed["sha256"]:
        return [], f"{path}: sha256 {digest[:16]}..., manifest says {listed['sha256'][:16]}..."
    try:
        keys = sample_keys(path)
    except (tarfile.TarError, OSError) as err:
        return [], f"{path}: not a readable tar ({err})"
    if len(keys) != listed["samples"]:
        return keys, f"{path}: {len(keys)} samples, manifest says {listed['samples']}"
    return keys, None
