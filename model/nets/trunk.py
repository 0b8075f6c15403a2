"""Trunk: what the two image trunks share (model/nets/encoder.py's ResNet Encoder and
model/nets/convnet.py's ConvNet): where they may stop, their feature grid, which stages
train, how their BatchNorm runs, and the pass from images to spatial features [B, P, C].

A trunk is a stem (`stem()`) then stages layer1..layerN, N = `depth` (2, 3 or 4 for stop
layer2, layer3 or layer4); the input is halved (rounding up) N + 1 times on the way, so a
stage's stride is what it is in a ResNet: layerN at 2**(N+1).
"""

from torch import nn

STOPS = ("layer2", "layer3", "layer4")


class Trunk(nn.Module):
    """A subclass registers its stem's modules and layer1..layer{depth}, overrides `stem`, and may
    narrow `fine_tune_default`; `learns_statistics` says whether BatchNorm of a stage that
    trains updates its running statistics (else BatchNorm always runs on the stored ones)."""

    learns_statistics = False

    def __init__(self, name, weights, stop):
        super().__init__()
        if stop not in STOPS:
            raise ValueError(f"unknown stop {stop!r} (expected one of {', '.join(STOPS)})")
        self.name, self.stop, self.weights = name, stop, str(weights)
        self.depth = STOPS.index(stop) + 2  # the last layerN this trunk keeps

    def fine_tune_default(self):
        """The stages `set_fine_tune()` trains when it names none: all of them."""
        return tuple(name for name, _ in self.named_children())

    def set_fine_tune(self, layers=None):
        """Train only the named stages (those this trunk has; default `fine_tune_default()`); () freezes all."""
        layers = self.fine_tune_default() if layers is None else layers
        for name, module in self.named_children():
            for p in module.parameters():
                p.requires_grad_(name in layers)
        return self

    def train(self, mode=True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d) and not (self.learns_statistics and m.weight.requires_grad):
                m.eval()
        return self

    def grid(self, image_size):
        """(h, w) of the feature grid for an input of image_size (int or (h, w))."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        for _ in range(self.depth + 1):  # each ceil(n/2)
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def stem(self, x):
        """What runs before layer1."""
        raise NotImplementedError

    def forward(self, x):
        """x [B, 3, H, W], ImageNet-normalised -> [B, P, C] (P = h*w, row-major)."""
        x = self.stem(x)
        for n in range(1, self.depth + 1):
            x = getattr(self, f"layer{n}")(x)
        # [B, C, h, w] -> [B, h*w, C]; free (a view) when x is channels_last.
        return x.permute(0, 2, 3, 1).flatten(1, 2)
