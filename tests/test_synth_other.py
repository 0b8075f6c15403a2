"""`capgen synth --style other` (pipeline/synth/other.py): a second synthetic style, with other
shapes, colours, sizes, counts, backgrounds and wordings, in the same COCO layout and scene
contract as the first, checked by the same checker."""

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import CapgenError
from pipeline.synth import other
from pipeline.synth.generator import synthesize
from pipeline.synth.scenes import (
    COLOURS,
    OTHER_COLOURS,
    OTHER_SHAPE_WORDS,
    OTHER_SIZE_WORDS,
    POSITIONS,
    SHAPES,
    attribute_scores,
    check_caption,
    read_scenes,
)
from tools.cli.main import cli

N, W, H = 16, 160, 120


def tree(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    counts = synthesize(str(root / "a"), N, seed=5, val_fraction=0.25, width=W, height=H, workers=1, style="other")
    return root, counts


def test_coco_layout_and_scene_truth(data):
    root, counts = data
    assert counts == {
        "images": 16,
        "train2014": 12,
        "val2014": 4,
        "captions": counts["captions"],
        "karpathy": {"val": 1, "test": 1, "restval": 2},
    }
    assert sorted(os.listdir(root / "a" / "annotations")) == [
        "captions_train2014.json",
        "captions_val2014.json",
        "scenes_train2014.json",
        "scenes_val2014.json",
    ]
    for split, n in (("train2014", 12), ("val2014", 4)):
        coco = json.loads((root / "a" / "annotations" / f"captions_{split}.json").read_text())
        assert len(coco["images"]) == n == len(os.listdir(root / "a" / split))
        assert {(img["width"], img["height"]) for img in coco["images"]} == {(W, H)}
        scenes = read_scenes(root / "a" / "annotations" / f"scenes_{split}.json")
        assert set(scenes) == {img["id"] for img in coco["images"]}
        for ann in coco["annotations"]:
            scene = scenes[ann["image_id"]]
            verdict = check_caption(ann["caption"], scene)
            assert verdict["all"] and verdict["complete"], (ann["caption"], scene)
        for scene in scenes.values():
            xs = [o["bbox"][0] + o["bbox"][2] / 2 for o in scene["objects"]]
            assert 1 <= len(xs) <= 4 and xs == sorted(xs)
            for o in scene["objects"]:
                assert o["colour"] in OTHER_COLOURS and o["shape"] in OTHER_SHAPE_WORDS
                assert o["size"] in OTHER_SIZE_WORDS and o["position"] in POSITIONS
                x, y, w, h = o["bbox"]
                assert 0 <= x and x + w <= W and 0 <= y and y + h <= H


def test_same_seed_same_bytes_and_another_seed_or_style_differs(data):
    root, _ = data
    synthesize(str(root / "b"), N, seed=5, val_fraction=0.25, width=W, height=H, workers=2, style="other")
    synthesize(str(root / "c"), N, seed=6, val_fraction=0.25, width=W, height=H, workers=1, style="other")
    synthesize(str(root / "d"), N, seed=5, val_fraction=0.25, width=W, height=H, workers=1)
    a, b, c, d = (tree(root / k) for k in "abcd")
    assert len(a) == N + 5 and a == b
    assert a["annotations/scenes_val2014.json"] != c["annotations/scenes_val2014.json"]
    scenes = json.loads(d["annotations/scenes_val2014.json"])["scenes"]
    assert {o["shape"] for s in scenes for o in s["objects"]} <= set(SHAPES)
    assert {o["colour"] for s in scenes for o in s["objects"]} <= set(COLOURS)


def test_many_scenes_every_kind_and_every_caption_true():
    rng = np.random.default_rng(0)
    seen = {"count": set(), "shape": set(), "colour": set(), "size": set(), "background": set()}
    for _ in range(400):
        scene = other.make_scene(rng, 640, 480)
        seen["count"].add(len(scene["objects"]))
        seen["background"].add(scene["background"])
        for o in scene["objects"]:
            for key in ("shape", "colour", "size"):
                seen[key].add(o[key])
        texts = other.captions(rng, scene, 5)
        assert len(set(texts)) == 5
        for text in texts:
            model_form = " ".join(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1)
            for form in (text, model_form):
                verdict = check_caption(form, scene)
                assert verdict["all"] and verdict["complete"], (form, scene)
    assert seen == {
        "count": {1, 2, 3, 4},
        "shape": set(OTHER_SHAPE_WORDS),
        "colour": set(OTHER_COLOURS),
        "size": set(OTHER_SIZE_WORDS),
        "background": set(other.BACKGROUNDS),
    }


def test_wrong_shape_or_size_is_caught():
    scene = {
        "objects": [
            {"shape": "hexagon", "colour": "pink", "size": "medium", "position": "left", "bbox": [10, 40, 30, 30]},
            {"shape": "ring", "colour": "black", "size": "small", "position": "right", "bbox": [110, 40, 20, 20]},
        ]
    }
    captions = {
        1: "we see a medium sized pink hexagon on the left and a black hoop on the right",
        2: "we see a pink pentagon on the left and a black ring on the right",
        3: "we see a big pink hexagon on the left and a black ring on the right",
    }
    scores = attribute_scores(captions, dict.fromkeys(captions, scene))
    assert scores == {"colour": 1.0, "shape": 2 / 3, "size": 2 / 3, "position": 1.0, "count": 1.0, "all": 1 / 3}


def test_cli_style_other_and_unknown_style(tmp_path):
    args = ["synth", str(tmp_path / "d"), "--images", "3", "--seed", "1", "--width", "64", "--height", "48"]
    result = CliRunner().invoke(cli, [*args, "--style", "other"])
    assert result.exit_code == 0, result.output
    assert "3 images (train2014 2, val2014 1" in result.output
    scenes = json.loads((tmp_path / "d" / "annotations" / "scenes_train2014.json").read_text())["scenes"]
    assert {o["shape"] for s in scenes for o in s["objects"]} <= set(OTHER_SHAPE_WORDS)
    with pytest.raises(CapgenError) as err:
        synthesize(str(tmp_path / "e"), 3, seed=1, style="cubes")
    assert str(err.value) == f"{tmp_path / 'e'}: unknown style 'cubes' (one of: shapes, other)"
    assert not os.path.exists(tmp_path / "e")
