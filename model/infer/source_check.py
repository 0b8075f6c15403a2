"""A data source a checkpoint can read: images of the size it was trained at, or features
from its own encoder (the same name, stop, image size and weights). `capgen eval`, retrieval
(eval --retrieval, search) and SCST all check their source here."""

from __future__ import annotations

from torch import nn

from pipeline.errors import CapgenError
from pipeline.loading.source import DataSource
from pipeline.loading.source_match import ENCODER_PROBES, same_encoder_weights


def check_source(source: DataSource, config: dict, encoder: nn.Module, checkpoint: str = "the checkpoint") -> None:
    """Refuse `source` when the checkpoint (its config, its encoder) cannot read it: a shard
    set of another image size, or a feature cache from another encoder (`check_features`).
    checkpoint: what the size error calls the checkpoint (its path, where known)."""
    if source.kind == "features":
        check_features(source, config, encoder)
    elif source.image_size != config["image"]["size"]:
        raise CapgenError(
            f"{source.path}: images are {source.image_size} px, {checkpoint} wants {config['image']['size']}"
        )


def check_features(source: DataSource, config: dict, encoder: nn.Module) -> None:
    """A feature cache must come from the checkpoint's encoder, or its features mean nothing:
    the same encoder, stop and image size (the cache's attributes), and the same weights
    (pipeline/loading/source_match.py's same_encoder_weights)."""
    attrs = source.cache.attrs
    want = {
        "encoder": config["encoder"]["name"],
        "stop": config["encoder"]["stop"],
        "image_size": config["image"]["size"],
    }
    for key, value in want.items():
        if attrs.get(key) != value:
            raise CapgenError(
                f"{source.path}: features from {key} {attrs.get(key)!r}, the checkpoint's encoder has {value!r}"
            )
    mine = {k: v.cpu().numpy() for k, v in encoder.state_dict().items() if k in ENCODER_PROBES}
    if not same_encoder_weights(source.cache.encoder_state(ENCODER_PROBES), mine):
        raise CapgenError(
            f"{source.path}: features come from other {attrs['encoder']} weights than the checkpoint's encoder"
        )
