"""Loaders: exact tokens for each image id, every sample once per epoch, any rank/worker split."""

import json
import os
import tarfile

import numpy as np
import pytest
import torch

from pipeline.errors import CapgenError
from pipeline.loading.features import FeatureWriter
from pipeline.loading.loader import check_lost, make_loader
from pipeline.loading.source import DataSource
from pipeline.text import TokenTable, Vocabulary

SIZE = 32


@pytest.fixture(scope="module")
def shard_set(tiny_shards):
    """40 synthetic train images in 5 shards of 8, 32 px, coco preset."""
    return tiny_shards(
        images=50, seed=3, width=64, height=48, val_fraction=0.2, image_size=SIZE, shard_size=8, preset="coco"
    )


def shard_captions(folder):
    """image id -> raw captions straight from the tars (the reference for the tests)."""
    caps = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(folder, name)) as tar:
                for m in tar:
                    if m.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(m).read())
                        caps[meta["image_id"]] = meta["captions"]
    return caps


def collect(loader):
    return list(loader)


def test_shard_batches_follow_the_contract_with_exact_tokens(shard_set):
    vocab = Vocabulary.load(os.path.join(shard_set, "vocab.json"))
    captions = shard_captions(shard_set)
    loader = make_loader(shard_set, 6, shuffle=True, seed=1, workers=2)
    batches = collect(loader)
    assert len(batches) == len(loader)
    for b in batches:
        n = len(b["image_ids"])
        assert b["image_ids"].dtype == torch.int64
        assert b["images"].dtype == torch.uint8 and b["images"].shape == (n, 3, SIZE, SIZE)
        assert b["tokens"].dtype == torch.int64 and b["tokens"].shape == (n, 5, vocab.length)
        assert b["lengths"].shape == (n, 5)
        for image_id, tokens, lengths in zip(b["image_ids"].tolist(), b["tokens"], b["lengths"]):
            caps = captions[image_id]
            want = [vocab.encode(caps[k % len(caps)]) for k in range(5)]
            assert tokens.tolist() == want
            assert lengths.tolist() == [sum(t != 0 for t in row) for row in want]


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 2), (3, 2)])
def test_shards_every_sample_once_per_epoch(shard_set, world, workers):
    """5 shards over 3 ranks x 2 workers: some workers get none (empty_check=False)."""
    all_ids = sorted(shard_captions(shard_set))
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            loader = make_loader(shard_set, 4, shuffle=True, seed=5, rank=rank, world=world, workers=workers)
            loader.set_epoch(epoch)
            ids = [i for b in loader for i in b["image_ids"].tolist()]
            assert len(ids) == loader.num_samples()
            seen += ids
        assert sorted(seen) == all_ids


def test_shard_order_is_a_function_of_seed_and_epoch(shard_set):
    def order(seed, epoch, workers=2):
        loader = make_loader(shard_set, 4, shuffle=True, seed=seed, workers=workers)
        loader.set_epoch(epoch)
        return [i for b in loader for i in b["image_ids"].tolist()]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    unshuffled = make_loader(shard_set, 4, shuffle=False)
    assert [i for b in unshuffled for i in b["image_ids"].tolist()] == sorted(shard_captions(shard_set))


@pytest.fixture(scope="module")
def feature_cache(shard_set, tmp_path_factory):
    """Features whose values encode the image id, so rows can be checked against ids."""
    table = TokenTable.load(os.path.join(shard_set, "tokens.npz"))
    ids = table.image_ids[::-1].copy()  # not sorted: the cache keeps its own order
    path = str(tmp_path_factory.mktemp("feat") / "f.h5")
    w = FeatureWriter(
        path,
        len(ids),
        4,
        3,
        {"encoder": "resnet18", "stop": "layer3", "image_size": SIZE, "shard_set": os.path.abspath(shard_set)},
    )
    for s in range(0, len(ids), 7):
        part = ids[s : s + 7]
        w.write(part, np.broadcast_to((part % 1000)[:, None, None], (len(part), 4, 3)).astype(np.float32))
    w.close()
    return path


def test_feature_batches_exact_rows_and_tokens(feature_cache, shard_set):
    table = TokenTable.load(os.path.join(shard_set, "tokens.npz"))
    src = DataSource(feature_cache)
    assert src.kind == "features" and os.path.samefile(src.shard_set, shard_set)
    loader = make_loader(src, 5, shuffle=True, seed=0, workers=2)
    for b in loader:
        ids = b["image_ids"].numpy()
        assert b["features"].dtype == torch.float16 and b["features"].shape == (len(ids), 4, 3)
        assert (b["features"].float().numpy() == (ids % 1000)[:, None, None]).all()
        tokens, lengths = table.rows(ids)
        assert b["tokens"].tolist() == tokens.tolist() and b["lengths"].tolist() == lengths.tolist()


@pytest.mark.parametrize("world,workers,block", [(1, 0, None), (2, 2, 4), (3, 2, 3)])
def test_features_every_sample_once_per_epoch(feature_cache, shard_set, world, workers, block):
    from pipeline.loading.batches import FeatureBatches
    from pipeline.loading.loader import Loader

    src = DataSource(feature_cache)
    want = sorted(TokenTable.load(os.path.join(shard_set, "tokens.npz")).image_ids.tolist())
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            ds = FeatureBatches(src.path, src.tokens_path, 4, True, 9, rank, world, blocks_per_read=2, block=block)
            loader = Loader(src, ds, 4, workers)
            loader.set_epoch(epoch)
            seen += [i for b in loader for i in b["image_ids"].tolist()]
        assert sorted(seen) == want
        orders.append(seen)
    assert orders[0] != orders[1]


def test_unknown_source_is_a_one_line_error(tmp_path):
    from pipeline.errors import CapgenError

    with pytest.raises(CapgenError, match="neither a shard set folder nor"):
        DataSource(str(tmp_path / "nothing"))


def test_check_lost():
    """The --max-lost check that training and features extract share: over the share, or every sample, fails."""
    check_lost("set", 0, 0, 0.0)
    check_lost("set", 1, 100, 0.01)
    with pytest.raises(CapgenError) as err:
        check_lost("set", 2, 100, 0.01, " this epoch")
    assert str(err.value) == (
        "set: 2 of 100 samples could not be read this epoch (more than --max-lost 0.01); see the warnings above"
    )
    with pytest.raises(CapgenError, match=r"^set: 4 of 4 samples could not be read \(more than --max-lost 1\)"):
        check_lost("set", 4, 4, 1.0)
