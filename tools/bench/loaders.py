"""Loader-only throughput (images/s) on one shard set, three ways, in the same run:

- dali: pipeline/dali.py, nvJPEG decode + crop/jitter/flip + normalise (DALI CPU mode
  without a GPU);
- torchvision: torchvision.io.decode_jpeg on a batch list on the same device, then the
  same augmentation per image; JPEG bytes are read into memory beforehand, so this
  baseline pays no I/O (it is flattered, not handicapped);
- cpu: pipeline/loader.py's webdataset loader (uint8 images, decode in worker
  processes, one per core).

Every figure is batches after a warm-up, timed to the last byte on the device.

`capgen bench gpu` (run_gpu) adds the training side (tools/bench/gpu.py): the
trainer's step on frozen HDF5 features, end to end with the encoder frozen, and end to
end fine-tuned; GPU busy %, projected COCO epoch times and loader/training ratios.
"""
import datetime
import os
import tempfile
import warnings

import torch

from pipeline.dali import CROP_AREA, CROP_ASPECT, JITTER, MEAN, STD, make_dali_loader
from pipeline.errors import CapgenError
from pipeline.loader import ShardBatches
from pipeline.shards import available_cores, read_manifest
from pipeline.wds_index import read_samples, shard_tars
from tools.bench.gpu import (COCO_TRAIN_IMAGES, COCO_VOCAB, bench_training, extract_features,
                                   feature_loader_rate, image_loader_rate, synthetic_set)
from tools.bench.timing import loader_only

# torchvision 0.29 deprecates its JPEG decoder in favour of TorchCodec; it is still the baseline.
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)


def read_jpegs(shard_dir, limit):
    """Up to `limit` JPEGs (bytes) from the shards, in order."""
    out = []
    for tar in shard_tars(shard_dir):
        with open(tar, "rb") as f:
            for sample in read_samples(tar):
                for ext, offset, size, _ in sample:
                    if ext == "jpg":
                        f.seek(offset)
                        out.append(f.read(size))
                if len(out) >= limit:
                    return out
    return out


class TorchvisionBatches:
    """decode_jpeg(list, device), per-image random resized crop, then batched flip, jitter, normalise."""

    def __init__(self, jpegs, batch_size, image_size, device, seed=0):
        from torchvision.transforms import v2

        self.data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        self.batch_size, self.device = batch_size, device
        self.crop = v2.RandomResizedCrop(image_size, scale=CROP_AREA, ratio=CROP_ASPECT, antialias=True)
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        from torchvision.io import decode_jpeg

        for s in range(0, len(self.data) - self.batch_size + 1, self.batch_size):
            images = decode_jpeg(self.data[s:s + self.batch_size], device=self.device)
            flips = torch.rand(len(images), generator=self.gen) < 0.5
            images = torch.stack([self.crop(x) for x in images]).float()
            images = torch.where(flips.to(self.device).view(-1, 1, 1, 1), images.flip(-1), images)
            # brightness * (128 + contrast * (x - 128)), as DALI's brightness_contrast
            lo, hi = JITTER
            b, c = (lo + (hi - lo) * torch.rand(2, len(images), 1, 1, 1, generator=self.gen)).to(self.device)
            images = (b * (128 + c * (images - 128))).clamp(0, 255)
            images = ((images - self.mean) / self.std).to(self.dtype)
            yield {"images": images, "image_ids": torch.arange(len(images)), "flipped": flips}


def run(shard_dir, batch_size=256, image_size=256, batches=50, warmup=5, device=None, quick=False):
    """{name: images/s} for dali, torchvision and the cpu loader, plus the device name."""
    if quick:
        batch_size, batches, warmup = min(batch_size, 16), 4, 2
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cores = os.cpu_count() or 1
    gpu = device.type == "cuda"
    results = {"device": torch.cuda.get_device_name(device) if gpu else f"CPU ({cores} cores)",
               "batch_size": batch_size, "image_size": image_size, "quick": quick}

    dali = make_dali_loader(shard_dir, batch_size, image_size, train=True,
                            device_id=(device.index or 0) if gpu else None,
                            num_threads=min(cores, 8) if gpu else cores, shard_id=0, num_shards=1)
    on_dali = loader_only(dali, batches, warmup, device)
    results["dali"] = on_dali["images_per_s"]
    results["dali_threads"] = min(cores, 8) if gpu else cores
    del dali

    jpegs = read_jpegs(shard_dir, batch_size * (batches + warmup))
    if len(jpegs) < batch_size:
        jpegs = jpegs * (batch_size // max(len(jpegs), 1) + 1)
    on_torchvision = loader_only(TorchvisionBatches(jpegs, batch_size, image_size, device), batches, warmup, device)
    results["torchvision"] = on_torchvision["images_per_s"]
    results["gpu_busy"] = {"dali": on_dali["gpu_busy"], "torchvision": on_torchvision["gpu_busy"]}

    tars = shard_tars(shard_dir)
    dataset = ShardBatches(tars, os.path.join(shard_dir, "tokens.npz"), batch_size, shuffle=True)
    workers = min(cores, len(tars))
    cpu = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                      pin_memory=gpu, prefetch_factor=4 if workers else None,
                                      persistent_workers=workers > 0)
    results["cpu"] = loader_only(cpu, batches, warmup, torch.device("cpu"))["images_per_s"]
    results["cpu_workers"] = workers
    return results


