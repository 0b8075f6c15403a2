"""Flickr8k / Flickr30k through Karpathy's dataset_flickr8k.json / dataset_flickr30k.json:
no filepath (one image folder), imgid as the id (no cocoid)."""

import json
import os
import subprocess
import sys

import pytest
from test_caption_table import _samples, write_images

from pipeline.shards.shardset import read_manifest
from pipeline.sources.coco import read_karpathy
from pipeline.text import TokenTable

CAPGEN = [sys.executable, "-c", "from tools.cli.main import main; main()"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ["train", "train", "train", "val", "test", "test"]


def flickr_file(path, dataset):
    """A file in the layout of Karpathy's Flickr files (a few images of it)."""
    images = []
    for imgid, split in enumerate(SPLITS):
        raws = [f"A child number {imgid} in a pink dress .", f"A girl {imgid} climbing stairs"]
        images.append(
            {
                "sentids": [2 * imgid, 2 * imgid + 1],
                "imgid": imgid,
                "split": split,
                "filename": f"{1000268201 + imgid}_693b08cb0e.jpg",
                "sentences": [
                    {"tokens": r.lower().split(), "raw": r, "imgid": imgid, "sentid": 2 * imgid + k}
                    for k, r in enumerate(raws)
                ],
            }
        )
    path.write_text(json.dumps({"images": images, "dataset": dataset}))
    return [img["filename"] for img in images]


@pytest.mark.parametrize("dataset", ["flickr8k", "flickr30k"])
def test_reader_takes_imgid_and_one_image_folder(tmp_path, dataset):
    path = tmp_path / f"dataset_{dataset}.json"
    names = flickr_file(path, dataset)
    train = read_karpathy(path, "train")
    assert [(r.image_id, r.file_name, r.split) for r in train.records] == [(i, names[i], "train") for i in range(3)]
    assert train.records[0].path == str(tmp_path / names[0])
    assert train.records[0].captions == ["A child number 0 in a pink dress .", "A girl 0 climbing stairs"]
    test = read_karpathy(path, "test", image_root="/data/Flickr8k_Dataset")
    assert [(r.image_id, r.path) for r in test.records] == [(i, f"/data/Flickr8k_Dataset/{names[i]}") for i in (4, 5)]


def test_an_imgid_that_is_not_an_integer_is_skipped_as_bad_id(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    flickr_file(path, "flickr8k")
    data = json.loads(path.read_text())
    data["images"][1]["imgid"], data["images"][2]["imgid"] = "1", None
    path.write_text(json.dumps(data))
    train = read_karpathy(path, "train")
    assert [r.image_id for r in train.records] == [0]
    assert train.skipped == [["images[1]", "", "bad_id"], ["images[2]", "", "bad_id"]]
    assert train.bad_captions == 0


def test_cli_builds_flickr_shards(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    names = flickr_file(path, "flickr8k")
    images = tmp_path / "Flicker8k_Dataset"
    write_images(images, names)
    train, test = tmp_path / "train", tmp_path / "test"
    for split, out, extra in (
        ("train", train, ["--min-freq", "1"]),
        ("test", test, ["--vocab", str(train / "vocab.json")]),
    ):
        run = subprocess.run(
            CAPGEN
            + [
                "shards",
                "build",
                "--karpathy",
                str(path),
                "--karpathy-split",
                split,
                "--images",
                str(images),
                "--out",
                str(out),
                "--workers",
                "1",
                "--quiet",
            ]
            + extra,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
    assert read_manifest(str(train))["counts"]["images"] == 3 and read_manifest(str(test))["counts"]["images"] == 2
    assert read_manifest(str(test))["build_args"]["images"] == str(images)
    samples = _samples(test)
    assert sorted(samples) == ["4", "5"]
    assert samples["5"]["file_name"] == names[5] and samples["5"]["split"] == "test"
    assert samples["5"]["captions"] == ["A child number 5 in a pink dress .", "A girl 5 climbing stairs"]
    assert TokenTable.load(str(test / "tokens.npz")).image_ids.tolist() == [4, 5]
