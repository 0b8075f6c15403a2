"""DALI pipeline and loader over a shard set: read, decode (nvJPEG on a GPU), augment,
batch per pipeline/loading/batches.py's batch contract (uint8 images, normalised on the model side
as the CPU loader's are).

A training flip mirrors the image and swaps "left" and "right" in its captions here, on
the device, so a batch's tokens always describe its pixels. The reader is sharded by
rank and pads its shard, and the iterator drops the padding, so each epoch yields every
sample exactly once. The image id is the sample key, which arrives through the reader's
source_info ("tar:offset:KEY.jpg", from the index file): no JSON on the hot path.
Captions come from the token table, kept on the device.

Damaged samples: pipeline/loading/dali_scan.py finds them before the pipeline is built and
the reader is given only the readable ones; the loader warns of each damaged shard and
counts the lost samples in lost() at the end of each pass, as the CPU loaders do
(pipeline/loading/batches.py's "Lost samples").
"""

import os

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipeline.cluster.jobs import dist_info
from pipeline.errors import CapgenError
from pipeline.loading.batches import warn_lost
from pipeline.loading.dali_scan import ShardScan, ensure_index
from pipeline.loading.mirror import mirror_ids, mirror_tokens
from pipeline.shards.wds_index import shard_tars
from pipeline.text import TokenTable, Vocabulary

READER = "shards"
KEY_BYTES = 64  # tail of source_info kept per sample: ":offset:KEY.jpg" fits
CROP_AREA = (0.85, 1.0)
CROP_ASPECT = (0.9, 1.1)
JITTER = (0.9, 1.1)  # brightness and contrast factors
SHUFFLE_BUFFER = 4096  # encoded samples held for shuffling (about 20 KB each)


def shard_index(tars):
    """Index paths for the shards, writing the missing or stale ones."""
    return [ensure_index(tar) for tar in tars]


@pipeline_def
def caption_pipeline(tars, idxs, image_size, train, shard_id, num_shards, shuffle_seed, shuffle_buffer, gpu):
    # Shuffle: tar order per epoch (the same seed on every rank keeps the ranks' shards
    # disjoint), then samples within a buffer.
    shuffle = (
        dict(
            random_shuffle=True,
            initial_fill=shuffle_buffer,
            shuffle_after_epoch=True,
            shuffle_after_epoch_seed=shuffle_seed,
        )
        if train
        else {}
    )
    jpegs = fn.readers.webdataset(
        paths=tars,
        index_paths=idxs,
        ext=["jpg"],
        name=READER,
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        **shuffle,
    )
    info = fn.get_property(jpegs, key="source_info")
    n = fn.cast(info.shape(), dtype=types.INT32)
    key = fn.slice(info, start=n - KEY_BYTES, end=n, axes=[0], out_of_bounds_policy="pad")

    images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
    if train:
        images = fn.random_resized_crop(
            images, size=[image_size, image_size], random_area=list(CROP_AREA), random_aspect_ratio=list(CROP_ASPECT)
        )
        images = fn.brightness_contrast(
            images, brightness=fn.random.uniform(range=JITTER), contrast=fn.random.uniform(range=JITTER)
        )
        flip = fn.random.coin_flip(probability=0.5)
    else:
        images = fn.resize(images, size=[image_size, image_size])
        flip = fn.random.coin_flip(probability=0.0)  # the same outputs in both modes
    images = fn.flip(images, horizontal=flip)  # uint8 HWC, as decoded
    return images, (flip.gpu() if gpu else flip), key


def key_ids(keys):
    """[B, KEY_BYTES] uint8 source_info tails -> int64 image ids [B]."""
    ids = np.empty(len(keys), dtype=np.int64)
    for i, row in enumerate(keys):
        tail = row.tobytes().lstrip(b"\0").decode("utf-8", "replace")
        name = tail.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        key = name.split(".", 1)[0]
        if not key.isdigit():
            raise CapgenError(f"...{tail}: sample key {key!r} is not an image id")
        ids[i] = int(key)
    return ids


