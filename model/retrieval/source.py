"""The image set a search runs over: a feature cache, or a shard set run once through the
checkpoint's frozen encoder (features kept in memory, and written to a cache when asked).

A cache must come from the checkpoint's encoder, a shard set have its image size
(model/infer/source_check.py).
File names and thumbnails come from the shard set: SRC itself, or the cache's source set.
"""

import os

import numpy as np

from model.device import default_device
from model.infer.captioner import Captioner
from model.infer.extract import _write_all, encoder_attrs
from model.infer.source_check import check_source
from model.retrieval.index import ImageIndex
from pipeline.errors import CapgenError
from pipeline.loading.features import FeatureWriter, corrupt_input
from pipeline.loading.loader import make_loader
from pipeline.loading.source import DataSource
from pipeline.shards.members import ShardMembers


class MemoryFeatures:
    """The writer extract's loop fills (write / abort), in memory; optionally also a cache file."""

    def __init__(self, also=None):
        self.ids, self.blocks, self.also = [], [], also

    def write(self, image_ids, features):
        self.ids.append(np.asarray(image_ids, np.int64))
        self.blocks.append(np.asarray(features, np.float16))  # as a cache stores them
        if self.also is not None:
            self.also.write(image_ids, features)

    def abort(self):
        if self.also is not None:
            self.also.abort()

    def arrays(self):
        return np.concatenate(self.blocks), np.concatenate(self.ids)


def encode_shards(captioner, source, cache=None, batch_size=64, workers=1, progress=True):
    """(features [N, P, C] float16, image ids [N]) of a shard set (checked by check_source)
    through the checkpoint's encoder."""
    config, encoder = captioner.config, captioner.encoder
    device = captioner.device
    h, w = encoder.grid(int(source.image_size))
    writer = None
    if cache:
        shard_set = os.path.relpath(os.path.abspath(source.path), os.path.dirname(os.path.abspath(cache)))
        attrs = encoder_attrs(encoder, source.image_size, source.resize_mode, shard_set)
        attrs["weights"] = str(config["encoder"]["weights"])
        state = {k: v.detach().cpu().numpy() for k, v in encoder.state_dict().items()}
        try:
            writer = FeatureWriter(cache, source.num_samples, h * w, encoder.channels, attrs, state)
        except OSError as err:
            raise CapgenError(f"{cache}: cannot write the feature cache ({err.strerror or err})") from None
    memory = MemoryFeatures(writer)
    loader = make_loader(
        source, batch_size, shuffle=False, workers=min(workers, len(source.urls)), pin_memory=device.type == "cuda"
    )
    _write_all(encoder, loader, memory, device, source.num_samples, progress)
    if not memory.ids:
        memory.abort()
        raise CapgenError(f"{source.path}: no images could be read")
    if writer is not None:
        writer.close(allow_fewer=True)
    return memory.arrays()


def shard_members(shard_dir):
    """ShardMembers of a set folder, or None when there is none to read (a cache moved alone)."""
    if not shard_dir or not os.path.isfile(os.path.join(shard_dir, "manifest.json")):
        return None
    return ShardMembers(shard_dir)


def load_index(ckpt, data, device=None, cache=None, batch_size=64, workers=1, progress=True, captioner=None):
    """(ImageIndex, Captioner, ShardMembers or None) for SRC `data` (.h5 cache or shard set folder)."""
    device = default_device(device)
    captioner = captioner or Captioner.load(ckpt, device)
    source = DataSource(data)
    if source.kind == "features" and cache:
        raise CapgenError(f"--cache: {data} is a feature cache already")
    check_source(source, captioner.config, captioner.encoder, ckpt)
    if source.kind == "features":
        features, image_ids = source.cache.read(0, len(source.cache)), source.cache.image_ids
        if not np.isfinite(features).all():  # NaN would rank images silently wrong
            raise corrupt_input(source.path)
        members = shard_members(source.shard_set)
    else:
        features, image_ids = encode_shards(captioner, source, cache, batch_size, workers, progress)
        members = ShardMembers(source.path)
    names = members.file_names() if members is not None else {}
    index = ImageIndex(captioner.decoder, features, image_ids, names, device, name=data)
    return index, captioner, members
