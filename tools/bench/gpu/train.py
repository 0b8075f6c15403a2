"""`capgen bench gpu`'s training side: the trainer's step in its three modes on one device,
fed by its loader and on one batch resident on the device (tools/bench/gpu/measure.py runs it).

- features: frozen features from the HDF5 cache (FeatureBatches through make_loader,
  pinned memory, worker processes) -> decoder only;
- frozen: DALI loader -> ResNet-50 (to layer4, channels_last, no grad) -> decoder;
- finetune: the same with layers 3-4 trainable.

Encoder, decoder, optimizer and step are the trainer's own (TrainArgs' defaults,
build_model, build_optimizer, TrainStep); images/s and captions/s, GPU busy %, the COCO
epoch time projected from them, peak memory.
"""

import warnings

import torch

from model.device import default_device
from model.nets.caption_model import CaptionModel
from model.train.args import TrainArgs
from model.train.build import build_model, build_optimizer
from model.train.step import TrainStep
from pipeline.loading.loader import make_loader
from pipeline.loading.source import DataSource
from tools.bench.step.measure import COCO_TRAIN_IMAGES
from tools.bench.timing import endless, repeat, timed

MODES = ("features", "frozen", "finetune")
COCO_VOCAB = 10_000  # a COCO-sized output layer (Karpathy train, min freq 5: about 9,500 words)


def train_args(mode, source, dim):
    """The trainer's options for one mode: TrainArgs' defaults, random init (throughput does
    not depend on the weights), dim for the decoder's embedding, attention and LSTM sizes."""
    return TrainArgs(
        train=source,
        val=source,
        out="",
        encoder_weights="none",
        fine_tune_encoder=mode == "finetune",
        embed_dim=dim,
        attention_dim=dim,
        hidden_dim=dim,
    )


def build_step(mode, src, vocab_size, device, dim):
    """Encoder (None for features) + decoder + fused Adam, built by the trainer's own builders,
    driven by the trainer's own TrainStep; vocab_size: the decoder's output layer."""
    args = train_args(mode, src.path, dim)
    with warnings.catch_warnings():  # the random-init warning
        warnings.simplefilter("ignore")
        encoder, decoder, _ = build_model(args, src, vocab_size, device, image_stats=False)
    model = CaptionModel(None if mode == "features" else encoder, decoder, args.fine_tune_encoder).train()
    if mode != "features" and not args.fine_tune_encoder:
        encoder.eval()
    return TrainStep(
        model, model, build_optimizer(model, args, device), device, alpha_c=args.alpha_c, grad_clip=args.grad_clip
    )


def image_loader(shards, batch_size, device, workers):
    """The trainer's DALI loader (make_loader, loader="dali") on a GPU; DALI in CPU mode without one."""
    src = DataSource(shards)
    if device.type == "cuda":
        return make_loader(src, batch_size, shuffle=True, loader="dali", workers=workers)
    from pipeline.loading.dali import make_dali_loader

    return make_dali_loader(
        src.path,
        batch_size,
        int(src.image_size),
        train=True,
        device_id=None,
        num_threads=max(workers, 1),
        shard_id=0,
        num_shards=1,
    )


def bench_mode(mode, source, batch_size, steps, warmup, device, vocab_size, workers, dim):
    """One training mode, fed by its loader and on a resident batch."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    src = DataSource(source)
    vocab = src.vocab()
    step = build_step(mode, src, max(vocab_size, len(vocab)), device, dim)
    if mode == "features":
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
    out = {
        "mode": mode,
        "loader": what,
        "batch_size": batch_size,
        "captions_per_image": int(tokens.shape[1]),
        "T": int(tokens.shape[2]),
        "vocab_size": step.model.decoder.vocab_size,
        "set_vocab_size": len(vocab),
        "decoder_dim": dim,
        "input_shape": list(resident["features" if mode == "features" else "images"].shape[1:]),
        "trainable_params": sum(p.numel() for p in step.params),
        "steps": steps,
        "warmup": warmup,
        "with_loader": fed,
        "step_only": alone,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    k = out["captions_per_image"]
    for part in (fed, alone):
        part["captions_per_s"] = part["images_per_s"] * k
        part["epoch_s"] = COCO_TRAIN_IMAGES / part["images_per_s"]
    del step, resident
    if cuda:
        torch.cuda.empty_cache()
    return out


def bench_training(
    shards,
    features,
    batch_size=128,
    steps=100,
    warmup=10,
    device=None,
    vocab_size=COCO_VOCAB,
    workers=8,
    modes=MODES,
    dim=TrainArgs.hidden_dim,
):
    """{mode: figures} for the training modes (features needs `features`, the others `shards`).
    dim: the decoder's embedding, attention and LSTM sizes (default: the trainer's)."""
    device = default_device(device)
    out = {}
    for mode in modes:
        source = features if mode == "features" else shards
        out[mode] = bench_mode(mode, source, batch_size, steps, warmup, device, vocab_size, workers, dim)
    return out
