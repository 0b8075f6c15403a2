"""What a checkpoint holds besides the folder format (model/runs/checkpoint.py): the config
in config.json and the keys of the weights in model.safetensors.

config (`model_config`; the trainer adds to it with `trained_config`):
  encoder:  {name, stop, weights[, grid]}   decoder: Decoder.config()
  image:    {size, resize_mode, mean, std}  training: how the model was trained (trainer only)
state (`model_state`): "encoder.*" and "decoder.*" weights; a checkpoint trained on
cached features may leave the encoder out (it is then rebuilt from its config weights).

CONFIG_FILE is config.json's schema (model/runs/schema.py), checked whenever it is read;
model/runs/state_check.py checks the weights against it. Kept free of torch: the ONNX
runtime reads it too.
"""

import re

from model.runs.schema import Int, List, Num, Obj, Str, check
from pipeline.imaging import pixels
from pipeline.imaging.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pipeline.text import PRESETS, SPECIALS

# A config names its resize mode as the shard builder does; squash and crop are older names.
RESIZE_ALIASES = {"squash": "stretch", "crop": "center-crop"}
RESIZE_MODES = (*RESIZE_ALIASES, *pixels.RESIZE_MODES)
PARTS = ("encoder", "decoder")


def fit_mode(name):
    """A config's resize mode as pipeline/imaging/decode.py (the shard builder) names it."""
    mode = RESIZE_ALIASES.get(name, name)
    if mode not in pixels.RESIZE_MODES:
        raise ValueError(f"unknown resize mode {name!r} (expected one of {', '.join(RESIZE_MODES)})")
    return mode


def _itos_rule(itos):
    if list(itos[: len(SPECIALS)]) != SPECIALS:
        return f"must start with {' '.join(SPECIALS)}"
    if len(set(itos)) != len(itos):
        return "words must be distinct"
    return None


def _sha256_rule(text):
    return None if re.fullmatch("[0-9a-f]{64}", text) else "not a sha256 (64 hex digits)"


DIM = Int(low=1)
CONFIG = Obj(
    {
        "encoder": Obj({"name": Str(), "stop": Str(), "weights": Str(), "grid": List(DIM, length=2)}, ("grid",)),
        "decoder": Obj(
            {
                "vocab_size": Int(low=len(SPECIALS)),
                "feature_dim": DIM,
                "embed_dim": DIM,
                "attention_dim": DIM,
                "hidden_dim": DIM,
                "dropout": Num(0, 1, high_open=True),
            },
            closed=True,  # Decoder(**decoder) takes these and no other
        ),
        "image": Obj(
            {
                # 8: the shard builder's smallest image; 10000: the side of the largest it decodes
                # (pipeline/imaging/decode.py's MAX_PIXELS; not imported: it needs simplejpeg)
                "size": Int(low=8, high=10_000),
                "resize_mode": Str(RESIZE_MODES),
                "mean": List(Num(), length=3),
                "std": List(Num(low=0, low_open=True), length=3),
            }
        ),
        "training": Obj({}),
    },
    optional=("training",),
)
VOCAB = Obj(
    {
        "preset": Str(PRESETS),
        "max_len": Int(low=1),
        "min_freq": Int(low=0),
        "itos": List(Str(), min_length=len(SPECIALS), rule=_itos_rule),
    }
)


def _agree(meta):
    words, size = len(meta["vocab"]["itos"]), meta["config"]["decoder"]["vocab_size"]
    return f"vocabulary of {words} words, the decoder predicts {size}" if words != size else None


CONFIG_FILE = Obj(
    {"format": Str(), "config": CONFIG, "vocab": VOCAB, "weights_sha256": Str(rule=_sha256_rule)},
    optional=("weights_sha256",),
    rule=_agree,
)


def check_config_file(path, meta):
    """config.json's contents `meta` checked against CONFIG_FILE: CapgenError 'PATH: FIELD: cause'."""
    return check(path, meta, CONFIG_FILE)


def model_config(encoder, decoder, image_size, resize_mode="stretch", mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The config dict a checkpoint needs (callers may add their own keys)."""
    fit_mode(resize_mode)
    return {
        "encoder": {"name": encoder.name, "stop": encoder.stop, "weights": encoder.weights},
        "decoder": decoder.config(),
        "image": {"size": image_size, "resize_mode": resize_mode, "mean": list(mean), "std": list(std)},
    }


def trained_config(encoder, weights, decoder, image_size, resize_mode, training):
    """model_config plus what the trainer records: the encoder's weights (those of a
    feature cache when it trained on one), its grid, and the `training` dict."""
    config = model_config(encoder, decoder, image_size, resize_mode)
    config["encoder"]["weights"] = str(weights)
    config["encoder"]["grid"] = list(encoder.grid(image_size))
    config["training"] = training
    return config


def model_state(encoder, decoder):
    """One state dict for both parts; encoder=None leaves the encoder out."""
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    if encoder is not None:
        state.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    return state


def split_state(state):
    """model_state's inverse: {"encoder": {...}, "decoder": {...}} (empty for a part left out)."""
    return {part: {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(part + ".")} for part in PARTS}
