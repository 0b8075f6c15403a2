"""One epoch's pass over this rank's batches: cross-entropy (model/train/step.py) or SCST
(model/train/scst.py) steps, their log records at each log interval, and the divergence
guard (a non-finite loss stops the run; after non-finite input features, as corrupt input)."""

import contextlib
import time

from tqdm import tqdm

from pipeline.errors import CapgenError
from pipeline.loading.features import corrupt_input

KEPT = "; the last good checkpoints are kept"  # how a stopped run ends its error


def train_one_epoch(args, train_step, joined, loader, epoch, step, log, lead, log_record):
    """One pass over this rank's batches (cross-entropy or SCST steps); returns (global step,
    images seen). log_record writes the step's averages at each log interval."""
    seen, total, t0 = 0, 0, time.perf_counter()
    desc = f"{'scst' if args.scst else 'epoch'} {epoch + 1}"
    bar = tqdm(
        total=loader.num_samples(),
        unit="img",
        desc=desc,
        disable=not (lead and args.progress),
        dynamic_ncols=True,
        leave=False,
    )
    try:
        with _join(joined):
            for batch in loader:
                b = train_step(batch)
                step += 1
                seen, total = seen + b, total + b
                bar.update(b)
                if step % args.log_every == 0:
                    _check_loss(args, train_step, epoch, step)
                    seen, t0 = log_record(log, train_step, seen, t0, epoch, step, bar)
            _check_loss(args, train_step, epoch, step)
            if step % args.log_every and seen:
                log_record(log, train_step, seen, t0, epoch, step, bar, last=True)
    finally:
        bar.close()  # before any error is printed: the error starts its own line
    return step, total


def _check_loss(args, train_step, epoch, step):
    """The divergence guard: the step's device flag, read once per log interval (SCST
    steps have none: their weights are checked before every save). A non-finite loss after
    non-finite input features names the training source as corrupt, not the learning rate."""
    if hasattr(train_step, "all_finite") and not train_step.all_finite():
        if not train_step.inputs_finite():  # the data, not the learning rate
            raise corrupt_input(args.train, f" by epoch {epoch + 1}, step {step}", KEPT)
        raise diverged(args, epoch, step)


def _join(module):
    if module is None:
        return contextlib.nullcontext()
    from torch.distributed.algorithms.join import Join

    return Join([module])


def log_train(log, train_step, seen, t0, epoch, step, bar, last=False):
    """One host sync per log interval: averages over the steps since the last record."""
    loss, ce, hits, n, steps = train_step.take()
    values = {"loss": loss / steps, "ce": ce / steps, "top5": hits / max(n, 1)}
    return write_train(values, ("loss", "top5"), log, train_step, seen, t0, epoch, step, bar, last)


def write_train(values, shown, log, train_step, seen, t0, epoch, step, bar, last):
    """Write a train record: its position, `values` (the step's averages since the last
    record), the lr, images/s since t0 and whether it ends the epoch; show the `shown` values
    on the progress bar. Returns (0, now): the next interval's image count and start."""
    elapsed = time.perf_counter() - t0
    record = {
        "type": "train",
        "epoch": epoch,
        "step": step,
        **values,
        "lr": train_step.optimizer.param_groups[0]["lr"],
        "samples_per_s": round(seen / max(elapsed, 1e-9), 2),
        "end_of_epoch": last,
    }
    log.write(record)
    bar.set_postfix({k: f"{record[k]:.3f}" for k in shown})
    return 0, time.perf_counter()


def diverged(args, epoch, step):
    return CapgenError(
        f"{args.out}: training diverged: non-finite loss by epoch {epoch + 1}, step {step} "
        f"(try a lower --decoder-lr){KEPT}"
    )
