"""Trainer: teacher forcing, Adam, clipping, LR decay and early stopping on validation
BLEU-4 from real decoding; bf16 autocast, torch.compile, DDP; checkpoint / exact resume.

Reproducibility: the batch order is a function of (seed, epoch) (pipeline/loader.py)
and the dropout RNG is reseeded from (seed, epoch, rank) at each epoch start, so an
epoch's losses do not depend on what ran before it: a run resumed from RUN/last logs
the same losses as one never stopped.

Multi-process: `torchrun --nproc_per_node N -m tools.cli train ...` (NCCL on GPUs,
gloo on CPU). Shards (or feature chunk blocks) are split by rank and worker; ranks
with fewer batches join early (torch.distributed.algorithms.Join). Rank 0 validates,
logs and saves.
"""
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model import captioner, checkpoint
from model.decoder import Decoder
from model.encoder import build_encoder, normalise
from model.metrics import bleu
from model.search import beam_search, greedy
from model.step import CaptionModel, TrainStep, to_device
from pipeline.atomic import atomic_write
from pipeline.distributed import dist_info
from pipeline.errors import CapgenError
from pipeline.loader import DataSource, make_loader, stream_seed
from pipeline.text import clean


@dataclass
class TrainArgs:
    train: str
    val: str
    out: str
    epochs: int = 20
    batch_size: int = 32             # images per step (each with its K captions)
    encoder: str | None = None       # None: resnet50, or what the feature cache says
    encoder_stop: str | None = None  # None: layer4, or the cache's
    encoder_weights: str | None = None  # None: imagenet, or the cache's
    download: bool = False               # allow fetching ImageNet weights missing from the torch cache
    fine_tune_encoder: bool = False
    embed_dim: int = 512
    attention_dim: int = 512
    hidden_dim: int = 512
    dropout: float = 0.5
    decoder_lr: float = 4e-4
    encoder_lr: float = 1e-4
    grad_clip: float = 5.0
    alpha_c: float = 1.0
    lr_factor: float = 0.8
    lr_patience: int = 3
    patience: int = 20               # early stopping: epochs without a better val BLEU-4
    beam: int = 1                    # validation decoding: 1 = greedy
    val_images: int | None = None    # validate on the first N val images (None: all)
    workers: int = 2
    loader: str = "auto"
    resume: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 50
    device: str | None = None
    progress: bool = True
    feature_samples: int = 512       # images used to estimate channel stats (image sources)


# ---------------------------------------------------------------- setup

def _dist_setup(device):
    """(rank, world, local_rank, initialised_here) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    if dist.is_initialized():
        return *dist_info(), int(os.environ.get("LOCAL_RANK", 0)), False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return *dist_info(), local, True


def _device(args, local_rank):
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _encoder_for(args, source):
    """The encoder and its config: from the feature cache (weights stored there) or the options."""
    if source.kind == "features":
        attrs = source.cache.attrs
        for opt, key in (("encoder", "encoder"), ("encoder_stop", "stop")):
            given = getattr(args, opt)
            if given is not None and given != attrs.get(key):
                raise CapgenError(f"{source.path}: features come from {key} {attrs.get(key)!r}, "
                                  f"not --{opt.replace('_', '-')} {given!r}")
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
    else:
        weights = args.encoder_weights or "imagenet"
        encoder = build_encoder(args.encoder or "resnet50", weights, args.encoder_stop or "layer4", args.download)
    return encoder, weights


def model_config(encoder, weights, decoder, source, vocab, args):
    """captioner.model_config (what model/captioner.py rebuilds encoder + decoder and
    the preprocessing from) plus how this model was trained."""
    config = captioner.model_config(encoder, decoder, int(source.image_size), source.resize_mode or "stretch")
    config["encoder"]["weights"] = str(weights)
    config["encoder"]["grid"] = list(encoder.grid(int(source.image_size)))
    config["training"] = {"source": os.path.abspath(source.path), "source_kind": source.kind,
                          "fine_tune_encoder": bool(args.fine_tune_encoder), "text_preset": vocab.preset,
                          "seed": args.seed, "batch_size": args.batch_size}
    return config


@torch.no_grad()
def _image_feature_stats(encoder, source, args, device, batch_size=32):
    """Per-channel mean/std of the encoder's features over the first train images."""
    loader = make_loader(source, batch_size, shuffle=False, workers=0)
    total, sq, n, images = 0.0, 0.0, 0, 0
    for batch in loader:
        f = encoder.eval()(normalise(batch["images"], device)).double().flatten(0, 1)
        total, sq, n = total + f.sum(0), sq + (f * f).sum(0), n + f.shape[0]
        images += len(batch["images"])
        if images >= args.feature_samples:
            break
    mean = total / n
    return mean.float(), (sq / n - mean * mean).clamp_min(0).sqrt().float()


# ---------------------------------------------------------------- validation

