"""The small CNN trained from scratch (model/nets/convnet.py): its grid, its stages, its
BatchNorm, and its way through the trainer into a checkpoint and back."""

import json

import pytest
import torch

from model.eval.evaluate import evaluate
from model.infer.captioner import Captioner
from model.nets.convnet import ConvNet
from model.nets.encoder import Encoder, build_encoder
from model.nets.trunk import Trunk
from model.train.args import TrainArgs
from model.train.loop import train
from pipeline.errors import CapgenError


@pytest.mark.parametrize("stop, channels", [("layer2", 128), ("layer3", 256), ("layer4", 512)])
@pytest.mark.parametrize("size", [128, (100, 75)])
def test_grid_and_channels_are_a_resnets_at_the_same_stop(stop, channels, size):
    net = build_encoder("convnet", "none", stop).eval()
    resnet = pytest.warns(UserWarning, match="random init")
    with resnet:
        ref = build_encoder("resnet18", "none", stop)
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = net(torch.zeros(2, 3, h, w))
    gh, gw = net.grid(size)
    assert (gh, gw) == ref.grid(size)
    assert out.shape == (2, gh * gw, channels) and net.channels == channels == ref.channels


def test_frozen_until_fine_tuned_then_every_stage_and_its_batchnorm_train():
    net = ConvNet(stop="layer3")
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = net.conv1[1].running_mean.clone()
    net(torch.rand(4, 3, 32, 32))
    assert torch.equal(net.conv1[1].running_mean, before)  # frozen: stored statistics only

    net.set_fine_tune().train()
    assert {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad} == {
        "conv1",
        "layer1",
        "layer2",
        "layer3",
    }
    net(torch.rand(4, 3, 32, 32))
    assert not torch.equal(net.conv1[1].running_mean, before)


def test_both_trunks_share_one_base_and_keep_their_weight_names():
    """model/nets/trunk.py holds what the two share; the modules, and so checkpoints' keys, stay each one's own."""
    convnet = ConvNet(stop="layer2")
    with pytest.warns(UserWarning, match="random init"):
        resnet = Encoder("resnet18", "none", "layer2")
    assert isinstance(convnet, Trunk) and isinstance(resnet, Trunk)
    assert sorted({k.split(".")[0] for k in resnet.state_dict()}) == ["bn1", "conv1", "layer1", "layer2"]
    assert sorted({k.split(".")[0] for k in convnet.state_dict()}) == ["conv1", "layer1", "layer2"]
    assert "layer1.0.conv1.weight" in resnet.state_dict() and "conv1.0.weight" in convnet.state_dict()
    for trunk in (lambda: ConvNet(stop="layer5"), lambda: Encoder("resnet18", "none", "layer5")):
        with pytest.raises(ValueError, match=r"^unknown stop 'layer5' \(expected one of layer2, layer3, layer4\)$"):
            trunk()


def test_the_same_seed_gives_the_same_net_and_pretrained_weights_are_refused():
    a, b = build_encoder("convnet", "none", "layer3"), build_encoder("convnet", "none", "layer3")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(CapgenError, match="convnet: no pretrained weights"):
        build_encoder("convnet", "imagenet", "layer3")


def test_training_it_frozen_is_refused_with_the_flag_to_add(train_val, tmp_path):
    args = TrainArgs(
        train=train_val["train"],
        val=train_val["val"],
        out=str(tmp_path / "run"),
        epochs=1,
        encoder="convnet",
        encoder_stop="layer3",
        workers=0,
        progress=False,
    )
    with pytest.raises(CapgenError, match="--encoder convnet: .*add --fine-tune-encoder"):
        train(args)


def test_trained_from_shards_on_a_cosine_schedule_its_checkpoint_evaluates(train_val, tmp_path):
    args = TrainArgs(
        train=train_val["train"],
        val=train_val["val"],
        out=str(tmp_path / "run"),
        epochs=2,
        batch_size=4,
        encoder="convnet",
        encoder_stop="layer2",
        fine_tune_encoder=True,
        encoder_lr=1e-3,
        embed_dim=16,
        attention_dim=16,
        hidden_dim=16,
        lr_schedule="cosine",
        workers=0,
        progress=False,
    )
    result = train(args)
    lrs = [r["lr"] for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if r["type"] == "val"]
    assert lrs == pytest.approx([4e-4 * 0.5, 0.0], abs=1e-12)  # cos(pi/2), cos(pi): set after each epoch
    cap = Captioner.load(result["best_dir"])
    assert cap.config["encoder"] == {"name": "convnet", "stop": "layer2", "weights": "none", "grid": [4, 4]}
    start = build_encoder("convnet", "none", "layer2")
    assert not torch.equal(cap.encoder.layer1[0][0].weight, start.layer1[0][0].weight)  # it trained
    # no channel statistics of the random start: its last BatchNorm sets the features' scale
    assert torch.equal(cap.decoder.feature_mean, torch.zeros(128)) and torch.equal(
        cap.decoder.feature_std, torch.ones(128)
    )
    ev = evaluate(result["best_dir"], train_val["val"], str(tmp_path / "results.json"), beam=2)
    assert ev["images"] == 6 and all(ev["captions"].values())
