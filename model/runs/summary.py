"""`capgen runs`: one summary per run folder (log.jsonl + args.json + RUN/last's trainer
state), and those summaries as a table, runs side by side."""

import os

from model.runs import checkpoint
from model.runs.log import read_log
from model.runs.schema import Obj, check, read_json
from model.runs.selection import UNRECORDED, recorded_metric
from pipeline.errors import CapgenError

# The options a reader compares runs by (all of them are in RUN/args.json).
KEY_OPTIONS = (
    "train",
    "batch_size",
    "encoder",
    "fine_tune_encoder",
    "embed_dim",
    "hidden_dim",
    "dropout",
    "decoder_lr",
    "beam",
    "seed",
)


def run_summary(folder: str | os.PathLike) -> dict:
    """{run, epochs, steps, metric, best_<metric>, best_epoch (1-based), seconds, early_stopped,
    options}: `metric` is the val score that selected the run's best (model/runs/selection.py:
    Bleu_4, CIDEr for SCST runs), as its log records (else its trainer state) name it, and
    best_<metric> (best_Bleu_4, best_CIDEr) its best value."""
    log_path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(log_path):
        raise CapgenError(f"{folder}: no log.jsonl (not a run folder?)")
    records = read_log(log_path)
    val = [r for r in records if r.get("type") == "val"]
    args_path = os.path.join(folder, "args.json")
    options = {}
    if os.path.isfile(args_path):
        options = check(args_path, read_json(args_path, "a capgen args.json"), Obj({"args": Obj({})}))["args"]
    trainer = os.path.join(folder, "last", checkpoint.TRAINER)
    state = checkpoint.read_trainer_state(trainer).to_dict() if os.path.isfile(trainer) else {}
    metric = recorded_metric(val, state.get("metric", UNRECORDED))
    best = max((r for r in val if metric in r), key=lambda r: r[metric], default=None)
    return {
        "run": os.fspath(folder),
        "epochs": state.get("epoch", len(val)),
        "steps": state.get("step", max((r.get("step", 0) for r in records), default=0)),
        "metric": metric,
        f"best_{metric}": best[metric] if best else None,
        "best_epoch": best["epoch"] + 1 if best else None,
        "seconds": round(sum(r.get("seconds", 0.0) for r in val), 1),
        "early_stopped": any(r.get("type") == "stop" for r in records),
        "options": {k: options.get(k) for k in KEY_OPTIONS},
    }


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:g}"
    if isinstance(value, str) and os.sep in value:
        return os.path.basename(value.rstrip(os.sep))
    return str(value)


def _best_row(summaries):
    """("best <metric>", cells) when the runs share their metric, else ("best", "<value> <metric>" cells)."""
    metrics = [s["metric"] for s in summaries]
    cells = [_cell(s[f"best_{m}"]) for s, m in zip(summaries, metrics)]
    if len(set(metrics)) == 1:
        return f"best {metrics[0]}".replace("_", " "), cells
    return "best", [f"{c} {m}" for c, m in zip(cells, metrics)]


def runs_table(summaries: list[dict]) -> str:
    """One row per field, one column per run (as `capgen runs` prints it); the best row names
    the metric that selected each run's best (best Bleu 4, best CIDEr)."""
    rows = [("run", [os.path.basename(os.path.abspath(s["run"])) for s in summaries]), _best_row(summaries)]
    rows += [
        (key.replace("_", " "), [_cell(s[key]) for s in summaries])
        for key in ("best_epoch", "epochs", "steps", "seconds", "early_stopped")
    ]
    rows += [(key, [_cell(s["options"][key]) for s in summaries]) for key in KEY_OPTIONS]
    width = max(len(k) for k, _ in rows)
    cols = [max(len(row[1][i]) for row in rows) for i in range(len(summaries))]
    return "\n".join(
        f"{k:<{width}}  " + "  ".join(f"{v:<{w}}" for v, w in zip(vals, cols)).rstrip() for k, vals in rows
    )
