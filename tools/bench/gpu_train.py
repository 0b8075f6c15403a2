"""Training throughput on one device, the three ways the trainer runs, in steady state:

- features: frozen features from the HDF5 cache (pipeline/loader.py's FeatureBatches
  through make_loader, pinned memory, worker processes) -> decoder only;
- frozen: DALI loader -> ResNet-50 (to layer4, channels_last, no grad) -> decoder;
- finetune: the same with layers 3-4 trainable (encoder lr 1e-4, decoder lr 4e-4).

The step is the trainer's own (model/step.py's TrainStep): batch to the device,
left/right swap for mirrored images, bf16 autocast forward, masked cross-entropy +
doubly stochastic term, backward, clip 5, fused Adam, and the per-step statistics
kept on the device. No host sync inside the timed loop: the clock reads after
torch.cuda.synchronize at both ends.

Each mode is timed twice: fed by its loader ("with loader", what training gets) and
on one batch resident on the device ("step only", what the step can consume).
GPU busy % is NVML's utilisation, sampled every 100 ms in a thread during the timed
steps (pynvml, else `nvidia-smi -lms 100`).
"""
import shutil
import subprocess
import threading
import time
import warnings

import numpy as np
import torch

from model.decoder import Decoder
from model.extract import build_encoder
from model.step import CaptionModel, TrainStep
from pipeline.loader import DataSource, make_loader

MODES = ("features", "frozen", "finetune")
DECODER_LR, ENCODER_LR, GRAD_CLIP, ALPHA_C = 4e-4, 1e-4, 5.0, 1.0
COCO_TRAIN_IMAGES = 82_783
COCO_VOCAB = 10_000  # a COCO-sized output layer (Karpathy train, min freq 5: about 9,500 words)


# ---------------------------------------------------------------- GPU busy %

class GpuBusy:
    """Context manager: mean NVML GPU utilisation (%) while inside; `.mean` is None without a GPU."""

    def __init__(self, device, period=0.1):
        self.device, self.period = device, period
        self.samples, self.source, self.mean = [], None, None
        self._stop = threading.Event()
        self._thread = self._proc = None

    def __enter__(self):
        if self.device.type != "cuda":
            return self
        read = self._nvml()
        if read is not None:
            self.source = "nvml"
            self._thread = threading.Thread(target=self._poll, args=(read,), daemon=True)
        elif shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={self._index()}", "--query-gpu=utilization.gpu",
                 "--format=csv,noheader,nounits", f"-lms={int(self.period * 1000)}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_lines, daemon=True)
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._proc is not None:
            self._proc.wait(timeout=2)
        if self.samples:
            self.mean = float(np.mean(self.samples))
        return False

    def _index(self):
        try:  # CUDA_VISIBLE_DEVICES-aware
            return torch.cuda._get_nvml_device_index(self.device)
        except Exception:  # noqa: BLE001 -- private helper: fall back to the torch index
            return self.device.index or 0

    def _nvml(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self._index())
            return lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except Exception:  # noqa: BLE001 -- no pynvml or no NVML: try nvidia-smi
            return None

    def _poll(self, read):
        while not self._stop.wait(self.period):
            self.samples.append(read())

    def _read_lines(self):
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            if line.strip().isdigit():
                self.samples.append(int(line))


# ---------------------------------------------------------------- the trainer's step

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(mode, vocab, vocab_size, channels, device, dim=512):
    """Encoder (None for features) + decoder + fused Adam, set up as model/train.py does,
    driven by the trainer's own TrainStep."""
    encoder = None
    if mode != "features":
        with warnings.catch_warnings():  # random init: throughput does not depend on the weights
            warnings.simplefilter("ignore")
            encoder = build_encoder("resnet50", "none", "layer4")
        if mode == "finetune":
            encoder.set_fine_tune()
        encoder.to(device)
        if device.type == "cuda":
            encoder.to(memory_format=torch.channels_last)
        channels = encoder.channels
    decoder = Decoder(vocab_size, channels, dim, dim, dim).to(device)
    model = CaptionModel(encoder, decoder, fine_tune=mode == "finetune").train()
    if encoder is not None and mode != "finetune":
        encoder.eval()
    groups = [{"params": [p for p in decoder.parameters() if p.requires_grad], "lr": DECODER_LR}]
    if mode == "finetune":
        groups.append({"params": [p for p in encoder.parameters() if p.requires_grad], "lr": ENCODER_LR})
    optimizer = torch.optim.Adam(groups, fused=device.type == "cuda" or None)
    return TrainStep(model, model, optimizer, device, vocab, ALPHA_C, GRAD_CLIP)


# ---------------------------------------------------------------- timing

def endless(loader):
    while True:
        yield from loader


