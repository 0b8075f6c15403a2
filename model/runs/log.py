"""A training run's log (RUN/log.jsonl, one JSON object per line), its TensorBoard
mirror (RUN/tb/, when the tensorboard package is installed) and its curve plot.

A run killed mid-write can leave a partial last line: readers skip it (and a resumed
run rewrites the file without it); a bad line before the last is a one-line error.
"""

import importlib.util
import json
import os
import time

from model.runs.selection import label, recorded_metric
from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError


class Log:
    """RUN/log.jsonl (rank 0 only: enabled=False writes nothing), flushed as written.

    keep_before_epoch: a resumed run keeps the records of the epochs before it and
    drops what the lost epoch had logged; None starts the file afresh."""

    def __init__(self, path, enabled, keep_before_epoch=None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        records = read_log(path) if keep_before_epoch is not None else []
        keep = [r for r in records if r.get("epoch", 0) < (keep_before_epoch or 0)]
        try:
            with atomic_write(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
            self.file = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise CapgenError(f"{path}: cannot write the run log ({err.strerror or err})") from None
        # A resumed run hides the TensorBoard events of the epoch it lost, as it drops its records.
        purge = max((r.get("step", 0) for r in keep), default=0) + 1 if keep_before_epoch is not None else None
        self.board = Board(os.path.join(os.path.dirname(path), "tb"), purge) if tensorboard_present() else None
        self.mark = time.perf_counter()

    def write(self, record):
        """Append `record`; a val record gains "seconds": wall time since the last one (or the start)."""
        if not self.enabled:
            return
        if record.get("type") == "val":
            now = time.perf_counter()
            record, self.mark = {**record, "seconds": round(now - self.mark, 3)}, now
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:
            raise CapgenError(f"{self.path}: cannot write the run log ({err.strerror or err})") from None
        if self.board is not None:
            self.board.write(record)

    def captions(self, captions, refs, step, count=5):
        """A few validation captions (generated, then a reference) as TensorBoard text."""
        if self.enabled and self.board is not None:
            rows = [f"| {i} | {captions[i]} | {(refs.get(i) or [''])[0]} |" for i in sorted(captions)[:count]]
            self.board.text(
                "val/captions", "\n".join(["| image | generated | reference |", "|---|---|---|", *rows]), step
            )

    def close(self):
        if self.enabled:
            self.file.close()
            if self.board is not None:
                self.board.close()


def tensorboard_present():
    return importlib.util.find_spec("tensorboard") is not None


# Record fields that are positions, not measurements.
_NOT_SCALARS = {"type", "epoch", "step", "world", "end_of_epoch"}


class Board:
    """TensorBoard events in `folder`: every numeric field of a record as scalar TYPE/FIELD
    at the record's step (train/loss, train/top5, train/lr, train/samples_per_s (images/s),
    val/Bleu_4, val/lr, ...)."""

    def __init__(self, folder, purge_step=None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(folder, purge_step=purge_step, flush_secs=30)

    def write(self, record):
        for key, value in record.items():
            if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{record['type']}/{key}", value, record.get("step", 0))

    def text(self, tag, text, step):
        self.writer.add_text(tag, text, step)

    def close(self):
        self.writer.close()


def read_log(path):
    """The records of a log.jsonl ([] when there is none), skipping a partial last line."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if i == len(lines) - 1:
                break  # written by a killed run
            raise CapgenError(f"{path}: line {i + 1} is not a JSON object")
        records.append(record)
    return records


def plot_curve(log_path, png_path):
    """Training loss per logged step and, per epoch, the validation score that selects the
    run's best (its val records' "metric": BLEU-4, CIDEr for SCST runs), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("type") == "train" and "loss" in r and "step" in r]
    val = [r for r in records if r.get("type") == "val" and "step" in r]
    metric = recorded_metric(val)
    val = [r for r in val if metric in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r[metric] for r in val], "o-", color="tab:red")
        ax2.set_ylabel(f"validation {label(metric)}", color="tab:red")
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(log_path))) or "training")
    fig.tight_layout()
    try:
        with atomic_write(png_path, "wb") as f:
            fig.savefig(f, format="png")
    except OSError as err:
        raise CapgenError(f"{png_path}: cannot write the curve ({err.strerror or err})") from None
    finally:
        plt.close(fig)
