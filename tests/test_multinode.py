"""The README's multi-node torchrun recipe (c10d rendezvous, --nnodes, --resume), as two
one-process 'nodes' on this machine: gloo on CPU, the same code path as NCCL nodes."""

import os
import subprocess
import sys

from model.runs.log import read_log
from tools.serve.process import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nodes(data, run, epochs, port):
    """Start the recipe's command once per node, like `srun torchrun ...`; wait for both."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ROOT}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "capgen-test",
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
        str(epochs),
        "--resume",
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
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [o for o, _ in outs]


def test_two_nodes_c10d_rendezvous_then_resume(tiny_shards, tmp_path):
    data = {
        name: tiny_shards(
            images=30,
            seed=11,
            width=48,
            height=40,
            val_fraction=0.2,
            image_size=32,
            shard_size=6,
            preset="coco",
            split=split,
        )
        for split, name in (("train2014", "train"), ("val2014", "val"))
    }
    run = str(tmp_path / "run")
    nodes(data, run, 1, free_port())  # --resume with no RUN/last yet: a fresh start
    stdout = nodes(data, run, 2, free_port())  # the same command again: continues at epoch 2
    epochs = [r for r in read_log(os.path.join(run, "log.jsonl")) if r["type"] == "epoch"]
    assert [(r["epoch"], r["world"], r["samples"]) for r in epochs] == [(0, 2, 24), (1, 2, 24)]
    assert all(n > 0 for r in epochs for n in r["samples_per_rank"])
    assert os.path.isfile(os.path.join(run, "last", "model.safetensors"))
    assert sum("best val BLEU-4" in out for out in stdout) == 1  # rank 0 reports, on one node
