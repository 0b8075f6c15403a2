"""DataSource: what a trainer or evaluator needs to know about a data source, a shard set
folder or an HDF5 feature cache."""

from __future__ import annotations

import os

from pipeline.errors import CapgenError
from pipeline.loading.batches import FeatureBatches, ShardBatches
from pipeline.loading.features import FeatureFile
from pipeline.shards.shardset import read_captions, read_manifest, shard_paths
from pipeline.text import Vocabulary


def is_feature_cache(path):
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in (".h5", ".hdf5")


class DataSource:
    """What a trainer or evaluator needs to know about a data source (shard set or cache)."""

    def __init__(self, path: str | os.PathLike, tokens: str | None = None):
        """path: a shard set folder (kind "images") or an .h5 feature cache (kind "features");
        tokens: the token table (default: tokens.npz of the shard set, for a cache the set its
        shard_set attribute names). A CapgenError when it is neither, or unreadable."""
        self.path = os.fspath(path)
        if is_feature_cache(self.path):
            self.kind = "features"
            self.cache = FeatureFile(self.path)
            self.shard_set = self.cache.shard_set(tokens)
            self.num_samples = len(self.cache)
            self.image_size = self.cache.attrs.get("image_size")
            self.resize_mode = self.cache.attrs.get("resize_mode")
        elif os.path.isdir(self.path):
            self.kind = "images"
            self.cache = None
            self.shard_set = self.path
            manifest = read_manifest(self.path)
            self.urls = shard_paths(self.path)
            if not self.urls:
                raise CapgenError(f"{self.path}: no shards")
            self.shard_samples = {s["name"]: int(s["samples"]) for s in manifest.get("shards", [])}
            self.num_samples = sum(self.shard_samples.get(os.path.basename(u), 0) for u in self.urls)
            self.image_size = manifest.get("image_size")
            self.resize_mode = manifest.get("resize_mode")
        else:
            raise CapgenError(f"{self.path}: neither a shard set folder nor a .h5 feature cache")
        self.tokens_path = tokens or os.path.join(self.shard_set, "tokens.npz")

    def vocab(self) -> Vocabulary:
        """The vocabulary beside the token table (vocab.json)."""
        return Vocabulary.load(os.path.join(os.path.dirname(self.tokens_path), "vocab.json"))

    def references(self) -> dict[int, list[str]]:
        """image id -> all raw captions, from the shard set's json components."""
        return read_captions(self.shard_set)

    def local_samples(self, rank=0, world=1, shuffle=False, seed=0, epoch=0, worker=0, workers=1):
        """How many samples one worker of one rank sees in an epoch."""
        if self.kind == "features":
            ds = FeatureBatches(self.path, self.tokens_path, 1, shuffle, seed, rank, world)
            ds.set_epoch(epoch)
            return sum(min(ds.block, self.num_samples - s) for s in ds.local_blocks(worker, workers))
        ds = ShardBatches(self.urls, self.tokens_path, 1, shuffle, seed, rank, world)
        ds.set_epoch(epoch)
        urls = ds.epoch_urls()[rank::world][worker::workers]
        return sum(self.shard_samples.get(os.path.basename(u), 0) for u in urls)
