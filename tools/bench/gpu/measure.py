"""`capgen bench gpu`: the loaders (tools/bench/loaders.py, plus the DALI loader as the
trainer builds it and the HDF5 feature loader) and training throughput on one device, the
three ways the trainer runs, in steady state, with GPU busy %, projected COCO epoch times
and loader/training ratios:

- features: frozen features from the HDF5 cache (pipeline/loading/batches.py's FeatureBatches
  through make_loader, pinned memory, worker processes) -> decoder only;
- frozen: DALI loader -> ResNet-50 (to layer4, channels_last, no grad) -> decoder;
- finetune: the same with layers 3-4 trainable
(the training side in tools/bench/gpu/train.py; this file: the set, the loaders, the run, its report).

Encoder, decoder and optimizer are the trainer's, from TrainArgs' defaults (its
learning rates, dropout, clipping; the decoder's output layer COCO-sized). The step
is the trainer's own (model/train/step.py's TrainStep): batch to the device (uint8
images normalised there), bf16 autocast forward, masked cross-entropy + doubly
stochastic term, backward, gradient clipping, fused Adam, and the per-step statistics
kept on the device. No host sync inside the timed loop: the clock reads after
torch.cuda.synchronize at both ends.

Each mode is timed twice: fed by its loader ("with loader", what training gets) and
on one batch resident on the device ("step only", what the step can consume).
GPU busy % is NVML's utilisation, sampled every 100 ms in a thread during the timed
steps (pynvml, else `nvidia-smi -lms 100`).
"""

import datetime
import os
import tempfile
import warnings

import torch

from model.device import default_device
from model.infer.extract import extract
from model.train.args import TrainArgs
from pipeline.errors import CapgenError
from pipeline.loading.loader import make_loader
from pipeline.shards import build as sh
from pipeline.shards.shardset import read_manifest
from pipeline.sources.coco import read_coco
from pipeline.synth.generator import synthesize
from tools.bench import loaders
from tools.bench.gpu.train import COCO_TRAIN_IMAGES, COCO_VOCAB, bench_training, image_loader
from tools.bench.timing import loader_only

GOAL = 1.5  # loader images/s over what the training step consumes


def feature_loader_rate(features, batch_size, batches, warmup, workers, pin_memory):
    """Loader-only images/s of the HDF5 feature loader (host side)."""
    loader = make_loader(features, batch_size, shuffle=True, workers=workers, pin_memory=pin_memory, loader="cpu")
    return loader_only(loader, batches, warmup, torch.device("cpu"))["images_per_s"]


def image_loader_rate(shards, batch_size, batches, warmup, device, workers):
    """Loader-only figures of the loader image_loader gives the trainer (DALI)."""
    return loader_only(image_loader(shards, batch_size, device, workers), batches, warmup, device)


