"""The trainer's four step kinds at tiny shapes, built as `--device cuda` builds them, on the CPU.

features (decoder from cached features), frozen (encoder without grad, end to end), finetune
(its last stage trained) and scst (self-critical, mean baseline): the trainer's own TrainStep /
ScstStep, decoder, encoder and Adam (build_optimizer for a cuda device: fused, its step counts
on the device). Sizes are tiny (compute is nil), the batch is the GPU goal's: what is left of a
step's time is Python, autograd and dispatch, the floor of an eager GPU step.
"""

import warnings

import numpy as np
import torch

from model.nets.caption_model import CaptionModel
from model.nets.decoder import Decoder
from model.nets.encoder import build_encoder
from model.train.args import TrainArgs
from model.train.build import build_optimizer
from model.train.cider import Cider
from model.train.scst import ScstModel, ScstStep
from model.train.step import TrainStep
from pipeline.text import END, SPECIALS, START, Vocabulary

KINDS = ("features", "frozen", "finetune", "scst")
GPU = torch.device("cuda")  # what the optimizer is built for (a torch.device needs no GPU)
TINY = {"dims": (32, 32, 32), "vocab": 300, "channels": 64, "grid": 16, "image_size": 16, "T": 22}


def synthetic_batch(images, per_image, T, P, C, vocab, device, seed=0):
    """Features [B,P,C] and encoded captions with COCO-like lengths (mean ~10.5 words, at most T-2)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(images, P, C, generator=g).relu()
    words = (torch.randn(images, per_image, generator=g) * 2.5 + 10.5).round().clamp(5, T - 2).long()
    lengths = words + 2
    tokens = torch.randint(4, vocab, (images, per_image, T), generator=g)
    pos = torch.arange(T)
    tokens[:, :, 0] = START
    tokens = torch.where(pos == lengths[..., None] - 1, END, tokens)
    tokens = torch.where(pos >= lengths[..., None], 0, tokens)
    return features.to(device), tokens.to(device), lengths.to(device)


def loader_batch(kind, images, seed=0, per_image=5):
    """A host batch as the CPU loaders give it (pipeline/loading/batches.py's contract)."""
    t = TINY
    features, tokens, lengths = synthetic_batch(
        images, per_image, t["T"], t["grid"], t["channels"], t["vocab"], "cpu", seed
    )
    batch = {"image_ids": torch.arange(images), "tokens": tokens, "lengths": lengths}
    if kind == "features":
        batch["features"] = features.half()
    else:
        g = torch.Generator().manual_seed(seed)
        size = t["image_size"]
        batch["images"] = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=g)
    return batch


def build(kind, compiled=None):
    """(step, model, optimizer): the trainer's step of `kind` on tiny sizes, seeded; compiled: a
    torch.compile backend ("inductor": as --compile) for what model/train/loop.py compiles."""
    if kind not in KINDS:
        raise ValueError(f"unknown step kind {kind!r} (expected one of {', '.join(KINDS)})")
    torch.manual_seed(0)
    t = TINY
    args = TrainArgs(train="", val="", out="", fine_tune_encoder=kind == "finetune")
    encoder = None
    channels = t["channels"]
    if kind != "features":
        with warnings.catch_warnings():  # random init
            warnings.simplefilter("ignore")
            encoder = build_encoder("resnet18", "none", "layer2")
        channels = encoder.channels
        if kind == "finetune":
            encoder.set_fine_tune()
    decoder = Decoder(t["vocab"], channels, *t["dims"], args.dropout)
    model = CaptionModel(encoder, decoder, kind == "finetune").train()
    if kind == "frozen":
        encoder.eval()
    optimizer = build_optimizer(model, args, GPU)
    if compiled:
        model.decoder.advance = torch.compile(model.decoder.advance, backend=compiled)  # as loop.py's _wrap
        if encoder is not None:
            model.encoder.forward = torch.compile(model.encoder.forward, backend=compiled)
    cpu = torch.device("cpu")
    if kind != "scst":
        return TrainStep(model, model, optimizer, cpu, alpha_c=args.alpha_c, grad_clip=args.grad_clip), model, optimizer
    vocab = Vocabulary(SPECIALS + [f"w{i}" for i in range(t["vocab"] - len(SPECIALS))], max_len=t["T"] - 2)
    refs = loader_batch(kind, 64, seed=1)["tokens"].numpy()
    scorer = Cider.from_refs(refs.reshape(-1, refs.shape[2]), np.repeat(np.arange(len(refs)), refs.shape[1]))
    forward = ScstModel(model, args.scst_samples, vocab.max_len, stop_early=False)  # as on a GPU
    step = ScstStep(model, forward, optimizer, cpu, scorer, vocab, args)
    step.stop_early = False
    return step, model, optimizer
