"""Run the frozen encoder over a shard set into the HDF5 feature store."""

from __future__ import annotations

import contextlib
import os

import torch
from tqdm import tqdm

from model.device import default_device
from model.nets.encoder import build_encoder, normalise
from pipeline.errors import CapgenError, first_line
from pipeline.imaging.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pipeline.loading.features import FeatureWriter
from pipeline.loading.loader import MAX_LOST, check_lost, make_loader
from pipeline.loading.source import DataSource


def encoder_attrs(encoder, image_size, resize_mode, shard_set):
    return {
        "encoder": encoder.name,
        "weights": encoder.weights,
        "stop": encoder.stop,
        "image_size": int(image_size),
        "resize_mode": str(resize_mode or ""),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "grid": list(encoder.grid(int(image_size))),
        "shard_set": shard_set,
    }


def extract(
    shards: str | os.PathLike,
    out: str | os.PathLike,
    encoder: str = "resnet50",
    stop: str = "layer4",
    weights: str = "imagenet",
    batch_size: int = 64,
    workers: int = 2,
    device: str | torch.device | None = None,
    download: bool = False,
    progress: bool = True,
    max_lost: float = MAX_LOST,
) -> int:
    """Features of every image of the shard set `shards` into the cache `out` (.h5), in shard
    order; returns the row count.

    encoder, stop, weights: the trunk (model/nets/encoder.py's build_encoder: a ResNet or
    "convnet"; where it stops; "imagenet", "none" or a weights file; download=True fetches
    the ImageNet weights). device: default_device's default when None.

    Unreadable shards or samples are warned about and left out (the cache holds the
    rest) up to a share of max_lost; more is an error. An OS error writing `out` (disk
    full, ...) is a one-line error and leaves no temp file."""
    device = default_device(device)
    source = DataSource(shards)
    if source.kind != "images":
        raise CapgenError(f"{shards}: features are extracted from a shard set folder")
    if not source.image_size:
        raise CapgenError(f"{shards}: manifest has no image_size")
    net = build_encoder(encoder, weights, stop, download).to(device).eval()
    net = net.to(memory_format=torch.channels_last)
    h, w = net.grid(int(source.image_size))
    # Stored relative to the cache when it can be, so the two can move together.
    shard_set = os.path.relpath(os.path.abspath(shards), os.path.dirname(os.path.abspath(out)))
    attrs = encoder_attrs(net, source.image_size, source.resize_mode, shard_set)
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    loader = make_loader(
        source, batch_size, shuffle=False, workers=min(workers, len(source.urls)), pin_memory=device.type == "cuda"
    )
    try:
        writer = FeatureWriter(out, source.num_samples, h * w, net.channels, attrs, state)
        _write_all(net, loader, writer, device, source.num_samples, progress)
        try:
            check_lost(shards, *loader.lost(), max_lost)
        except CapgenError:
            writer.abort()
            raise
        writer.close(allow_fewer=True)
    except OSError as err:
        raise CapgenError(f"{out}: cannot write the feature cache ({first_line(err)})") from None
    return writer.rows


def _write_all(net, loader, writer, device, total, progress):
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with (
            tqdm(total=total, unit="img", desc="features", disable=not progress, dynamic_ncols=True) as bar,
            torch.inference_mode(),
        ):
            for batch in loader:
                with amp:
                    feats = net(normalise(batch["images"], device))
                writer.write(batch["image_ids"].numpy(), feats.float().cpu().numpy())
                bar.update(len(batch["image_ids"]))
    except BaseException:
        writer.abort()
        raise
