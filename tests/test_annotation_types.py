"""Wrongly typed annotation fields (COCO captions json, Karpathy's dataset_coco.json, a captions
table) on data `capgen synth` made: each is counted by reason in the built set's manifest
(counts.skipped, counts.bad_captions, build_args.rows_set_aside) like other malformed entries
(an image id that is not an integer: skipped as bad_id), never built and counted as good."""

import copy
import json
import os
import shutil

import pytest

from pipeline.shards.shardset import read_manifest
from pipeline.synth.generator import synthesize
from tests.cli_in_process import capgen

IMAGES = 8  # 4 train2014, 4 val2014 (Karpathy: 1 val, 1 test, 2 restval), 5 captions each


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(str(root), IMAGES, seed=1, val_fraction=0.5, width=48, height=40, workers=1)
    with open(root / "annotations" / "captions_train2014.json", encoding="utf-8") as f:
        coco = json.load(f)
    with open(root / "dataset_coco.json", encoding="utf-8") as f:
        karpathy = json.load(f)
    return {"root": root, "coco": coco, "karpathy": karpathy}


def build(args, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shards"
    common = ["--out", out, "--image-size", "16", "--min-freq", "1", "--workers", "1", "--quiet", "--no-index"]
    code, stdout, err = capgen(["shards", "build", *args, *common], capsys, monkeypatch)
    assert "Traceback" not in stdout + err
    return code, err, out


def coco_root(data, tmp_path, change):
    """A COCO root whose captions_train2014.json is the synthetic one with `change` applied."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    os.symlink(data["root"] / "train2014", root / "train2014")
    coco = copy.deepcopy(data["coco"])
    change(coco)
    with open(root / "annotations" / "captions_train2014.json", "w", encoding="utf-8") as f:
        json.dump(coco, f)
    return root


def _setter(part, field, value):
    """Set coco[part][0][field] to value (a callable: applied to the old one)."""

    def change(coco):
        entry = coco[part][0]
        entry[field] = value(entry[field]) if callable(value) else value

    return change


def image(field, value):
    return _setter("images", field, value)


def annotation(field, value):
    return _setter("annotations", field, value)


def build_coco(data, tmp_path, change, monkeypatch, capsys):
    root = coco_root(data, tmp_path, change)
    code, err, out = build(["--coco-root", root, "--split", "train2014"], tmp_path, monkeypatch, capsys)
    return code, err, out, root


IMAGE_DAMAGES = [
    ("name-int", image("file_name", 5), "bad_file_name"),
    ("name-list", image("file_name", ["a.jpg"]), "bad_file_name"),
    ("name-object", image("file_name", {"name": "a.jpg"}), "bad_file_name"),
    ("name-bool", image("file_name", True), "bad_file_name"),
    ("name-null", image("file_name", None), "missing_file_name"),
    ("name-empty", image("file_name", ""), "missing_file_name"),
    ("width-str", image("width", "48"), "bad_size"),
    ("width-float", image("width", 48.0), "bad_size"),
    ("width-bool", image("width", True), "bad_size"),
    ("width-zero", image("width", 0), "bad_size"),
    ("height-neg", image("height", -40), "bad_size"),
    ("height-list", image("height", [40]), "bad_size"),
]


@pytest.mark.parametrize("change, reason", [d[1:] for d in IMAGE_DAMAGES], ids=[d[0] for d in IMAGE_DAMAGES])
def test_wrongly_typed_image_fields_are_skipped_by_reason(change, reason, data, tmp_path, monkeypatch, capsys):
    code, err, out, _ = build_coco(data, tmp_path, change, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    assert code == 0
    assert (counts["records"], counts["images"], counts["captions"]) == (4, 3, 15)
    assert (counts["skipped"], counts["bad_captions"], counts["orphan_captions"]) == ({reason: 1}, 0, 0)
    with open(out / "skipped.txt", encoding="utf-8") as f:
        assert [line.split("\t")[::2] for line in f.read().splitlines()] == [
            [str(data["coco"]["images"][0]["id"]), reason]
        ]


def test_absent_sizes_are_fine(data, tmp_path, monkeypatch, capsys):
    def change(coco):
        del coco["images"][0]["width"]
        coco["images"][1]["height"] = None

    code, err, out, _ = build_coco(data, tmp_path, change, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    assert (code, counts["images"], counts["skipped"], counts["bad_captions"]) == (0, 4, {}, 0)


ANNOTATION_DAMAGES = [
    ("image-id-str", annotation("image_id", str)),  # a listed image's id, as a string
    ("image-id-float", annotation("image_id", 1.0)),
    ("image-id-bool", annotation("image_id", True)),
    ("image-id-list", annotation("image_id", [1])),
    ("caption-int", annotation("caption", 7)),
    ("caption-list", annotation("caption", ["a red star"])),
    ("caption-object", annotation("caption", {"text": "a red star"})),
    ("caption-bool", annotation("caption", False)),
    ("id-str", annotation("id", "x")),
    ("id-float", annotation("id", 3.5)),
]


@pytest.mark.parametrize("change", [d[1] for d in ANNOTATION_DAMAGES], ids=[d[0] for d in ANNOTATION_DAMAGES])
def test_wrongly_typed_annotation_fields_are_bad_captions(change, data, tmp_path, monkeypatch, capsys):
    code, err, out, _ = build_coco(data, tmp_path, change, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    assert code == 0
    assert (counts["images"], counts["captions"], counts["bad_captions"], counts["skipped"]) == (4, 19, 1, {})
    assert counts["orphan_captions"] == 0


def test_every_damage_at_once_is_counted_exactly(data, tmp_path, monkeypatch, capsys):
    def damage(coco):
        image("file_name", 5)(coco)
        coco["images"][1]["width"] = "48"
        for k, (field, value) in enumerate([("image_id", "1"), ("caption", 7), ("id", "x")]):
            coco["annotations"][-1 - k][field] = value

    code, err, out, _ = build_coco(data, tmp_path, damage, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    assert code == 0
    assert counts["skipped"] == {"bad_file_name": 1, "bad_size": 1} and counts["bad_captions"] == 3
    assert counts["images"] == 2 and counts["orphan_captions"] == 0


def rows(out):
    """skipped.txt's rows, each [image id, path, reason]."""
    with open(out / "skipped.txt", encoding="utf-8") as f:
        return [line.split("\t") for line in f.read().splitlines()]


def drop_id(coco):
    del coco["images"][0]["id"]


BAD_IDS = [
    ("str", image("id", str)),  # "569190": a listed image's id, as a string
    ("word", image("id", "one")),
    ("float", image("id", 1.5)),
    ("whole-float", image("id", float)),
    ("bool", image("id", True)),
    ("null", image("id", None)),
    ("list", image("id", lambda v: [v])),
    ("missing", drop_id),
]


@pytest.mark.parametrize("change", [d[1] for d in BAD_IDS], ids=[d[0] for d in BAD_IDS])
def test_an_image_id_that_is_not_an_integer_is_skipped_as_bad_id(change, data, tmp_path, monkeypatch, capsys):
    code, err, out, _ = build_coco(data, tmp_path, change, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    assert (code, err) == (0, "")
    assert (counts["records"], counts["images"], counts["captions"]) == (4, 3, 15)
    # its 5 captions name it by its integer id, which no image entry has now: orphans
    assert (counts["skipped"], counts["bad_captions"], counts["orphan_captions"]) == ({"bad_id": 1}, 0, 5)
    assert rows(out) == [["images[0]", "", "bad_id"]]


def test_no_image_with_an_integer_id_is_one_line(data, tmp_path, monkeypatch, capsys):
    def change(coco):
        for img in coco["images"]:
            img["id"] = str(img["id"])

    code, err, out, root = build_coco(data, tmp_path, change, monkeypatch, capsys)
    path = root / "annotations" / "captions_train2014.json"
    expected = (
        f"capgen: error: {path}: no images with captions to build (0 images listed, 4 left out, 0 bad captions)\n"
    )
    assert (code, err) == (1, expected)
    assert not (out / "manifest.json").exists()


def test_bad_ids_in_a_two_job_build_merge_to_the_one_job_set(data, tmp_path, monkeypatch, capsys):
    names = [i["file_name"] for i in data["coco"]["images"]]
    new_ids = [10**7, 10**7 + 1]  # after every synthetic id: shards 1 (job 1's) and 2 (job 0's)

    def change(coco):
        del coco["images"][0]["id"]
        coco["images"][1]["file_name"] = None  # an integer id's row: before the bad ids' rows
        coco["images"][2]["id"] = "x"
        for new_id, name in zip(new_ids, names[1::-1]):
            coco["images"].append({"id": new_id, "file_name": name})
            coco["annotations"].append({"id": new_id, "image_id": new_id, "caption": "a shape"})

    root = coco_root(data, tmp_path, change)
    (root / "train2014").unlink()
    shutil.copytree(data["root"] / "train2014", root / "train2014")
    truncated = root / "train2014" / names[1]
    truncated.write_bytes(truncated.read_bytes()[:100])  # image 10**7's: job 1 skips it
    args = ["--coco-root", root, "--split", "train2014", "--shard-size", "1"]
    sets = {}
    for name, jobs in (("one", [[]]), ("two", [["--num-jobs", "2", "--job-index", str(j)] for j in range(2)])):
        for job in jobs:
            code, err, out = build([*args, *job], tmp_path / name, monkeypatch, capsys)
            assert (code, err) == (0, "")
        if len(jobs) > 1:
            assert capgen(["shards", "merge", out], capsys, monkeypatch)[0] == 0
        sets[name] = out
    one, two = (read_manifest(str(sets[k])) for k in ("one", "two"))
    assert one["counts"] == two["counts"] and one["shards"] == two["shards"]
    assert one["counts"] == {
        "records": 6,
        "images": 2,
        "captions": 6,
        "skipped": {"bad_id": 2, "missing_file_name": 1, "truncated": 1},
        "orphan_captions": 10,
        "bad_captions": 0,
    }
    assert rows(sets["one"]) == [
        [str(data["coco"]["images"][1]["id"]), "", "missing_file_name"],
        [str(new_ids[0]), str(truncated), "truncated"],
        ["images[0]", "", "bad_id"],
        ["images[2]", "", "bad_id"],
    ]
    assert (sets["one"] / "skipped.txt").read_bytes() == (sets["two"] / "skipped.txt").read_bytes()


# ---------------------------------------------------------------- Karpathy's dataset_coco.json


def karpathy_file(data, tmp_path, change):
    k = copy.deepcopy(data["karpathy"])
    change(next(i for i in k["images"] if i["split"] == "train"), k)
    path = tmp_path / "dataset_coco.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(k, f)
    return path


KARPATHY_DAMAGES = [
    ("filename-int", lambda i, k: i.__setitem__("filename", 5), {"bad_file_name": 1}, 0),
    ("filepath-int", lambda i, k: i.__setitem__("filepath", 5), {"bad_file_name": 1}, 0),
    ("filepath-list", lambda i, k: i.__setitem__("filepath", ["train2014"]), {"bad_file_name": 1}, 0),
    ("filename-null", lambda i, k: i.__setitem__("filename", None), {"missing_file_name": 1}, 0),
    ("raw-int", lambda i, k: i["sentences"][0].__setitem__("raw", 7), {}, 1),
    ("raw-list", lambda i, k: i["sentences"][0].__setitem__("raw", ["a"]), {}, 1),
    ("sentence-str", lambda i, k: i["sentences"].__setitem__(0, "a red star"), {}, 1),
]


@pytest.mark.parametrize(
    "change, skipped, bad", [d[1:] for d in KARPATHY_DAMAGES], ids=[d[0] for d in KARPATHY_DAMAGES]
)
def test_karpathy_wrong_types_are_counted(change, skipped, bad, data, tmp_path, monkeypatch, capsys):
    path = karpathy_file(data, tmp_path, change)
    args = ["--karpathy", path, "--karpathy-split", "train", "--images", data["root"]]
    code, err, out = build(args, tmp_path, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    assert code == 0
    assert (counts["records"], counts["skipped"], counts["bad_captions"]) == (6, skipped, bad)
    assert counts["images"] == 6 - len(skipped)


@pytest.mark.parametrize("value", ["570275", 5.0, None, True, [5], "missing"])
def test_karpathy_id_that_is_not_an_integer_is_skipped_as_bad_id(value, data, tmp_path, monkeypatch, capsys):
    def change(entry, _):
        entry["sentences"][0]["raw"] = 7  # still counted: the entry's malformed captions are bad captions
        if value == "missing":
            del entry["cocoid"], entry["imgid"]
        else:
            entry["cocoid"] = value

    path = karpathy_file(data, tmp_path, change)
    args = ["--karpathy", path, "--karpathy-split", "train", "--images", data["root"]]
    code, err, out = build(args, tmp_path, monkeypatch, capsys)
    counts = read_manifest(str(out))["counts"]
    k = next(n for n, i in enumerate(data["karpathy"]["images"]) if i["split"] == "train")
    assert (code, err) == (0, "")
    assert (counts["records"], counts["images"], counts["captions"]) == (6, 5, 25)
    assert (counts["skipped"], counts["bad_captions"], counts["orphan_captions"]) == ({"bad_id": 1}, 1, 0)
    assert rows(out) == [[f"images[{k}]", "", "bad_id"]]


# ---------------------------------------------------------------- a captions table (metadata.jsonl)


def test_caption_table_wrong_types_are_set_aside_by_reason(data, tmp_path, monkeypatch, capsys):
    folder = data["root"] / "train2014"
    names = sorted(os.listdir(folder))
    rows = [
        {"file_name": names[0], "caption": "a red star"},
        {"file_name": names[1], "caption": ["a blue square", 7, None, ["nested"], {"text": "x"}]},
        {"file_name": 5, "caption": "a number for a name"},
        {"file_name": [names[2]], "caption": "a list for a name"},
        {"file_name": names[2], "caption": "a green circle", "split": 3},
        {"file_name": names[3], "caption": "a white star", "split": ["train"]},
        {"file_name": names[3], "caption": True},
        ["not", "an", "object"],
    ]
    table = tmp_path / "metadata.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, err, out = build(["--captions", table, "--images", folder], tmp_path, monkeypatch, capsys)
    manifest = read_manifest(str(out))
    assert code == 0
    assert manifest["build_args"]["rows_set_aside"] == {
        "bad_caption": 4,
        "bad_json": 1,
        "empty_caption": 1,
        "no_file_name": 2,
        "unknown_split": 2,
    }
    assert (manifest["counts"]["images"], manifest["counts"]["captions"]) == (2, 2)
