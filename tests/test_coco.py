"""Readers for COCO captions json and Karpathy's split file, with real COCO quirks."""

import json

import pytest

from pipeline.errors import CapgenError
from pipeline.sources.coco import caption_references, read_coco, read_karpathy


def _image(i, name):
    return {
        "id": i,
        "file_name": name,
        "height": 480,
        "width": 640,
        "license": 1,
        "coco_url": "",
        "flickr_url": "",
        "date_captured": "2013-11-14 11:18:45",
    }


@pytest.fixture
def coco_root(tmp_path):
    images = [
        _image(9, "COCO_val2014_000000000009.jpg"),
        _image(3, "COCO_val2014_000000000003.jpg"),
        _image(5, "COCO_val2014_000000000005.jpg"),
    ]  # 5 has no captions
    captions = [
        "A man riding a Horse. \n",
        "a MAN on a horse",
        "Ein Café am Straßenrand",
        "man rides horse ",
        "the horse runs",
        "a rider",
        "horse and man",
    ]  # 7 for image 9
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
        return {
            "filepath": "val2014",
            "filename": f"COCO_val2014_{cocoid:012d}.jpg",
            "imgid": cocoid,
            "cocoid": cocoid,
            "split": split,
            "sentids": list(range(n)),
            "sentences": [{"tokens": ["x"], "raw": f"Raw {k} ", "imgid": cocoid, "sentid": k} for k in range(n)],
        }

    data = {
        "dataset": "coco",
        "images": [entry(4, "train", 5), entry(2, "restval", 6), entry(8, "val", 5), entry(1, "test", 5)],
    }
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    train = read_karpathy(path, "train")
    assert [r.image_id for r in train.records] == [2, 4]
    assert train.records[0].captions == [f"Raw {k} " for k in range(6)]
    assert train.records[0].path == str(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg")
    assert [r.image_id for r in read_karpathy(path, "train", train_includes_restval=False).records] == [4]
    assert [r.image_id for r in read_karpathy(path, "test", image_root="/data").records] == [1]
    assert (
        read_karpathy(path, "test", image_root="/data").records[0].path == "/data/val2014/COCO_val2014_000000000001.jpg"
    )
    with pytest.raises(CapgenError, match="dataset_coco.json: unknown Karpathy split"):
        read_karpathy(path, "restval")


def _write_coco(root, images, annotations, split="val2014"):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"captions_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def test_malformed_coco_entries_are_skipped_and_counted(tmp_path):
    images = [
        _image(1, "one.jpg"),
        _image(2, "two.jpg"),
        _image(2, "other_two.jpg"),  # id 2 twice
        {"id": 3, "width": 10},
        _image(4, ""),
        _image(5, "five.jpg"),
    ]  # 3, 4: no file name
    anns = [
        {"id": 1, "image_id": 1, "caption": "one"},
        {"id": 2, "image_id": 1, "caption": None},
        {"id": 3, "image_id": 1, "caption": 7},
        {"id": 4, "image_id": 1},
        {"id": 5, "image_id": 1, "caption": " "},
        {"id": 6, "caption": "no image id"},
        {"id": 7, "image_id": None, "caption": "null id"},
        "not an object",
        {"id": 8, "image_id": 2, "caption": "whose two?"},
        {"id": 9, "image_id": 3, "caption": "three"},
        {"id": 10, "image_id": 5, "caption": "five"},
        {"id": 11, "image_id": "5", "caption": "five again"},  # a string id: bad
        {"id": 12, "image_id": 6, "caption": "no image 6"},
    ]
    path = _write_coco(tmp_path, images, anns)
    src = read_coco(tmp_path, "val2014")
    assert [(r.image_id, r.file_name, r.captions) for r in src.records] == [
        (1, "one.jpg", ["one"]),
        (5, "five.jpg", ["five"]),
    ]
    assert src.skipped == [
        [2, str(tmp_path / "val2014" / "two.jpg"), "duplicate_id"],
        [2, str(tmp_path / "val2014" / "other_two.jpg"), "duplicate_id"],
        [3, "", "missing_file_name"],
        [4, "", "missing_file_name"],
    ]
    assert (src.bad_captions, src.orphan_captions, src.annotation_path) == (8, 1, str(path))


def test_a_duplicate_id_without_a_file_name_still_takes_the_other_entry_out(tmp_path):
    _write_coco(tmp_path, [_image(2, "two.jpg"), {"id": 2}], [{"id": 1, "image_id": 2, "caption": "whose?"}])
    src = read_coco(tmp_path, "val2014")
    assert src.records == [] and [s[2] for s in src.skipped] == ["duplicate_id", "duplicate_id"]


@pytest.mark.parametrize(
    "data, words",
    [
        ({"images": {}, "annotations": []}, "needs lists 'images' and 'annotations'"),
        ({"images": [], "annotations": None}, "needs lists 'images' and 'annotations'"),
        ([], "needs lists 'images' and 'annotations'"),
        ({"images": [_image(1, "a.jpg"), 5], "annotations": []}, "images[1] is not an object"),
    ],
)
def test_malformed_coco_structure_is_a_one_line_error(tmp_path, data, words):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(data))
    with pytest.raises(CapgenError) as err:
        read_coco(tmp_path, "val2014")
    assert str(err.value).startswith(str(tmp_path / "annotations" / "captions_val2014.json") + ": ")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_images_without_an_integer_id_are_skipped_after_the_integer_ids(tmp_path):
    images = [_image(7, "seven.jpg"), _image("5", "five.jpg"), _image(2, "two.jpg"), {"file_name": "none.jpg"}]
    images += [_image(v, f"{k}.jpg") for k, v in enumerate([3.5, None, [5], True, {"id": 5}])]
    images += [_image("5", "five_again.jpg"), _image(1, None)]
    anns = [
        {"id": 1, "image_id": 7, "caption": "seven"},
        {"id": 2, "image_id": 5, "caption": "for the entry whose id is '5'"},  # its image has no id: an orphan
        {"id": 3, "image_id": "5", "caption": "a string image id"},  # bad, as before
        {"id": 4, "image_id": 1, "caption": "one"},  # image 1 is skipped (no file name): not an orphan
    ]
    _write_coco(tmp_path, images, anns)
    src = read_coco(tmp_path, "val2014")
    assert [(r.image_id, r.captions) for r in src.records] == [(2, []), (7, ["seven"])]
    assert src.skipped == [[1, "", "missing_file_name"]] + [
        [f"images[{k}]", "", "bad_id"] for k in (1, 3, 4, 5, 6, 7, 8, 9)
    ]
    assert (src.bad_captions, src.orphan_captions) == (1, 1)


