"""The CPU datasets: a shard set (webdataset) or a feature cache (HDF5) -> batches;
pipeline/loading/loader.py wraps them in a DataLoader, or picks DALI's (pipeline/loading/dali.py).

The batch contract, the same from every loader: a dict of
  image_ids [B] int64        the images' COCO ids (their sample keys)
  tokens    [B, K, T] int64  the token table's K captions of each image, padded with 0;
                             for an image the loader mirrored (DALI's training flips),
                             "left" and "right" are already swapped
  lengths   [B, K] int64     tokens per caption, <start> and <end> included
and, from a shard set,
  images    [B, 3, H, W] uint8     RGB pixels, channels_last in memory; the model
                                   normalises them (model/nets/encoder.py's normalise)
or, from a feature cache,
  features  [B, P, C] float16      the encoder's features.
CPU loaders yield host tensors, DALI's are on its device. Every loader has set_epoch,
num_samples() and len() (samples and batches this rank sees this epoch), batch_size and
source (its DataSource).

Tokens come from the token table beside the shards, never from the JSON. The CPU
loaders' order is a pure function of (seed, epoch, rank, worker), so a resumed run sees
the same batches as an uninterrupted one, and every sample comes once per epoch: the
shard (or chunk block) order is permuted with the epoch's seed, split by rank then by
worker, and shuffled within the worker. DALI draws each epoch's order from its own
running RNG (its set_epoch does nothing): a DALI-fed run does not resume bit-exactly.

Lost samples. Corrupt data is caught where it is read: a shard that cannot be opened or
parsed (bad tar header, truncated, empty, deleted) is skipped by webdataset's error
handler, a sample whose JPEG does not decode is dropped, an HDF5 block that cannot be
read (a block whose fletcher32 checksum fails, pipeline/loading/features.py) is skipped,
block by block. Each dataset counts, per shard (or cache), the samples it delivered
against the manifest's count and, when its pass ends, yields one extra item
{REPORT: {"read", "expected", "lost": {shard: [samples lost, expected, cause]}}} (when
made with report=True, as make_loader does), a side channel that travels through the
DataLoader's workers like a batch; Loader (pipeline/loading/loader.py) takes it out of
the stream (its consumers only ever see batches), warns once per damaged shard (a cache: once
per pass, however many workers read it) and sums
the counts in `lost()`. DALI's loader finds the damage before its pipeline is built
(pipeline/loading/dali_scan.py), reads only the readable samples, and gives the same
warnings and `lost()` at the end of each pass (on the rank with shard_id 0, for the whole
set). The caller decides what share is too much (the trainer's --max-lost, `features
extract`'s).
"""

import io
import os
import random
from itertools import islice

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.errors import CapgenError, first_line, warn
from pipeline.loading.features import DamagedBlock, FeatureFile, describe_damage, read_block
from pipeline.text import TokenTable

REPORT = "_lost_report"  # the side-channel item (see the docstring); never part of a batch


def stream_seed(seed, *keys):
    """One 63-bit seed from (seed, epoch, rank, worker, ...)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint64)[0] >> 1)


def _worker():
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _tensors(table, image_ids):
    tokens, lengths = table.rows(image_ids)
    return (
        torch.from_numpy(np.asarray(image_ids, np.int64)),
        torch.from_numpy(tokens.astype(np.int64)),
        torch.from_numpy(lengths.astype(np.int64)),
    )


# ---------------------------------------------------------------- shards


def _report(expected, read, causes):
    """The side-channel item: expected/read {shard: samples}, causes {shard: first error}."""
    lost = {
        u: [n - read.get(u, 0), n, causes.get(u) or causes.get(None) or "samples missing"]
        for u, n in expected.items()
        if read.get(u, 0) < n
    }
    return {REPORT: {"read": sum(read.values()), "expected": sum(expected.values()), "lost": lost}}


def warn_lost(shard, lost, expected, cause):
    """The one warning for a shard (or cache) that lost samples in a pass, from every loader."""
    warn(f"{shard}: {lost} of {expected} samples lost ({cause})")


def decode_jpeg(data):
    """JPEG bytes -> uint8 [H, W, 3] RGB."""
    try:
        import simplejpeg

        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (ImportError, ValueError):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class ShardBatches(IterableDataset):
    """webdataset over the shard files -> batches of decoded images and their tokens."""

    def __init__(
        self,
        urls,
        tokens_path,
        batch_size,
        shuffle=True,
        seed=0,
        rank=0,
        world=1,
        buffer=1000,
        drop_last=False,
        expected=None,
        report=False,
    ):
        self.urls, self.tokens_path, self.batch_size = list(urls), tokens_path, batch_size
        self.expected = expected or {}  # shard file name -> samples (the manifest's)
        self.report = report  # end the pass with the REPORT item (Loader takes it out)
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.buffer, self.drop_last, self.epoch = buffer, drop_last, 0
        self._table = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def epoch_urls(self):
        """All shards in this epoch's order (before the rank/worker split)."""
        if not self.shuffle:
            return list(self.urls)
        order = np.random.default_rng(stream_seed(self.seed, self.epoch)).permutation(len(self.urls))
        return [self.urls[i] for i in order]

    def _samples(self, causes):
        import webdataset as wds

        worker, workers = _worker()
        rank, world = self.rank, self.world
        urls = set(self.epoch_urls())

        def handler(err):  # a shard that cannot be read: note why, go on with the next
            url = next((a for a in getattr(err, "args", ()) if isinstance(a, str) and a in urls), None)
            causes.setdefault(url, first_line(err))
            return True

        dataset = wds.WebDataset(
            self.epoch_urls(),
            shardshuffle=False,  # shard order is permuted above, by (seed, epoch)
            nodesplitter=lambda src: islice(src, rank, None, world),
            workersplitter=lambda src: islice(src, worker, None, workers),
            empty_check=False,  # fewer shards than ranks x workers is fine
            handler=handler,
        )
        if self.shuffle:
            rng = random.Random(stream_seed(self.seed, self.epoch, rank, worker))
            dataset = dataset.shuffle(self.buffer, initial=self.buffer, rng=rng)
        return dataset

    def __iter__(self):
        if self._table is None:
            self._table = TokenTable.load(self.tokens_path)
        worker, workers = _worker()
        mine = self.epoch_urls()[self.rank :: self.world][worker::workers]
        ids, images, read, causes = [], [], {}, {}
        for sample in self._samples(causes):
            url = sample.get("__url__")
            try:
                image_id = int(sample["__key__"].rsplit("/", 1)[-1])
                pixels = decode_jpeg(sample["jpg"])
                if images and pixels.shape != images[0].shape:
                    raise ValueError(f"decoded to {pixels.shape}, not {images[0].shape}")
                self._table.rows([image_id])
            except (KeyError, ValueError, OSError, SyntaxError, CapgenError) as err:
                causes.setdefault(url, f"sample {sample.get('__key__')!r}: {first_line(err)}")
                continue
            read[url] = read.get(url, 0) + 1
            ids.append(image_id)
            images.append(pixels)
            if len(ids) == self.batch_size:
                yield self._batch(ids, images)
                ids, images = [], []
        if ids and not self.drop_last:
            yield self._batch(ids, images)
        if self.report:
            yield _report({u: self.expected.get(os.path.basename(u), 0) for u in mine}, read, causes)

    def _batch(self, ids, images):
        image_ids, tokens, lengths = _tensors(self._table, ids)
        # [B, H, W, 3] -> [B, 3, H, W] view: channels_last in memory, as the GPU likes it.
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        return {"image_ids": image_ids, "tokens": tokens, "lengths": lengths, "images": pixels}


