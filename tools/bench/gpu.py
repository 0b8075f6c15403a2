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
import os
import warnings

import torch

from model.decoder import Decoder
from model.extract import build_encoder, extract
from model.step import CaptionModel, TrainStep
from pipeline import shards as sh
from pipeline.coco import read_coco
from pipeline.loader import DataSource, make_loader
from pipeline.synth import synthesize
from tools.bench.timing import endless, loader_only, repeat, timed

MODES = ("features", "frozen", "finetune")
DECODER_LR, ENCODER_LR, GRAD_CLIP, ALPHA_C = 4e-4, 1e-4, 5.0, 1.0
COCO_TRAIN_IMAGES = 82_783
COCO_VOCAB = 10_000  # a COCO-sized output layer (Karpathy train, min freq 5: about 9,500 words)


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
    return loader_only(loader, batches, warmup, torch.device("cpu"))["images_per_s"]


def image_loader_rate(shards, batch_size, batches, warmup, device, workers):
    """Loader-only figures of the loader image_loader gives the trainer (DALI)."""
    return loader_only(image_loader(shards, batch_size, device, workers), batches, warmup, device)


def synthetic_set(root, images, image_size=256, width=640, height=480, workers=None, device=None):
    """capgen synth -> shards build -> features extract (resnet50 layer4, random init) under root;
    returns (shard set folder, feature cache path)."""
    data, out, h5 = (os.path.join(root, n) for n in ("data", "shards", "features.h5"))
    synthesize(data, images, seed=0, val_fraction=0, width=width, height=height, workers=workers)
    sh.build(read_coco(data, "train2014"), out, sh.Options(name="bench", image_size=image_size,
             shard_size=max(1, min(1000, images // 8))), {"bench": True}, workers=workers, progress=False)
    extract_features(out, h5, workers or 1, device)
    return out, h5


def extract_features(shards, out, workers, device=None, batch_size=256):
    """model/extract.py over the set: resnet50 layer4, random init (throughput only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract(shards, out, "resnet50", "layer4", "none", batch_size=batch_size, workers=workers,
                       device=device, progress=False)
