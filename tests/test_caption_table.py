"""Your own captions (pipeline/sources/caption_table.py): metadata.jsonl, CSV, TSV with their quirks, to shards."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import CapgenError
from pipeline.shards.shardset import read_manifest
from pipeline.sources.caption_table import read_caption_table
from pipeline.text import TokenTable

CAPGEN = [sys.executable, "-c", "from tools.cli.main import main; main()"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_id(name):
    """The documented id: the top 53 bits of the first 8 bytes of sha256(file name)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 11


def write_images(folder, names):
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:48, 0:64]
        a = np.stack([(x * (i + 2)) % 256, (y * (i + 5)) % 256, (x + y * i) % 256], -1).astype(np.uint8)
        Image.fromarray(a).save(path, "JPEG", quality=90)


@pytest.fixture
def jsonl(tmp_path):
    """An imagefolder: metadata.jsonl beside the images, every quirk once."""
    folder = tmp_path / "photos"
    write_images(folder, ["a.jpg", "b.jpg", "sub/c.jpg", "d.jpg", "e.jpg"])  # missing.jpg is not there
    lines = [
        json.dumps({"file_name": "a.jpg", "text": "A dog on the grass. ", "split": "train"}),
        json.dumps({"file_name": "a.jpg", "text": "A dog on the grass. ", "split": "train"}),  # duplicate
        json.dumps({"file_name": "b.jpg", "text": ["a red ball", "", "Ein Ball, café"], "split": "train"}),
        json.dumps({"file_name": "./sub/c.jpg", "text": "a cat", "split": "validation"}),
        json.dumps({"file_name": "d.jpg", "text": "", "split": "train"}),  # no captions left
        json.dumps({"file_name": "missing.jpg", "text": "gone", "split": "train"}),
        json.dumps({"file_name": "e.jpg", "text": "a test image", "split": "test"}),
        json.dumps({"file_name": "e.jpg", "text": "moved?", "split": "train"}),  # split conflict
        json.dumps({"text": "no file"}),
        json.dumps({"file_name": "a.jpg", "text": 7, "split": "train"}),  # not a string
        json.dumps({"file_name": "a.jpg", "text": "x", "split": "holdout"}),
        "{not json",
        "",
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"file_name": "a.jpg", "text": "caf\xe9 latin-1"}\n'
    (folder / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + data)
    return folder


def test_jsonl_records_and_quirks(jsonl):
    src = read_caption_table(jsonl / "metadata.jsonl", "train")
    by_name = {r.file_name: r for r in src.records}
    assert sorted(by_name) == ["a.jpg", "b.jpg", "d.jpg", "missing.jpg"]
    assert by_name["a.jpg"].captions == ["A dog on the grass. "]
    assert by_name["b.jpg"].captions == ["a red ball", "Ein Ball, café"]
    assert by_name["d.jpg"].captions == []
    assert by_name["b.jpg"].path == str(jsonl / "b.jpg") and by_name["b.jpg"].split == "train"
    assert [r.image_id for r in src.records] == sorted(expected_id(n) for n in by_name)
    assert all(by_name[n].image_id == expected_id(n) < 2**53 for n in by_name)
    assert src.dropped == {
        "bad_caption": 1,
        "bad_json": 1,
        "duplicate_caption": 1,
        "empty_caption": 2,
        "no_file_name": 1,
        "split_conflict": 1,
        "undecodable": 1,
        "unknown_split": 1,
    }
    assert src.rows == 11 and src.annotation_path == str(jsonl / "metadata.jsonl")
    val = read_caption_table(jsonl / "metadata.jsonl", "val")
    assert [(r.file_name, r.image_id, r.captions) for r in val.records] == [
        ("sub/c.jpg", expected_id("sub/c.jpg"), ["a cat"])
    ]
    test = read_caption_table(jsonl / "metadata.jsonl", "test", images="/elsewhere")
    assert [(r.path, r.captions) for r in test.records] == [("/elsewhere/e.jpg", ["a test image"])]


CSV_TEXT = (
    "image,description,fold\r\n"
    'x1.jpg,"a man, on a horse",train\r\n'
    'x2.jpg,"two lines\nin one caption",val\r\n'
    "x1.jpg,a horse,train\r\n"
    "x3.jpg,a boat,train\r\n"
    "x3.jpg,,train\r\n"
)


def test_csv_and_tsv_with_chosen_columns(tmp_path):
    (tmp_path / "caps.csv").write_text(CSV_TEXT, encoding="utf-8-sig", newline="")
    tsv = CSV_TEXT.replace(",", "\t").replace('"a man\t on a horse"', "a man, on a horse")
    (tmp_path / "caps.tsv").write_text(tsv, encoding="utf-8", newline="")
    reads = [
        read_caption_table(
            tmp_path / f, "train", file_column="image", caption_column="description", split_column="fold"
        )
        for f in ("caps.csv", "caps.tsv")
    ]
    for src in reads:
        assert {r.file_name: r.captions for r in src.records} == {
            "x1.jpg": ["a man, on a horse", "a horse"],
            "x3.jpg": ["a boat"],
        }
        assert src.dropped == {"empty_caption": 1} and src.rows == 5
    assert [r.image_id for r in reads[0].records] == [r.image_id for r in reads[1].records]
    val = read_caption_table(
        tmp_path / "caps.csv", "val", file_column="image", caption_column="description", split_column="fold"
    )
    assert val.records[0].captions == ["two lines\nin one caption"]


