"""ResNet trunk: shapes, grids, freezing, weight sources."""

import os
import pickle

import pytest
import torch
from torchvision import models

from model.nets.encoder import Encoder, imagenet_weights_path
from pipeline.errors import CapgenError

pytestmark = pytest.mark.filterwarnings("ignore:encoder .*random init")


def test_resnet50_grid_at_256():
    enc = Encoder("resnet50").eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 256, 256))
    assert enc.channels == 2048 and enc.grid(256) == (8, 8)
    assert out.shape == (1, 64, 2048)


@pytest.mark.parametrize(
    "stop,size,grid,channels",
    [
        ("layer4", 64, (2, 2), 512),
        ("layer3", 64, (4, 4), 256),
        ("layer4", (100, 70), (4, 3), 512),
        ("layer3", 33, (3, 3), 256),
        ("layer2", 128, (16, 16), 128),
        ("layer2", (100, 70), (13, 9), 128),
    ],
)
def test_shapes_and_grid(stop, size, grid, channels):
    enc = Encoder("resnet18", stop=stop).eval()
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = enc(torch.randn(2, 3, h, w))
    assert enc.grid(size) == grid and enc.channels == channels
    assert out.shape == (2, grid[0] * grid[1], channels)


def test_rows_follow_the_grid_and_channels_last_agrees():
    enc = Encoder("resnet18", stop="layer3").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        fmap = enc.layer3(enc.layer2(enc.layer1(enc.maxpool(enc.relu(enc.bn1(enc.conv1(x)))))))
        cl = enc.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(out[:, 4 * 1 + 2], fmap[:, :, 1, 2])  # row-major: P index = y * w + x
    assert cl.is_contiguous()  # channels_last needs no copy for [B, P, C]
    torch.testing.assert_close(cl, out, rtol=1e-4, atol=1e-4)


def test_frozen_by_default_fine_tune_layers_3_4_and_batchnorm_stays_frozen():
    enc = Encoder("resnet18")
    assert not any(p.requires_grad for p in enc.parameters())
    enc.set_fine_tune()
    trainable = {n.split(".")[0] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    enc.train()
    assert all(not m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    enc.set_fine_tune(())
    assert not any(p.requires_grad for p in enc.parameters())


def test_layer2_trunk_stops_there_and_fine_tunes_its_last_stage():
    enc = Encoder("resnet18", stop="layer2").eval()
    assert not hasattr(enc, "layer3") and enc.channels == 128
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fmap = enc.layer2(enc.layer1(enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))))
        assert torch.equal(enc(x), fmap.permute(0, 2, 3, 1).flatten(1, 2))
    enc.set_fine_tune()
    assert {n.split(".")[0] for n, p in enc.named_parameters() if p.requires_grad} == {"layer2"}
    assert Encoder("resnet50", stop="layer2").channels == 512


def test_random_init_warns():
    with pytest.warns(UserWarning, match="random init"):
        Encoder("resnet18")


def test_imagenet_weights_from_cache_or_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = imagenet_weights_path("resnet18")
    assert path == os.path.join(str(tmp_path), "checkpoints", "resnet18-f37072fd.pth")
    with pytest.raises(CapgenError, match=r"resnet18-f37072fd\.pth") as err:
        Encoder("resnet18", weights="imagenet")
    assert str(err.value).startswith(path + ":")
    ref = models.resnet18(weights=None)
    os.makedirs(os.path.dirname(path))
    torch.save(ref.state_dict(), path)
    enc = Encoder("resnet18", weights="imagenet", stop="layer3")
    assert torch.equal(enc.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert not hasattr(enc, "layer4") and enc.weights == "imagenet"


class Payload:
    def __reduce__(self):
        return (os.system, ("echo unpickled",))


def test_weights_file(tmp_path):
    ref = models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    enc = Encoder("resnet18", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(enc.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    with pytest.raises(CapgenError, match="weights file not found"):
        Encoder("resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(CapgenError, match="not resnet50 weights"):
        Encoder("resnet50", weights=str(tmp_path / "r18.pth"))
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f, protocol=2)
    with pytest.raises(CapgenError, match="evil.pth: cannot read weights"):
        Encoder("resnet18", weights=str(tmp_path / "evil.pth"))