def report(r):
    lines = [f"loaders on {r['device']}: batch {r['batch_size']}, {r['image_size']}x{r['image_size']}, "
             "images/s (ratio to the cpu loader)"]
    names = {"dali": "dali decode + augment", "torchvision": "torchvision decode_jpeg + augment",
             "cpu": f"cpu webdataset loader ({r['cpu_workers']} workers)"}
    for key, name in names.items():
        lines.append(f"  {name:<40} {r[key]:>10.0f}  {r[key] / r['cpu']:5.2f}x")
    if r["quick"]:
        lines.append("  (--quick: a smoke test; batches are few next to the prefetch queues, figures mean little)")
    return "\n".join(lines)


# ---------------------------------------------------------------- capgen bench gpu

GOAL = 1.5  # loader images/s over what the training step consumes


def _versions():
    import nvidia.dali
    import torchvision

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "torchvision": torchvision.__version__,
            "dali": nvidia.dali.__version__}


def run_gpu(shards=None, features=None, batch_size=128, steps=100, warmup=10, device=None, quick=False,
            workers=None, vocab_size=None, images=None, echo=print):
    """Loader-only and training figures on one device, in one run, as one dict.

    Without `shards`, a synthetic set is made in a temporary folder (enough images for the
    timed steps); without `features`, they are extracted from the shards there. Without a
    GPU only `quick` runs (a smoke test of the code paths: tiny shapes, DALI in CPU mode)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if not cuda and not quick:
        raise CapgenError("bench gpu: no CUDA device here; --quick runs a CPU smoke test (no figures)")
    if cuda:
        if device.index is None:  # set_device and DALI want an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    cores = available_cores()
    cfg = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "dim": 512, "image_size": 256,
           "vocab_size": vocab_size or COCO_VOCAB, "workers": workers or (min(cores, 8) if cuda else 1),
           "images": images or (steps + warmup + 2) * batch_size, "width": 640, "height": 480}
    if quick:  # shapes a 2-core CPU runs in seconds: code paths, not figures
        cfg.update(batch_size=min(batch_size, 4), steps=2, warmup=1, dim=32, image_size=32,
                   vocab_size=vocab_size or 1, images=images or 24, width=64, height=48)
    threads = torch.get_num_threads()
    if not cuda:  # one intra-op thread: OpenMP spin-waits cost 100x on a shared 2-core machine
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="capgen-bench-gpu-") as tmp:
            return _run_gpu(shards, features, device, quick, cores, cfg, tmp, echo)
    finally:
        torch.set_num_threads(threads)


def _run_gpu(shards, features, device, quick, cores, cfg, tmp, echo):
    cuda = device.type == "cuda"
    bs, steps, warmup, workers = cfg["batch_size"], cfg["steps"], cfg["warmup"], cfg["workers"]
    r = {"smoke": quick or not cuda, "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({cores} cores)",
         "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "batch_size": bs,
         "steps": steps, "warmup": warmup, "cores": cores, "loader_workers": workers, **_versions()}
    if shards is None:
        echo(f"bench gpu: making a synthetic set of {cfg['images']} images in {tmp}")
        shards, features = synthetic_set(tmp, cfg["images"], cfg["image_size"], cfg["width"], cfg["height"],
                                         workers=cores, device=device)
    elif features is None:
        echo(f"bench gpu: extracting features of {shards} into {tmp}")
        features = os.path.join(tmp, "features.h5")
        extract_features(shards, features, cores, device)
    r["shards"], r["features"] = os.path.abspath(shards), os.path.abspath(features)
    r["image_size"] = image_size = int(read_manifest(shards)["image_size"])

    echo("bench gpu: loaders")
    batches = 4 if quick else max(steps, 20)
    lo = run(shards, bs, image_size, batches=batches, device=str(device), quick=quick)
    dali = image_loader_rate(shards, bs, batches, 2, device, workers)
    lo["dali_trainer"], lo["gpu_busy"]["dali_trainer"] = dali["images_per_s"], dali["gpu_busy"]
    lo["features"] = feature_loader_rate(features, bs, batches, 2, workers, cuda)
    r["loaders"] = lo

    echo("bench gpu: training")
    r["train"] = t = bench_training(shards, features, bs, steps, warmup, device, cfg["vocab_size"], workers,
                                    dim=cfg["dim"])
    r["epoch"] = {"images": COCO_TRAIN_IMAGES, "captions": COCO_TRAIN_IMAGES * t["features"]["captions_per_image"]}
    consume = {m: t[m]["step_only"]["images_per_s"] for m in t}
    r["ratios"] = {"goal": GOAL,
                   "dali_over_frozen": lo["dali_trainer"] / consume["frozen"],
                   "dali_over_finetune": lo["dali_trainer"] / consume["finetune"],
                   "cpu_over_frozen": lo["cpu"] / consume["frozen"],
                   "cpu_over_finetune": lo["cpu"] / consume["finetune"],
                   "features_over_decoder": lo["features"] / consume["features"]}
    return r


def _pct(x):
    return "   n/a" if x is None else f"{x:5.0f}%"


def _clock(seconds):
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def report_gpu(r):
    t, lo = r["train"], r["loaders"]
    any_mode = next(iter(t.values()))
    lines = []
    if r["smoke"]:
        lines.append("SMOKE RUN (--quick or no GPU): tiny batches and steps; these are not figures.")
    lines += [f"capgen bench gpu on {r['device']}, {r['date']}",
              f"  batch {r['batch_size']} images x {any_mode['captions_per_image']} captions, {r['image_size']}x"
              f"{r['image_size']}, {r['steps']} timed steps after {r['warmup']}; torch {r['torch']} (CUDA "
              f"{r['cuda']}), DALI {r['dali']}, {r['cores']} CPU cores",
              "",
              f"  {'loader only, batch ' + str(lo['batch_size']):<46} {'images/s':>9}  {'busy':>6}"]
    busy = lo["gpu_busy"]
    rows = [("dali, as the trainer builds it (make_loader)", lo["dali_trainer"], busy.get("dali_trainer")),
            (f"dali ({lo['dali_threads']} threads)", lo["dali"], busy.get("dali")),
            ("torchvision decode_jpeg (bytes in RAM)", lo["torchvision"], busy.get("torchvision")),
            (f"cpu webdataset loader ({lo['cpu_workers']} workers)", lo["cpu"], None),
            (f"hdf5 features ({r['loader_workers']} workers)", lo["features"], None)]
    for name, rate, b in rows:
        lines.append(f"  {name:<46} {rate:9.0f}  {_pct(b)}")
    lines += ["",
              "training: the trainer's step (masked CE + doubly stochastic, clip 5, Adam; on a GPU bf16 autocast, "
              f"fused Adam), decoder vocab {any_mode['vocab_size']}, dims {any_mode['decoder_dim']}",
              "                          with its loader                      step only (batch on device)",
              "  mode                  images/s captions/s  busy  epoch      images/s  busy  epoch    peak GB"]
    names = {"features": "hdf5 features", "frozen": "e2e, frozen enc", "finetune": "e2e, fine-tune 3-4"}
    for mode, m in t.items():
        f, a = m["with_loader"], m["step_only"]
        mem = "    n/a" if m["peak_memory_gb"] is None else f"{m['peak_memory_gb']:7.1f}"
        lines.append(f"  {names[mode]:<20} {f['images_per_s']:9.0f} {f['captions_per_s']:10.0f} "
                     f"{_pct(f['gpu_busy'])} {_clock(f['epoch_s']):>7}   {a['images_per_s']:9.0f} "
                     f"{_pct(a['gpu_busy'])} {_clock(a['epoch_s']):>7}  {mem}")
    e, q = r["epoch"], r["ratios"]
    lines += [f"  epoch = {e['images']:,} images x {e['captions'] // e['images']} captions ({e['captions']:,}), "
              "projected from the images/s",
              "",
              f"loader / training consumption (loader-only images/s over step-only images/s; goal >= {q['goal']}x)"]
    labels = {"dali_over_frozen": "dali (trainer) / e2e frozen", "dali_over_finetune": "dali (trainer) / e2e fine-tune",
              "cpu_over_frozen": "cpu loader / e2e frozen", "cpu_over_finetune": "cpu loader / e2e fine-tune",
              "features_over_decoder": "hdf5 features / decoder"}
    for key, label in labels.items():
        lines.append(f"  {label:<32} {q[key]:6.2f}x  {'ok' if q[key] >= q['goal'] else 'below goal'}")
    if r["smoke"]:
        lines.append("SMOKE RUN: code paths exercised; figures above mean nothing.")
    return "\n".join(lines)