def synthetic_set(root, images, image_size=256, width=640, height=480, workers=None, device=None):
    """capgen synth -> shards build -> features extract (resnet50 layer4, random init) under root;
    returns (shard set folder, feature cache path)."""
    data, out, h5 = (os.path.join(root, n) for n in ("data", "shards", "features.h5"))
    synthesize(data, images, seed=0, val_fraction=0, width=width, height=height, workers=workers)
    sh.build(
        read_coco(data, "train2014"),
        out,
        sh.Options(name="bench", image_size=image_size, shard_size=max(1, min(1000, images // 8))),
        {"bench": True},
        workers=workers,
        progress=False,
    )
    extract_features(out, h5, workers or 1, device)
    return out, h5


def extract_features(shards, out, workers, device=None, batch_size=256):
    """model/infer/extract.py over the set: resnet50 layer4, random init (throughput only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract(
            shards,
            out,
            "resnet50",
            "layer4",
            "none",
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=False,
        )


# ---------------------------------------------------------------- the whole run


def _versions():
    import nvidia.dali
    import torchvision

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "dali": nvidia.dali.__version__,
    }


def run(
    shards=None,
    features=None,
    batch_size=128,
    steps=100,
    warmup=10,
    device=None,
    quick=False,
    workers=None,
    vocab_size=None,
    images=None,
    echo=print,
):
    """Loader-only and training figures on one device, in one run, as one dict.

    Without `shards`, a synthetic set is made in a temporary folder (enough images for the
    timed steps); without `features`, they are extracted from the shards there. Without a
    GPU only `quick` runs (a smoke test of the code paths: tiny shapes, DALI in CPU mode)."""
    device = default_device(device)
    cuda = device.type == "cuda"
    if not cuda and not quick:
        raise CapgenError("bench gpu: no CUDA device here; --quick runs a CPU smoke test (no figures)")
    if cuda:
        if device.index is None:  # set_device and DALI want an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    cores = sh.available_cores()
    cfg = {
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "dim": TrainArgs.hidden_dim,
        "image_size": 256,
        "vocab_size": vocab_size or COCO_VOCAB,
        "workers": workers or (min(cores, 8) if cuda else 1),
        "images": images or (steps + warmup + 2) * batch_size,
        "width": 640,
        "height": 480,
    }
    if quick:  # shapes a 2-core CPU runs in seconds: code paths, not figures
        cfg.update(
            batch_size=min(batch_size, 4),
            steps=2,
            warmup=1,
            dim=32,
            image_size=32,
            vocab_size=vocab_size or 1,
            images=images or 24,
            width=64,
            height=48,
        )
    threads = torch.get_num_threads()
    if not cuda:  # one intra-op thread: OpenMP spin-waits cost 100x on a shared 2-core machine
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="capgen-bench-gpu-") as tmp:
            return _run(shards, features, device, quick, cores, cfg, tmp, echo)
    finally:
        torch.set_num_threads(threads)


def _run(shards, features, device, quick, cores, cfg, tmp, echo):
    cuda = device.type == "cuda"
    bs, steps, warmup, workers = cfg["batch_size"], cfg["steps"], cfg["warmup"], cfg["workers"]
    r = {
        "smoke": quick or not cuda,
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({cores} cores)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "batch_size": bs,
        "steps": steps,
        "warmup": warmup,
        "cores": cores,
        "loader_workers": workers,
        **_versions(),
    }
    if shards is None:
        echo(f"bench gpu: making a synthetic set of {cfg['images']} images in {tmp}")
        shards, features = synthetic_set(
            tmp, cfg["images"], cfg["image_size"], cfg["width"], cfg["height"], workers=cores, device=device
        )
    elif features is None:
        echo(f"bench gpu: extracting features of {shards} into {tmp}")
        features = os.path.join(tmp, "features.h5")
        extract_features(shards, features, cores, device)
    r["shards"], r["features"] = os.path.abspath(shards), os.path.abspath(features)
    r["image_size"] = image_size = int(read_manifest(shards)["image_size"])

    echo("bench gpu: loaders")
    batches = 4 if quick else max(steps, 20)
    lo = loaders.run(shards, bs, image_size, batches=batches, device=str(device), quick=quick)
    dali = image_loader_rate(shards, bs, batches, 2, device, workers)
    lo["dali_trainer"], lo["gpu_busy"]["dali_trainer"] = dali["images_per_s"], dali["gpu_busy"]
    lo["features"] = feature_loader_rate(features, bs, batches, 2, workers, cuda)
    r["loaders"] = lo

    echo("bench gpu: training")
    r["train"] = t = bench_training(
        shards, features, bs, steps, warmup, device, cfg["vocab_size"], workers, dim=cfg["dim"]
    )
    r["epoch"] = {"images": COCO_TRAIN_IMAGES, "captions": COCO_TRAIN_IMAGES * t["features"]["captions_per_image"]}
    consume = {m: t[m]["step_only"]["images_per_s"] for m in t}
    r["ratios"] = {
        "goal": GOAL,
        "dali_over_frozen": lo["dali_trainer"] / consume["frozen"],
        "dali_over_finetune": lo["dali_trainer"] / consume["finetune"],
        "cpu_over_frozen": lo["cpu"] / consume["frozen"],
        "cpu_over_finetune": lo["cpu"] / consume["finetune"],
        "features_over_decoder": lo["features"] / consume["features"],
    }
    return r


def _pct(x):
    return "   n/a" if x is None else f"{x:5.0f}%"


def _clock(seconds):
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def report(r):
    t, lo = r["train"], r["loaders"]
    any_mode = next(iter(t.values()))
    lines = []
    if r["smoke"]:
        lines.append("SMOKE RUN (--quick or no GPU): tiny batches and steps; these are not figures.")
    lines += [
        f"capgen bench gpu on {r['device']}, {r['date']}",
        f"  batch {r['batch_size']} images x {any_mode['captions_per_image']} captions, {r['image_size']}x"
        f"{r['image_size']}, {r['steps']} timed steps after {r['warmup']}; torch {r['torch']} (CUDA "
        f"{r['cuda']}), DALI {r['dali']}, {r['cores']} CPU cores",
        "",
        f"  {'loader only, batch ' + str(lo['batch_size']):<46} {'images/s':>9}  {'busy':>6}",
    ]
    busy = lo["gpu_busy"]
    rows = [
        ("dali, as the trainer builds it (make_loader)", lo["dali_trainer"], busy.get("dali_trainer")),
        (f"dali ({lo['dali_threads']} threads)", lo["dali"], busy.get("dali")),
        ("torchvision decode_jpeg (bytes in RAM)", lo["torchvision"], busy.get("torchvision")),
        (f"cpu webdataset loader ({lo['cpu_workers']} workers)", lo["cpu"], None),
        (f"hdf5 features ({r['loader_workers']} workers)", lo["features"], None),
    ]
    for name, rate, b in rows:
        lines.append(f"  {name:<46} {rate:9.0f}  {_pct(b)}")
    lines += [
        "",
        f"training: the trainer's step (masked CE + doubly stochastic, clip {TrainArgs.grad_clip:g}, Adam; "
        f"on a GPU bf16 autocast, fused Adam), decoder vocab {any_mode['vocab_size']}, "
        f"dims {any_mode['decoder_dim']}",
        "                          with its loader                      step only (batch on device)",
        "  mode                  images/s captions/s  busy  epoch      images/s  busy  epoch    peak GB",
    ]
    names = {"features": "hdf5 features", "frozen": "e2e, frozen enc", "finetune": "e2e, fine-tune 3-4"}
    for mode, m in t.items():
        f, a = m["with_loader"], m["step_only"]
        mem = "    n/a" if m["peak_memory_gb"] is None else f"{m['peak_memory_gb']:7.1f}"
        lines.append(
            f"  {names[mode]:<20} {f['images_per_s']:9.0f} {f['captions_per_s']:10.0f} "
            f"{_pct(f['gpu_busy'])} {_clock(f['epoch_s']):>7}   {a['images_per_s']:9.0f} "
            f"{_pct(a['gpu_busy'])} {_clock(a['epoch_s']):>7}  {mem}"
        )
    e, q = r["epoch"], r["ratios"]
    lines += [
        f"  epoch = {e['images']:,} images x {e['captions'] // e['images']} captions ({e['captions']:,}), "
        "projected from the images/s",
        "",
        f"loader / training consumption (loader-only images/s over step-only images/s; goal >= {q['goal']}x)",
    ]
    labels = {
        "dali_over_frozen": "dali (trainer) / e2e frozen",
        "dali_over_finetune": "dali (trainer) / e2e fine-tune",
        "cpu_over_frozen": "cpu loader / e2e frozen",
        "cpu_over_finetune": "cpu loader / e2e fine-tune",
        "features_over_decoder": "hdf5 features / decoder",
    }
    for key, label in labels.items():
        lines.append(f"  {label:<32} {q[key]:6.2f}x  {'ok' if q[key] >= q['goal'] else 'below goal'}")
    if r["smoke"]:
        lines.append("SMOKE RUN: code paths exercised; figures above mean nothing.")
    return "\n".join(lines)
