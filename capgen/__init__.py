"""capgen from Python: the functions the `capgen` command line calls, for a notebook or a script.

import os

from PIL import Image

import capgen

capgen.synthesize("data", images=300, seed=0, width=160, height=120)  # capgen synth
text = dict(image_size=64, preset="coco", min_freq=1)
capgen.build_shards("shards/train", coco_root="data", split="train2014", **text)  # capgen shards build
capgen.build_shards("shards/val", coco_root="data", split="val2014", vocab="shards/train/vocab.json", **text)
# capgen train's options; loader="auto", device=None: DALI and bf16 on a GPU, else the CPU
cnn = dict(encoder="convnet", encoder_stop="layer3", encoder_weights="none", fine_tune_encoder=True, encoder_lr=1e-3)
args = capgen.TrainArgs(train="shards/train", val="shards/val", out="run", epochs=3, batch_size=8, workers=0, **cnn)
best = capgen.train(args)["best_dir"]  # capgen train
ev = capgen.evaluate(best, "shards/val", "run/results.json")  # capgen eval
captioner = capgen.Captioner.load(best)  # capgen caption
image = Image.open("data/val2014/" + sorted(os.listdir("data/val2014"))[0])
result = captioner.caption([image], beam=3)[0]  # captions with scores, words, one attention map per word
capgen.save_attention_figure(image, result, "attention.png", captioner.image["resize_mode"])  # --attention
capgen.search(best, "shards/val", ["a red circle", "a blue square"], top=3)  # capgen search --json

Each name is the very function (or class) that its command calls, so the two give the same
results; help(capgen.NAME) shows an example. Bad input raises CapgenError, whose message is
the command's one error line ('<file>: <cause>'). tools/notebooks/capgen_walkthrough.ipynb
walks this path, from data to search; README.md's "From Python" says more.
"""

from model.eval.evaluate import evaluate
from model.infer.attention_figure import attention_figure, save_attention_figure
from model.infer.captioner import Captioner
from model.retrieval.search import search
from model.train.args import TrainArgs
from model.train.loop import train
from pipeline.errors import CapgenError
from pipeline.shards.make import build_shards
from pipeline.synth.generator import synthesize

__version__ = "0.1.0"

# In the order of the path: data, shards, training, scores, captions, figure, search.
__all__ = [
    "synthesize",
    "build_shards",
    "TrainArgs",
    "train",
    "evaluate",
    "Captioner",
    "attention_figure",
    "save_attention_figure",
    "search",
    "CapgenError",
]
