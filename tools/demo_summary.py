"""The demo's summary: the scores of its evaluations, what it ran, and the table it prints.

`demo_summary(d, steps)` reads the demo's state (tools/demo.py: the stages' `d`) and its
timed steps; `summary_table` formats the summary as aligned lines.
"""

import os

from model.device import default_device, use_bf16
from model.eval.evaluate import METRICS


def scores(ev, attributes):
    """The summary's scores of one evaluation: the metrics, then (with scene truth) the
    all-right share as attribute_accuracy and each attribute's accuracy."""
    s = {k: round(ev["scores"][k], 4) for k in METRICS if k in ev["scores"]}
    if attributes is not None:
        s["attribute_accuracy"] = round(attributes["all"], 4)
        s["attributes"] = {k: round(v, 4) for k, v in attributes.items() if k != "all"}
    return s


def demo_summary(d, steps):
    """The run's summary; a stage that replaces d.ev may keep the scores it replaced as
    d.before = (ev, accuracy) (the SCST stage: "before_scst")."""
    cfg = d.cfg
    before = {"before_scst": scores(*d.before)} if getattr(d, "before", None) else {}
    return {
        **scores(d.ev, d.accuracy),
        **before,
        "checkpoint": d.best,
        "results": os.path.abspath(d.path("results_val.json")),
        "report": os.path.abspath(d.report),
        "attention_figure": os.path.abspath(d.figure),
        "data": os.path.abspath(d.data),
        "images": d.counts,
        "beam": cfg["beam"],
        "text_preset": d.ev["text_preset"],
        "min_freq": d.min_freq,
        "epochs": d.trained["epochs"],
        "scst_epochs": d.scst["epochs"] if getattr(d, "scst", None) else 0,
        "encoder": f"{cfg['encoder']} {cfg['stop']} {cfg['image_size']}px random init, "
        + (f"trained (lr {cfg['encoder_lr']:g})" if cfg["fine_tune"] else "frozen"),
        "decoder": f"{cfg['dims']}-d (attention {cfg['attention_dim']}), {cfg['batch_size']} images x 5 "
        f"captions per step, lr {cfg['lr']:g}, dropout {cfg['dropout']:g}",
        "precision": "bf16 autocast" if use_bf16(default_device(), cfg["bf16"]) else "fp32",
        "seconds": {**{k: round(v, 1) for k, v in steps.times.items()}, "total": round(steps.total(), 1)},
    }


def summary_table(s):
    rows = [
        ("data", s["data"]),
        ("held-out images", f"{s['images']['val']} (trained on {s['images']['train']})"),
        ("encoder", s["encoder"]),
        (
            "decoder",
            f"{s['decoder']}, {s['epochs']} epochs" + (f" + {s['scst_epochs']} SCST" if s["scst_epochs"] else ""),
        ),
        ("precision", f"{s['precision']} (training steps)"),
        ("decoding", f"beam {s['beam']}, text preset {s['text_preset']}"),
    ]
    rows += [(k, f"{s[k]:.4f}") for k in METRICS if k in s]
    if "attribute_accuracy" in s:
        rows.append(
            (
                "attribute accuracy",
                f"{s['attribute_accuracy']:.4f} (all right; "
                + ", ".join(f"{k} {v:.3f}" for k, v in s["attributes"].items())
                + ")",
            )
        )
    if "before_scst" in s:
        before = s["before_scst"]
        rows.append(
            ("before SCST", ", ".join(f"{k} {before[k]:.4f}" for k in (*METRICS, "attribute_accuracy") if k in before))
        )
    rows += [
        ("best checkpoint", s["checkpoint"]),
        ("results", s["results"]),
        ("report", s["report"]),
        ("attention figure", s["attention_figure"]),
        ("time", ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
