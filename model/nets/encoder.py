"""ResNet trunk (torchvision, no pool/fc) -> spatial features [B, P, C].

At 256x256 ResNet-50 gives an 8x8 grid (P=64, C=2048), used as is (no
upsampling). `stop="layer3"` cuts one stage earlier: a 16x16 grid of 1024
channels, cheaper and finer; `stop="layer2"` one more: a 32x32 grid of 512 (the
CPU demo uses ResNet-18 layer2 at 128 px: 16x16 cells of 128 channels).
"""

import functools
import os
import warnings

import torch
from torchvision import models

from model.nets.convnet import CONVNETS, ConvNet
from model.nets.trunk import Trunk
from pipeline.errors import CapgenError, first_line
from pipeline.imaging.imagenet import IMAGENET_MEAN, IMAGENET_STD

ENCODER_SEED = 0  # random-init encoders are drawn from this seed (their weights are stored anyway)

# The classic ImageNet weights (what `pretrained=True` gave), one file per depth.
ARCHS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, 2048),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1, 2048),
}
# Stages `set_fine_tune()` trains by default: layers 3-4, or the last stage a shorter trunk has.
FINE_TUNE = {"layer2": ("layer2",), "layer3": ("layer3",), "layer4": ("layer3", "layer4")}


def imagenet_weights_path(name):
    """Where torchvision's cache keeps the ImageNet weights of `name`."""
    url = ARCHS[name][1].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


class Encoder(Trunk):
    """weights: "imagenet" (local torch cache; download=True fetches it), "none"
    (random init, warns) or a path to a state dict (.pth/.pt or .safetensors).

    Frozen by default; `set_fine_tune()` unfreezes layers 3-4 (those this trunk has;
    layer2 for a trunk cut there). BatchNorm always
    runs on its stored statistics (small caption batches would skew them).
    """

    def __init__(self, name="resnet50", weights="none", stop="layer4", download=False):
        if name not in ARCHS:
            raise ValueError(f"unknown encoder {name!r} (expected one of {', '.join(ARCHS)})")
        super().__init__(name, weights, stop)
        build, _, channels = ARCHS[name]
        net = build(weights=None)
        self.channels = channels >> (4 - self.depth)  # each stage doubles the channels
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for n in range(1, self.depth + 1):
            setattr(self, f"layer{n}", getattr(net, f"layer{n}"))
        self._load(weights, download)
        self.set_fine_tune(())

    def _load(self, weights, download):
        if weights == "none":
            warnings.warn(
                f"encoder {self.name}: random init (weights='none'); its features carry no "
                "image knowledge: use weights='imagenet' or a weights file for real captions",
                stacklevel=3,
            )
            return
        if weights == "imagenet":
            path = imagenet_weights_path(self.name)
            if not os.path.isfile(path):
                if not download:
                    raise CapgenError(
                        f"{path}: ImageNet weights for {self.name} not found; place "
                        f"{os.path.basename(path)} there (from {ARCHS[self.name][1].url}), "
                        "pass a weights file, or pass --download"
                    )
                torch.hub.load_state_dict_from_url(ARCHS[self.name][1].url, progress=True, check_hash=True)
        else:
            path = os.fspath(weights)
        state = read_state_dict(path)
        # Extra keys (fc, or layer4 when stopping at layer3) are fine; a missing one is not.
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise CapgenError(f"{path}: not {self.name} weights (missing {missing[0]} and {len(missing) - 1} more)")
        try:
            self.load_state_dict({k: state[k] for k in self.state_dict()})
        except RuntimeError as err:
            raise CapgenError(f"{path}: not {self.name} weights ({str(err).splitlines()[-1].strip()})") from None

    def fine_tune_default(self):
        """FINE_TUNE[stop]: layers 3-4, or the last stage a shorter trunk has."""
        return FINE_TUNE[self.stop]

    def stem(self, x):
        """conv1 and maxpool halve the input each; layer1 keeps its size, layer2..N halve it."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def build_encoder(name, weights, stop, download=False):
    """An Encoder (a ResNet) or a ConvNet (model/nets/convnet.py, trained from scratch); random
    init is drawn from a fixed seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ENCODER_SEED)
        try:
            if name in CONVNETS:
                return ConvNet(name, weights=weights, stop=stop)
            return Encoder(name, weights=weights, stop=stop, download=download)
        except ValueError as err:
            raise CapgenError(f"encoder: {err}") from None


def normalise(images, device, dtype=torch.float32):
    """uint8 [B, 3, H, W] (the loaders' images) -> ImageNet-normalised float on the device
    (channels_last), what Encoder.forward takes."""
    x = images.to(device, non_blocking=True).to(dtype).div_(255)
    mean, std = _imagenet_stats(torch.device(device), dtype)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@functools.cache
def _imagenet_stats(device, dtype):
    """Mean and std as [1, 3, 1, 1] tensors on the device, made once: a blocking copy to
    a GPU would sync the host on every batch."""
    return tuple(torch.tensor(v, device=device, dtype=dtype).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))


def read_state_dict(path):
    """A tensor dict from .safetensors or a torch file, never unpickling objects."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CapgenError(f"{path}: weights file not found")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read is the same bad file
        raise CapgenError(f"{path}: cannot read weights ({first_line(err)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CapgenError(f"{path}: not a state dict")
    return state