@torch.no_grad()
def decode_source(encoder, decoder, loader, vocab, device, beam=1, limit=None, topk=1):
    """{image_id: best caption words} for a loader's images (greedy or beam search)."""
    out = {}
    encoder.eval()
    for batch in loader:
        batch = to_device(batch, device)
        feats = batch["features"] if "features" in batch else encoder(batch["images"])
        ids = batch["image_ids"].tolist()
        if beam <= 1:
            tokens, _ = greedy(decoder, feats, vocab.max_len)
            words = [vocab.words(row) for row in tokens.tolist()]
        else:
            hyps = beam_search(decoder, feats, beam=beam, max_len=vocab.max_len, topk=1)
            words = [vocab.words(h[0].tokens) for h in hyps]
        out.update(zip(ids, words))
        if limit is not None and len(out) >= limit:
            break
    return out


def validate(encoder, decoder, loader, vocab, refs, device, beam=1, limit=None):
    """BLEU-1..4 (nltk, words cleaned with the vocabulary's preset) of decoded val captions."""
    words = decode_source(encoder, decoder, loader, vocab, device, beam, limit)
    ids = sorted(words)
    missing = [i for i in ids if not refs.get(i)]
    if missing:
        raise CapgenError(f"{loader.source.path}: no reference captions for image id {missing[0]}")
    hyps = [words[i] for i in ids]
    ref_words = [[clean(r, vocab.preset) for r in refs[i]] for i in ids]
    with warnings.catch_warnings():  # nltk warns at length about zero n-gram counts early on
        warnings.simplefilter("ignore")
        scores = bleu(hyps, ref_words)
    return scores, {i: " ".join(words[i]) for i in ids}


# ---------------------------------------------------------------- logs

class Log:
    """RUN/log.jsonl (rank 0): one JSON object per line, flushed as written."""

    def __init__(self, path, enabled, keep_before_epoch=None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        records = read_log(path) if keep_before_epoch is not None else []
        keep = [r for r in records if r.get("epoch", 0) < (keep_before_epoch or 0)]
        with atomic_write(path, "w") as f:  # a resumed run drops what the lost epoch logged
            f.writelines(json.dumps(r) + "\n" for r in keep)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record):
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self):
        if self.enabled:
            self.file.close()


