"""`capgen bench train --json` and `capgen bench loaders --json`: the quick runs' figures as
one JSON object on the last stdout line."""

import json

import pytest
from click.testing import CliRunner

from tools.cli.main import cli


def last_line_json(args):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0
    head, last = res.stdout.rstrip("\n").rsplit("\n", 1)
    return head, json.loads(last)


@pytest.mark.usefixtures("one_thread")
def test_bench_train_json():
    head, r = last_line_json(["bench", "train", "--quick", "--json"])
    assert head.startswith("device: cpu") and "train step" in head and "beam search" in head
    assert list(r) == ["step", "beam", "gpu_step"]
    (step,) = r["step"]  # --quick: one grid
    assert list(step) == ["P", "ours", "baseline", "ratio"] and step["P"] == 16
    assert step["ours"] > 0 and step["baseline"] > 0 and step["ratio"] == pytest.approx(step["ours"] / step["baseline"])
    beam = r["beam"]
    assert list(beam) == ["batch", "ours", "baseline", "ratio"] and beam["batch"] == 6
    assert beam["ratio"] == pytest.approx(beam["ours"] / beam["baseline"])
    gpu = r["gpu_step"]  # measured on the CPU: host syncs, ops, overhead floor, shapes
    assert list(gpu) == ["batch", "budget_ms", "kinds", "shapes"] and gpu["batch"] == 16
    assert gpu["budget_ms"] == pytest.approx(1000 * 30 * 16 / 82_783)
    assert list(gpu["kinds"]) == ["features", "frozen", "finetune", "scst"]
    for kind, k in gpu["kinds"].items():
        assert list(k) == ["syncs", "sites", "log_syncs", "log_sites", "ops", "views", "floor_ms"]
        assert k["syncs"] == sum(k["sites"].values()) == (1 if kind == "scst" else 0)
        assert k["log_syncs"] == sum(k["log_sites"].values()) == (1 if kind == "scst" else 2)
        assert 0 < k["views"] < k["ops"] and k["floor_ms"] > 0
    assert gpu["shapes"]["batches"] == 10 and 0 < gpu["shapes"]["step_shapes"] and gpu["shapes"]["plans"] <= 10


def test_bench_loaders_json(tiny_shards):
    pytest.importorskip("nvidia.dali")
    shards = tiny_shards(images=24, seed=5, width=64, height=48, image_size=32, shard_size=8, preset="seed")
    head, r = last_line_json(["bench", "loaders", shards, "--image-size", "32", "--device", "cpu", "--quick", "--json"])
    assert head.startswith("loaders on CPU")
    assert all(r[k] > 0 for k in ("dali", "torchvision", "cpu"))
    assert r["batch_size"] == 16 and r["image_size"] == 32 and r["quick"] is True
    f = r["feature_checksums"]  # the feature cache read whole, without and with fletcher32
    assert list(f) == ["plain", "fletcher32", "ratio", "images", "mb"] and (f["images"], f["mb"]) == (64, 16.8)
    assert f["plain"] > 0 and f["fletcher32"] > 0 and f["ratio"] == round(f["plain"] / f["fletcher32"], 3)


def test_bench_caption_json(tiny_trained_checkpoint):
    head, r = last_line_json(
        ["bench", "caption", "--checkpoint", tiny_trained_checkpoint, "--quick", "--threads", "1", "--json"]
    )
    assert "max abs difference onnxruntime vs torch" in head and "bench caption: 16 640x480 images -> 32 px" in head
    assert list(r) == ["threads", "beam", "images", "rounds", "batches"]
    assert (r["threads"], r["beam"], r["images"], r["rounds"]) == (1, 3, 16, 1)
    assert [b["batch"] for b in r["batches"]] == [1, 16]
    for b in r["batches"]:
        assert list(b) == ["batch", "torch", "onnxruntime", "ratio", "same_captions"]
        for name in ("torch", "onnxruntime"):
            assert list(b[name]) == ["images_per_s", "p50_ms", "p95_ms"] and b[name]["images_per_s"] > 0
            assert 0 < b[name]["p50_ms"] <= b[name]["p95_ms"]
        assert b["ratio"] == pytest.approx(b["onnxruntime"]["images_per_s"] / b["torch"]["images_per_s"])
        assert b["same_captions"] == 16