def _karpathy_entry(cocoid, split="test", raws=("a dog",), **extra):
    return dict(
        {
            "filepath": "val2014",
            "filename": f"{cocoid}.jpg",
            "cocoid": cocoid,
            "split": split,
            "sentences": [{"raw": r} for r in raws],
        },
        **extra,
    )


def test_malformed_karpathy_entries_are_skipped_and_counted(tmp_path):
    entries = [
        _karpathy_entry(1, raws=("ok", None, 3)),
        _karpathy_entry(2),
        _karpathy_entry(2),
        _karpathy_entry(3, filename=None),
        _karpathy_entry(4, filepath=None),
        dict(_karpathy_entry(5), sentences=[{"tokens": []}, "x", {"raw": "five"}]),
        _karpathy_entry(2, split="train"),
    ]  # another split's id 2 is not this set's duplicate
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries}))
    src = read_karpathy(path, "test")
    assert [(r.image_id, r.captions) for r in src.records] == [(1, ["ok"]), (5, ["five"])]
    assert [(s[0], s[2]) for s in src.skipped] == [
        (2, "duplicate_id"),
        (2, "duplicate_id"),
        (3, "missing_file_name"),
        (4, "missing_file_name"),
    ]
    assert src.bad_captions == 4


def test_karpathy_entries_without_an_integer_id_are_skipped_with_their_captions(tmp_path):
    entries = [
        _karpathy_entry("x1", raws=("ok", None)),
        _karpathy_entry(4),
        _karpathy_entry(None, split="train"),  # another split: not read
        _karpathy_entry(2.0, raws=("two", 7, 8)),
        dict(_karpathy_entry(1), imgid=1, cocoid=None),  # cocoid is read first, imgid only without one
        _karpathy_entry(3, filename=5),
    ]
    del entries[1]["cocoid"]  # no id at all
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries}))
    src = read_karpathy(path, "test")
    assert [(r.image_id, r.captions) for r in src.records] == []
    assert src.skipped == [[3, "", "bad_file_name"]] + [[f"images[{k}]", "", "bad_id"] for k in (0, 1, 3, 4)]
    assert src.bad_captions == 3


@pytest.mark.parametrize(
    "data, words",
    [
        ({"images": None}, "needs a list 'images'"),
        ({"images": ["x"]}, "images[0] is not an object with a 'split'"),
        ({"images": [{"cocoid": 1, "filename": "a.jpg"}]}, "images[0] is not an object with a 'split'"),
        ({"images": [dict(_karpathy_entry(1), sentences="a dog")]}, "images[0]: 'sentences' is not a list"),
    ],
)
def test_malformed_karpathy_structure_is_a_one_line_error(tmp_path, data, words):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CapgenError, match=f"^{path}: .*") as err:
        read_karpathy(path, "test")
    assert words in str(err.value)
