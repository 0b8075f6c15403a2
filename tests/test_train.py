"""Trainer: exact resume, checkpoints a captioner can load, DDP with two gloo processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from model.runs.log import read_log
from model.train.args import TrainArgs
from model.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(batch_size=4, embed_dim=16, attention_dim=16, hidden_dim=16, workers=0, log_every=1, progress=False, seed=3)


@pytest.fixture(scope="module")
def data(train_val):
    """Shard sets (32 px, shards of 6) and feature caches for 24 train / 6 val images."""
    return train_val


def losses(run):
    return [r["loss"] for r in read_log(os.path.join(run, "log.jsonl")) if r["type"] == "train"]


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """An uninterrupted 2-epoch run on the feature caches."""
    run = str(tmp_path_factory.mktemp("whole") / "run")
    result = train(TrainArgs(train=data["train_h5"], val=data["val_h5"], out=run, epochs=2, **TINY))
    assert result["best_dir"] == os.path.join(run, "best") and result["epochs"] == 2
    return run


def test_resume_reproduces_the_uninterrupted_run(data, whole, tmp_path):
    args = dict(train=data["train_h5"], val=data["val_h5"], **TINY)
    parts = str(tmp_path / "parts")
    train(TrainArgs(out=parts, epochs=1, **args))
    # A run killed during epoch 2 leaves that epoch's records behind: resume drops them.
    with open(os.path.join(parts, "log.jsonl"), "a") as f:
        f.write(json.dumps({"type": "train", "epoch": 1, "step": 99, "loss": 0.0}) + "\n")
    train(TrainArgs(out=parts, epochs=2, resume=True, **args))

    assert len(losses(whole)) == 2 * 6  # 24 images / 4 per step, logged every step
    assert losses(parts) == losses(whole)
    a, b = (load_file(os.path.join(r, "last", "model.safetensors")) for r in (whole, parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ts = torch.load(os.path.join(parts, "last", "trainer.pt"), weights_only=True)
    assert (ts["epoch"], ts["step"]) == (2, 12)
    assert {"optimizer", "scheduler", "rng", "best", "bad_epochs", "seed"} <= ts.keys()
    log = read_log(os.path.join(parts, "log.jsonl"))
    assert [r["epoch"] for r in log if r["type"] == "val"] == [0, 1]
    train_rec = next(r for r in log if r["type"] == "train")
    assert {"loss", "top5", "lr", "samples_per_s"} <= train_rec.keys()
    assert {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "lr", "best"} <= next(r for r in log if r["type"] == "val").keys()
    with open(os.path.join(parts, "curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_rebuilds_a_captioner_for_raw_images(data, whole):
    from PIL import Image

    from model.infer.captioner import Captioner
    from pipeline.loading.features import FeatureFile

    with open(os.path.join(whole, "best", "config.json")) as f:
        config = json.load(f)["config"]
    assert config["encoder"] == {"name": "resnet18", "stop": "layer3", "weights": "none", "grid": [2, 2]}
    assert config["image"]["size"] == 32 and config["image"]["resize_mode"] == "stretch"
    # The decoder standardises with the cache's channel statistics.
    state = load_file(os.path.join(whole, "best", "model.safetensors"))
    assert torch.equal(state["decoder.feature_mean"], torch.from_numpy(FeatureFile(data["train_h5"]).channel_mean))
    out = Captioner.load(os.path.join(whole, "best")).caption([Image.new("LA", (50, 30))], beam=2, topk=2)
    assert len(out) == 1 and len(out[0]["captions"]) == 2


def test_ddp_two_gloo_processes(data, tmp_path):
    """torchrun, 2 CPU processes over 4 train shards (24 images): each rank trains on its shards."""
    run = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ROOT}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tools.cli",
        "train",
        "--train",
        data["train"],
        "--val",
        data["val"],
        "--out",
        run,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--embed-dim",
        "16",
        "--attention-dim",
        "16",
        "--hidden-dim",
        "16",
        "--encoder",
        "resnet18",
        "--encoder-stop",
        "layer3",
        "--encoder-weights",
        "none",
        "--workers",
        "1",
        "--log-every",
        "1",
    ]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    epoch = [r for r in read_log(os.path.join(run, "log.jsonl")) if r["type"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["world"] == 2
    assert epoch[0]["samples"] == 24 and all(n > 0 for n in epoch[0]["samples_per_rank"])
    assert os.path.isfile(os.path.join(run, "best", "model.safetensors"))
    assert "best val BLEU-4" in p.stdout
