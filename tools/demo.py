"""The demo: synth -> shards -> features -> train -> eval -> caption, on a 2-core CPU.

Settings follow the issue's probe (random-init encoders, no ImageNet weights here):
frozen ResNet-18 cut after layer3 at 128 px gives an 8x8 grid of 256 channels,
standardised per channel from the cache's statistics; small batches, many steps.
"""
import os
import time

import torch

from model.attention_figure import figure_writer
from model.evaluate import METRICS, evaluate
from model.extract import extract
from model.train import train
from model.train_args import TrainArgs
from pipeline import shards
from pipeline.coco import read_coco
from pipeline.scenes import attribute_accuracy, read_scenes
from pipeline.synth import synthesize
from tools.caption_files import caption_files
from tools.report_html import write_report

DEMO = {
    "images": 2300,            # train2014 + val2014
    "val_fraction": 300 / 2300,
    "seed": 7,
    "synth_size": (160, 120),  # width, height of the synthetic source images
    "image_size": 128,
    "encoder": "resnet18",
    "stop": "layer3",
    "epochs": 10,
    "batch_size": 8,           # images per step (x5 captions): more, smaller steps
    "lr": 8e-4,
    "dims": 256,               # embed / attention / hidden
    "dropout": 0.3,
    "beam": 3,
    "preset": "coco",          # keeps "a", as the references do
    "min_freq": 5,
    "shard_size": 500,
}


class _Steps:
    """Runs the demo's steps, echoing and timing each."""

    def __init__(self, echo):
        self.echo, self.times, self.start = echo, {}, time.perf_counter()

    def run(self, name, fn, *args, **kw):
        self.echo(f"== {name}")
        t = time.perf_counter()
        result = fn(*args, **kw)
        self.times[name] = time.perf_counter() - t
        self.echo(f"   {name}: {self.times[name]:.1f} s")
        return result

    def total(self):
        return time.perf_counter() - self.start


def _one_thread(fn, *args):
    """Run fn on one intra-op thread: a decoder step of 8 images is too small to split
    across two cores (measured here: 68 img/s on one thread, 75 on two when the machine
    is idle, and far less on two when anything else runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _build_shards(data, split, out, cfg, vocab=None):
    source = read_coco(data, split)
    opts = shards.Options(name=f"synth-{split}", image_size=cfg["image_size"], resize_mode="stretch",
                          shard_size=cfg["shard_size"])
    args = {"coco_root": data, "split": split, "image_size": cfg["image_size"], "preset": cfg["preset"],
            "vocab": vocab, "demo": True}
    r = shards.build(source, out, opts, args, vocab=vocab, preset=cfg["preset"], min_freq=cfg["min_freq"],
                     index=False, progress=False)
    return r["manifest"]


def run_demo(out="demo", images=None, epochs=None, echo=print, **overrides):
    """The whole pipeline on synthetic data; returns the summary (held-out scores first)."""
    cfg = {**DEMO, **overrides}
    cfg["images"] = images or cfg["images"]
    cfg["epochs"] = epochs or cfg["epochs"]
    os.makedirs(out, exist_ok=True)
    data, shard_dir, feat_dir, run = (os.path.join(out, d) for d in ("data", "shards", "features", "run"))
    steps = _Steps(echo)
    w, h = cfg["synth_size"]

    counts = steps.run("synth", synthesize, data, cfg["images"], cfg["seed"], cfg["val_fraction"], w, h)
    echo(f"   {counts['train2014']} train + {counts['val2014']} val images, {counts['captions']} captions")
    train_sh, val_sh = os.path.join(shard_dir, "train"), os.path.join(shard_dir, "val")
    steps.run("shards", lambda: (_build_shards(data, "train2014", train_sh, cfg),
                                 _build_shards(data, "val2014", val_sh, cfg, os.path.join(train_sh, "vocab.json"))))
    train_h5, val_h5 = os.path.join(feat_dir, "train.h5"), os.path.join(feat_dir, "val.h5")
    enc = dict(encoder=cfg["encoder"], stop=cfg["stop"], weights="none", batch_size=50, workers=1)
    steps.run("features", lambda: (extract(train_sh, train_h5, **enc), extract(val_sh, val_h5, **enc)))
    args = TrainArgs(train=train_h5, val=val_h5, out=run, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                     embed_dim=cfg["dims"], attention_dim=cfg["dims"], hidden_dim=cfg["dims"],
                     dropout=cfg["dropout"], decoder_lr=cfg["lr"], beam=1, workers=0, seed=cfg["seed"],
                     log_every=50, patience=cfg["epochs"])
    result = steps.run("train", _one_thread, train, args)
    best = os.path.abspath(result["best_dir"])
    results_json = os.path.join(out, "results_val.json")
    ev = steps.run("eval", evaluate, best, val_h5, results_json, beam=cfg["beam"], progress=True)
    scenes = read_scenes(os.path.join(data, "annotations", "scenes_val2014.json"))
    accuracy = attribute_accuracy(ev["captions"], scenes)

    val_dir = os.path.join(data, "val2014")
    held_out = [os.path.join(val_dir, f) for f in sorted(os.listdir(val_dir))[:2]]
    lines, figure = [], os.path.join(out, "attention.png")
    draw = figure_writer(best, figure, held_out[:1], lambda msg: None)
    steps.run("caption", caption_files, best, held_out, cfg["beam"], 1, False, None, lines.append, echo,
              on_result=lambda path, image, r: draw(path, image, r) if path == held_out[0] else None)
    for line in lines:
        echo(line)
    report = os.path.join(out, "report.html")
    steps.run("report", write_report, report, ev, f"capgen demo: {ev['images']} held-out images, beam "
              f"{cfg['beam']}", limit=ev["images"])

    summary = {**{k: round(ev["scores"][k], 4) for k in METRICS if k in ev["scores"]},
               "attribute_accuracy": round(accuracy, 4), "checkpoint": best,
               "report": os.path.abspath(report), "attention_figure": os.path.abspath(figure),
               "images": {"train": counts["train2014"], "val": counts["val2014"]}, "beam": cfg["beam"],
               "text_preset": ev["text_preset"], "epochs": result["epochs"],
               "encoder": f"{cfg['encoder']} {cfg['stop']} {cfg['image_size']}px random init, frozen",
               "decoder": f"{cfg['dims']}-d, {cfg['batch_size']} images x 5 captions per step, "
                          f"lr {cfg['lr']:g}, dropout {cfg['dropout']:g}",
               "seconds": {**{k: round(v, 1) for k, v in steps.times.items()}, "total": round(steps.total(), 1)}}
    echo("")
    echo(summary_table(summary))
    return summary


def summary_table(s):
    rows = [("held-out images", f"{s['images']['val']} (trained on {s['images']['train']})"),
            ("encoder", s["encoder"]), ("decoder", f"{s['decoder']}, {s['epochs']} epochs"),
            ("decoding", f"beam {s['beam']}, text preset {s['text_preset']}")]
    rows += [(k, f"{s[k]:.4f}") for k in METRICS if k in s]
    rows += [("attribute accuracy", f"{s['attribute_accuracy']:.4f}"), ("best checkpoint", s["checkpoint"]),
             ("report", s["report"]), ("attention figure", s["attention_figure"]),
             ("time", ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items()))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
