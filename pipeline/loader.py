"""Loaders: a shard set or a feature cache -> batches. The CPU loaders live here;
make_loader picks them or DALI's (pipeline/dali.py).

The batch contract, the same from every loader: a dict of
  image_ids [B] int64        the images' COCO ids (their sample keys)
  tokens    [B, K, T] int64  the token table's K captions of each image, padded with 0;
                             for an image the loader mirrored (DALI's training flips),
                             "left" and "right" are already swapped
  lengths   [B, K] int64     tokens per caption, <start> and <end> included
and, from a shard set,
  images    [B, 3, H, W] uint8     RGB pixels, channels_last in memory; the model
                                   normalises them (model/encoder.py's normalise)
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
read is skipped. Each dataset counts, per shard (or cache), the samples it delivered
against the manifest's count and, when its pass ends, yields one extra item
{REPORT: {"read", "expected", "lost": {shard: [samples lost, expected, cause]}}} (when
made with report=True, as make_loader does), a side channel that travels through the DataLoader's workers like a batch; Loader takes it out
of the stream (its consumers only ever see batches), warns once per damaged shard and
sums the counts in `lost()`. The caller decides what share is too much (the trainer's
--max-lost, `features extract`'s).
"""
import io
import math
import os
import random
import sys
from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import CapgenError
from pipeline.features import FeatureFile
from pipeline.shardset import read_captions, read_manifest, shard_paths
from pipeline.text import TokenTable, Vocabulary

LOADERS = ("auto", "cpu", "dali")
REPORT = "_lost_report"   # the side-channel item (see the docstring); never part of a batch


def is_feature_cache(path):
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in (".h5", ".hdf5")


