"""One training step, shared by the trainer and the GPU benchmark.

the batch's plan from its caption lengths (model/nets/decoder.py's train_plan: images sorted by
their longest caption, each step running only the images still captioning) -> batch to the
device (images normalised there) -> autocast forward and loss (Decoder.train_loss: cross-entropy
on the valid predictions + doubly stochastic attention term) -> backward -> clip -> optimizer step.
Running sums stay on the device: no host sync per step with the CPU loaders (their
lengths are read on the host before the copy); a batch whose lengths already live on
the device (DALI's token table) costs one copy of them to the host.
"""

import torch
from torch import nn

from model.device import autocast_for
from model.nets.caption_model import to_device
from model.nets.decoder import train_plan


class TrainStep:
    """Call with a loader batch; returns the number of images it consumed.

    `forward` is the model or its torch.compile'd / DDP-wrapped form. `sums` holds,
    since the last `take()`: loss, ce, top-5 hits x tokens, tokens, steps.
    """

    def __init__(self, model, forward, optimizer, device, *, alpha_c=1.0, grad_clip=5.0, bf16="gpu"):
        self.model, self.forward, self.optimizer, self.device = model, forward, optimizer, device
        self.alpha_c, self.grad_clip = alpha_c, grad_clip
        self.amp, self.image_dtype = autocast_for(device, bf16)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.sums = torch.zeros(5, device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every loss since start was finite
        self.inputs_ok = torch.ones((), dtype=torch.bool, device=device)  # every batch's features were finite

    def __call__(self, batch):
        images = len(batch["image_ids"])
        plan = train_plan(batch["lengths"])
        batch = to_device(batch, self.device, self.image_dtype)
        batch["plan"] = plan.to(self.device)
        self.inputs_ok &= finite_inputs(batch)
        with self.amp:
            loss, stats = self.forward(batch, self.alpha_c)
        self.finite &= torch.isfinite(loss.detach())  # on the device: no host sync
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.step()
        with torch.no_grad():
            n = stats["tokens"].float()
            self.sums += torch.stack(
                [stats["loss"].float(), stats["ce"].float(), stats["top5"] * n, n, torch.ones_like(n)]
            )
        return images

    def all_finite(self):
        """Whether every loss so far was finite (one host sync: call at log intervals)."""
        return bool(self.finite)

    def inputs_finite(self):
        """Whether every batch's inputs so far were finite (read with all_finite, when a loss was not)."""
        return bool(self.inputs_ok)

    def take(self):
        """The sums since the last take, as floats (one host sync), then reset."""
        values = self.sums.tolist()
        self.sums.zero_()
        return values


def finite_inputs(batch):
    """A device flag: whether a batch on the device holds only finite features (images are
    uint8 from the loader, always finite). No host sync."""
    if "features" not in batch:
        return torch.ones((), dtype=torch.bool, device=batch["image_ids"].device)
    return torch.isfinite(batch["features"]).all()
