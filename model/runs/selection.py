"""The validation score that selects a run's `best`: one per kind of run, chosen by the
trainer (model/train/loop.py), recorded in the run's trainer state (TrainState.metric) and
in its val log records ("metric"), and read back from there by checkpoint.reconcile,
`capgen runs`, the curve and the trainer's finiteness check."""

SELECT_XE = "Bleu_4"  # cross-entropy runs
SELECT_SCST = "CIDEr"  # self-critical runs (--scst)
# What a trainer.pt or log.jsonl written before the metric was recorded is read as: the
# metric they were written with (an SCST run of that code selected by CIDEr, which its
# resume with --scst records again).
UNRECORDED = SELECT_XE


def label(metric: str) -> str:
    """A metric as printed: BLEU-4 for Bleu_4, any other as it is named (CIDEr)."""
    return {"Bleu_4": "BLEU-4"}.get(metric, metric)


def recorded_metric(records: list[dict], default: str = UNRECORDED) -> str:
    """The metric the last of a run's log records that names one names, else `default`."""
    return next((r["metric"] for r in reversed(records) if isinstance(r.get("metric"), str)), default)
