"""A small plain CNN trunk trained from scratch with the decoder: the encoder for a CPU
and a dataset of a few thousand images, where no pretrained weights are at hand.

A random-init ResNet kept frozen gives features that carry colour and position but not
shape (the demo's ablation in BENCHMARKS.md); training a ResNet-18 from scratch costs
too much on two cores. This net has ResNet-18's stage widths (64, 128, 256, 512) and
strides (layerN at stride 2**(N+1)), so `stop` means what it means for a ResNet, but one
3x3 conv + BatchNorm + ReLU per step instead of residual blocks: at 128 px, cut after
layer3, it costs about a tenth of a ResNet-18's compute.

    conv1   3 -> 32, stride 2
    layer1  32 -> 64 stride 2, 64 -> 64        (stride 4)
    layer2  64 -> 128 stride 2, 128 -> 128     (stride 8)
    layer3  128 -> 256 stride 2, 256 -> 256    (stride 16)
    layer4  256 -> 512 stride 2, 512 -> 512    (stride 32)

Unlike a pretrained trunk its BatchNorm layers learn their statistics while it trains.
"""

from torch import nn

from model.nets.trunk import Trunk
from pipeline.errors import CapgenError

CONVNETS = ("convnet",)
WIDTHS = (64, 128, 256, 512)


def _conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvNet(Trunk):
    """A Trunk (model/nets/trunk.py) as model/nets/encoder.py's Encoder is: [B, 3, H, W] -> [B, P, C];
    frozen until `set_fine_tune()`, which trains every stage (there is nothing pretrained to keep).
    BatchNorm learns its statistics only while its stage trains."""

    learns_statistics = True

    def __init__(self, name="convnet", weights="none", stop="layer3"):
        super().__init__(name, weights, stop)
        self.channels = WIDTHS[self.depth - 1]
        self.conv1 = _conv(3, WIDTHS[0] // 2, 2)
        cin = WIDTHS[0] // 2
        for n in range(1, self.depth + 1):
            cout = WIDTHS[n - 1]
            setattr(self, f"layer{n}", nn.Sequential(_conv(cin, cout, 2), _conv(cout, cout, 1)))
            cin = cout
        if weights != "none":
            raise CapgenError(
                f"encoder {name}: no pretrained weights exist (weights={weights!r}); it trains "
                "from scratch with --fine-tune-encoder"
            )
        self.set_fine_tune(())

    def stem(self, x):
        """conv1 halves the input, as each stage does."""
        return self.conv1(x)
