"""The CLI end to end on a tiny synthetic set: synth -> shards -> features -> train -> eval ->
caption --json -> score, each a real `capgen` process; output formats checked exactly."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from pipeline.synth.scenes import attribute_scores, read_scenes

CAPGEN = os.path.join(os.path.dirname(sys.executable), "capgen")
# METEOR needs Java; without it model.metrics leaves it out (and says so).
METRICS = [
    m
    for m in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
    if m != "METEOR" or shutil.which("java")
]


def capgen(*args, cwd, ok=True):
    p = subprocess.run(
        [CAPGEN, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if ok:
        assert p.returncode == 0, f"capgen {' '.join(map(str, args))}\n{p.stdout}\n{p.stderr[-3000:]}"
    return p


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def test_cli_end_to_end(tmp_path):
    run = lambda *a, **kw: capgen(*a, cwd=tmp_path, **kw)  # noqa: E731
    run("synth", "data", "--images", 30, "--seed", 5, "--width", 48, "--height", 40)
    common = ["--image-size", 32, "--shard-size", 8, "--preset", "coco", "--min-freq", 1, "--no-index", "--quiet"]
    run("shards", "build", "--coco-root", "data", "--split", "train2014", "--out", "train", *common)
    run(
        "shards",
        "build",
        "--coco-root",
        "data",
        "--split",
        "val2014",
        "--out",
        "val",
        "--vocab",
        "train/vocab.json",
        *common,
    )

    p = run(
        "features",
        "extract",
        "--shards",
        "train",
        "--out",
        "feat/train.h5",
        "--encoder",
        "resnet18",
        "--encoder-stop",
        "layer3",
        "--encoder-weights",
        "none",
        "--batch-size",
        8,
    )
    assert p.stdout.startswith("feat/train.h5: 24 images in ")
    assert sorted(os.listdir(tmp_path / "feat")) == ["train.h5"]

    p = run(
        "train",
        "--train",
        "feat/train.h5",
        "--val",
        "val",
        "--out",
        "run",
        "--epochs",
        1,
        "--batch-size",
        6,
        "--embed-dim",
        16,
        "--attention-dim",
        16,
        "--hidden-dim",
        16,
        "--workers",
        0,
        "--log-every",
        2,
    )
    assert p.stdout.startswith("run: 1 epochs, 4 steps, best val BLEU-4 ")
    assert {"best", "last", "log.jsonl", "curve.png"} <= set(os.listdir(tmp_path / "run"))
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["type"] for r in log] == ["train", "train", "epoch", "val"]

    # eval on the val shard set (images through the checkpoint's encoder)
    p = run("eval", "--checkpoint", "run/best", "--data", "val", "--beam", 2, "--out", "results.json", "--json")
    scores = last_json(p.stdout)
    assert list(scores)[: len(METRICS)] == METRICS and scores["images"] == 6 and scores["beam"] == 2
    assert scores["text_preset"] == "coco"
    results = json.load(open(tmp_path / "results.json"))
    val_ids = sorted(
        img["id"] for img in json.load(open(tmp_path / "data/annotations/captions_val2014.json"))["images"]
    )
    assert [r["image_id"] for r in results] == val_ids
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results)
    # per-attribute accuracy: the scenes file found under the COCO root the val manifest records
    scenes = read_scenes(tmp_path / "data/annotations/scenes_val2014.json")
    assert scores["attributes"] == attribute_scores({r["image_id"]: r["caption"] for r in results}, scenes)
    assert "scenes data/annotations/scenes_val2014.json" in p.stdout and "\nshape    " in p.stdout
    p = run(
        "eval",
        "--checkpoint",
        "run/best",
        "--data",
        "val",
        "--beam",
        2,
        "--out",
        "again.json",
        "--scenes",
        "data/annotations/scenes_train2014.json",
        ok=False,
    )
    assert p.returncode == 1 and "scenes_train2014.json: no scene for image id" in p.stderr

    # score: the same results against the annotation file give the same numbers
    p = run("score", "results.json", "--annotations", "data/annotations/captions_val2014.json", "--json")
    again = last_json(p.stdout)
    assert list(again) == METRICS
    assert all(abs(again[k] - scores[k]) < 1e-9 for k in METRICS if k != "METEOR")
    if "METEOR" in METRICS:  # METEOR's alignment depends on the order of the references
        assert abs(again["METEOR"] - scores["METEOR"]) < 0.01

    # caption: any size and mode; an unreadable file fails at the end, after the others
    Image.fromarray(np.full((300, 500), 128, np.uint8), "L").save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 70), (255, 0, 0, 100)).save(tmp_path / "rgba.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    jpg = os.path.join("data", "val2014", sorted(os.listdir(tmp_path / "data" / "val2014"))[0])
    p = run(
        "caption",
        "--checkpoint",
        "run/best",
        jpg,
        "broken.jpg",
        "gray.png",
        "rgba.png",
        "--json",
        "--beam",
        3,
        ok=False,
    )
    assert p.returncode == 1
    lines = [json.loads(line) for line in p.stdout.strip().splitlines()]
    assert [r["image"] for r in lines] == [jpg, "gray.png", "rgba.png"]
    for r in lines:
        assert len(r["captions"]) == 3
        assert all(
            set(c) == {"text", "score"} and isinstance(c["text"], str) and c["score"] <= 0 for c in r["captions"]
        )
        scores_ = [c["score"] for c in r["captions"]]
        assert scores_ == sorted(scores_, reverse=True)
    err = [line for line in p.stderr.splitlines() if line.startswith("capgen: error:")]
    assert len(err) == 1 and err[0].startswith("capgen: error: broken.jpg: cannot read image")
