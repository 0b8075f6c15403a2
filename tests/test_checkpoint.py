"""Checkpoint folder (safetensors + JSON + weights-only trainer state) and the Captioner built from it."""

import dataclasses
import io
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from model.infer.captioner import Captioner, preprocess
from model.nets.decoder import Decoder
from model.nets.encoder import Encoder
from model.nets.search import beam_search
from model.runs import checkpoint
from model.runs.checkpoint_config import model_config, model_state
from pipeline.errors import CapgenError
from pipeline.imaging import pixels
from pipeline.text import Vocabulary

CAPTIONS = ["a red circle left of a blue square", "a green triangle above a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    vocab = Vocabulary.build(CAPTIONS, preset="coco", min_freq=1, max_len=8)
    with pytest.warns(UserWarning, match="random init"):
        encoder = Encoder("resnet18", weights="none", stop="layer3")
    decoder = Decoder(len(vocab), encoder.channels, 16, 16, 16)
    with torch.no_grad():
        decoder.fc.weight.mul_(30)  # peaked: captions of varied words
    decoder.set_feature_stats(torch.rand(encoder.channels), torch.rand(encoder.channels) + 0.5)
    return encoder.eval(), decoder.eval(), vocab


def weights_and_config(parts, **extra):
    """The decoder's weights and a config that describes them (checkpoint.load checks they agree)."""
    encoder, decoder, _ = parts
    return model_state(None, decoder), model_config(encoder, decoder, image_size=64) | extra


def trainer_state(decoder):
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    decoder.fc.bias.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    return checkpoint.TrainState(
        seed=5,
        epoch=3,
        step=1200,
        best=0.25,
        bad_epochs=1,
        scores={"Bleu_4": 0.25},
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        rng=checkpoint.rng_state(),
    )


def assert_same(a, b):
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        assert_same(vars(a), vars(b))
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path, parts):
    encoder, decoder, vocab = parts
    config = model_config(encoder, decoder, image_size=64) | {"text": {"preset": "coco"}}
    state = model_state(encoder, decoder)
    ts = trainer_state(Decoder(len(vocab), 8, 4, 4, 4))
    checkpoint.save(tmp_path / "ckpt", state, config, vocab, ts)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors", "trainer.pt"]
    got_state, got_config, got_vocab, got_ts = checkpoint.load(tmp_path / "ckpt")
    assert_same(got_state, state)
    assert got_config == json.loads(json.dumps(config)) and got_vocab.to_dict() == vocab.to_dict()
    assert_same(got_ts, ts)
    assert checkpoint.load(tmp_path / "ckpt", trainer=False)[3] is None


def test_trainer_state_without_a_metric_reads_as_bleu_4(tmp_path, parts):
    """trainer.pt written before TrainState.metric: its best was selected by BLEU-4."""
    vocab = parts[2]
    ts = trainer_state(Decoder(len(vocab), 8, 4, 4, 4))
    assert ts.metric == "Bleu_4"
    checkpoint.save(tmp_path / "ckpt", *weights_and_config(parts), vocab, dataclasses.replace(ts, metric="CIDEr"))
    assert checkpoint.load(tmp_path / "ckpt")[3].metric == "CIDEr"
    old = {k: v for k, v in ts.to_dict().items() if k != "metric"}
    torch.save(old, tmp_path / "ckpt" / "trainer.pt")
    assert_same(checkpoint.load(tmp_path / "ckpt")[3], ts)
    del old["best"]
    torch.save(old, tmp_path / "ckpt" / "trainer.pt")
    with pytest.raises(CapgenError, match=r"trainer\.pt: best: missing$"):
        checkpoint.load(tmp_path / "ckpt")


def test_rng_state_restores_every_generator():
    state = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1))
    buf = io.BytesIO()
    torch.save(state, buf)
    checkpoint.set_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == first


class Custom:
    pass


def test_trainer_state_with_objects_is_refused(tmp_path, parts):
    encoder, decoder, vocab = parts
    checkpoint.save(tmp_path / "ckpt", *weights_and_config(parts), vocab)
    torch.save({"step": 1, "thing": Custom()}, tmp_path / "ckpt" / "trainer.pt")
    with pytest.raises(CapgenError, match=r"trainer\.pt: refused"):
        checkpoint.load(tmp_path / "ckpt")
    state, _, _, ts = checkpoint.load(tmp_path / "ckpt", trainer=False)
    assert ts is None and state.keys() == model_state(None, decoder).keys()


