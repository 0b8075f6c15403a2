"""The shard builder: contract, defects, determinism, resume, multi-job, verify, CLI."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from pipeline.errors import CapgenError
from pipeline.shards import build as sh
from pipeline.shards import wds_index
from pipeline.shards.merge import merge
from pipeline.shards.shardset import read_manifest, shard_paths, verify
from pipeline.shards.task import MTIME
from pipeline.shards.text_files import rebuild_text
from pipeline.sources.coco import read_coco, read_karpathy
from pipeline.text import TokenTable, Vocabulary

CAPGEN = [sys.executable, "-c", "from tools.cli.main import main; main()"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "a man dog cat red blue ball on the grass runs sits near with small big".split()


def picture(i, w=160, h=120):
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * (i + 3)) % 256, (y * (2 * i + 1)) % 256, (x + y + 40 * i) % 256], -1)
    return Image.fromarray(a.astype(np.uint8))


def jpeg(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def defects():
    """file name -> bytes (None: no file) for each defect kind, and the expected outcome."""
    base = jpeg(picture(99))
    rgba = picture(98).convert("RGBA")
    rgba.putalpha(128)
    png = io.BytesIO()
    rgba.save(png, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 8
    return {
        "gray.jpg": (jpeg(picture(97).convert("L")), "ok"),
        "cmyk.jpg": (jpeg(picture(96).convert("CMYK")), "ok"),
        "rgba_png.jpg": (png.getvalue(), "ok"),
        "rotated.jpg": (jpeg(picture(95, 160, 120), exif=exif.tobytes()), "ok"),
        "truncated.jpg": (base[: len(base) // 2], "truncated"),
        "corrupt.jpg": (b"<html>404 not found</html>", "corrupt"),
        "missing.jpg": (None, "missing"),
        "nocaps.jpg": (jpeg(picture(94)), "no_captions"),
    }


def make_coco(root, n=12, split="train2014", with_defects=True, seed=0):
    """A tiny COCO 2014 layout: root/annotations/captions_SPLIT.json, root/SPLIT/*.jpg."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    files = {f"COCO_{split}_{i:012d}.jpg": (jpeg(picture(i, 160 + 8 * (i % 3), 120)), "ok") for i in range(n)}
    if with_defects:
        files.update(defects())
    images, anns = [], []
    ids = rng.choice(100000, size=len(files), replace=False) + 1
    for image_id, (name, (data, outcome)) in zip(ids.tolist(), files.items()):
        images.append({"id": image_id, "file_name": name, "width": 160, "height": 120})
        if data is not None:
            with open(os.path.join(root, split, name), "wb") as f:
                f.write(data)
        if outcome != "no_captions":
            for _ in range(int(rng.integers(4, 7))):
                words = rng.choice(WORDS, size=int(rng.integers(3, 9)))
                anns.append({"id": len(anns) + 1, "image_id": image_id, "caption": " ".join(words).capitalize() + "."})
    with open(os.path.join(root, "annotations", f"captions_{split}.json"), "w") as f:
        json.dump({"images": images[::-1], "annotations": anns}, f)
    return {name: (image_id, outcome) for image_id, (name, (_, outcome)) in zip(ids.tolist(), files.items())}


def build(root, out, split="train2014", workers=1, shard_size=4, **kw):
    opts = sh.Options(
        name=kw.pop("name", "set"),
        shard_size=shard_size,
        image_size=kw.pop("image_size", 256),
        resize_mode=kw.pop("resize_mode", "stretch"),
    )
    kw.setdefault("min_freq", 1)
    return sh.build(read_coco(str(root), split), str(out), opts, {"test": True}, workers=workers, progress=False, **kw)


def hashes(out):
    return {s["name"]: s["sha256"] for s in read_manifest(str(out))["shards"]}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return root, make_coco(str(root))


@pytest.fixture(scope="module")
def built(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "set"
    build(coco[0], out)
    return out


def test_round_trip_tarfile_and_webdataset(coco, built):
    import webdataset as wds

    files = coco[1]
    good = sorted(i for i, outcome in files.values() if outcome == "ok")
    paths = shard_paths(str(built))
    # 19 images with captions, 4 per shard in image-id order; failed images leave holes
    with_captions = sorted((i, outcome) for i, outcome in files.values() if outcome != "no_captions")
    layout = [sum(o == "ok" for _, o in with_captions[k : k + 4]) for k in range(0, 19, 4)]
    assert [os.path.basename(p) for p in paths] == [f"set-{k:06d}.tar" for k in range(5)]
    assert [s["samples"] for s in read_manifest(str(built))["shards"]] == layout
    keys = []
    for path in paths:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            keys_here = dict.fromkeys(n.split(".")[0] for n in names)
            assert names == [f"{k}.{ext}" for k in keys_here for ext in ("jpg", "json")]
            assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(MTIME, 0, 0, "", 0o644)}
            for m in members[::2]:
                image = simplejpeg.decode_jpeg(tar.extractfile(m).read())
                assert image.shape == (256, 256, 3)
                meta = json.loads(tar.extractfile(m.name[:-3] + "json").read())
                assert set(meta) == {"image_id", "file_name", "split", "width", "height", "captions"}
                assert str(meta["image_id"]) == m.name[:-4] and meta["split"] == "train2014"
                keys.append(meta["image_id"])
    assert keys == good  # image-id order, shard after shard
    samples = list(wds.WebDataset(paths, shardshuffle=False))
    assert [int(s["__key__"]) for s in samples] == good
    assert all(set(s) >= {"jpg", "json"} for s in samples)
    table = TokenTable.load(str(built / "tokens.npz"))
    assert table.image_ids.tolist() == good and table.tokens.shape[1] == 5
    assert len(Vocabulary.load(str(built / "vocab.json"))) > 4
    for path, n in zip(paths, layout):  # DALI index files beside the shards
        assert open(path[:-4] + ".idx").readline().split() == ["v1.2", str(n)]


def test_every_defect_counted_once(coco, built):
    files = coco[1]
    m = read_manifest(str(built))
    assert m["counts"]["images"] == 12 + 4  # 12 plain + gray, cmyk, rgba png, rotated
    assert m["counts"]["skipped"] == {"corrupt": 1, "missing": 1, "no_captions": 1, "truncated": 1}
    assert m["counts"]["records"] == 20
    lines = open(built / "skipped.txt").read().splitlines()
    want = sorted((i, name, outcome) for name, (i, outcome) in files.items() if outcome not in ("ok",))
    got = [tuple(line.split("\t")) for line in lines]
    assert [(int(i), os.path.basename(p), r) for i, p, r in got] == want
    by_id = {}
    for path in shard_paths(str(built)):
        with tarfile.open(path) as tar:
            for m_ in tar:
                if m_.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m_).read())
                    by_id[meta["file_name"]] = meta
                    image = simplejpeg.decode_jpeg(tar.extractfile(m_.name[:-4] + "jpg").read())
                    assert image.shape == (256, 256, 3)
    assert (by_id["rotated.jpg"]["width"], by_id["rotated.jpg"]["height"]) == (120, 160)  # displayed size
    assert (by_id["gray.jpg"]["width"], by_id["gray.jpg"]["height"]) == (160, 120)
    assert verify(str(built)) == []


def test_worker_count_and_rerun_give_same_bytes(coco, built, tmp_path):
    out = tmp_path / "two"
    r = build(coco[0], out, workers=2)
    assert r["built"] == 5
    assert hashes(out) == hashes(built)
    r = build(coco[0], out, workers=2)  # complete: every shard kept after its hash check
    assert (r["built"], r["reused"]) == (0, 5)
    assert hashes(out) == hashes(built)


def test_index_from_the_writer_equals_the_index_read_from_the_tar(coco, tmp_path, monkeypatch):
    out = tmp_path / "set"
    with monkeypatch.context() as m:  # a shard just written is indexed without reading it back
        m.setattr(wds_index, "read_members", None)
        build(coco[0], out)
    for path in shard_paths(str(out)):
        read = wds_index.write_index(path, str(tmp_path / "read.idx"))
        assert open(wds_index.index_path(path), "rb").read() == open(read, "rb").read()
    stale = out / "set-000001.idx"
    want = stale.read_bytes()
    stale.write_bytes(b"v1.1 0\n")  # a reused shard's stale index is rewritten from the tar
    assert build(coco[0], out)["reused"] == 5 and stale.read_bytes() == want


def test_damaged_shard_is_rebuilt_identically(coco, built, tmp_path):
    out = tmp_path / "set"
    build(coco[0], out)
    target = out / "set-000001.tar"
    data = bytearray(target.read_bytes())
    data[700] ^= 0xFF
    target.write_bytes(bytes(data))
    os.remove(out / ".parts" / "set-000002.json")  # killed between the rename and the record
    (out / "set-000003.tar.tmp").write_bytes(b"half a shard")  # killed mid-write
    r = build(coco[0], out)
    assert (r["built"], r["reused"]) == (2, 3)
    assert hashes(out) == hashes(built)
    assert verify(str(out)) == []


def test_kill_and_resume_same_hashes(tmp_path):
    root = tmp_path / "coco"
    make_coco(str(root), n=40, with_defects=False)
    ref = tmp_path / "ref"
    build(root, ref, shard_size=2, min_freq=5)
    out = tmp_path / "out"
    cmd = CAPGEN + [
        "shards",
        "build",
        "--coco-root",
        str(root),
        "--split",
        "train2014",
        "--out",
        str(out),
        "--name",
        "set",
        "--shard-size",
        "2",
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / "set-000000.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kept" in done.stdout
    assert hashes(out) == hashes(ref)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(hashes(ref))
    assert not list(out.glob("*.tmp"))


def test_multi_job_merge_equals_single_build(coco, built, tmp_path):
    # three jobs on three machines, merged into a new folder
    dirs = [tmp_path / f"job{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        r = build(coco[0], d, num_jobs=3, job_index=i)
        assert not (d / "manifest.json").exists()
        assert sorted(s["name"] for s in r["job"]["shards"]) == [f"set-{k:06d}.tar" for k in range(5) if k % 3 == i]
    with pytest.raises(CapgenError, match="missing for job"):
        merge([str(d) for d in dirs[:2]], str(tmp_path / "partial"))
    merged = tmp_path / "merged"
    m = merge([str(d) for d in dirs], str(merged))
    single = read_manifest(str(built))
    assert m["shards"] == single["shards"] and m["counts"] == single["counts"]
    assert (merged / "skipped.txt").read_bytes() == (built / "skipped.txt").read_bytes()
    assert (merged / "vocab.json").read_bytes() == (built / "vocab.json").read_bytes()
    a, b = TokenTable.load(str(merged / "tokens.npz")), TokenTable.load(str(built / "tokens.npz"))
    assert np.array_equal(a.image_ids, b.image_ids) and np.array_equal(a.tokens, b.tokens)
    # two jobs sharing one folder, merged in place
    shared = tmp_path / "shared"
    for i in range(2):
        build(coco[0], shared, num_jobs=2, job_index=i)
    merge([str(shared)])
    assert hashes(shared) == hashes(built)


def test_verify_names_the_bad_shard(coco, built, tmp_path):
    out = tmp_path / "set"
    build(coco[0], out)
    assert verify(str(out)) == []
    target = out / "set-000002.tar"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    problems = verify(str(out))
    assert len(problems) == 1 and "set-000002.tar" in problems[0] and "sha256" in problems[0]
    run = subprocess.run(CAPGEN + ["shards", "verify", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "set-000002.tar" in run.stderr
    os.remove(out / "set-000000.tar")
    assert any("set-000000.tar: missing" in p for p in verify(str(out)))


def test_vocab_rebuilt_from_shards_and_reused_for_val(coco, built, tmp_path):
    out = tmp_path / "set"
    build(coco[0], out, preset="seed", min_freq=1)
    seed_vocab = Vocabulary.load(str(out / "vocab.json"))
    assert "a" not in seed_vocab.stoi
    m = rebuild_text(str(out), preset="coco")
    coco_vocab = Vocabulary.load(str(out / "vocab.json"))
    assert "a" in coco_vocab.stoi and m["text"]["preset"] == "coco" and m["text"]["min_freq"] == 1
    assert read_manifest(str(out))["text"]["vocab_size"] == len(coco_vocab)
    # a val set takes the training vocabulary
    val_root = tmp_path / "val"
    make_coco(str(val_root), n=5, split="val2014", with_defects=False, seed=1)
    val = tmp_path / "val-set"
    build(val_root, val, split="val2014", vocab=str(built / "vocab.json"))
    assert (val / "vocab.json").read_text() == (built / "vocab.json").read_text()
    assert len(TokenTable.load(str(val / "tokens.npz"))) == 5
    m = rebuild_text(str(val), captions_per_image=3)  # keeps the borrowed vocabulary
    assert (val / "vocab.json").read_text() == (built / "vocab.json").read_text()
    assert m["text"]["vocab_from"] == str(built / "vocab.json")
    assert TokenTable.load(str(val / "tokens.npz")).tokens.shape[1] == 3


def test_karpathy_split(coco, tmp_path):
    root, files = coco
    listing = [
        {
            "filepath": "train2014",
            "filename": name,
            "cocoid": i,
            "split": "test" if k % 2 else "restval",
            "sentences": [{"raw": "a dog on grass"}] if outcome != "no_captions" else [],
        }
        for k, (name, (i, outcome)) in enumerate(sorted(files.items()))
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": listing}))
    src = read_karpathy(str(path), "test", image_root=str(root))
    out = tmp_path / "k"
    r = sh.build(
        src, str(out), sh.Options(name="karpathy-test", shard_size=100), {}, workers=1, min_freq=1, progress=False
    )
    tests = [(i, outcome) for k, (name, (i, outcome)) in enumerate(sorted(files.items())) if k % 2]
    m = r["manifest"]
    assert m["counts"]["images"] == sum(o == "ok" for _, o in tests)
    assert sum(m["counts"]["skipped"].values()) == sum(o != "ok" for _, o in tests)


def test_cli_help_and_bad_input():
    for args in (
        ["shards", "--help"],
        ["shards", "build", "--help"],
        ["shards", "verify", "--help"],
        ["shards", "merge", "--help"],
        ["vocab", "--help"],
        ["bench", "shards", "--help"],
    ):
        run = subprocess.run(CAPGEN + args, cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0 and "Usage" in run.stdout, args
    run = subprocess.run(
        CAPGEN
        + ["shards", "build", "--coco-root", "/nonexistent/coco", "--split", "train2014", "--out", "/nonexistent/out"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "capgen: error: /nonexistent/coco/annotations/captions_train2014.json: file not found"
    ]
    run = subprocess.run(CAPGEN + ["shards", "verify", "/nonexistent/set"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.startswith("capgen: error: /nonexistent/set/manifest.json: not found")


def test_rebuild_with_other_options_replaces_the_old_set(coco, built, tmp_path):
    out = tmp_path / "set"
    build(coco[0], out, shard_size=2)
    assert len(hashes(out)) == 10
    build(coco[0], out)  # back to 4 per shard: 5 shards, the other 5 files go
    assert hashes(out) == hashes(built)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(hashes(built))
    assert verify(str(out)) == []


def test_moved_images_are_rebuilt_not_trusted(coco, built, tmp_path):
    out = tmp_path / "set"
    build(coco[0], out)
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(coco[0], moved)
    r = build(moved, out)  # same annotations, other image paths: every shard is written again
    assert (r["built"], r["reused"]) == (5, 0)
    assert hashes(out) == hashes(built)


def test_bench_smoke():
    from tools.bench.shards import bench_shards, format_report

    r = bench_shards(images=12, rounds=1, workers=[1, 2])
    assert r["naive_images_per_s"] > 0 and [b["workers"] for b in r["build"]] == [1, 2]
    assert "naive PIL loop" in format_report(r)


def test_malformed_annotations_are_counted_in_the_manifest(coco, tmp_path):
    root = tmp_path / "coco"
    import shutil

    shutil.copytree(coco[0], root)
    path = root / "annotations" / "captions_train2014.json"
    data = json.loads(path.read_text())
    by_name = {img["file_name"]: img for img in data["images"]}
    first, second = by_name["COCO_train2014_000000000000.jpg"], by_name["COCO_train2014_000000000001.jpg"]
    data["images"].append(dict(second, file_name=first["file_name"]))  # second's id twice
    data["images"].append({"id": 999999, "width": 1, "height": 1})  # no file name
    data["annotations"][:3] = [dict(a, caption=c) for a, c in zip(data["annotations"][:3], (None, 42, ""))]
    path.write_text(json.dumps(data))
    m = build(root, tmp_path / "set")["manifest"]
    assert m["counts"]["skipped"] == {
        "corrupt": 1,
        "duplicate_id": 2,
        "missing": 1,
        "missing_file_name": 1,
        "no_captions": 1,
        "truncated": 1,
    }
    assert m["counts"]["bad_captions"] == 3 and m["counts"]["records"] == 22
    assert m["counts"]["records"] == m["counts"]["images"] + sum(m["counts"]["skipped"].values())
    lines = (tmp_path / "set" / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[2] for line in lines if line.startswith(f"{second['id']}\t")) == [
        "duplicate_id",
        "duplicate_id",
    ]
    assert f"{second['id']}" not in {str(i) for i in TokenTable.load(str(tmp_path / "set" / "tokens.npz")).image_ids}
    assert verify(str(tmp_path / "set")) == []


def test_an_empty_annotation_set_is_an_error_before_any_shard(tmp_path):
    root = tmp_path / "coco"
    make_coco(str(root), n=3, with_defects=False)
    path = root / "annotations" / "captions_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"] = [dict(a, caption=None) for a in data["annotations"]]
    path.write_text(json.dumps(data))
    with pytest.raises(
        CapgenError,
        match=f"^{path}: no images with captions to build "
        r"\(3 images listed, 0 left out, \d+ bad captions\)$",
    ):
        build(root, tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_a_set_whose_every_image_fails_is_an_error(tmp_path):
    root = tmp_path / "coco"
    make_coco(str(root), n=3, with_defects=False)
    for f in (root / "train2014").iterdir():
        f.write_bytes(b"not a jpeg")
    with pytest.raises(CapgenError, match=r"set: none of the 3 images could be used \(corrupt 3; see .*skipped.txt\)"):
        build(root, tmp_path / "set")
    assert not (tmp_path / "set" / "manifest.json").exists()


def test_verify_checks_the_vocabulary_and_the_token_table(built, tmp_path):
    import shutil

    vocab = Vocabulary.load(str(built / "vocab.json"))
    table = TokenTable.load(str(built / "tokens.npz"))

    def damaged(name, action):
        out = tmp_path / name
        shutil.copytree(built, out)
        action(out)
        return out, verify(str(out))

    def save_table(out, image_ids, tokens):
        TokenTable(image_ids, tokens, (tokens != 0).sum(axis=2)).save(str(out / "tokens.npz"))

    too_big = table.tokens.copy()
    too_big[0, 0, 1] = len(vocab)
    cases = {
        "no_tokens": (lambda out: os.remove(out / "tokens.npz"), "tokens.npz: token table not found"),
        "garbage_tokens": (
            lambda out: (out / "tokens.npz").write_bytes(b"PK\x03\x04junk"),
            "tokens.npz: not a capgen token table",
        ),
        "no_vocab": (lambda out: os.remove(out / "vocab.json"), "vocab.json: vocabulary file not found"),
        "empty_vocab": (lambda out: (out / "vocab.json").write_text("{}"), "vocab.json: not a capgen vocabulary"),
        "binary_vocab": (
            lambda out: (out / "vocab.json").write_bytes(b"\xff\xfe\x00"),
            "vocab.json: not a capgen vocabulary",
        ),
        "short_vocab": (
            lambda out: Vocabulary(vocab.itos[:-1], vocab.preset, vocab.max_len, vocab.min_freq).save(
                str(out / "vocab.json")
            ),
            f"vocab.json: {len(vocab) - 1} words, manifest.json says {len(vocab)}",
        ),
        "token_out_of_range": (
            lambda out: save_table(out, table.image_ids, too_big),
            f"tokens.npz: token ids from 0 to {len(vocab)}, outside the {len(vocab)} words",
        ),
        "row_missing": (
            lambda out: save_table(out, table.image_ids[1:], table.tokens[1:]),
            "tokens.npz: image ids differ from the shards' samples (15 rows, 16 samples",
        ),
    }
    for name, (action, words) in cases.items():
        out, problems = damaged(name, action)
        assert len(problems) == 1 and problems[0].startswith(str(out)) and words in problems[0], (name, problems)
    run = subprocess.run(
        CAPGEN + ["shards", "verify", str(tmp_path / "no_tokens")], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 1 and run.stderr == (
        f"capgen: error: {tmp_path / 'no_tokens' / 'tokens.npz'}: token "
        f"table not found (run capgen vocab {tmp_path / 'no_tokens'})\n"
    )


def test_a_second_build_into_the_same_folder_is_refused_at_once(coco, built, tmp_path):
    from pipeline.folder_lock import folder_lock

    out = tmp_path / "set"
    cmd = CAPGEN + [
        "shards",
        "build",
        "--coco-root",
        str(coco[0]),
        "--split",
        "train2014",
        "--out",
        str(out),
        "--name",
        "set",
        "--shard-size",
        "4",
        "--min-freq",
        "1",
        "--quiet",
    ]
    with folder_lock(out):  # as a running build holds it
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr == f"capgen: error: {out}: in use by pid {os.getpid()}\n"
    assert os.listdir(out) == [".lock"]
    build(coco[0], out)  # the lock file left behind neither blocks nor counts as a shard
    assert (out / ".lock").exists() and verify(str(out)) == [] and hashes(out) == hashes(built)
    assert [os.path.basename(p) for p in shard_paths(str(out))] == sorted(hashes(built))
    with folder_lock(out / ".parts" / "job-0001-of-0002"):  # a job of a split build locks its own slot
        with pytest.raises(CapgenError, match="job-0001-of-0002: in use by pid"):
            build(coco[0], out, num_jobs=2, job_index=1)
        build(coco[0], out, num_jobs=2, job_index=0)


def _limited(limit):
    """preexec_fn: files larger than limit bytes cannot be written (EFBIG, as a full disk gives ENOSPC)."""

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_the_rerun_completes(coco, built, tmp_path):
    out = tmp_path / "set"
    cmd = CAPGEN + [
        "shards",
        "build",
        "--coco-root",
        str(coco[0]),
        "--split",
        "train2014",
        "--out",
        str(out),
        "--name",
        "set",
        "--shard-size",
        "4",
        "--min-freq",
        "1",
        "--quiet",
        "--workers",
        "2",
        "--captions-per-image",
        "100",
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_limited(4096))
    assert run.returncode == 1
    assert re.fullmatch(rf"capgen: error: {out}/set-00000\d\.tar: cannot write \(File too large\)\n", run.stderr)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    biggest = max(s["bytes"] for s in read_manifest(str(built))["shards"])
    run = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_limited(biggest + 4096)
    )  # the shards fit, the token table does not
    assert run.returncode == 1 and run.stderr == f"capgen: error: {out}/tokens.npz: cannot write (File too large)\n"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name] and not (out / "manifest.json").exists()
    r = build(coco[0], out, captions_per_image=100)
    assert (r["built"], r["reused"]) == (0, 5) and hashes(out) == hashes(built) and verify(str(out)) == []
