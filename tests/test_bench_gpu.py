"""`capgen bench gpu --quick` on a CPU: every code path (loaders, the three training modes,
the report, the JSON) on tiny shapes, labelled a smoke run; GPU busy % from pynvml or nvidia-smi."""

import json
import os
import sys
import types

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("nvidia.dali")

from tools.bench.gpu.measure import COCO_TRAIN_IMAGES  # noqa: E402
from tools.bench.timing import GpuBusy  # noqa: E402
from tools.cli.main import cli  # noqa: E402


@pytest.fixture(scope="module")
def data(tiny_shards, tmp_path_factory):
    """24 synthetic images -> 32 px shards (3 of 8) -> resnet50 layer4 features (1x1 grid)."""
    from tools.bench.gpu.measure import extract_features

    shard_set = tiny_shards(images=24, seed=5, width=64, height=48, image_size=32, shard_size=8, preset="seed")
    features = str(tmp_path_factory.mktemp("bench_gpu") / "f.h5")
    extract_features(shard_set, features, workers=0, device="cpu")
    return shard_set, features


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run")
def test_quick_runs_on_cpu_and_says_it_is_a_smoke_run(data, tmp_path):
    shards, features = data
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        cli,
        ["bench", "gpu", "--shards", shards, "--features", features, "--quick", "--json", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0
    text = res.stdout
    assert text.startswith("SMOKE RUN") and text.rstrip().endswith(f"{out}: written")
    assert "capgen bench gpu on CPU" in text and "e2e, fine-tune 3-4" in text
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["batch_size"] == 4 and r["steps"] == 2 and r["image_size"] == 32
    assert r["shards"] == os.path.abspath(shards) and r["epoch"] == {"images": 82783, "captions": 413915}
    assert all(r["loaders"][k] > 0 for k in ("dali", "dali_trainer", "torchvision", "cpu", "features"))
    t = r["train"]
    assert list(t) == ["features", "frozen", "finetune"]
    for m in t.values():
        assert m["captions_per_image"] == 5 and m["T"] == 22 and m["vocab_size"] == m["set_vocab_size"]
        for part in (m["with_loader"], m["step_only"]):
            assert part["images"] == 8 and part["gpu_busy"] is None
            assert part["captions_per_s"] == pytest.approx(5 * part["images_per_s"])
            assert part["epoch_s"] == pytest.approx(COCO_TRAIN_IMAGES / part["images_per_s"])
    assert t["features"]["input_shape"] == [1, 2048]  # 32 px -> a 1x1 grid of layer4 features
    assert t["frozen"]["input_shape"] == t["finetune"]["input_shape"] == [3, 32, 32]  # the set's size
    assert t["features"]["loader"] == "FeatureBatches, 1 workers"
    assert t["frozen"]["loader"] == "DALI CPU mode"
    # Fine-tuning trains layers 3-4 on top of the decoder; frozen trains the decoder alone.
    assert t["frozen"]["trainable_params"] == t["features"]["trainable_params"]
    assert t["finetune"]["trainable_params"] > t["frozen"]["trainable_params"] + 20_000_000
    q = r["ratios"]
    assert q["goal"] == 1.5
    consumed = t["frozen"]["step_only"]["images_per_s"]
    assert q["dali_over_frozen"] == pytest.approx(r["loaders"]["dali_trainer"] / consumed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU error")
def test_without_a_gpu_only_quick_runs(data, monkeypatch, capsys):
    from tools.cli.main import main

    shards, features = data
    monkeypatch.setattr(sys, "argv", ["capgen", "bench", "gpu", "--shards", shards, "--features", features])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "capgen: error: bench gpu: no CUDA device here; --quick runs a CPU smoke test (no figures)\n"
    )


def test_busy_from_pynvml(monkeypatch):
    readings = iter(range(10, 100_000, 10))
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: ("handle", i),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=next(readings)),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with GpuBusy(torch.device("cuda", 0), period=0.01) as busy:
        import time

        time.sleep(0.2)
    n = len(busy.samples)
    assert busy.source == "nvml" and n >= 3
    assert busy.samples == list(range(10, 10 * n + 1, 10)) and busy.mean == pytest.approx(5 * (n + 1))


def test_busy_from_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nwhile true; do echo 40; echo 60; sleep 0.02; done\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with GpuBusy(torch.device("cuda", 0), period=0.1) as busy:
        import time

        time.sleep(0.3)
    assert busy.source == "nvidia-smi" and len(busy.samples) >= 2 and set(busy.samples) <= {40, 60}
    assert 40 <= busy.mean <= 60
    args = (tmp_path / "args").read_text().split()
    assert "--query-gpu=utilization.gpu" in args and "-lms=100" in args


def test_no_busy_on_cpu():
    with GpuBusy(torch.device("cpu")) as busy:
        pass
    assert busy.mean is None and busy.source is None and busy.samples == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run")
def test_json_without_a_file_is_the_last_stdout_line(data):
    shards, features = data
    res = CliRunner().invoke(
        cli, ["bench", "gpu", "--shards", shards, "--features", features, "--quick", "--json"], catch_exceptions=False
    )
    assert res.exit_code == 0
    head, last = res.stdout.rstrip("\n").rsplit("\n", 1)
    r = json.loads(last)
    assert head.startswith("SMOKE RUN") and "written" not in res.stdout
    assert r["smoke"] is True and list(r["train"]) == ["features", "frozen", "finetune"]
    assert all(r["loaders"][k] > 0 for k in ("dali", "dali_trainer", "torchvision", "cpu", "features"))
