"""A training run's log (RUN/log.jsonl, one JSON object per line) and its curve plot.

A run killed mid-write can leave a partial last line: readers skip it (and a resumed
run rewrites the file without it); a bad line before the last is a one-line error.
"""
import json
import os

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

    def write(self, record):
        if self.enabled:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as err:
                raise CapgenError(f"{self.path}: cannot write the run log ({err.strerror or err})") from None

    def close(self):
        if self.enabled:
            self.file.close()


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
    """Training loss per logged step and validation BLEU-4 per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("type") == "train" and "loss" in r and "step" in r]
    val = [r for r in records if r.get("type") == "val" and "Bleu_4" in r and "step" in r]
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
    try:
        with atomic_write(png_path, "wb") as f:
            fig.savefig(f, format="png")
    except OSError as err:
        raise CapgenError(f"{png_path}: cannot write the curve ({err.strerror or err})") from None
    finally:
        plt.close(fig)
