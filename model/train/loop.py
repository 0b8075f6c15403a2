"""Trainer: teacher forcing, Adam, clipping, LR decay and early stopping on validation
BLEU-4 from real decoding; bf16 autocast, torch.compile, DDP; checkpoint / exact resume.

`train(args)` sets up the process, `fit` is the loop: build (model/train/build.py's
helpers, which the benchmarks use too), resume, then per epoch `train_one_epoch`
(model/train/epoch.py), validate (model/infer/decode.py), then the epoch's end
(model/train/epoch_end.py): the schedule, the log (model/runs/log.py) and the saves
(model/runs/checkpoint.py's TrainState).
With --scst the epoch is model/train/scst.py's self-critical one, from --init's weights, and
validation CIDEr (not BLEU-4) drives the schedule, early stopping and `best`: fit decides
which (model/runs/selection.py) and records it in the run's TrainState.metric.

Reproducibility: with the CPU loaders the batch order is a function of (seed, epoch)
(pipeline/loading/batches.py) and the dropout RNG is reseeded from (seed, epoch, rank) at each
epoch start, so an epoch's losses do not depend on what ran before it: a run resumed
from RUN/last logs the same losses as one never stopped. A DALI-fed run resumes from
the same weights and optimizer state but not bit-exactly: DALI shuffles and augments
from its own running RNG, which neither the seed nor the checkpoint sets per epoch.

Multi-process: `torchrun --nproc_per_node N -m tools.cli train ...` (NCCL on GPUs,
gloo on CPU). Shards (or feature chunk blocks) are split by rank and worker; ranks
with fewer batches join early (torch.distributed.algorithms.Join). Rank 0 validates,
logs and saves.
"""

import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist

from model.nets.caption_model import CaptionModel
from model.runs import checkpoint
from model.runs.checkpoint import TrainState
from model.runs.checkpoint_config import model_state, split_state, trained_config
from model.runs.log import Log
from model.runs.selection import SELECT_SCST, SELECT_XE
from model.runs.state_check import check_resume
from model.train.args import TrainArgs
from model.train.build import (
    build_model,
    build_optimizer,
    build_scheduler,
    build_train_loader,
    build_val_loader,
)
from model.train.epoch import log_train, train_one_epoch
from model.train.epoch_end import check_finite, end_epoch, report, save
from model.train.run_args import write_run_args
from model.train.scst import ScstModel, ScstStep, init_model, log_scst, reward_scorer, val_cider
from model.train.step import TrainStep
from model.train.validate import validate
from pipeline.cluster.jobs import dist_info
from pipeline.errors import CapgenError, first_line
from pipeline.folder_lock import folder_lock
from pipeline.loading.batches import stream_seed
from pipeline.loading.loader import check_lost
from pipeline.loading.source import DataSource
from pipeline.loading.source_match import check_same_inputs

# ---------------------------------------------------------------- process


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


def train(args: TrainArgs) -> dict:
    """Train per `args`, as one process or as a rank of torchrun's (joining its process group),
    holding args.out's lock on rank 0; a resume with args.resume picks up RUN/last.

    Returns {"best": the best val score, "metric": the score's name ("Bleu_4", "CIDEr" for
    --scst), "epochs": epochs done, "step": optimizer steps done, "early_stopped": bool,
    "best_dir": RUN/best, "last_dir": RUN/last}. Bad inputs, a diverged run or an unreadable
    data set raise a one-line CapgenError.

    Example::

        >>> args = capgen.TrainArgs(train="shards/train", val="shards/val", out="run", epochs=2)
        >>> capgen.train(args)["best_dir"]
        'run/best'
    """
    torch.manual_seed(args.seed)
    rank, world, local_rank, own_group = _dist_setup(args.device)
    device = _device(args, local_rank)
    try:
        with folder_lock(args.out) if rank == 0 else contextlib.nullcontext():  # one writer per run folder
            return fit(args, device, rank, world)
    finally:
        if own_group:
            dist.destroy_process_group()


# ---------------------------------------------------------------- fit


