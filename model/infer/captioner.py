"""A trained captioner from a checkpoint folder: PIL images in, captions and attention out.

`Captioner.load` is the one way from a checkpoint to a model: the config
(model/runs/checkpoint_config.py) names the encoder, the decoder and the preprocessing.
A checkpoint trained on cached features may leave the encoder out: it is then
rebuilt from its config weights ("imagenet" from the torch cache, or a file).
"""

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from model.nets.decoder import Decoder
from model.nets.encoder import build_encoder
from model.nets.search import beam_search
from model.runs import checkpoint
from model.runs.checkpoint_config import fit_mode, split_state
from pipeline.errors import CapgenError
from pipeline.imaging import convert as imaging
from pipeline.imaging import decode as imaging_decode


def _build(config, state):
    """(encoder, decoder) from a checkpoint's config and state dict, in eval mode."""
    enc = config["encoder"]
    part = split_state(state)
    if part["encoder"]:
        with warnings.catch_warnings():  # random init, overwritten right below
            warnings.simplefilter("ignore")
            encoder = build_encoder(enc["name"], "none", enc["stop"])
        encoder.load_state_dict(part["encoder"])
    else:
        encoder = build_encoder(enc["name"], enc["weights"], enc["stop"])
    decoder = Decoder(**config["decoder"])
    decoder.load_state_dict(part["decoder"])
    return encoder.eval(), decoder.eval()


def preprocess(img, size, resize_mode, mean, std):
    """PIL image -> normalised float tensor [3, size, size], resized as the shard builder does."""
    pixels = np.asarray(imaging_decode.to_rgb(ImageOps.exif_transpose(img)))
    pixels = imaging.fit(pixels, size, fit_mode(resize_mode))
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class Captioner:
    """encoder + decoder + vocabulary on `device`; `config` is the checkpoint's (model/runs/checkpoint_config.py).

    Example::

        >>> captioner = capgen.Captioner.load("run/best")  # README's "From Python"
        >>> r = captioner.caption(["data/val2014/COCO_val2014_000000001643.jpg"], beam=3)[0]
        >>> r["captions"][0]["text"], round(r["captions"][0]["score"], 2), r["grid"], len(r["attention"][0])
        ('there is a green star at the bottom', -7.71, [4, 4], 16)
    """

    def __init__(self, encoder, decoder, vocab, config, device="cpu"):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        if self.device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.vocab, self.config, self.image = vocab, config, config["image"]
        self.grid = list(encoder.grid(self.image["size"]))

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> "Captioner":
        """The model of a checkpoint folder (a run folder: its best), as every command loads it."""
        state, config, vocab, _ = checkpoint.load(ckpt_dir, trainer=False)
        try:
            encoder, decoder = _build(config, state)
            fit_mode(config["image"]["resize_mode"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CapgenError(f"{ckpt_dir}: checkpoint does not match its config ({first})") from None
        if len(vocab) != decoder.vocab_size:
            raise CapgenError(
                f"{checkpoint.resolve(ckpt_dir)}/config.json: vocabulary of {len(vocab)} words, "
                f"the decoder predicts {decoder.vocab_size}"
            )
        return cls(encoder, decoder, vocab, config, device)

    def preprocess(self, img):
        name = os.fspath(img) if isinstance(img, (str, os.PathLike)) else getattr(img, "filename", "")
        try:
            img = Image.open(img) if isinstance(img, (str, os.PathLike)) else img
            return preprocess(img, self.image["size"], self.image["resize_mode"], self.image["mean"], self.image["std"])
        except (OSError, ValueError) as err:
            raise CapgenError(f"{name or 'image'}: cannot read image ({err})") from None

    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image | str | os.PathLike],
        beam: int = 3,
        topk: int = 3,
        length_norm: bool = False,
        batch_size: int = 16,
    ) -> list[dict]:
        """PIL images or image files -> [{"captions": [{"text", "score"}], "words", "attention", "grid"}], one each.

        score: sum of log-probs (ranked by it, or per token with length_norm);
        words/attention: the best caption, one [P] list (row-major over grid) per word."""
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(img) for img in images[i : i + batch_size]])
            out += self.caption_tensors(x, beam=beam, topk=topk, length_norm=length_norm)
        return out

    @torch.inference_mode()
    def caption_tensors(self, x, beam=3, topk=3, length_norm=False):
        """caption() of preprocessed images x [B, 3, size, size] (from .preprocess), as one batch."""
        x = x.to(self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.encoder(x)
        out = []
        for hyps in beam_search(
            self.decoder, features, beam=beam, max_len=self.vocab.max_len, topk=topk, length_norm=length_norm
        ):
            words = self.vocab.words(hyps[0].tokens)
            out.append(
                {
                    "captions": [{"text": self.vocab.decode(h.tokens), "score": h.score} for h in hyps],
                    "words": words,
                    "attention": hyps[0].alphas[: len(words)].tolist(),
                    "grid": self.grid,
                }
            )
        return out
