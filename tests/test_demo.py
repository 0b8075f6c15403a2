"""`capgen demo --data COCO_ROOT`: the demo's recipe on a COCO 2014 layout folder that it did not
draw: one made by `capgen synth` with another seed and size, and one written by hand (other
sizes, other words, no scene truth). Toy scale: a few images, one epoch."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from model.device import BF16_ENV, cpu_has_bf16
from pipeline.synth.generator import synthesize
from tools.demo import DEMO, min_freq, run_demo

CAPGEN = os.path.join(os.path.dirname(sys.executable), "capgen")
TOY = dict(image_size=32, batch_size=4, dims=16, shard_size=8, beam=2)


def write_coco_folder(root, sizes, words):
    """A COCO 2014 layout folder: JPEGs of the given (w, h) sizes, two captions each, from `words`."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "annotations"))
    ann_id = 0
    for split, first in (("train2014", 0), ("val2014", 100)):
        os.makedirs(os.path.join(root, split))
        images, anns = [], []
        for k, (w, h) in enumerate(sizes[split]):
            name = f"photo_{first + k}.jpg"
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, split, name), quality=85)
            images.append({"id": first + k + 1, "file_name": name, "width": w, "height": h})
            for j in range(2):
                ann_id += 1
                caption = f"A {words[(k + j) % len(words)]} sits on the {words[(k + 2 * j + 1) % len(words)]}."
                anns.append({"id": ann_id, "image_id": first + k + 1, "caption": caption})
        with open(os.path.join(root, "annotations", f"captions_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns}, f)


def results(out):
    with open(os.path.join(out, "results_val.json")) as f:
        return json.load(f)


def test_min_freq_follows_the_data_size():
    assert [min_freq(n) for n in (0, 100, 3999, 4000, 10_000, 600_000)] == [1, 1, 1, 2, 5, 5]


def test_demo_on_a_synth_folder_of_another_seed_and_size(tmp_path):
    data = str(tmp_path / "coco")
    synthesize(data, 20, 11, 0.25, 90, 70)
    out = str(tmp_path / "out")
    summary = run_demo(out, epochs=1, echo=lambda m: None, data=data, **TOY)
    with open(os.path.join(data, "annotations", "captions_val2014.json")) as f:
        val_ids = sorted(img["id"] for img in json.load(f)["images"])
    got = results(out)
    assert sorted(r["image_id"] for r in got) == val_ids
    assert all(isinstance(r["caption"], str) for r in got)
    assert summary["images"] == {"train": 15, "val": 5}
    assert summary["min_freq"] == 1 and summary["data"] == os.path.abspath(data)
    assert 0.0 <= summary["attribute_accuracy"] <= 1.0  # the folder has scenes_val2014.json
    assert os.path.isfile(summary["report"]) and os.path.isfile(summary["attention_figure"])
    assert not os.path.exists(os.path.join(out, "data"))  # nothing drawn


def test_demo_trains_its_convnet_from_the_shards(tmp_path):
    out = str(tmp_path / "out")
    summary = run_demo(
        out, images=20, epochs=1, echo=lambda m: None, val_fraction=0.25, synth_size=(48, 40), encoder_lr=3e-4, **TOY
    )
    assert summary["encoder"] == "convnet layer3 32px random init, trained (lr 0.0003)"
    assert summary["precision"] == ("bf16 autocast" if cpu_has_bf16() else "fp32")  # DEMO's bf16 "auto"
    assert not os.path.exists(os.path.join(out, "features"))  # no cache of an encoder that changes
    assert len(results(out)) == summary["images"]["val"] == 5
    with open(os.path.join(out, "run", "best", "config.json")) as f:
        config = json.load(f)["config"]
    assert config["training"]["fine_tune_encoder"] is True and config["encoder"]["name"] == "convnet"


def test_demo_on_a_frozen_resnets_cached_features(tmp_path):
    out = str(tmp_path / "out")
    summary = run_demo(
        out,
        images=20,
        epochs=1,
        echo=lambda m: None,
        val_fraction=0.25,
        synth_size=(48, 40),
        encoder="resnet18",
        fine_tune=False,
        **TOY,
    )
    assert summary["encoder"] == "resnet18 layer3 32px random init, frozen"
    assert sorted(os.listdir(os.path.join(out, "features"))) == ["train.h5", "val.h5"]
    assert len(results(out)) == summary["images"]["val"] == 5


def test_cli_demo_on_a_hand_made_folder_with_other_sizes_and_words(tmp_path):
    data = str(tmp_path / "mine")
    sizes = {
        "train2014": [(200, 150), (64, 128), (333, 97), (120, 120), (48, 36), (256, 80)],
        "val2014": [(150, 200), (90, 60)],
    }
    write_coco_folder(data, sizes, ["cat", "mat", "dog", "sofa", "bird"])
    out = str(tmp_path / "out")
    p = subprocess.run(
        [CAPGEN, "demo", "--data", data, "--out", out, "--epochs", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2", BF16_ENV: "0"},  # the fp32 path, as on a CPU without bf16
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "fp32"
    assert sorted(r["image_id"] for r in results(out)) == [101, 102]
    assert summary["images"] == {"train": 6, "val": 2}
    assert "attribute_accuracy" not in summary and "attribute accuracy" not in p.stdout
    assert "Bleu_4" in summary and summary["encoder"].startswith(
        f"{DEMO['encoder']} {DEMO['stop']} {DEMO['image_size']}px"
    )
    with open(os.path.join(out, "shards", "train", "vocab.json")) as f:
        vocab = json.load(f)
    assert vocab["min_freq"] == 1 and {"cat", "mat", "dog", "sofa", "bird", "sits"} <= set(vocab["itos"])


def test_cli_demo_data_without_images_folder_is_a_one_line_error(tmp_path):
    data = tmp_path / "broken"
    write_coco_folder(str(data), {"train2014": [(40, 30)], "val2014": [(40, 30)]}, ["cat"])
    os.rename(data / "val2014", data / "elsewhere")
    p = subprocess.run(
        [CAPGEN, "demo", "--data", str(data), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith(f"capgen: error: {data / 'val2014'}: image folder not found")