# ---------------------------------------------------------------- features


class FeatureBatches(IterableDataset):
    """HDF5 features -> batches. Chunk-sized blocks are permuted, split by rank and
    worker, read a few blocks at a time (contiguous reads) and shuffled within."""

    def __init__(
        self,
        path,
        tokens_path,
        batch_size,
        shuffle=True,
        seed=0,
        rank=0,
        world=1,
        blocks_per_read=4,
        drop_last=False,
        block=None,
        report=False,
    ):
        cache = FeatureFile(path)
        self.path, self.tokens_path, self.batch_size = cache.path, tokens_path, batch_size
        self.n, self.block = len(cache), block or cache.chunk
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.blocks_per_read, self.drop_last, self.epoch = blocks_per_read, drop_last, 0
        self.report = report
        self._table = None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def epoch_blocks(self):
        starts = np.arange(0, self.n, self.block)
        if self.shuffle:
            starts = np.random.default_rng(stream_seed(self.seed, self.epoch)).permutation(starts)
        return starts.tolist()

    def local_blocks(self, worker=0, workers=1):
        return self.epoch_blocks()[self.rank :: self.world][worker::workers]

    def __iter__(self):
        import h5py

        if self._table is None:
            self._table = TokenTable.load(self.tokens_path)
        worker, workers = _worker()
        blocks = self.local_blocks(worker, workers)
        rng = np.random.default_rng(stream_seed(self.seed, self.epoch, self.rank, worker))
        with h5py.File(self.path, "r") as f:  # opened here: one handle per worker process
            features, all_ids = f["features"], f["image_ids"]
            pending_ids, pending, read, damaged = np.zeros(0, np.int64), None, 0, []
            for g in range(0, len(blocks), self.blocks_per_read):
                parts = self._read_blocks(features, all_ids, sorted(blocks[g : g + self.blocks_per_read]), damaged)
                if not parts:
                    continue
                feats, ids = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                read += len(ids)
                if self.shuffle:
                    order = rng.permutation(len(ids))
                    feats, ids = feats[order], ids[order]
                if pending is not None:
                    feats, ids = np.concatenate([pending, feats]), np.concatenate([pending_ids, ids])
                full = len(ids) // self.batch_size * self.batch_size
                for s in range(0, full, self.batch_size):
                    yield self._batch(ids[s : s + self.batch_size], feats[s : s + self.batch_size])
                pending_ids, pending = ids[full:], feats[full:]
            if len(pending_ids) and not self.drop_last:
                yield self._batch(pending_ids, pending)
        if self.report:
            expected = sum(min(self.block, self.n - s) for s in blocks)
            yield _report({self.path: expected}, {self.path: read}, {self.path: describe_damage(sorted(damaged))})

    def _read_blocks(self, features, all_ids, starts, damaged):
        """[(features, ids)] of the blocks at `starts` that read; a damaged block (a checksum
        mismatch, a broken chunk) is left out and its (start, stop, cause) added to `damaged`."""
        parts = []
        for s in starts:
            stop = min(s + self.block, self.n)
            try:
                parts.append((read_block(self.path, features, s, stop), read_block(self.path, all_ids, s, stop)))
            except DamagedBlock as err:
                damaged.append(err.range)
        return parts

    def _batch(self, ids, feats):
        image_ids, tokens, lengths = _tensors(self._table, ids)
        return {
            "image_ids": image_ids,
            "tokens": tokens,
            "lengths": lengths,
            "features": torch.from_numpy(np.ascontiguousarray(feats)),
        }
