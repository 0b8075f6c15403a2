"""`capgen bench loaders`: loader-only throughput (images/s) on one shard set, three ways, in the same run:

- dali: pipeline/loading/dali.py, nvJPEG decode + crop/jitter/flip to uint8 (DALI CPU mode
  without a GPU);
- torchvision: torchvision.io.decode_jpeg on a batch list on the same device, then the
  same augmentation per image; JPEG bytes are read into memory beforehand, so this
  baseline pays no I/O (it is flattered, not handicapped);
- cpu: pipeline/loading/batches.py's webdataset loader (uint8 images, decode in worker
  processes, one per core);
- and the feature cache's read path with and without fletcher32 checksums (feature_checksums):
  two caches of the same values (ResNet-50's 64 x 2048 float16 per image), each read whole,
  chunk by chunk, through FeatureFile.read, alternately, from the page cache.

Every figure is batches after a warm-up, timed to the last byte on the device.
`capgen bench gpu` (tools/bench/gpu/measure.py) runs this too, beside the training side.
"""

import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

from model.device import default_device
from pipeline.loading.batches import ShardBatches
from pipeline.loading.dali import CROP_AREA, CROP_ASPECT, JITTER, make_dali_loader
from pipeline.loading.features import FeatureFile, FeatureWriter
from pipeline.shards.wds_index import read_samples, shard_tars
from tools.bench.timing import loader_only


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
    """decode_jpeg(list, device), per-image random resized crop, then batched flip and jitter to uint8."""

    def __init__(self, jpegs, batch_size, image_size, device, seed=0):
        from torchvision.transforms import v2

        self.data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        self.batch_size, self.device = batch_size, device
        self.crop = v2.RandomResizedCrop(image_size, scale=CROP_AREA, ratio=CROP_ASPECT, antialias=True)
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        from torchvision.io import decode_jpeg

        for s in range(0, len(self.data) - self.batch_size + 1, self.batch_size):
            with warnings.catch_warnings():  # torchvision 0.29 deprecates it for TorchCodec; still the baseline
                warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
                images = decode_jpeg(self.data[s : s + self.batch_size], device=self.device)
            flips = torch.rand(len(images), generator=self.gen) < 0.5
            images = torch.stack([self.crop(x) for x in images]).float()
            images = torch.where(flips.to(self.device).view(-1, 1, 1, 1), images.flip(-1), images)
            # brightness * (128 + contrast * (x - 128)), as DALI's brightness_contrast
            lo, hi = JITTER
            b, c = (lo + (hi - lo) * torch.rand(2, len(images), 1, 1, 1, generator=self.gen)).to(self.device)
            images = (b * (128 + c * (images - 128))).clamp(0, 255).round().to(torch.uint8)
            yield {"images": images, "image_ids": torch.arange(len(images))}


def run(shard_dir, batch_size=256, image_size=256, batches=50, warmup=5, device=None, quick=False):
    """{name: images/s} for dali, torchvision and the cpu loader, plus the device name."""
    if quick:
        batch_size, batches, warmup = min(batch_size, 16), 4, 2
    device = default_device(device)
    cores = os.cpu_count() or 1
    gpu = device.type == "cuda"
    results = {
        "device": torch.cuda.get_device_name(device) if gpu else f"CPU ({cores} cores)",
        "batch_size": batch_size,
        "image_size": image_size,
        "quick": quick,
    }

    dali = make_dali_loader(
        shard_dir,
        batch_size,
        image_size,
        train=True,
        device_id=(device.index or 0) if gpu else None,
        num_threads=min(cores, 8) if gpu else cores,
        shard_id=0,
        num_shards=1,
    )
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
    cpu = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=gpu,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
    )
    results["cpu"] = loader_only(cpu, batches, warmup, torch.device("cpu"))["images_per_s"]
    results["cpu_workers"] = workers
    results["feature_checksums"] = feature_checksums(64 if quick else 1024, repeats=2 if quick else 5)
    return results


def feature_checksums(images=1024, positions=64, channels=2048, repeats=5):
    """{"plain", "fletcher32"} MB/s reading a whole feature cache of `images` random rows
    (the median of `repeats` alternate reads of each), "ratio" plain / fletcher32 (the
    checksums' cost on the read path), "images" and "mb" (the cache's feature bytes)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, checksums in (("plain", False), ("fletcher32", True)):
            paths[name] = os.path.join(tmp, f"{name}.h5")
            w = FeatureWriter(paths[name], images, positions, channels, {}, checksums=checksums)
            for s in range(0, images, 64):
                rows = min(64, images - s)
                w.write(np.arange(s, s + rows), rng.standard_normal((rows, positions, channels), np.float32))
            w.close()
        seconds = {name: [] for name in paths}
        for _ in range(repeats):
            for name, path in paths.items():
                cache = FeatureFile(path)
                t0 = time.perf_counter()
                cache.read(0, images)
                seconds[name].append(time.perf_counter() - t0)
    mb = images * positions * channels * 2 / 1e6
    out = {name: round(mb / statistics.median(t), 1) for name, t in seconds.items()}
    return {**out, "ratio": round(out["plain"] / out["fletcher32"], 3), "images": images, "mb": round(mb, 1)}


def report(r):
    lines = [
        f"loaders on {r['device']}: batch {r['batch_size']}, {r['image_size']}x{r['image_size']}, "
        "images/s (ratio to the cpu loader)"
    ]
    names = {
        "dali": "dali decode + augment",
        "torchvision": "torchvision decode_jpeg + augment",
        "cpu": f"cpu webdataset loader ({r['cpu_workers']} workers)",
    }
    for key, name in names.items():
        lines.append(f"  {name:<40} {r[key]:>10.0f}  {r[key] / r['cpu']:5.2f}x")
    f = r["feature_checksums"]
    lines.append(
        f"feature cache read ({f['images']} images, {f['mb']:.0f} MB, page cache): plain {f['plain']:.0f} MB/s, "
        f"fletcher32 {f['fletcher32']:.0f} MB/s: checksums cost {f['ratio']:.2f}x"
    )
    if r["quick"]:
        lines.append("  (--quick: a smoke test; batches are few next to the prefetch queues, figures mean little)")
    return "\n".join(lines)
