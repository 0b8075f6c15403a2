"""The demo: synth -> shards -> [features] -> train -> eval -> scst -> caption -> report, on a 2-core CPU.

`run_demo(out, data=COCO_ROOT)` runs the same recipe on any dataset in the COCO 2014
layout instead of the synthetic one (`capgen demo --data`): a small model trained on
one's own small dataset on a CPU.

The recipe (measured in BENCHMARKS.md, "The demo's recipe"; no ImageNet weights are
here): a small CNN (model/nets/convnet.py) cut after layer3 at 128 px, an 8x8 grid of 256
channels, trained from scratch with the decoder from the shards (a frozen random-init
ResNet sees colour and position but not shape); small batches, many steps, a cosine
schedule over a fixed number of epochs; then one epoch of self-critical training
(CIDEr-D reward) from the cross-entropy best, whose scores stay in the summary as
"before_scst".

Each stage is a function of the `Demo` state, run in the order of DEMO["stages"]
(STAGES maps names to functions): a later stage (e.g. "scst" after "eval") reads
`d.best` / `d.ev` and replaces them, and the summary is built from what is there
(tools/demo_summary.py).
"""

import os
import time
from types import SimpleNamespace

import torch

from model.eval.evaluate import evaluate
from model.infer.attention_figure import figure_writer
from model.infer.captioner import Captioner
from model.infer.extract import extract
from model.train.args import TrainArgs
from model.train.loop import train
from pipeline.errors import CapgenError
from pipeline.shards import build as shards
from pipeline.sources.coco import read_coco
from pipeline.synth.generator import synthesize
from tools.caption_files import caption_files
from tools.demo_summary import demo_summary, summary_table
from tools.report_html import write_report

