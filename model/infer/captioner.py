"""A trained captioner from a checkpoint folder: PIL images in, captions and attention out.

`Captioner.load` is the one way from a checkpoint to a model: the config
(model/runs/checkpoint_config.py) names the encoder, the decoder and the preprocessing.
A checkpoint trained on cached features may leave the encoder out: it is then
rebuilt from its config weights ("imagenet" from the torch cache, or a file).

From Python:

    captioner = Captioner.load("runs/demo/best")
    [result] = captioner.caption([PIL.Image.open("photo.jpg")], beam=3)
    result["captions"][0]["text"]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from PIL import Image

from model.nets.decoder import Decoder
from model.nets.encoder import build_encoder
from model.nets.hyps import caption_result
from model.nets.search import beam_search
from model.runs import checkpoint
from model.runs.checkpoint_config import fit_mode, split_state
from pipeline.errors import CapgenError, first_line
from pipeline.imaging.pixels import image_input, model_input


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
    """PIL image -> normalised float tensor [3, size, size], resized as the shard builder does
    (pipeline/imaging/pixels.py's model_input, which the ONNX runtime uses too)."""
    return torch.from_numpy(model_input(img, size, fit_mode(resize_mode), mean, std))


class Captioner:
    """encoder + decoder + vocabulary on `device`; `config` is the checkpoint's (model/runs/checkpoint_config.py).

    Example::

        >>> captioner = capgen.Captioner.load("run/best")  # README's "From Python"
        >>> r = captioner.caption(["data/val2014/COCO_val2014_000000001643.jpg"], beam=3)[0]
        >>> r["captions"][0]["text"], round(r["captions"][0]["score"], 2), r["grid"], len(r["attention"][0])
        ('there is a green star at the bottom', -7.71, [4, 4], 16)
    """

    def __init__(self, encoder, decoder: Decoder, vocab, config: dict, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        if self.device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.vocab, self.config, self.image = vocab, config, config["image"]
        self.grid = list(encoder.grid(self.image["size"]))

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Captioner:
        """The captioner of a checkpoint folder (a run's best/ or last/, or the run folder: its best),
        on device, as every command loads it.

        CapgenError (one line naming the file and the field) when the folder holds no checkpoint, or a
        file of it does not fit its schema, or its weights or vocabulary do not match its config
        (model/runs/checkpoint.py's load checks them)."""
        state, config, vocab, _ = checkpoint.load(ckpt_dir, trainer=False)
        try:
            encoder, decoder = _build(config, state)
            fit_mode(config["image"]["resize_mode"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CapgenError(f"{ckpt_dir}: checkpoint does not match its config ({first_line(err)})") from None
        return cls(encoder, decoder, vocab, config, device)

    def preprocess(self, img: Image.Image | str | os.PathLike) -> torch.Tensor:
        """PIL image or image file (any mode, EXIF-rotated upright) -> the encoder's normalised input
        [3, size, size], resized as the checkpoint's shards were. CapgenError for an image that
        cannot be read."""
        im = self.image
        return torch.from_numpy(image_input(img, im["size"], fit_mode(im["resize_mode"]), im["mean"], im["std"]))

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

        beam: the beam width; topk: the captions kept per image (at most beam), best first;
        score: sum of log-probs (ranked by it, or per token with length_norm);
        words/attention: the best caption, one [P] list (row-major over grid) per word;
        grid: [rows, columns] of the attention. Images run batch_size at a time."""
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(img) for img in images[i : i + batch_size]])
            out += self.caption_tensors(x, beam=beam, topk=topk, length_norm=length_norm)
        return out

    @torch.inference_mode()
    def caption_tensors(self, x: torch.Tensor, beam: int = 3, topk: int = 3, length_norm: bool = False) -> list[dict]:
        """caption() of preprocessed images x [B, 3, size, size] (from .preprocess), as one batch."""
        return self.caption_features(self.encode(x), beam=beam, topk=topk, length_norm=length_norm)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's features of preprocessed images x [B, 3, size, size]: caption_features' input."""
        x = x.to(self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x)

    @torch.inference_mode()
    def caption_features(
        self, features: torch.Tensor, beam: int = 3, topk: int = 3, length_norm: bool = False
    ) -> list[dict]:
        """caption_tensors() from the features encode() gave (those of several calls concatenated: the
        server encodes each upload apart and searches them as one batch)."""
        # Contiguous whichever way the features came (the encoder's own layout is strided, a concatenation's
        # is not): the search's matrix products then add in one order, and a server's answer for an image
        # is the same, to the last bit, as caption()'s.
        hyps = beam_search(
            self.decoder,
            features.contiguous(),
            beam=beam,
            max_len=self.vocab.max_len,
            topk=topk,
            length_norm=length_norm,
        )
        return [caption_result(self.vocab, h, self.grid) for h in hyps]
