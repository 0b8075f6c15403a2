"""Text to image: scores equal the decoder's own teacher forcing, `capgen search` on a shard set
and on a cache, its bad inputs, the retrieval metrics, and `capgen eval --retrieval` on a
small trained model."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_in_process import capgen
from serve_checkpoint import make_checkpoint

from model.infer.captioner import Captioner
from model.retrieval.index import ImageIndex, encode_query
from model.retrieval.metrics import named_objects, recall_at, scene_has, source_ranks
from model.retrieval.source import load_index
from pipeline.errors import CapgenError
from pipeline.loading.features import FeatureFile
from pipeline.shards.shardset import read_captions
from tools.bench.padded_decoder import padded_forward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run"))


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards(images=12, seed=21, width=64, height=48, image_size=128, shard_size=5, preset="coco")


@pytest.fixture(scope="module")
def cache(checkpoint, shards, tmp_path_factory):
    """The shard set's features through the checkpoint's encoder, written by load_index(cache=...)."""
    path = str(tmp_path_factory.mktemp("cache") / "features.h5")
    load_index(checkpoint, shards, "cpu", cache=path, progress=False)
    return path


def test_scores_are_the_decoders_teacher_forced_mean_log_prob(checkpoint, cache, one_thread):
    captioner = Captioner.load(checkpoint)
    features = FeatureFile(cache).read(0, 12)
    queries = [encode_query(q, captioner.vocab) for q in ("a red circle", "the large blue square on the left", "star")]
    index = ImageIndex(captioner.decoder, features, np.arange(12), device="cpu")
    scores = index.score(queries)
    assert scores.shape == (12, 3)
    with torch.no_grad():
        for q, query in enumerate(queries):
            tokens = torch.tensor(query.tokens)[None, None].expand(12, 1, -1)
            logits, _ = padded_forward(captioner.decoder, torch.from_numpy(features).float(), tokens)
            log_probs = F.log_softmax(logits, -1).gather(3, tokens[:, :, 1:, None])
            assert torch.allclose(scores[:, q], log_probs.mean(dim=(1, 2, 3)), atol=1e-5)
    index.block_elements = 1  # one image per block: the same scores
    assert index.block_rows(3) == 1 and torch.allclose(index.score(queries), scores, atol=1e-6)


def test_queries_are_cleaned_with_the_checkpoints_preset(checkpoint):
    vocab = Captioner.load(checkpoint).vocab
    q = encode_query("A RED zorg, and a Blip!", vocab)
    assert q.unknown == ["zorg", "and", "blip"]
    assert vocab.words(q.tokens) == ["a", "red", "<unk>", "<unk>", "a", "<unk>"]
    for text, cause in (
        ("", "no words after cleaning"),
        ("?!", "no words after cleaning"),
        ("zorg blip", "every word is unknown to the checkpoint's vocabulary (zorg, blip)"),
    ):
        with pytest.raises(CapgenError, match=cause.replace("(", r"\(").replace(")", r"\)")):
            encode_query(text, vocab)


def test_search_a_shard_set_and_its_cache(checkpoint, shards, cache, tmp_path, capsys, monkeypatch):
    status, out, _ = capgen(
        [
            "search",
            "--checkpoint",
            checkpoint,
            "--data",
            cache,
            "--top",
            "3",
            "--json",
            "--quiet",
            "a red circle",
            "blue zorg",
        ],
        capsys,
        monkeypatch,
    )
    assert status == 0
    first, second = map(json.loads, out.splitlines())
    assert first["query"] == "a red circle" and first["unknown_words"] == [] and second["unknown_words"] == ["zorg"]
    ids = read_captions(shards)
    assert len(first["results"]) == 3 and all(r["image_id"] in ids for r in first["results"])
    assert all(r["file_name"] == f"COCO_train2014_{r['image_id']:012d}.jpg" for r in first["results"])
    assert [r["score"] for r in first["results"]] == sorted((r["score"] for r in first["results"]), reverse=True)
    # The shard set itself (its features made in memory) ranks the same.
    status, again, _ = capgen(
        [
            "search",
            "--checkpoint",
            checkpoint,
            "--data",
            shards,
            "--top",
            "3",
            "--json",
            "--quiet",
            "a red circle",
            "blue zorg",
        ],
        capsys,
        monkeypatch,
    )
    assert status == 0 and again == out
    status, text, _ = capgen(
        ["search", "--checkpoint", checkpoint, "--data", cache, "--top", "2", "--quiet", "a red circle"],
        capsys,
        monkeypatch,
    )
    lines = text.splitlines()
    assert lines[0] == "a red circle  (12 images)" and len(lines) == 3
    top = first["results"][0]
    assert lines[1].split() == ["1.", str(top["image_id"]), top["file_name"], f"{top['score']:.4f}"]


def test_search_bad_inputs(checkpoint, shards, cache, tiny_shards, tmp_path, capsys, monkeypatch):
    from model.infer.extract import extract

    small = tiny_shards(images=12, seed=21, width=64, height=48, image_size=32, shard_size=5, preset="coco")
    other = str(make_checkpoint(tmp_path / "other", seed=1))  # another random encoder
    layer4 = str(tmp_path / "layer4.h5")
    with pytest.warns(UserWarning, match="random init"):
        extract(shards, layer4, "resnet18", "layer4", "none", batch_size=8, workers=0, progress=False)
    base = ["search", "--checkpoint", checkpoint, "--data", cache, "--quiet"]
    cases = [
        (base + [""], "query '': no words after cleaning (text preset coco)"),
        (base + ["zorg"], "query 'zorg': every word is unknown to the checkpoint's vocabulary (zorg)"),
        (base + ["--top", "0", "red"], "--top: must be at least 1 (got 0)"),
        (
            ["search", "--checkpoint", other, "--data", cache, "red"],
            f"{cache}: features come from other resnet18 weights than the checkpoint's encoder",
        ),
        (
            ["search", "--checkpoint", checkpoint, "--data", layer4, "red"],
            f"{layer4}: features from stop 'layer4', the checkpoint's encoder has 'layer3'",
        ),
        (
            ["search", "--checkpoint", checkpoint, "--data", cache, "--cache", str(tmp_path / "x.h5"), "red"],
            f"--cache: {cache} is a feature cache already",
        ),
        # model/infer/source_check.py: search and eval check a source alike
        (
            ["search", "--checkpoint", checkpoint, "--data", small, "red"],
            f"{small}: images are 32 px, {checkpoint} wants 128",
        ),
        (
            ["eval", "--checkpoint", checkpoint, "--data", small, "--out", str(tmp_path / "r.json")],
            f"{small}: images are 32 px, {checkpoint} wants 128",
        ),
        (
            ["eval", "--checkpoint", other, "--data", cache, "--out", str(tmp_path / "r.json")],
            f"{cache}: features come from other resnet18 weights than the checkpoint's encoder",
        ),
    ]
    for args, message in cases:
        status, out, err = capgen(args, capsys, monkeypatch)
        assert (status, out, err) == (1, "", f"capgen: error: {message}\n"), args


def test_retrieval_metrics():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.9, 0.4]])  # [images, queries]
    ranks = source_ranks(scores, [0, 1, 2])
    assert ranks.tolist() == [0, 1, 2]
    assert recall_at(ranks, (1, 2, 3)) == {"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0}
    assert named_objects("a small red circle left of a box") == [("red", "circle"), (None, "square")]
    scene = {"objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}]}
    assert scene_has([("red", "circle"), (None, "square")], scene)
    assert not scene_has([("blue", "circle")], scene) and not scene_has([("red", "star")], scene)


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory):
    """A tiny model trained 2 epochs on cached features, and the val cache and scenes."""
    from model.infer.extract import extract
    from model.train.args import TrainArgs
    from model.train.loop import train

    root = tmp_path_factory.mktemp("retrieval_train")
    caches = {}
    for split in ("train2014", "val2014"):
        sh = tiny_shards(
            images=40,
            seed=12,
            width=48,
            height=40,
            val_fraction=0.25,
            image_size=32,
            shard_size=10,
            preset="coco",
            split=split,
        )
        caches[split] = str(root / f"{split}.h5")
        with pytest.warns(UserWarning, match="random init"):
            extract(sh, caches[split], "resnet18", "layer3", "none", batch_size=8, workers=0, progress=False)
    run = str(root / "run")
    train(
        TrainArgs(
            train=caches["train2014"],
            val=caches["val2014"],
            out=run,
            epochs=2,
            batch_size=4,
            embed_dim=16,
            attention_dim=16,
            hidden_dim=16,
            workers=0,
            progress=False,
            seed=3,
            beam=1,
        )
    )
    scenes = os.path.join(os.path.dirname(sh), "data", "annotations", "scenes_val2014.json")
    return run, caches["val2014"], sh, scenes


def test_eval_retrieval(trained, capsys, monkeypatch, one_thread):
    run, val, val_shards, scenes = trained
    captions = read_captions(val_shards)
    status, out, _ = capgen(
        ["eval", "--checkpoint", run, "--data", val, "--retrieval", "--scenes", scenes, "--json", "--quiet"],
        capsys,
        monkeypatch,
    )
    assert status == 0
    r = json.loads(out.splitlines()[-1])
    assert r["images"] == len(captions) == 10
    assert r["queries"] == sum(map(len, captions.values())) and r["skipped_queries"] == 0
    assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] == 1.0  # 10 images: the source is always in the top 10
    assert r["scene_queries"] == r["queries"] and 0 <= r["P@1_scene"] <= 1 and r["queries_per_s"] > 0
    assert out.splitlines()[0].startswith(
        f"{val}: text-to-image retrieval over 10 images, {r['queries']} caption "
        "queries (0 skipped: no known word), text preset coco; "
    )
    status, out, _ = capgen(
        ["eval", "--checkpoint", run, "--data", val, "--retrieval", "--retrieval-images", "4", "--json", "--quiet"],
        capsys,
        monkeypatch,
    )
    r4 = json.loads(out.splitlines()[-1])
    ids = sorted(captions)[:4]  # the cache holds the images in shard order: by id
    assert r4["images"] == 4 and r4["queries"] == sum(len(captions[i]) for i in ids)
    assert r4["R@5"] == 1.0 and "P@1_scene" not in r4  # tiny_shards' manifests name no dataset: no default scenes


def test_eval_and_retrieval_read_the_same_default_scenes(checkpoint, tmp_path, capsys, monkeypatch, one_thread):
    """A set built with a relative --coco-root, evaluated from another folder: `capgen eval` and
    `capgen eval --retrieval` both find the scenes file above the set (pipeline/synth/scenes.py's
    default_scenes), not one relative to where they run."""
    from pipeline.synth.generator import synthesize

    built, elsewhere = tmp_path / "built", tmp_path / "elsewhere"
    synthesize(str(built / "data"), 6, seed=5, val_fraction=0.0, width=48, height=40, workers=1)
    elsewhere.mkdir()
    monkeypatch.chdir(built)
    build = ["shards", "build", "--coco-root", "data", "--split", "train2014", "--out", "sets/train"]
    status, _, _ = capgen(
        [*build, "--image-size", "128", "--workers", "1", "--min-freq", "1", "--quiet"], capsys, monkeypatch
    )
    assert status == 0
    monkeypatch.chdir(elsewhere)
    data, scenes = str(built / "sets" / "train"), str(built / "data" / "annotations" / "scenes_train2014.json")
    status, out, _ = capgen(
        ["eval", "--checkpoint", checkpoint, "--data", data, "--out", "results.json", "--beam", "1", "--quiet"],
        capsys,
        monkeypatch,
    )
    assert status == 0
    assert out.splitlines()[0] == f"results.json: 6 images, beam 1, text preset coco, scenes {scenes}"
    status, out, _ = capgen(
        ["eval", "--checkpoint", checkpoint, "--data", data, "--retrieval", "--json", "--quiet"], capsys, monkeypatch
    )
    assert status == 0
    r = json.loads(out.splitlines()[-1])
    assert r["scenes"] == scenes and r["images"] == 6


def test_bench_search_json(capsys, monkeypatch, one_thread):
    status, out, _ = capgen(["bench", "search", "--quick", "--json", "--device", "cpu"], capsys, monkeypatch)
    assert status == 0
    head, last = out.rstrip("\n").rsplit("\n", 1)
    r = json.loads(last)
    assert head.startswith("search on cpu (1 threads): 300 images of 8x8x256 features")
    assert r["images"] == 300 and r["queries"] == 2 and r["query_tokens"] == 8
    assert r["ratio"] == pytest.approx(r["images_per_s"] / r["baseline_images_per_s"])
    assert r["batch_ratio"] == pytest.approx(r["batched_queries_per_s"] / r["serial_queries_per_s"])