def test_val_fraction_is_deterministic_disjoint_and_keeps_ids(tmp_path):
    names = [f"img{i:03d}.jpg" for i in range(200)]
    path = tmp_path / "captions.csv"
    path.write_text("file_name,caption\n" + "".join(f"{n},caption of {n}\n" for n in names))
    train = read_caption_table(path, "train", val_fraction=0.25)
    val = read_caption_table(path, "val", val_fraction=0.25)
    assert len(train.records) + len(val.records) == 200 and 30 <= len(val.records) <= 70
    assert not {r.file_name for r in train.records} & {r.file_name for r in val.records}
    assert [r.file_name for r in read_caption_table(path, "val", val_fraction=0.25).records] == [
        r.file_name for r in val.records
    ]
    everything = {r.file_name: r.image_id for r in read_caption_table(path, "train").records}
    assert all(everything[r.file_name] == r.image_id for r in train.records + val.records)
    # a larger fraction only moves images into val
    bigger = {r.file_name for r in read_caption_table(path, "val", val_fraction=0.5).records}
    assert {r.file_name for r in val.records} <= bigger


def test_errors_name_the_file_and_the_column(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("path,caption\na.jpg,a dog\n")
    with pytest.raises(
        CapgenError,
        match=r"caps.csv: no column 'file_name' \(columns: path, caption; "
        r"choose one with --file-column\)",
    ):
        read_caption_table(path)
    with pytest.raises(CapgenError, match="no column 'caption' or 'text'"):
        read_caption_table(_write(tmp_path / "t.tsv", "file_name\tlabel\na.jpg\tdog\n"))
    with pytest.raises(CapgenError, match="no column 'fold'"):
        read_caption_table(path, file_column="path", split_column="fold")
    with pytest.raises(CapgenError, match=r"no images in split 'val' \(train 1\)"):
        read_caption_table(path, "val", file_column="path")
    with pytest.raises(CapgenError, match="nothing.jsonl: file not found"):
        read_caption_table(tmp_path / "nothing.jsonl")
    with pytest.raises(CapgenError, match=r"caps.txt: unknown captions file type '.txt'"):
        read_caption_table(_write(tmp_path / "caps.txt", "x"))
    with pytest.raises(CapgenError, match="empty file"):
        read_caption_table(_write(tmp_path / "empty.csv", ""))
    run = subprocess.run(
        CAPGEN + ["shards", "build", "--captions", str(path), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"capgen: error: {path}: no column 'file_name' (columns: path, caption; choose one with --file-column)"
    ]


def _write(path, text):
    path.write_text(text)
    return path


def _samples(shard_dir):
    out = {}
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    out[m.name[:-5]] = json.load(t.extractfile(m))
    return out


def test_cli_builds_train_and_val_shards(jsonl, tmp_path):
    captions = str(jsonl / "metadata.jsonl")
    train, val = tmp_path / "train", tmp_path / "val"
    run = subprocess.run(
        CAPGEN
        + [
            "shards",
            "build",
            "--captions",
            captions,
            "--out",
            str(train),
            "--shard-size",
            "4",
            "--min-freq",
            "1",
            "--workers",
            "1",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"{captions}: 11 rows, 4 train images; set aside: bad_caption 1, bad_json 1" in run.stderr
    m = read_manifest(str(train))
    assert m["name"] == "captions-train"
    assert m["counts"]["images"] == 2 and m["counts"]["captions"] == 3
    assert m["counts"]["skipped"] == {"missing": 1, "no_captions": 1}
    assert m["build_args"]["rows_set_aside"]["duplicate_caption"] == 1
    samples = _samples(train)
    assert samples == {
        str(expected_id("a.jpg")): {
            "image_id": expected_id("a.jpg"),
            "file_name": "a.jpg",
            "split": "train",
            "width": 64,
            "height": 48,
            "captions": ["A dog on the grass. "],
        },
        str(expected_id("b.jpg")): {
            "image_id": expected_id("b.jpg"),
            "file_name": "b.jpg",
            "split": "train",
            "width": 64,
            "height": 48,
            "captions": ["a red ball", "Ein Ball, café"],
        },
    }
    run = subprocess.run(
        CAPGEN
        + [
            "shards",
            "build",
            "--captions",
            captions,
            "--images",
            str(jsonl),
            "--captions-split",
            "val",
            "--vocab",
            str(train / "vocab.json"),
            "--out",
            str(val),
            "--workers",
            "1",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert read_manifest(str(val))["counts"]["images"] == 1
    assert (val / "vocab.json").read_bytes() == (train / "vocab.json").read_bytes()
    assert TokenTable.load(str(val / "tokens.npz")).image_ids.tolist() == [expected_id("sub/c.jpg")]
