import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools.coco import COCO

from pipeline.errors import CapgenError
from pipeline.synth.captions import captions
from pipeline.synth.generator import make_scene, synthesize
from pipeline.synth.scenes import COLOURS, POSITIONS, SHAPES, SIZES, check_caption, read_scenes
from tools.cli.main import cli

N, W, H = 20, 160, 120


def tree(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    counts = synthesize(str(root / "a"), N, seed=7, width=W, height=H, workers=1)
    return root, counts


def test_same_seed_same_bytes_any_workers(data):
    root, _ = data
    synthesize(str(root / "b"), N, seed=7, width=W, height=H, workers=2)
    synthesize(str(root / "c"), N, seed=8, width=W, height=H, workers=1)
    a, b, c = tree(root / "a"), tree(root / "b"), tree(root / "c")
    assert len(a) == N + 5 and a == b
    assert a["dataset_coco.json"] != c["dataset_coco.json"]


def test_counts(data):
    _, counts = data
    assert counts["images"] == N and counts["train2014"] == 16 and counts["val2014"] == 4
    assert counts["karpathy"] == {"val": 1, "test": 1, "restval": 2}


def test_coco_layout(data):
    root, _ = data
    image_ids, ann_ids = [], []
    for split, n in (("train2014", 16), ("val2014", 4)):
        path = root / "a" / "annotations" / f"captions_{split}.json"
        raw = json.loads(path.read_text())
        assert list(raw) == ["info", "images", "licenses", "annotations"]
        assert {"description", "url", "version", "year", "contributor", "date_created"} == set(raw["info"])
        assert [lic["id"] for lic in raw["licenses"]] == list(range(1, 9))
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == n
        for image in raw["images"]:
            assert set(image) == {
                "license",
                "file_name",
                "coco_url",
                "height",
                "width",
                "date_captured",
                "flickr_url",
                "id",
            }
            assert image["file_name"] == f"COCO_{split}_{image['id']:012d}.jpg"
            assert re.fullmatch(r"2013-\d\d-\d\d \d\d:\d\d:\d\d", image["date_captured"])
            with Image.open(root / "a" / split / image["file_name"]) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (W, H))
            assert (image["width"], image["height"]) == (W, H)
            assert 5 <= len(coco.getAnnIds(imgIds=image["id"])) <= 7
        for ann in raw["annotations"]:
            assert set(ann) == {"image_id", "id", "caption"}
        image_ids += coco.getImgIds()
        ann_ids += coco.getAnnIds()
    assert len(set(image_ids)) == N and min(image_ids) >= 1 and max(image_ids) <= 600_000
    assert sorted(image_ids) != list(range(min(image_ids), min(image_ids) + N))
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1


def test_karpathy_file(data):
    root, _ = data
    raw = json.loads((root / "a" / "dataset_coco.json").read_text())
    assert raw["dataset"] == "coco" and len(raw["images"]) == N
    coco = {}
    for split in ("train2014", "val2014"):
        for ann in json.loads((root / "a" / "annotations" / f"captions_{split}.json").read_text())["annotations"]:
            coco[ann["id"]] = (split, ann)
    for imgid, image in enumerate(raw["images"]):
        assert list(image) == ["filepath", "sentids", "filename", "imgid", "split", "sentences", "cocoid"]
        assert image["imgid"] == imgid
        assert image["filename"] == f"COCO_{image['filepath']}_{image['cocoid']:012d}.jpg"
        expected = {"train"} if image["filepath"] == "train2014" else {"val", "test", "restval"}
        assert image["split"] in expected
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
        for s in image["sentences"]:
            assert list(s) == ["tokens", "raw", "imgid", "sentid"]
            split, ann = coco[s["sentid"]]
            assert (split, ann["image_id"], ann["caption"]) == (image["filepath"], image["cocoid"], s["raw"])
            assert s["imgid"] == imgid
            assert s["tokens"] == re.findall(r"[a-z]+", s["raw"].lower())
    # Karpathy's file lists val2014 first.
    assert [i["filepath"] for i in raw["images"]] == ["val2014"] * 4 + ["train2014"] * 16


def test_captions_true_to_scenes(data):
    root, _ = data
    for split in ("train2014", "val2014"):
        scenes = read_scenes(root / "a" / "annotations" / f"scenes_{split}.json")
        anns = json.loads((root / "a" / "annotations" / f"captions_{split}.json").read_text())["annotations"]
        assert {a["image_id"] for a in anns} == set(scenes)
        for ann in anns:
            scene = scenes[ann["image_id"]]
            assert check_caption(ann["caption"], scene)["all"], (ann["caption"], scene)
            model_form = " ".join(w for w in re.findall(r"[a-z]+", ann["caption"].lower()) if len(w) > 1)
            assert check_caption(model_form, scene)["all"], (model_form, scene)
        for scene in scenes.values():
            assert 1 <= len(scene["objects"]) <= 3
            for o in scene["objects"]:
                assert (
                    o["colour"] in COLOURS
                    and o["shape"] in SHAPES
                    and o["size"] in SIZES
                    and o["position"] in POSITIONS
                )
                x, y, w, h = o["bbox"]
                assert 0 <= x and x + w <= W and 0 <= y and y + h <= H


def test_cli(tmp_path):
    result = CliRunner().invoke(
        cli, ["synth", str(tmp_path / "d"), "--images", "3", "--seed", "1", "--width", "64", "--height", "48"]
    )
    assert result.exit_code == 0, result.output
    assert "3 images (train2014 2, val2014 1" in result.output
    assert sorted(os.listdir(tmp_path / "d" / "annotations")) == [
        "captions_train2014.json",
        "captions_val2014.json",
        "scenes_train2014.json",
        "scenes_val2014.json",
    ]


def test_bad_arguments(tmp_path):
    with pytest.raises(CapgenError, match="--images must be at least 1"):
        synthesize(str(tmp_path), 0, seed=1)
    with pytest.raises(CapgenError, match="--val-fraction"):
        synthesize(str(tmp_path), 5, seed=1, val_fraction=1.0)
    (tmp_path / "file").write_text("")
    with pytest.raises(CapgenError, match="file: cannot create the dataset folders"):
        synthesize(str(tmp_path / "file"), 3, seed=1)


def test_many_scenes_captions_true():
    rng = np.random.default_rng(0)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(600):
        scene = make_scene(rng, 640, 480)
        counts[len(scene["objects"])] += 1
        texts = captions(rng, scene, 7)
        assert len(set(texts)) == 7
        for text in texts:
            assert check_caption(text, scene)["all"], (text, scene)
    assert min(counts.values()) > 10 and counts[3] < counts[1] / 4
