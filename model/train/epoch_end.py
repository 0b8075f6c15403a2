"""The end of an epoch, after validation: count it and step the LR schedule (every rank),
then on rank 0 write its val record, refuse a non-finite model or score, and save RUN/best
(when the score that TrainState.metric names improved) and RUN/last, then the curve."""

import math
import os

import torch

from model.runs import checkpoint
from model.runs.log import plot_curve
from model.runs.selection import label
from model.train.build import step_scheduler
from model.train.epoch import diverged
from pipeline.errors import say


def end_epoch(state, epoch, scores, scheduler):
    """Count the epoch in `state` and step the LR schedule; True when the val score that
    state.metric names (BLEU-4; CIDEr for SCST) improved (a non-finite score never does)."""
    score = scores[state.metric]
    step_scheduler(scheduler, score)
    improved = math.isfinite(score) and score > state.best
    state.best, state.bad_epochs = (score, 0) if improved else (state.best, state.bad_epochs + 1)
    state.epoch, state.scores = epoch + 1, scores
    return improved


def report(args, log, state, optimizer):
    """The epoch's val record (its scores, lr, best and the metric that selects it) and its line on stderr."""
    lr = optimizer.param_groups[0]["lr"]
    log.write(
        {
            "type": "val",
            "epoch": state.epoch - 1,
            "step": state.step,
            **{k: round(v, 6) for k, v in state.scores.items()},
            "lr": lr,
            "best": round(state.best, 6),
            "metric": state.metric,
            "beam": args.beam,
        }
    )
    say(
        f"epoch {state.epoch}/{args.epochs}: val {label(state.metric)} {state.scores[state.metric]:.4f} "
        f"(best {state.best:.4f}), lr {lr:.2e}"
    )


def check_finite(args, epoch, state, weights):
    """Refuse to save a model with non-finite weights or validation score (the one that selects `best`)."""
    bad = not math.isfinite(state.scores[state.metric]) or not all(
        bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()
    )
    if bad:
        raise diverged(args, epoch, state.step)


def save(args, state, optimizer, scheduler, weights, config, vocab, improved):
    """RUN/best (when improved) then RUN/last, with the run's state; then the curve. In this
    order a kill at any moment leaves a best/ (or best.old/) with the best score that last/
    records (model/runs/checkpoint.py's reconcile finishes an interrupted swap)."""
    state.optimizer, state.scheduler, state.rng = optimizer.state_dict(), scheduler.state_dict(), checkpoint.rng_state()
    if improved:
        checkpoint.save(os.path.join(args.out, "best"), weights, config, vocab, state)
    checkpoint.save(os.path.join(args.out, "last"), weights, config, vocab, state)
    plot_curve(os.path.join(args.out, "log.jsonl"), os.path.join(args.out, "curve.png"))