def stream_seed(seed, *keys):
    """One 63-bit seed from (seed, epoch, rank, worker, ...)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint64)[0] >> 1)


def _worker():
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _tensors(table, image_ids):
    tokens, lengths = table.rows(image_ids)
    return (torch.from_numpy(np.asarray(image_ids, np.int64)),
            torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64)))


# ---------------------------------------------------------------- shards

def _report(expected, read, causes):
    """The side-channel item: expected/read {shard: samples}, causes {shard: first error}."""
    lost = {u: [n - read.get(u, 0), n, causes.get(u) or causes.get(None) or "samples missing"]
            for u, n in expected.items() if read.get(u, 0) < n}
    return {REPORT: {"read": sum(read.values()), "expected": sum(expected.values()), "lost": lost}}


def _first_line(err):
    text = str(err.args[0] if getattr(err, "args", None) else err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


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

    def __init__(self, urls, tokens_path, batch_size, shuffle=True, seed=0, rank=0, world=1,
                 buffer=1000, drop_last=False, expected=None, report=False):
        self.urls, self.tokens_path, self.batch_size = list(urls), tokens_path, batch_size
        self.expected = expected or {}  # shard file name -> samples (the manifest's)
        self.report = report            # end the pass with the REPORT item (Loader takes it out)
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
            causes.setdefault(url, _first_line(err))
            return True

        dataset = wds.WebDataset(
            self.epoch_urls(),
            shardshuffle=False,  # shard order is permuted above, by (seed, epoch)
            nodesplitter=lambda src: islice(src, rank, None, world),
            workersplitter=lambda src: islice(src, worker, None, workers),
            empty_check=False,   # fewer shards than ranks x workers is fine
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
        mine = self.epoch_urls()[self.rank::self.world][worker::workers]
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
                causes.setdefault(url, f"sample {sample.get('__key__')!r}: {_first_line(err)}")
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

    def __init__(self, path, tokens_path, batch_size, shuffle=True, seed=0, rank=0, world=1,
                 blocks_per_read=4, drop_last=False, block=None, report=False):
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
        return self.epoch_blocks()[self.rank::self.world][worker::workers]

    def __iter__(self):
        import h5py

        if self._table is None:
            self._table = TokenTable.load(self.tokens_path)
        worker, workers = _worker()
        blocks = self.local_blocks(worker, workers)
        rng = np.random.default_rng(stream_seed(self.seed, self.epoch, self.rank, worker))
        with h5py.File(self.path, "r") as f:  # opened here: one handle per worker process
            features, all_ids = f["features"], f["image_ids"]
            pending_ids, pending, read, causes = np.zeros(0, np.int64), None, 0, {}
            for g in range(0, len(blocks), self.blocks_per_read):
                group = sorted(blocks[g:g + self.blocks_per_read])
                try:
                    feats = np.concatenate([features[s:s + self.block] for s in group])
                    ids = np.concatenate([all_ids[s:s + self.block] for s in group])
                except (OSError, ValueError) as err:  # a corrupt chunk: these blocks are lost
                    causes.setdefault(self.path, f"rows {group[0]}+: {_first_line(err)}")
                    continue
                read += len(ids)
                if self.shuffle:
                    order = rng.permutation(len(ids))
                    feats, ids = feats[order], ids[order]
                if pending is not None:
                    feats, ids = np.concatenate([pending, feats]), np.concatenate([pending_ids, ids])
                full = len(ids) // self.batch_size * self.batch_size
                for s in range(0, full, self.batch_size):
                    yield self._batch(ids[s:s + self.batch_size], feats[s:s + self.batch_size])
                pending_ids, pending = ids[full:], feats[full:]
            if len(pending_ids) and not self.drop_last:
                yield self._batch(pending_ids, pending)
        if self.report:
            expected = sum(min(self.block, self.n - s) for s in blocks)
            yield _report({self.path: expected}, {self.path: read}, causes)

    def _batch(self, ids, feats):
        image_ids, tokens, lengths = _tensors(self._table, ids)
        return {"image_ids": image_ids, "tokens": tokens, "lengths": lengths,
                "features": torch.from_numpy(np.ascontiguousarray(feats))}


# ---------------------------------------------------------------- sources

class DataSource:
    """What a trainer or evaluator needs to know about a data source (shard set or cache)."""

    def __init__(self, path, tokens=None):
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

    def vocab(self):
        return Vocabulary.load(os.path.join(os.path.dirname(self.tokens_path), "vocab.json"))

    def references(self):
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


class Loader:
    """A DataLoader over one of the datasets above, with set_epoch and an approximate len."""

    def __init__(self, source, dataset, batch_size, workers=0, pin_memory=False):
        self.source, self.dataset, self.batch_size = source, dataset, batch_size
        kw = {}
        if workers > 0:
            kw = {"prefetch_factor": 4, "persistent_workers": False}
            if "fork" in torch.multiprocessing.get_all_start_methods():
                kw["multiprocessing_context"] = "fork"  # workers start in milliseconds
        self.loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                                 pin_memory=pin_memory, **kw)
        self.workers = workers
        self.read = self.expected = 0
        self.lost_shards = {}

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def lost(self):
        """(samples lost, samples expected) by the passes that ended since the last __iter__."""
        return self.expected - self.read, self.expected

    def _take(self, report):
        self.read += report["read"]
        self.expected += report["expected"]
        for shard, (lost, expected, cause) in report["lost"].items():
            self.lost_shards[shard] = lost
            print(f"capgen: warning: {shard}: {lost} of {expected} samples lost ({cause})", file=sys.stderr)

    def _counts(self):
        d, workers = self.dataset, max(self.workers, 1)
        return [self.source.local_samples(d.rank, d.world, d.shuffle, d.seed, d.epoch, w, workers)
                for w in range(workers)]

    def num_samples(self):
        """Samples this rank sees this epoch."""
        return sum(self._counts())

    def __len__(self):
        """Batches this rank sees this epoch (each worker may end on a partial batch)."""
        rnd = math.floor if self.dataset.drop_last else math.ceil
        return sum(rnd(n / self.batch_size) for n in self._counts())

    def __iter__(self):
        self.read = self.expected = 0
        self.lost_shards = {}
        for item in self.loader:
            if REPORT in item:
                self._take(item[REPORT])
            else:
                yield item


def make_loader(source, batch_size, *, shuffle=True, seed=0, rank=0, world=1, workers=0,
                pin_memory=False, loader="cpu", tokens=None, drop_last=False):
    """The one place a loader is chosen. source: a path or a DataSource.

    loader: cpu (webdataset / h5py), dali (pipeline/dali.py, GPU decode), or auto
    (dali for shard sets when it is installed and a GPU is present, else cpu).
    """
    if loader not in LOADERS:
        raise CapgenError(f"{source}: unknown loader {loader!r} (expected one of {', '.join(LOADERS)})")
    src = source if isinstance(source, DataSource) else DataSource(source, tokens)
    if src.kind == "images" and loader in ("dali", "auto"):
        gpu = torch.cuda.is_available()
        # Imported only when it will run: once loaded, DALI's libraries slow torch's CPU
        # kernels (a convnet training step: 32 ms -> 42 ms measured on this 2-core machine).
        dali = _dali() if gpu or loader == "dali" else None
        if dali is not None:  # no GPU: DALI's CPU-mode graph, slow but the same
            dali_loader = dali.make_dali_loader(
                src.path, batch_size, image_size=int(src.image_size), train=shuffle,
                device_id=torch.cuda.current_device() if gpu else None, num_threads=max(workers, 2),
                seed=seed, shard_id=rank, num_shards=world, tokens=src.tokens_path, drop_last=drop_last)
            dali_loader.source = src
            return dali_loader
        if loader == "dali":
            raise CapgenError(f"{src.path}: the DALI loader needs nvidia-dali (pip install nvidia-dali-cuda130)")
    if src.kind == "features":
        dataset = FeatureBatches(src.path, src.tokens_path, batch_size, shuffle, seed, rank, world,
                                 drop_last=drop_last, report=True)
    else:
        dataset = ShardBatches(src.urls, src.tokens_path, batch_size, shuffle, seed, rank, world,
                               drop_last=drop_last, expected=src.shard_samples, report=True)
    return Loader(src, dataset, batch_size, workers, pin_memory)


def _dali():
    try:
        from pipeline import dali
    except ImportError:
        return None
    return dali

