"""bf16 autocast of the training steps (model/device.py): on a GPU; with --bf16 auto also on a CPU
with bf16 arithmetic (AVX512-BF16 / AMX); fp32 elsewhere, and wherever CAPGEN_BF16=0."""

import contextlib
import json
import os

import pytest
import torch

from model.device import BF16_ENV, autocast_for, cpu_has_bf16, use_bf16
from model.train.args import TrainArgs
from model.train.loop import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def test_detection_follows_the_cpu():
    native = "AMX" in torch.backends.cpu.get_cpu_capability().upper() or bool(
        {"avx512_bf16", "amx_bf16"} & set(cpuinfo_flags())
    )
    assert cpu_has_bf16() is native


def test_modes_and_the_environment_switch(monkeypatch):
    monkeypatch.delenv(BF16_ENV, raising=False)
    assert [use_bf16(CPU, m) for m in ("gpu", "auto", "off")] == [False, cpu_has_bf16(), False]
    assert [use_bf16(CUDA, m) for m in ("gpu", "auto", "off")] == [True, True, False]
    monkeypatch.setenv(BF16_ENV, "0")
    assert not any(use_bf16(d, m) for d in (CPU, CUDA) for m in ("gpu", "auto"))
    amp, dtype = autocast_for(CPU, "auto")
    assert isinstance(amp, contextlib.nullcontext) and dtype == torch.float32
    monkeypatch.setenv(BF16_ENV, "1")
    amp, dtype = autocast_for(CPU, "gpu")
    with amp:
        y = torch.nn.Linear(4, 3)(torch.ones(2, 4))
    assert dtype == torch.bfloat16 and y.dtype == torch.bfloat16


@pytest.mark.parametrize("forced", ["0", "1"])
def test_a_convnet_trains_in_either_precision(train_val, tmp_path, monkeypatch, one_thread, forced):
    """The fp32 path (as on a CPU without bf16 arithmetic) and the bf16 path both train the demo's
    kind of model (a convnet from the shards) to finite losses."""
    monkeypatch.setenv(BF16_ENV, forced)
    out = str(tmp_path / "run")
    args = TrainArgs(
        train=train_val["train"],
        val=train_val["val"],
        out=out,
        epochs=1,
        batch_size=8,
        embed_dim=16,
        attention_dim=16,
        hidden_dim=16,
        encoder="convnet",
        encoder_stop="layer3",
        encoder_weights="none",
        fine_tune_encoder=True,
        workers=0,
        progress=False,
        bf16="auto",
    )
    result = train(args)
    assert result["epochs"] == 1 and result["step"] == 3
    with open(os.path.join(out, "log.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["type"] == "train"]
    assert losses and all(loss == loss and 0 < loss < 20 for loss in losses)