def fit(args, device, rank=0, world=1):
    """The training loop of this process (rank `rank` of `world`); returns `train`'s summary."""
    lead = rank == 0
    train_src, val_src, vocab = _sources(args)
    last_dir, best_dir = os.path.join(args.out, "last"), os.path.join(args.out, "best")
    resuming = args.resume and os.path.isdir(checkpoint.resolve(last_dir))
    if resuming and lead:
        checkpoint.reconcile(args.out)
    if resuming and world > 1:
        dist.barrier()
    encoder, decoder, model, config, optimizer, scheduler = _build(args, train_src, vocab, device, resuming)
    state = _resume(last_dir, args, encoder, decoder, optimizer, scheduler) if resuming else TrainState(args.seed)
    state.metric = SELECT_SCST if args.scst else SELECT_XE  # what selects `best`, recorded in trainer.pt
    if lead:
        os.makedirs(args.out, exist_ok=True)
        write_run_args(args, train_src, val_src)
    log = Log(os.path.join(args.out, "log.jsonl"), lead, state.epoch if args.resume else None)
    train_step, joined = _train_step(args, model, optimizer, train_src, vocab, device, world)
    loader = build_train_loader(args, train_src, device, rank, world)
    val_loader = build_val_loader(args, val_src) if lead else None
    refs = val_src.references() if lead else None
    log_record = log_scst if args.scst else log_train

    stopped = False
    for epoch in range(state.epoch, args.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(stream_seed(args.seed, epoch, rank))  # dropout: a function of the epoch
        model.train()
        if not args.fine_tune_encoder:
            encoder.eval()
        state.step, samples = train_one_epoch(
            args, train_step, joined, loader, epoch, state.step, log, lead, log_record
        )
        _check_lost(args, loader, world)
        _log_epoch(log, epoch, state.step, samples, world)
        scores = (
            _validate(args, encoder, decoder, val_loader, val_src, vocab, refs, device, log, state.step)
            if lead
            else None
        )
        improved = end_epoch(state, epoch, _broadcast(scores, world), scheduler)
        if lead:
            report(args, log, state, optimizer)
            weights = model_state(encoder, decoder)
            check_finite(args, epoch, state, weights)
            save(args, state, optimizer, scheduler, weights, config, vocab, improved)
        if world > 1:
            dist.barrier()
        if state.bad_epochs >= args.patience:
            stopped = True
            _log_stop(log, epoch, state.step, args.patience)
            break
    log.close()
    return _result(state, stopped, best_dir, last_dir)


def _sources(args):
    """(train, val, vocabulary): the DataSources, checked to come from the same encoder,
    preprocessing and vocabulary, and the train set's vocabulary."""
    train_src, val_src = DataSource(args.train), DataSource(args.val)
    vocab = train_src.vocab()
    if not train_src.image_size:
        raise CapgenError(f"{args.train}: no image_size in its manifest or attributes")
    check_same_inputs(train_src, val_src)
    return train_src, val_src, vocab


def _result(state, stopped, best_dir, last_dir):
    """`train`'s return value."""
    return {
        "best": state.best,
        "epochs": state.epoch,
        "step": state.step,
        "early_stopped": stopped,
        "best_dir": best_dir,
        "last_dir": last_dir,
        "metric": state.metric,
    }


def _train_step(args, model, optimizer, train_src, vocab, device, world):
    """(train_step, joined): the cross-entropy or SCST step, over the model as `_wrap` wraps it."""
    forward, joined = _wrap(
        ScstModel(model, args.scst_samples, vocab.max_len) if args.scst else model, args, device, world
    )
    train_step = (
        ScstStep(model, forward, optimizer, device, reward_scorer(train_src), vocab, args)
        if args.scst
        else TrainStep(
            model, forward, optimizer, device, alpha_c=args.alpha_c, grad_clip=args.grad_clip, bf16=args.bf16
        )
    )
    return train_step, joined


def _log_epoch(log, epoch, step, samples, world):
    """The epoch record: every rank's sample count (every rank gathers them; rank 0 writes it)."""
    per_rank = _gather(samples, world)
    log.write(
        {
            "type": "epoch",
            "epoch": epoch,
            "step": step,
            "world": world,
            "samples": sum(per_rank),
            "samples_per_rank": per_rank,
        }
    )


def _log_stop(log, epoch, step, patience):
    """The early stop record (rank 0)."""
    log.write({"type": "stop", "epoch": epoch, "step": step, "reason": "early stopping", "patience": patience})


def _build(args, train_src, vocab, device, resuming):
    """(encoder, decoder, model, config, optimizer, scheduler): a new model, or with --scst
    --init's, with its own learning rate."""
    if args.scst:
        encoder, decoder, weights, config = init_model(args, train_src, vocab, device)
        config["training"] = _training_record(args, train_src, vocab)
    else:
        encoder, decoder, weights = build_model(args, train_src, len(vocab), device, image_stats=not resuming)
        config = trained_config(
            encoder,
            weights,
            decoder,
            int(train_src.image_size),
            train_src.resize_mode or "stretch",
            _training_record(args, train_src, vocab),
        )
    model = CaptionModel(encoder if train_src.kind == "images" else None, decoder, args.fine_tune_encoder)
    lrs = dataclasses.replace(args, decoder_lr=args.scst_lr, encoder_lr=args.scst_lr) if args.scst else args
    optimizer = build_optimizer(model, lrs, device)
    return encoder, decoder, model, config, optimizer, build_scheduler(optimizer, args)


def _validate(args, encoder, decoder, val_loader, val_src, vocab, refs, device, log, step):
    """The epoch's validation scores (rank 0): decoded BLEU etc., and CIDEr for SCST runs."""
    scores, val_captions = validate(encoder, decoder, val_loader, vocab, refs, device, args.beam, args.val_images)
    if args.scst:
        scores["CIDEr"] = val_cider(val_captions, val_src, vocab)
    log.captions(val_captions, refs, step)
    return scores


def _training_record(args, source, vocab):
    """config["training"]: how this model was trained."""
    return {
        "source": os.path.abspath(source.path),
        "source_kind": source.kind,
        "fine_tune_encoder": bool(args.fine_tune_encoder),
        "text_preset": vocab.preset,
        "seed": args.seed,
        "batch_size": args.batch_size,
        **(
            {
                "scst": {
                    "init": os.path.abspath(args.init),
                    "samples": args.scst_samples,
                    "baseline": args.scst_baseline,
                    "bad_ending_penalty": args.scst_bad_ending_penalty,
                    "lr": args.scst_lr,
                }
            }
            if args.scst
            else {}
        ),
    }


def _resume(last_dir, args, encoder, decoder, optimizer, scheduler):
    """RUN/last's TrainState, with its weights, optimizer, scheduler and RNG states put back."""
    weights, _, _, state = checkpoint.load(last_dir)
    if state is None:
        raise CapgenError(f"{last_dir}: no trainer.pt to resume from")
    try:
        parts = split_state(weights)
        encoder.load_state_dict(parts["encoder"])
        decoder.load_state_dict(parts["decoder"])
    except RuntimeError as err:
        raise CapgenError(f"{last_dir}: does not match these options ({first_line(err)})") from None
    check_resume(os.path.join(checkpoint.resolve(last_dir), checkpoint.TRAINER), state, optimizer, scheduler)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    checkpoint.set_rng_state(state.rng)
    if state.seed != args.seed:
        raise CapgenError(f"{last_dir}: trained with --seed {state.seed}, resumed with {args.seed}")
    return state


def _wrap(model, args, device, world):
    """(forward, joined): the model as the step calls it (DDP-wrapped, compiled), and the
    DDP module that ranks running out of batches early shadow (None on one process)."""
    module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        # The per-step work, not the whole forward: a shrinking batch changes the forward's
        # sequence of step shapes from batch to batch, while one step sees only a few shapes.
        model.decoder.advance = torch.compile(model.decoder.advance)
        if model.encoder is not None:
            model.encoder.forward = torch.compile(model.encoder.forward)
    return module, module if world > 1 else None


def _gather(samples, world):
    """Every rank's sample count of the epoch."""
    per_rank = [samples]
    if world > 1:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, samples)
    return per_rank


def _broadcast(scores, world):
    """Rank 0's validation scores, on every rank."""
    if world > 1:
        box = [scores]
        dist.broadcast_object_list(box, src=0)
        scores = box[0]
    return scores


def _check_lost(args, loader, world):
    """Fail when more than --max-lost of the epoch's samples could not be read (every loader counts them)."""
    lost, expected = (sum(x) for x in zip(*_gather(loader.lost(), world)))
    check_lost(args.train, lost, expected, args.max_lost, " this epoch")
