"""The HDF5 feature store: contract, statistics, atomic writes, and extraction from shards."""

import os
import tarfile

import h5py
import numpy as np
import pytest
import torch

from pipeline.errors import CapgenError
from pipeline.loading.batches import decode_jpeg
from pipeline.loading.features import FORMAT, FeatureFile, FeatureWriter
from pipeline.loading.source_match import same_encoder_weights

ATTRS = {
    "encoder": "resnet18",
    "weights": "none",
    "stop": "layer3",
    "image_size": 32,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "shard_set": "../set",
}


def write(path, feats, ids, state=None, batch=5):
    w = FeatureWriter(path, len(ids), feats.shape[1], feats.shape[2], ATTRS, state)
    for s in range(0, len(ids), batch):
        w.write(ids[s : s + batch], feats[s : s + batch])
    w.close()


def test_round_trip_contract_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(70, 4, 3)) * [1, 2, 3] + [0, 5, -1]).astype(np.float32)
    ids = np.arange(100, 170, dtype=np.int64)
    path = str(tmp_path / "sub" / "f.h5")
    write(path, feats, ids, {"conv1.weight": np.ones((2, 2), np.float32)})
    with h5py.File(path, "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].shape == (70, 4, 3)
        assert f["features"].chunks == (64, 4, 3)
        assert f["image_ids"].dtype == np.int64 and f["image_ids"][:].tolist() == ids.tolist()
        assert f["channel_mean"].dtype == np.float32 and f["channel_std"].shape == (3,)
        assert f.attrs["format"] == FORMAT
    cache = FeatureFile(path)
    stored = feats.astype(np.float16)
    assert (cache.read(0, 70) == stored).all()
    flat = stored.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(cache.channel_mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(cache.channel_std, flat.std(0), rtol=1e-4)
    assert {k: cache.attrs[k] for k in ATTRS} == ATTRS
    assert (len(cache), cache.positions, cache.channels, cache.chunk) == (70, 4, 3, 64)
    assert cache.shard_set() == os.path.normpath(str(tmp_path / "set"))  # relative to the cache
    assert cache.encoder_state()["conv1.weight"].tolist() == [[1, 1], [1, 1]]
    assert os.listdir(tmp_path / "sub") == ["f.h5"]


def test_incomplete_or_failed_write_leaves_nothing(tmp_path):
    path = str(tmp_path / "f.h5")
    w = FeatureWriter(path, 10, 2, 2, ATTRS)
    w.write([1, 2], np.zeros((2, 2, 2)))
    with pytest.raises(CapgenError, match="wrote 2 images, expected 10"):
        w.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(CapgenError, match="more images than the 1 announced"):
        w = FeatureWriter(path, 1, 2, 2, ATTRS)
        w.write([1, 2], np.zeros((2, 2, 2)))
    w.abort()
    assert os.listdir(tmp_path) == []


def test_not_a_cache_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["a"] = [1]
    with pytest.raises(CapgenError, match="not a capgen feature cache"):
        FeatureFile(str(path))
    with pytest.raises(CapgenError, match="feature cache not found"):
        FeatureFile(str(tmp_path / "missing.h5"))


def test_extract_stores_the_encoder_features_of_every_image(tiny_shards, tmp_path):
    from model.infer.extract import extract
    from model.nets.encoder import build_encoder, normalise

    set_dir = tiny_shards(images=12, seed=4, width=48, height=40, image_size=32, shard_size=5, preset="coco")
    out = str(tmp_path / "feat" / "train.h5")
    with pytest.warns(UserWarning, match="random init"):
        n = extract(set_dir, out, "resnet18", "layer3", "none", batch_size=4, workers=2, progress=False)
    cache = FeatureFile(out)
    assert n == len(cache) == 12
    assert cache.shape == (12, 4, 256)  # 32 px through layer3: a 2x2 grid of 256 channels
    assert {k: cache.attrs[k] for k in ("encoder", "weights", "stop", "image_size", "resize_mode")} == {
        "encoder": "resnet18",
        "weights": "none",
        "stop": "layer3",
        "image_size": 32,
        "resize_mode": "stretch",
    }
    assert cache.attrs["grid"] == [2, 2]
    assert os.path.samefile(cache.shard_set(), set_dir)
    assert sorted(cache.image_ids.tolist()) == sorted(shard_set_ids(set_dir))

    # The stored rows are the encoder's output for those images (to float16 precision).
    with pytest.warns(UserWarning):
        encoder = build_encoder("resnet18", "none", "layer3").eval()
    encoder.load_state_dict({k: torch.from_numpy(v) for k, v in cache.encoder_state().items()})
    tar_path = sorted(p for p in os.listdir(set_dir) if p.endswith(".tar"))[0]
    with tarfile.open(os.path.join(set_dir, tar_path)) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
        image_id, jpg = int(member.name.split(".")[0]), tar.extractfile(member).read()
    pixels = torch.from_numpy(decode_jpeg(jpg)).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = encoder(normalise(pixels, "cpu"))[0].numpy()
    row = int(np.flatnonzero(cache.image_ids == image_id)[0])
    np.testing.assert_allclose(cache.read(row, row + 1)[0].astype(np.float32), want, rtol=2e-3, atol=2e-3)


def shard_set_ids(set_dir):
    from pipeline.text import TokenTable

    return TokenTable.load(os.path.join(set_dir, "tokens.npz")).image_ids.tolist()


def test_extract_at_layer2_names_its_stop_and_finer_grid(tiny_shards, tmp_path):
    from model.infer.extract import extract
    from model.train.args import TrainArgs
    from model.train.build import encoder_for
    from pipeline.loading.source import DataSource

    set_dir = tiny_shards(images=12, seed=4, width=48, height=40, image_size=32, shard_size=5, preset="coco")
    out = str(tmp_path / "train.h5")
    with pytest.warns(UserWarning, match="random init"):
        extract(set_dir, out, "resnet18", "layer2", "none", batch_size=4, workers=1, progress=False)
    cache = FeatureFile(out)
    assert cache.shape == (12, 16, 128)  # 32 px through layer2: a 4x4 grid of 128 channels
    assert (cache.attrs["stop"], cache.attrs["grid"]) == ("layer2", [4, 4])
    encoder, _ = encoder_for(TrainArgs(train=out, val=out, out=str(tmp_path)), DataSource(out))
    assert encoder.stop == "layer2" and encoder.channels == 128  # what the checkpoint config records


def test_same_encoder_weights():
    """The weights comparison that train-vs-val (source_match) and cache-vs-checkpoint (source_check) share."""
    a = {"conv1.weight": np.ones((2, 2)), "layer1.0.conv1.weight": np.zeros(3), "fc.weight": np.ones(1)}
    assert same_encoder_weights(a, {k: v.copy() for k, v in a.items()})
    assert same_encoder_weights(a, {"conv1.weight": np.ones((2, 2)), "fc.weight": np.zeros(1)})  # probes only
    assert not same_encoder_weights(a, {**a, "layer1.0.conv1.weight": np.ones(3)})
    assert same_encoder_weights({}, a)  # nothing stored: nothing to tell them apart
