"""What a checkpoint holds besides the folder format (model/runs/checkpoint.py): the config
in config.json and the keys of the weights in model.safetensors.

config (`model_config`; the trainer adds to it with `trained_config`):
  encoder:  {name, stop, weights[, grid]}   decoder: Decoder.config()
  image:    {size, resize_mode, mean, std}  training: how the model was trained (trainer only)
state (`model_state`): "encoder.*" and "decoder.*" weights; a checkpoint trained on
cached features may leave the encoder out (it is then rebuilt from its config weights).
"""

from pipeline.imaging import pixels
from pipeline.imaging.imagenet import IMAGENET_MEAN, IMAGENET_STD

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