class DALILoader:
    """Batches per the batch contract (pipeline/loading/batches.py), all on the pipeline's device.
    Iterating again starts a new epoch (break out of one and DALI goes on where it stopped)."""

    def __init__(self, pipe, table, vocab, device, drop_last=False, scan=None, reports=True):
        """scan: the set's ShardScan (its filtered indexes live as long as it does); reports:
        this loader warns of and counts its losses (the rank with shard_id 0 does)."""
        self.device, self._scan, self._reports = device, scan, reports
        self._lost = (0, 0)
        self.source = None  # the DataSource, when make_loader built this loader
        order = np.argsort(table.image_ids, kind="stable")
        self._sorted_ids = table.image_ids[order]
        self._order = order
        self._tokens = torch.from_numpy(table.tokens).to(device)
        self._lengths = torch.from_numpy(table.lengths).to(device)
        self._mirror = torch.from_numpy(mirror_ids(vocab)).to(device)
        policy = LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL
        self._it = DALIGenericIterator(
            [pipe], ["images", "flipped", "key"], reader_name=READER, last_batch_policy=policy, auto_reset=True
        )
        meta = pipe.reader_meta(READER)
        self._size, self._shard, self._shards = meta["epoch_size"], meta["shard_id"], meta["number_of_shards"]
        self._turns = not meta["stick_to_shard"]  # shuffle_after_epoch keeps each rank's slot
        self.drop_last = drop_last
        self._epoch = 0  # epochs completed

    def __len__(self):
        """Batches this rank yields this epoch."""
        return len(self._it) if self.drop_last else -(-self.num_samples() // self.batch_size)

    def num_samples(self):
        """Samples this rank sees this epoch."""
        return len(self) * self.batch_size if self.drop_last else self._slot()

    def _slot(self):
        """Samples this rank reads this epoch. The data splits into num_shards slots whose
        sizes differ by one at most; unshuffled, each rank moves to the next slot every epoch."""
        k, n, s = (self._shard + self._epoch * self._turns) % self._shards, self._size, self._shards
        return (k + 1) * n // s - k * n // s

    def lost(self):
        """(samples lost, samples expected) by the pass that ended since the last __iter__:
        the whole set's losses on the rank that reports them, none on the others."""
        return self._lost

    def set_epoch(self, epoch):
        """DALI draws each epoch's order from its own running RNG: nothing to set."""

    @property
    def batch_size(self):
        return self._it.batch_size

    def rows(self, image_ids):
        """Token table rows of the image ids (host side: B look-ups, no copies of captions)."""
        at = np.searchsorted(self._sorted_ids, image_ids).clip(0, len(self._sorted_ids) - 1)
        missing = self._sorted_ids[at] != image_ids
        if missing.any():
            raise CapgenError(f"token table: no captions for image id {image_ids[missing][0]}")
        return self._order[at]

    def __iter__(self):
        self._lost, read = (0, 0), self._slot()
        for (out,) in self._it:
            ids = key_ids(out["key"].numpy())
            if not len(ids):  # a rank whose slot is a whole batch smaller than the largest
                continue
            rows = torch.from_numpy(self.rows(ids)).to(self.device, non_blocking=True)
            flipped = out["flipped"].view(-1).bool()
            yield {
                "image_ids": torch.from_numpy(ids).to(self.device, non_blocking=True),
                "tokens": mirror_tokens(self._tokens[rows].long(), flipped, self._mirror),
                "lengths": self._lengths[rows].long(),
                # [B, H, W, 3] -> [B, 3, H, W] view: channels_last in memory, as the CPU loader's.
                "images": out["images"].permute(0, 3, 1, 2),
            }
        self._epoch += 1
        lost = 0
        for shard, (n, expected, cause) in (self._scan.lost if self._scan and self._reports else {}).items():
            warn_lost(shard, n, expected, cause)
            lost += n
        self._lost = (lost, read + lost)


def make_dali_loader(
    shard_dir,
    batch_size,
    image_size=256,
    train=True,
    device_id=None,
    num_threads=4,
    seed=0,
    shard_id=None,
    num_shards=None,
    prefetch=2,
    tokens=None,
    drop_last=False,
    shuffle_buffer=SHUFFLE_BUFFER,
    expected=None,
):
    """DALI loader over a shard set folder (its *.tar shards, tokens.npz and vocab.json).

    train: shuffle + augment (crop, jitter, flip); else stored order, resize only.
    device_id None: CPU only (decode on the CPU, batches in host memory); an int: that
    GPU (nvJPEG decode, batches on it). shard_id/num_shards default to the
    torch.distributed rank and world size. Without drop_last each rank ends an epoch on
    a partial batch, and ranks may differ by one batch (the trainer joins uneven inputs);
    with drop_last every rank yields the same number of full batches. expected: {shard file
    name: samples}, the manifest's (make_loader passes them): the counts lost samples are
    measured against (None: each shard's index count). CapgenError when no sample can be read."""
    if shard_id is None or num_shards is None:
        shard_id, num_shards = dist_info()
    tokens_path = tokens or os.path.join(shard_dir, "tokens.npz")
    table = TokenTable.load(tokens_path)
    scan = ShardScan(shard_tars(shard_dir), table, expected)
    if not scan.tars:
        for shard, (n, total, cause) in scan.lost.items():
            warn_lost(shard, n, total, cause)
        raise CapgenError(f"{shard_dir}: no sample can be read; see the warnings above")
    vocab = Vocabulary.load(os.path.join(os.path.dirname(tokens_path), "vocab.json"))
    gpu = device_id is not None
    pipe = caption_pipeline(
        scan.tars,
        scan.idxs,
        image_size,
        train,
        shard_id,
        num_shards,
        seed,
        shuffle_buffer,
        gpu,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed + shard_id,
        prefetch_queue_depth=prefetch,
    )
    pipe.build()
    device = torch.device("cuda", device_id) if gpu else torch.device("cpu")
    return DALILoader(pipe, table, vocab, device, drop_last, scan, reports=shard_id == 0)