def timed(step, batches, steps, warmup, device):
    """{images_per_s, seconds, images, gpu_busy, gpu_busy_source} over `steps` after `warmup`."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    sync(device)
    images = 0
    with GpuBusy(device) as busy:
        start = time.perf_counter()
        for _ in range(steps):
            images += step(next(it))
        sync(device)
        seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "seconds": seconds, "images": images,
            "gpu_busy": busy.mean, "gpu_busy_source": busy.source}


def repeat(batch):
    while True:
        yield batch


def image_loader(shards, batch_size, device, workers):
    """The trainer's DALI loader (make_loader, loader="dali") on a GPU; DALI in CPU mode without one."""
    src = DataSource(shards)
    if device.type == "cuda":
        return make_loader(src, batch_size, shuffle=True, loader="dali", workers=workers)
    from pipeline.dali import make_dali_loader

    return make_dali_loader(src.path, batch_size, int(src.image_size), train=True, device_id=None,
                            num_threads=max(workers, 1), shard_id=0, num_shards=1)


def bench_mode(mode, source, batch_size, steps, warmup, device, vocab_size, workers, dim=512):
    """One training mode, fed by its loader and on a resident batch."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    src = DataSource(source)
    vocab = src.vocab()
    channels = src.cache.channels if src.kind == "features" else None
    step = build_step(mode, vocab, max(vocab_size, len(vocab)), channels, device, dim)
    if mode == "features":
        step.model.decoder.set_feature_stats(torch.from_numpy(src.cache.channel_mean),
                                        torch.from_numpy(src.cache.channel_std))
        loader = make_loader(src, batch_size, shuffle=True, workers=workers, pin_memory=cuda, loader="cpu")
        what = f"FeatureBatches, {workers} workers"
    else:
        loader = image_loader(src.path, batch_size, device, workers)
        what = "DALI " + ("GPU (nvJPEG)" if cuda else "CPU mode")
    batches = endless(loader)
    fed = timed(step, batches, steps, warmup, device)
    resident = {k: v.to(device, copy=True) for k, v in next(batches).items()}  # no H2D copy per step
    del batches, loader
    alone = timed(step, repeat(resident), steps, warmup, device)
    tokens = resident["tokens"]
    out = {"mode": mode, "loader": what, "batch_size": batch_size, "captions_per_image": int(tokens.shape[1]),
           "T": int(tokens.shape[2]), "vocab_size": step.model.decoder.vocab_size, "set_vocab_size": len(vocab),
           "decoder_dim": dim, "input_shape": list(resident["features" if mode == "features" else "images"].shape[1:]),
           "trainable_params": sum(p.numel() for p in step.params), "steps": steps, "warmup": warmup,
           "with_loader": fed, "step_only": alone,
           "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
    k = out["captions_per_image"]
    for part in (fed, alone):
        part["captions_per_s"] = part["images_per_s"] * k
        part["epoch_s"] = COCO_TRAIN_IMAGES / part["images_per_s"]
    del step, resident
    if cuda:
        torch.cuda.empty_cache()
    return out


def bench_training(shards, features, batch_size=128, steps=100, warmup=10, device=None,
                   vocab_size=COCO_VOCAB, workers=8, modes=MODES, dim=512):
    """{mode: figures} for the training modes (features needs `features`, the others `shards`).
    dim: the decoder's embedding, attention and LSTM sizes (512 as the trainer's defaults)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = {}
    for mode in modes:
        source = features if mode == "features" else shards
        out[mode] = bench_mode(mode, source, batch_size, steps, warmup, device, vocab_size, workers, dim)
    return out


def feature_loader_rate(features, batch_size, batches, warmup, workers, pin_memory):
    """Loader-only images/s of the HDF5 feature loader (host side)."""
    loader = make_loader(features, batch_size, shuffle=True, workers=workers, pin_memory=pin_memory, loader="cpu")
    r = timed(lambda b: len(b["image_ids"]), endless(loader), batches, warmup, torch.device("cpu"))
    return r["images_per_s"]


def image_loader_rate(shards, batch_size, batches, warmup, device, workers):
    """Loader-only images/s of the loader image_loader gives the trainer (DALI)."""
    loader = image_loader(shards, batch_size, device, workers)
    return timed(lambda b: len(b["image_ids"]), endless(loader), batches, warmup, device)


def synthetic_set(root, images, image_size=256, width=640, height=480, workers=None, device=None):
    """capgen synth -> shards build -> features extract (resnet50 layer4, random init) under root;
    returns (shard set folder, feature cache path)."""
    import os

    from pipeline import shards as sh
    from pipeline.coco import read_coco
    from pipeline.synth import synthesize

    data, out, h5 = (os.path.join(root, n) for n in ("data", "shards", "features.h5"))
    synthesize(data, images, seed=0, val_fraction=0, width=width, height=height, workers=workers)
    sh.build(read_coco(data, "train2014"), out, sh.Options(name="bench", image_size=image_size,
             shard_size=max(1, min(1000, images // 8))), {"bench": True}, workers=workers, progress=False)
    extract_features(out, h5, workers or 1, device)
    return out, h5


def extract_features(shards, out, workers, device=None, batch_size=256):
    """model/extract.py over the set: resnet50 layer4, random init (throughput only)."""
    from model.extract import extract

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract(shards, out, "resnet50", "layer4", "none", batch_size=batch_size, workers=workers,
                       device=device, progress=False)