def read_log(path):
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curve(log_path, png_path):
    """Training loss per logged step and validation BLEU-4 per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r["type"] == "train"]
    val = [r for r in records if r["type"] == "val"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["Bleu_4"] for r in val], "o-", color="tab:red")
        ax2.set_ylabel("validation BLEU-4", color="tab:red")
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(log_path))) or "training")
    fig.tight_layout()
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


# ---------------------------------------------------------------- training

def _optimizer(model, args, device):
    groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": args.decoder_lr}]
    if args.fine_tune_encoder and model.encoder is not None:
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": args.encoder_lr})
    return torch.optim.Adam(groups, fused=device.type == "cuda" or None)


def _load_state(encoder, decoder, state):
    encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})


def train(args):
    """Train per `args` (TrainArgs); returns {"best": score, "epochs": n, "best_dir": path}."""
    torch.manual_seed(args.seed)
    rank, world, local_rank, own_group = _dist_setup(args.device)
    device = _device(args, local_rank)
    lead = rank == 0
    try:
        return _train(args, rank, world, device, lead)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(args, rank, world, device, lead):
    train_src, val_src = DataSource(args.train), DataSource(args.val)
    vocab = train_src.vocab()
    if not train_src.image_size:
        raise CapgenError(f"{args.train}: no image_size in its manifest or attributes")
    encoder, weights = _encoder_for(args, train_src)
    if args.fine_tune_encoder:
        encoder.set_fine_tune()
    decoder = Decoder(len(vocab), encoder.channels, args.embed_dim, args.attention_dim,
                      args.hidden_dim, args.dropout)
    encoder.to(device)
    decoder.to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    if train_src.kind == "features":
        decoder.set_feature_stats(torch.from_numpy(train_src.cache.channel_mean),
                                  torch.from_numpy(train_src.cache.channel_std))
    elif not args.resume or not os.path.isdir(checkpoint.resolve(os.path.join(args.out, "last"))):
        decoder.set_feature_stats(*_image_feature_stats(encoder, train_src, args, device))
    model = CaptionModel(encoder if train_src.kind == "images" else None, decoder, args.fine_tune_encoder)
    optimizer = _optimizer(model, args, device)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=args.lr_factor, patience=args.lr_patience)
    config = model_config(encoder, weights, decoder, train_src, vocab, args)

    start_epoch, step, best, bad_epochs = 0, 0, -1.0, 0
    last_dir, best_dir = os.path.join(args.out, "last"), os.path.join(args.out, "best")
    if args.resume and os.path.isdir(checkpoint.resolve(last_dir)):
        state, _, _, ts = checkpoint.load(last_dir)
        if ts is None:
            raise CapgenError(f"{last_dir}: no trainer.pt to resume from")
        try:
            _load_state(encoder, decoder, state)
        except RuntimeError as err:
            raise CapgenError(f"{last_dir}: does not match these options ({str(err).splitlines()[0]})") from None
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        start_epoch, step, best, bad_epochs = ts["epoch"], ts["step"], ts["best"], ts["bad_epochs"]
        checkpoint.set_rng_state(ts["rng"])
        if ts["seed"] != args.seed:
            raise CapgenError(f"{last_dir}: trained with --seed {ts['seed']}, resumed with {args.seed}")
    if lead:
        os.makedirs(args.out, exist_ok=True)
    log = Log(os.path.join(args.out, "log.jsonl"), lead, start_epoch if args.resume else None)

    module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = torch.compile(module) if args.compile else module
    joined = module if world > 1 else None  # ranks that run out of batches early shadow the others

    loader = make_loader(train_src, args.batch_size, shuffle=True, seed=args.seed, rank=rank, world=world,
                         workers=args.workers, pin_memory=device.type == "cuda", loader=args.loader)
    val_loader = make_loader(val_src, args.batch_size, shuffle=False, workers=min(args.workers, 1),
                             loader=args.loader if args.loader != "auto" else "cpu") if lead else None
    refs = val_src.references() if lead else None
    train_step = TrainStep(model, step_fn, optimizer, device, alpha_c=args.alpha_c, grad_clip=args.grad_clip)

    done, stopped = start_epoch, False
    for epoch in range(start_epoch, args.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(stream_seed(args.seed, epoch, rank))  # dropout: a function of the epoch
        model.train()
        if not args.fine_tune_encoder:
            encoder.eval()
        step, samples = _train_epoch(args, train_step, joined, loader, epoch, step, log, lead)
        per_rank = [samples]
        if world > 1:
            per_rank = [None] * world
            dist.all_gather_object(per_rank, samples)
        log.write({"type": "epoch", "epoch": epoch, "step": step, "world": world, "samples": sum(per_rank),
                   "samples_per_rank": per_rank})
        scores = None
        if lead:
            scores, _ = validate(encoder, decoder, val_loader, vocab, refs, device, args.beam, args.val_images)
        if world > 1:
            box = [scores]
            dist.broadcast_object_list(box, src=0)
            scores = box[0]
        score = scores["Bleu_4"]
        scheduler.step(score)
        improved = score > best
        best, bad_epochs = (score, 0) if improved else (best, bad_epochs + 1)
        if lead:
            log.write({"type": "val", "epoch": epoch, "step": step, **{k: round(v, 6) for k, v in scores.items()},
                       "lr": optimizer.param_groups[0]["lr"], "best": round(best, 6), "beam": args.beam})
            ts = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                  "step": step, "best": best, "bad_epochs": bad_epochs, "seed": args.seed,
                  "rng": checkpoint.rng_state(), "scores": scores}
            state = captioner.model_state(encoder, decoder)
            checkpoint.save(last_dir, state, config, vocab, ts)
            if improved:
                checkpoint.save(best_dir, state, config, vocab, ts)
            plot_curve(log.path, os.path.join(args.out, "curve.png"))
            tqdm.write(f"epoch {epoch + 1}/{args.epochs}: val BLEU-4 {score:.4f} (best {best:.4f}), "
                       f"lr {optimizer.param_groups[0]['lr']:.2e}", file=sys.stderr)
        if world > 1:
            dist.barrier()
        done = epoch + 1
        if bad_epochs >= args.patience:
            stopped = True
            if lead:
                log.write({"type": "stop", "epoch": epoch, "step": step, "reason": "early stopping",
                           "patience": args.patience})
            break
    log.close()
    return {"best": best, "epochs": done, "step": step, "early_stopped": stopped,
            "best_dir": best_dir, "last_dir": last_dir}


def _join(module):
    if module is None:
        return contextlib.nullcontext()
    from torch.distributed.algorithms.join import Join
    return Join([module])


def _train_epoch(args, train_step, joined, loader, epoch, step, log, lead):
    seen, total, t0 = 0, 0, time.perf_counter()
    bar = tqdm(total=loader.num_samples(), unit="img", desc=f"epoch {epoch + 1}", disable=not (lead and args.progress),
               dynamic_ncols=True, leave=False)
    with _join(joined):
        for batch in loader:
            b = train_step(batch)
            step += 1
            seen, total = seen + b, total + b
            bar.update(b)
            if step % args.log_every == 0:
                seen, t0 = _log_train(log, train_step, seen, t0, epoch, step, bar)
        if step % args.log_every and seen:
            _log_train(log, train_step, seen, t0, epoch, step, bar, last=True)
    bar.close()
    return step, total


def _log_train(log, train_step, seen, t0, epoch, step, bar, last=False):
    """One host sync per log interval: averages over the steps since the last record."""
    loss, ce, hits, n, steps = train_step.take()
    optimizer = train_step.optimizer
    elapsed = time.perf_counter() - t0
    record = {"type": "train", "epoch": epoch, "step": step, "loss": loss / steps, "ce": ce / steps,
              "top5": hits / max(n, 1), "lr": optimizer.param_groups[0]["lr"],
              "samples_per_s": round(seen / max(elapsed, 1e-9), 2), "end_of_epoch": last}
    log.write(record)
    bar.set_postfix(loss=f"{record['loss']:.3f}", top5=f"{record['top5']:.3f}")
    return 0, time.perf_counter()
