"""CaptionModel: the encoder and decoder joined (one forward for DDP), and to_device: a
loader batch on the device, as the model takes it."""

import torch
from torch import nn

from model.nets.encoder import normalise


class CaptionModel(nn.Module):
    """encoder (None when training from cached features) + decoder: one forward for DDP."""

    def __init__(self, encoder, decoder, fine_tune):
        super().__init__()
        self.encoder, self.decoder, self.fine_tune = encoder, decoder, fine_tune

    def features(self, batch):
        if "features" in batch:
            return batch["features"]
        with torch.set_grad_enabled(self.fine_tune and self.training):
            return self.encoder(batch["images"])

    def forward(self, batch, alpha_c=1.0):
        """(loss, stats) of a batch holding its "plan" (model/nets/decoder.py's train_plan)."""
        return self.decoder.train_loss(self.features(batch), batch["tokens"], batch["plan"], alpha_c)


def to_device(batch, device, image_dtype=torch.float32):
    """A loader batch (pipeline/loading/batches.py's contract) on the device, images normalised
    for the encoder, features as float32."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "images" in out:
        out["images"] = normalise(out["images"], device, image_dtype)
    if "features" in out:
        out["features"] = out["features"].float()
    return out