DEMO = {
    "stages": ("data", "shards", "features", "train", "eval", "scst", "caption", "report"),
    "images": 2300,  # train2014 + val2014 (synthetic data only)
    "val_fraction": 300 / 2300,
    "seed": 7,
    "synth_size": (160, 120),  # width, height of the synthetic source images
    "image_size": 128,
    "encoder": "convnet",  # model/nets/convnet.py, trained from scratch with the decoder
    "stop": "layer3",
    "fine_tune": True,  # train the encoder too (from the shards; no feature cache)
    "encoder_lr": 1.41e-3,
    "epochs": 12,
    "lr_schedule": "cosine",
    "batch_size": 16,  # images per step (x5 captions); 8 before issue 24 (lr 8e-4, encoder lr 1e-3)
    "lr": 1.13e-3,  # Adam's square-root scaling from batch 8's 8e-4 (so is encoder_lr's)
    "bf16": "auto",  # bf16 autocast where the CPU has bf16 arithmetic (model/device.py); fp32 elsewhere
    "dims": 256,  # embed / hidden
    "attention_dim": 256,
    "dropout": 0.3,
    "beam": 3,
    "scst_epochs": 1,  # self-critical epochs after the cross-entropy ones (0: none)
    "scst_lr": 1e-4,
    "preset": "coco",  # keeps "a", as the references do
    "min_freq": None,  # None: train captions / 2,000 within [1, 5] (5 for the synthetic set)
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


def _train(cfg, args):
    """train(args) on the thread count that pays: a decoder step of 8 images on cached
    features is too small to split across two cores (measured here: 68 img/s on one
    thread, 75 on two when idle, far less on two when anything else runs); a CNN trained
    with it is not (an epoch of the demo: 37 s on one thread, 24 s on two)."""
    if cfg["fine_tune"]:
        return train(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(args)
    finally:
        torch.set_num_threads(threads)


def min_freq(train_captions):
    """Words rarer than this map to <unk>: 5 (the seed's) from 10,000 captions, fewer below,
    so that a small dataset keeps its words."""
    return max(1, min(5, train_captions // 2000))


# ---------------------------------------------------------------- stages


def stage_data(d):
    """The synthetic dataset, or the given COCO-layout folder checked."""
    if d.given_data:
        d.source = {split: _read_split(d.data, split) for split in ("train2014", "val2014")}
    else:
        w, h = d.cfg["synth_size"]
        synthesize(d.data, d.cfg["images"], d.cfg["seed"], d.cfg["val_fraction"], w, h)
        d.source = {split: read_coco(d.data, split) for split in ("train2014", "val2014")}
    train_caps = sum(len(r.captions) for r in d.source["train2014"].records)
    d.min_freq = d.cfg["min_freq"] or min_freq(train_caps)
    d.echo(
        f"   {len(d.source['train2014'].records)} train + {len(d.source['val2014'].records)} val images, "
        f"{train_caps} train captions (min_freq {d.min_freq})"
    )


def _read_split(root, split):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise CapgenError(
            f"{folder}: image folder not found (expected the COCO 2014 layout: "
            "annotations/captions_{train,val}2014.json, train2014/, val2014/)"
        )
    source = read_coco(root, split)
    if not source.records:
        raise CapgenError(f"{source.annotation_path}: no images")
    return source


def _build_shards(d, split, out, vocab=None):
    cfg = d.cfg
    opts = shards.Options(
        name=f"demo-{split}", image_size=cfg["image_size"], resize_mode="stretch", shard_size=cfg["shard_size"]
    )
    args = {
        "coco_root": os.path.abspath(d.data),
        "split": split,
        "image_size": cfg["image_size"],
        "preset": cfg["preset"],
        "vocab": vocab,
        "demo": True,
    }
    r = shards.build(
        d.source[split],
        out,
        opts,
        args,
        vocab=vocab,
        preset=cfg["preset"],
        min_freq=d.min_freq,
        index=False,
        progress=False,
    )
    images = r["manifest"]["counts"]["images"]
    if not images:
        raise CapgenError(f"{d.source[split].annotation_path}: no image could be read (see {out}/skipped.txt)")
    return images


def stage_shards(d):
    train_sh, val_sh = d.path("shards", "train"), d.path("shards", "val")
    d.counts = {
        "train": _build_shards(d, "train2014", train_sh),
        "val": _build_shards(d, "val2014", val_sh, os.path.join(train_sh, "vocab.json")),
    }
    d.shards = {"train": train_sh, "val": val_sh}


def stage_features(d):
    """The frozen encoder's features (a fine-tuned encoder trains and evaluates from the shards)."""
    d.sources = d.shards
    if d.cfg["fine_tune"]:
        return
    enc = dict(encoder=d.cfg["encoder"], stop=d.cfg["stop"], weights="none", batch_size=50, workers=1)
    d.features = {k: d.path("features", f"{k}.h5") for k in ("train", "val")}
    for k in ("train", "val"):
        extract(d.shards[k], d.features[k], **enc)
    d.sources = d.features


def stage_train(d):
    cfg = d.cfg
    tune = (
        dict(
            encoder=cfg["encoder"],
            encoder_stop=cfg["stop"],
            encoder_weights="none",
            fine_tune_encoder=True,
            encoder_lr=cfg["encoder_lr"],
        )
        if cfg["fine_tune"]
        else {}
    )
    args = TrainArgs(
        train=d.sources["train"],
        val=d.sources["val"],
        out=d.path("run"),
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        embed_dim=cfg["dims"],
        attention_dim=cfg["attention_dim"],
        hidden_dim=cfg["dims"],
        dropout=cfg["dropout"],
        decoder_lr=cfg["lr"],
        beam=1,
        workers=0,
        seed=cfg["seed"],
        log_every=50,
        patience=cfg["epochs"],
        lr_schedule=cfg["lr_schedule"],
        bf16=cfg["bf16"],
        **tune,
    )
    d.trained = _train(cfg, args)
    d.best = os.path.abspath(d.trained["best_dir"])


def stage_eval(d):
    """Held-out scores of d.best (and per-attribute accuracy where scene truth exists)."""
    scenes = os.path.join(d.data, "annotations", "scenes_val2014.json")
    d.ev = evaluate(
        d.best,
        d.sources["val"],
        d.path("results_val.json"),
        beam=d.cfg["beam"],
        progress=True,
        scenes=scenes if os.path.isfile(scenes) else None,
    )
    d.accuracy = d.ev["attributes"]


def stage_scst(d):
    """Self-critical training (CIDEr-D reward) from the cross-entropy best; the scores it
    replaces stay in the summary as "before_scst"."""
    cfg = d.cfg
    if not cfg["scst_epochs"]:
        return
    args = TrainArgs(
        train=d.sources["train"],
        val=d.sources["val"],
        out=d.path("scst"),
        epochs=cfg["scst_epochs"],
        batch_size=cfg["batch_size"],
        scst=True,
        init=d.best,
        scst_lr=cfg["scst_lr"],
        beam=1,
        workers=0,
        seed=cfg["seed"],
        log_every=50,
        patience=cfg["scst_epochs"],
        fine_tune_encoder=cfg["fine_tune"],
        bf16=cfg["bf16"],
    )
    d.before = (d.ev, d.accuracy)
    d.scst = _train(cfg, args)
    d.best = os.path.abspath(d.scst["best_dir"])
    stage_eval(d)


def stage_caption(d):
    """Captions of two held-out images and the attention figure of the first."""
    held_out = [r.path for r in d.source["val2014"].records if os.path.isfile(r.path)][:2]
    d.figure = d.path("attention.png")
    captioner = Captioner.load(d.best)
    draw = figure_writer(captioner.image["resize_mode"], d.figure, held_out[:1], lambda msg: None)
    lines = []
    caption_files(
        captioner,
        held_out,
        d.cfg["beam"],
        1,
        False,
        lines.append,
        d.echo,
        on_result=lambda path, image, r: draw(path, image, r) if path == held_out[0] else None,
    )
    for line in lines:
        d.echo(line)


def stage_report(d):
    d.report = d.path("report.html")
    write_report(
        d.report, d.ev, f"capgen demo: {d.ev['images']} held-out images, beam {d.cfg['beam']}", limit=d.ev["images"]
    )


STAGES = {
    "data": stage_data,
    "shards": stage_shards,
    "features": stage_features,
    "train": stage_train,
    "eval": stage_eval,
    "scst": stage_scst,
    "caption": stage_caption,
    "report": stage_report,
}


# ---------------------------------------------------------------- the run


def run_demo(out="demo", images=None, epochs=None, echo=print, data=None, **overrides):
    """The whole pipeline on synthetic data (or on `data`, a COCO 2014 layout folder);
    returns the summary (held-out scores first)."""
    cfg = {**DEMO, **overrides}
    cfg["images"] = images or cfg["images"]
    cfg["epochs"] = epochs or cfg["epochs"]
    os.makedirs(out, exist_ok=True)
    d = SimpleNamespace(
        cfg=cfg,
        echo=echo,
        given_data=data is not None,
        data=data or os.path.join(out, "data"),
        path=lambda *p: os.path.join(out, *p),
    )
    steps = _Steps(echo)
    for name in cfg["stages"]:
        steps.run(name, STAGES[name], d)
    summary = demo_summary(d, steps)
    echo("")
    echo(summary_table(summary))
    return summary
