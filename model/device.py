"""The device a run uses when none is named."""

import torch


def default_device(name=None):
    """torch.device(name), or the GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
