"""The trainer's builders: encoder, model, optimizer, schedule and loaders from TrainArgs
and a data source. model/train/loop.py's fit uses them, and so do the benchmarks."""

import warnings

import numpy as np
import torch

from model.nets.convnet import CONVNETS
from model.nets.decoder import Decoder
from model.nets.encoder import build_encoder, normalise
from pipeline.errors import CapgenError
from pipeline.loading.loader import make_loader


def encoder_for(args, source):
    """(encoder, weights name): from the feature cache (weights stored there) or the options."""
    if source.kind != "features":
        name = args.encoder or "resnet50"
        if name in CONVNETS and not args.fine_tune_encoder:
            raise CapgenError(
                f"--encoder {name}: has no pretrained weights and trains from scratch: add --fine-tune-encoder"
            )
        weights = args.encoder_weights or ("none" if name in CONVNETS else "imagenet")
        return build_encoder(name, weights, args.encoder_stop or "layer4", args.download), weights
    attrs = source.cache.attrs
    for opt, key in (("encoder", "encoder"), ("encoder_stop", "stop")):
        given = getattr(args, opt)
        if given is not None and given != attrs.get(key):
            raise CapgenError(
                f"{source.path}: features come from {key} {attrs.get(key)!r}, not --{opt.replace('_', '-')} {given!r}"
            )
    if args.fine_tune_encoder:
        raise CapgenError(f"{source.path}: cached features are frozen; fine-tuning needs a shard set")
    with warnings.catch_warnings():  # random init, replaced by the weights the features came from
        warnings.simplefilter("ignore")
        encoder = build_encoder(attrs["encoder"], "none", attrs["stop"])
    state = source.cache.encoder_state()
    weights = attrs.get("weights", "none")
    if state:
        encoder.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    elif weights != "none":
        encoder = build_encoder(attrs["encoder"], weights, attrs["stop"])
    return encoder, weights


def build_model(args, source, vocab_size, device, image_stats=True):
    """(encoder, decoder, weights name) on `device`, the decoder standardising its input
    with channel statistics: the feature cache's, or estimated from `source`'s images
    (image_stats=False skips that: a resumed run loads them; a convnet needs none)."""
    encoder, weights = encoder_for(args, source)
    if args.fine_tune_encoder:
        encoder.set_fine_tune()
    decoder = Decoder(vocab_size, encoder.channels, args.embed_dim, args.attention_dim, args.hidden_dim, args.dropout)
    encoder.to(device)
    decoder.to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    if source.kind == "features":
        decoder.set_feature_stats(
            torch.from_numpy(source.cache.channel_mean), torch.from_numpy(source.cache.channel_std)
        )
    elif image_stats and encoder.name not in CONVNETS:
        # A convnet's last BatchNorm sets its features' scale while it trains; statistics of its
        # random start (BatchNorm not yet fitted) would blow them up.
        decoder.set_feature_stats(*_image_feature_stats(encoder, source, args.feature_samples, device))
    return encoder, decoder, weights


@torch.no_grad()
def _image_feature_stats(encoder, source, samples, device, batch_size=32):
    """Per-channel mean/std of the encoder's features over the first `samples` train images."""
    loader = make_loader(source, batch_size, shuffle=False, workers=0)
    total, sq, n, images = 0.0, 0.0, 0, 0
    for batch in loader:
        f = encoder.eval()(normalise(batch["images"], device)).double().flatten(0, 1)
        total, sq, n = total + f.sum(0), sq + (f * f).sum(0), n + f.shape[0]
        images += len(batch["images"])
        if images >= samples:
            break
    mean = total / n
    return mean.float(), (sq / n - mean * mean).clamp_min(0).sqrt().float()


def build_optimizer(model, args, device):
    """Adam over the decoder (decoder_lr) and, when fine-tuning, the encoder's trainable layers (encoder_lr)."""
    groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": args.decoder_lr}]
    if args.fine_tune_encoder and model.encoder is not None:
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": args.encoder_lr})
    return torch.optim.Adam(groups, fused=device.type == "cuda" or None)


def build_scheduler(optimizer, args):
    """plateau: LR times lr_factor after lr_patience epochs without a better val score;
    cosine: from the set LR down towards 0 over args.epochs (stepped once an epoch)."""
    if args.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=args.lr_factor, patience=args.lr_patience
    )


def step_scheduler(scheduler, score):
    """One epoch's step: a plateau schedule reads the val score, a fixed one does not."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(score)
    else:
        scheduler.step()


def build_train_loader(args, source, device, rank=0, world=1):
    """This rank's shuffled training batches."""
    return make_loader(
        source,
        args.batch_size,
        shuffle=True,
        seed=args.seed,
        rank=rank,
        world=world,
        workers=args.workers,
        pin_memory=device.type == "cuda",
        loader=args.loader,
    )


def build_val_loader(args, source):
    """Validation batches in stored order (the CPU loader unless --loader names one)."""
    return make_loader(
        source,
        args.batch_size,
        shuffle=False,
        workers=min(args.workers, 1),
        loader=args.loader if args.loader != "auto" else "cpu",
    )