def test_save_replaces_the_folder_whole(tmp_path, parts):
    encoder, decoder, vocab = parts
    first, config = weights_and_config(parts)
    checkpoint.save(tmp_path / "ckpt", first, config | {"n": 1}, vocab)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be saved
        checkpoint.save(
            tmp_path / "ckpt",
            first,
            config | {"n": 2},
            vocab,
            checkpoint.TrainState(seed=0, scores={"bad": lambda: 0}),
        )
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert checkpoint.load(tmp_path / "ckpt")[1]["n"] == 1
    # Killed between the two renames: the previous checkpoint is still read.
    os.rename(tmp_path / "ckpt", tmp_path / "ckpt.old")
    assert checkpoint.load(tmp_path / "ckpt")[1]["n"] == 1
    checkpoint.save(tmp_path / "ckpt", first, config | {"n": 3}, vocab)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and checkpoint.load(tmp_path / "ckpt")[1]["n"] == 3


def test_bad_folders(tmp_path, parts):
    vocab = parts[2]
    with pytest.raises(CapgenError, match="checkpoint folder not found"):
        checkpoint.load(tmp_path / "none")
    checkpoint.save(tmp_path / "ckpt", *weights_and_config(parts), vocab)
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CapgenError, match=r"model\.safetensors: not a safetensors file"):
        checkpoint.load(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{")
    with pytest.raises(CapgenError, match=r"config\.json: not a capgen checkpoint config"):
        checkpoint.load(tmp_path / "ckpt")


def jpeg_with_orientation(img, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_captioner(tmp_path, parts):
    encoder, decoder, vocab = parts
    checkpoint.save(
        tmp_path / "ckpt",
        model_state(encoder, decoder),
        model_config(encoder, decoder, image_size=64, resize_mode="squash"),
        vocab,
    )
    cap = Captioner.load(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))
    images = [
        rgb,
        rgb.convert("RGBA"),
        rgb.convert("P"),
        rgb.convert("L"),
        Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)),
        Image.open(io.BytesIO(jpeg_with_orientation(rgb, 6))),
    ]
    out = cap.caption(images, beam=3, topk=2)
    assert len(out) == len(images)
    for r in out:
        assert [c["score"] for c in r["captions"]] == sorted((c["score"] for c in r["captions"]), reverse=True)
        assert len(r["captions"]) == 2 and r["grid"] == [4, 4]
        assert r["words"] == r["captions"][0]["text"].split()
        assert len(r["attention"]) == len(r["words"]) and all(len(a) == 16 for a in r["attention"])
    # The same as running the parts by hand.
    x = preprocess(rgb, 64, "squash", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]
    with torch.no_grad():
        (best, _) = beam_search(decoder, encoder(x), beam=3, max_len=8, topk=2)[0]
    assert out[0]["captions"][0] == {"text": vocab.decode(best.tokens), "score": pytest.approx(best.score, abs=1e-5)}
    # EXIF orientation 6: shown rotated 90 degrees clockwise.
    rotated = Image.open(io.BytesIO(jpeg_with_orientation(rgb, 6))).transpose(Image.Transpose.ROTATE_270)
    rotated.info.pop("exif")
    torch.testing.assert_close(cap.preprocess(images[-1]), cap.preprocess(rotated))


def test_resize_modes_are_the_shard_builders():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 60, 3), dtype=np.uint8))
    mean, std = [0.0] * 3, [1.0] * 3
    for alias, mode in (("squash", "stretch"), ("crop", "center-crop"), ("pad", "pad")):
        x = preprocess(img, 16, alias, mean, std)
        expected = pixels.fit(np.asarray(img), 16, mode)
        torch.testing.assert_close(x, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="unknown resize mode 'zoom'"):
        preprocess(img, 16, "zoom", mean, std)


def test_captioner_refuses_a_mismatched_checkpoint(tmp_path, parts):
    encoder, decoder, vocab = parts
    config = model_config(encoder, decoder, image_size=64)
    config["decoder"]["hidden_dim"] = 99
    checkpoint.save(tmp_path / "ckpt", model_state(encoder, decoder), config, vocab)
    with pytest.raises(CapgenError) as err:
        Captioner.load(tmp_path / "ckpt")
    assert str(err.value) == (
        f"{tmp_path / 'ckpt' / 'model.safetensors'}: decoder.attention.hidden_att.weight: shape [16, 16], "
        "its config.json gives [16, 99]"
    )
