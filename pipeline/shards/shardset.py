"""A shard set folder: where its files lie, and reading and checking it.

    NAME-000000.tar ...   WebDataset shards: one sample per image, key = the COCO image id,
                          components `jpg` and `json`
    NAME-000000.idx ...   DALI index files (pipeline/shards/wds_index.py)
    manifest.json         format, build arguments, counts, and name, samples, bytes and
                          sha256 of every shard
    skipped.txt           image id (images[K]: an entry without an integer one), path and
                          reason of every image left out
    vocab.json, tokens.npz  the vocabulary and the token table (pipeline/shards/text_files.py)
    .parts/               the build's resume records (one per shard) and job manifests

pipeline/shards/build.py builds a set, pipeline/shards/merge.py joins the jobs of a split build.
"""

import glob
import hashlib
import json
import os
import tarfile

from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError, writing
from pipeline.text import TokenTable, Vocabulary

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
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("shards"), list)
    ):
        raise CapgenError(f"{path}: not a {FORMAT} manifest")
    return manifest


def write_manifest(out, manifest):
    path = os.path.join(out, "manifest.json")
    with writing(path), atomic_write(path, "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")


def shard_paths(shard_dir):
    """The shards of a set, sorted: those its manifest names, else every *.tar."""
    if os.path.isfile(os.path.join(shard_dir, "manifest.json")):
        return [
            os.path.join(shard_dir, s["name"])
            for s in sorted(read_manifest(shard_dir)["shards"], key=lambda s: s["name"])
        ]
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(shard_dir)), "*.tar")))


def sample_keys(path):
    """The sample keys of a tar in order, in webdataset's sense (name up to the first dot)."""
    keys = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
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
    """Problems found, one line each naming the file; empty when the set is intact:
    every shard against its manifest entry, and the vocabulary and token table."""
    manifest = read_manifest(shard_dir)
    bad_entry = next((k for k, s in enumerate(manifest["shards"]) if not _good_entry(s)), None)
    if bad_entry is not None:
        return [
            f"{os.path.join(shard_dir, 'manifest.json')}: shards[{bad_entry}] is not a shard entry "
            "(name, samples, bytes, sha256)"
        ]
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
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    if total != counts.get("images"):
        problems.append(
            f"{os.path.join(shard_dir, 'manifest.json')}: shards hold {total} samples, "
            f"counts.images says {counts.get('images')}"
        )
    # The token table's ids are checked against the samples only when the shards are sound.
    return problems + check_text(shard_dir, manifest, None if problems else sorted(int(k) for k in keys))


def _good_entry(s):
    return (
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and os.path.basename(s["name"]) == s["name"]
        and isinstance(s.get("sha256"), str)
        and all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("samples", "bytes"))
    )


def check_text(shard_dir, manifest, sample_ids=None):
    """Problems of vocab.json and tokens.npz: readable, a capgen vocabulary and token table
    that fit each other (and the manifest), with one row per sample id when given."""
    vocab_path, tokens_path = os.path.join(shard_dir, "vocab.json"), os.path.join(shard_dir, "tokens.npz")
    try:
        vocab = Vocabulary.load(vocab_path)
        table = TokenTable.load(tokens_path)
    except CapgenError as err:
        return [f"{err} (run capgen vocab {shard_dir})"]
    recorded = manifest.get("text", {}).get("vocab_size") if isinstance(manifest.get("text"), dict) else None
    if recorded is not None and recorded != len(vocab):
        return [f"{vocab_path}: {len(vocab)} words, manifest.json says {recorded}"]
    n = len(table.image_ids)
    if table.tokens.ndim != 3 or table.tokens.shape[0] != n or table.lengths.shape != table.tokens.shape[:2]:
        return [
            f"{tokens_path}: arrays of shapes {table.image_ids.shape}, {table.tokens.shape}, "
            f"{table.lengths.shape} do not fit together"
        ]
    if table.tokens.shape[2] != vocab.length:
        return [f"{tokens_path}: captions of {table.tokens.shape[2]} tokens, {vocab_path} says {vocab.length}"]
    if table.tokens.size and not 0 <= int(table.tokens.min()) <= int(table.tokens.max()) < len(vocab):
        return [
            f"{tokens_path}: token ids from {int(table.tokens.min())} to {int(table.tokens.max())}, "
            f"outside the {len(vocab)} words of {vocab_path}"
        ]
    if sample_ids is not None and table.image_ids.tolist() != sample_ids:
        return [
            f"{tokens_path}: image ids differ from the shards' samples ({n} rows, {len(sample_ids)} samples; "
            f"run capgen vocab {shard_dir})"
        ]
    return []


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
