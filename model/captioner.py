"""A trained captioner from a checkpoint folder: PIL images in, captions and attention out.

The checkpoint config (see `model_config`) names everything needed to rebuild
the model and its preprocessing:
  encoder: {name, stop, weights}   decoder: Decoder.config()
  image:   {size, resize_mode, mean, std}
Weights are keyed "encoder.*" and "decoder.*" (`model_state`). A checkpoint
trained on cached features may leave the encoder out: it is then rebuilt from
its config weights ("imagenet" from the torch cache, or a file).
"""
import warnings

import numpy as np
import torch
from PIL import ImageOps

from model import checkpoint
from model.decoder import Decoder
from model.encoder import Encoder
from model.search import beam_search
from pipeline import imaging
from pipeline.errors import CapgenError
from pipeline.imagenet import IMAGENET_MEAN, IMAGENET_STD

# A config names its resize mode as the shard builder does; squash and crop are older names.
RESIZE_ALIASES = {"squash": "stretch", "crop": "center-crop"}
RESIZE_MODES = (*RESIZE_ALIASES, *imaging.RESIZE_MODES)


def model_config(encoder, decoder, image_size, resize_mode="stretch", mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The config dict a checkpoint needs (callers may add their own keys)."""
    fit_mode(resize_mode)
    return {
        "encoder": {"name": encoder.name, "stop": encoder.stop, "weights": encoder.weights},
        "decoder": decoder.config(),
        "image": {"size": image_size, "resize_mode": resize_mode, "mean": list(mean), "std": list(std)},
    }


def model_state(encoder, decoder):
    """One state dict for both parts; encoder=None leaves the encoder out."""
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    if encoder is not None:
        state.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    return state


def build(config, state):
    """(encoder, decoder) from a checkpoint's config and state dict, in eval mode."""
    enc = config["encoder"]
    part = {p: {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(p + ".")}
            for p in ("encoder", "decoder")}
    if part["encoder"]:
        with warnings.catch_warnings():  # random init, overwritten right below
            warnings.simplefilter("ignore")
            encoder = Encoder(enc["name"], "none", enc["stop"])
        encoder.load_state_dict(part["encoder"])
    else:
        encoder = Encoder(enc["name"], enc["weights"], enc["stop"])
    decoder = Decoder(**config["decoder"])
    decoder.load_state_dict(part["decoder"])
    return encoder.eval(), decoder.eval()


def fit_mode(name):
    """A config's resize mode as pipeline/imaging.py (the shard builder) names it."""
    mode = RESIZE_ALIASES.get(name, name)
    if mode not in imaging.RESIZE_MODES:
        raise ValueError(f"unknown resize mode {name!r} (expected one of {', '.join(RESIZE_MODES)})")
    return mode


def preprocess(img, size, resize_mode, mean, std):
    """PIL image -> normalised float tensor [3, size, size], resized as the shard builder does."""
    pixels = np.asarray(imaging.to_rgb(ImageOps.exif_transpose(img)))
    pixels = imaging.fit(pixels, size, fit_mode(resize_mode))
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class Captioner:
    def __init__(self, encoder, decoder, vocab, image, device="cpu"):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        if self.device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.vocab, self.image = vocab, image
        self.grid = list(encoder.grid(image["size"]))

    @classmethod
    def load(cls, ckpt_dir, device="cpu"):
        state, config, vocab, _ = checkpoint.load(ckpt_dir, trainer=False)
        try:
            encoder, decoder = build(config, state)
            image = config["image"]
            fit_mode(image["resize_mode"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CapgenError(f"{ckpt_dir}: checkpoint does not match its config ({first})") from None
        return cls(encoder, decoder, vocab, image, device)

    def preprocess(self, img):
        try:
            return preprocess(img, self.image["size"], self.image["resize_mode"], self.image["mean"], self.image["std"])
        except (OSError, ValueError) as err:
            raise CapgenError(f"{getattr(img, 'filename', '') or 'image'}: cannot read image ({err})") from None

    @torch.inference_mode()
    def caption(self, images, beam=3, topk=3, length_norm=False, batch_size=16):
        """PIL images -> [{"captions": [{"text", "score"}], "words", "attention", "grid"}], one per image.

        score: sum of log-probs (ranked by it, or per token with length_norm);
        words/attention: the best caption, one [P] list (row-major over grid) per word."""
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(img) for img in images[i:i + batch_size]]).to(self.device)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.encoder(x)
            for hyps in beam_search(self.decoder, features, beam=beam, max_len=self.vocab.max_len, topk=topk,
                                    length_norm=length_norm):
                words = self.vocab.words(hyps[0].tokens)
                out.append({
                    "captions": [{"text": self.vocab.decode(h.tokens), "score": h.score} for h in hyps],
                    "words": words,
                    "attention": hyps[0].alphas[:len(words)].tolist(),
                    "grid": self.grid,
                })
        return out
