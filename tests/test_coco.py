"""Readers for COCO captions json and Karpathy's split file, with real COCO quirks."""
import json

import pytest

from pipeline.coco import caption_references, read_coco, read_karpathy
from pipeline.errors import CapgenError


def _image(i, name):
    return {"id": i, "file_name": name, "height": 480, "width": 640, "license": 1,
            "coco_url": "", "flickr_url": "", "date_captured": "2013-11-14 11:18:45"}


@pytest.fixture
def coco_root(tmp_path):
    images = [_image(9, "COCO_val2014_000000000009.jpg"),
              _image(3, "COCO_val2014_000000000003.jpg"),
              _image(5, "COCO_val2014_000000000005.jpg")]  # 5 has no captions
    captions = ["A man riding a Horse. \n", "a MAN on a horse", "Ein Café am Straßenrand",
                "man rides horse ", "the horse runs", "a rider", "horse and man"]  # 7 for image 9
    anns = [{"id": 100 + k, "image_id": 9, "caption": c} for k, c in enumerate(captions)]
    anns += [{"id": 200 + k, "image_id": 3, "caption": f"caption {k}"} for k in range(5)]
    anns += [{"id": 300, "image_id": 777, "caption": "image 777 is not listed"}]
    data = {"info": {}, "licenses": [], "images": images, "annotations": anns}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


def test_read_coco_keeps_quirks_and_order(coco_root):
    src = read_coco(coco_root, "val2014")
    assert [r.image_id for r in src.records] == [3, 5, 9]
    by_id = {r.image_id: r for r in src.records}
    assert by_id[9].captions[0] == "A man riding a Horse. \n"
    assert by_id[9].captions[2] == "Ein Café am Straßenrand"
    assert len(by_id[9].captions) == 7
    assert by_id[5].captions == []
    assert src.orphan_captions == 1
    assert by_id[3].path == str(coco_root / "val2014" / "COCO_val2014_000000000003.jpg")
    assert (by_id[3].width, by_id[3].height, by_id[3].split) == (640, 480, "val2014")
    assert caption_references(src) == {3: [f"caption {k}" for k in range(5)], 9: by_id[9].captions}


def test_read_coco_errors_name_the_file(tmp_path, coco_root):
    with pytest.raises(CapgenError, match="captions_train2014.json: file not found"):
        read_coco(coco_root, "train2014")
    with pytest.raises(CapgenError, match="unknown COCO split"):
        read_coco(coco_root, "test2015")
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "captions_val2014.json").write_text("{not json")
    with pytest.raises(CapgenError, match="captions_val2014.json: not valid JSON"):
        read_coco(bad, "val2014")


def test_read_karpathy_splits(tmp_path):
    def entry(cocoid, split, n):
        return {"filepath": "val2014", "filename": f"COCO_val2014_{cocoid:012d}.jpg", "imgid": cocoid,
                "cocoid": cocoid, "split": split, "sentids": list(range(n)),
                "sentences": [{"tokens": ["x"], "raw": f"Raw {k} ", "imgid": cocoid, "sentid": k} for k in range(n)]}
    data = {"dataset": "coco", "images": [entry(4, "train", 5), entry(2, "restval", 6), entry(8, "val", 5), entry(1, "test", 5)]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    train = read_karpathy(path, "train")
    assert [r.image_id for r in train.records] == [2, 4]
    assert train.records[0].captions == [f"Raw {k} " for k in range(6)]
    assert train.records[0].path == str(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg")
    assert [r.image_id for r in read_karpathy(path, "train", train_includes_restval=False).records] == [4]
    assert [r.image_id for r in read_karpathy(path, "test", image_root="/data").records] == [1]
    assert read_karpathy(path, "test", image_root="/data").records[0].path == "/data/val2014/COCO_val2014_000000000001.jpg"
    with pytest.raises(CapgenError, match="dataset_coco.json: unknown Karpathy split"):
        read_karpathy(path, "restval")
