"""The one place a loader is chosen (make_loader), and Loader: a DataLoader over one of
pipeline/loading/batches.py's datasets that takes their lost-sample reports out of the stream.

The batch contract and the lost-sample side channel are pipeline/loading/batches.py's docstring.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from pipeline.errors import CapgenError
from pipeline.loading.batches import REPORT, FeatureBatches, ShardBatches, warn_lost
from pipeline.loading.source import DataSource

LOADERS = ("auto", "cpu", "dali")
MAX_LOST = 0.01  # the share of a pass's samples that may be lost by default (--max-lost)


class Loader:
    """A DataLoader over one of the datasets above, with set_epoch and an approximate len."""

    def __init__(
        self,
        source: DataSource,
        dataset: FeatureBatches | ShardBatches,
        batch_size: int,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        """`dataset` (made for `source`) in `workers` processes; make_loader builds one."""
        self.source, self.dataset, self.batch_size = source, dataset, batch_size
        kw = {}
        if workers > 0:
            kw = {"prefetch_factor": 4, "persistent_workers": False}
            if "fork" in torch.multiprocessing.get_all_start_methods():
                kw["multiprocessing_context"] = "fork"  # workers start in milliseconds
        self.loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory, **kw)
        self.workers = workers
        self.read = self.expected = 0
        self.lost_shards, self._cache_causes = {}, []

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass reads (its shuffle order)."""
        self.dataset.set_epoch(epoch)

    def lost(self) -> tuple[int, int]:
        """(samples lost, samples expected) by the passes that ended since the last __iter__."""
        return self.expected - self.read, self.expected

    def _take(self, report):
        self.read += report["read"]
        self.expected += report["expected"]
        for shard, (lost, expected, cause) in report["lost"].items():
            if self.source.kind == "features":  # one file split over workers: warned once, at the pass's end
                self._cache_causes.append(cause)
                continue
            self.lost_shards[shard] = lost
            warn_lost(shard, lost, expected, cause)

    def _cache_warning(self):
        """A feature cache's one warning of a pass: its lost samples of all it holds, every cause."""
        if self._cache_causes:
            lost, expected = self.lost()
            self.lost_shards[self.source.path] = lost
            warn_lost(self.source.path, lost, expected, "; ".join(self._cache_causes))

    def _counts(self):
        d, workers = self.dataset, max(self.workers, 1)
        return [
            self.source.local_samples(d.rank, d.world, d.shuffle, d.seed, d.epoch, w, workers) for w in range(workers)
        ]

    def num_samples(self) -> int:
        """Samples this rank sees this epoch."""
        return sum(self._counts())

    def __len__(self) -> int:
        """Batches this rank sees this epoch (each worker may end on a partial batch)."""
        rnd = math.floor if self.dataset.drop_last else math.ceil
        return sum(rnd(n / self.batch_size) for n in self._counts())

    def __iter__(self) -> Iterator[dict]:
        """The batches of one pass (pipeline/loading/batches.py's contract); the lost-sample
        reports go to lost() and to warnings on stderr."""
        self.read = self.expected = 0
        self.lost_shards, self._cache_causes = {}, []
        for item in self.loader:
            if REPORT in item:
                self._take(item[REPORT])
            else:
                yield item
        self._cache_warning()


def check_lost(name: str, lost: int, expected: int, max_lost: float, when: str = "") -> None:
    """Refuse a pass over `name` that lost more than `max_lost` (a share) of its `expected`
    samples, or every one: CapgenError '<name>: L of E samples could not be read<when> ...'.
    lost, expected: Loader.lost()'s counts (summed over ranks by a distributed caller)."""
    if lost and (lost / max(expected, 1) > max_lost or lost >= expected):
        raise CapgenError(
            f"{name}: {lost} of {expected} samples could not be read{when} "
            f"(more than --max-lost {max_lost:g}); see the warnings above"
        )


def make_loader(
    source: str | os.PathLike | DataSource,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
    loader: str = "cpu",
    tokens: str | None = None,
    drop_last: bool = False,
):
    """The one place a loader is chosen. source: a path or a DataSource.

    loader: cpu (webdataset / h5py), dali (pipeline/loading/dali.py, GPU decode), or auto
    (dali for shard sets when it is installed and a GPU is present, else cpu).
    """
    if loader not in LOADERS:
        raise CapgenError(f"{source}: unknown loader {loader!r} (expected one of {', '.join(LOADERS)})")
    src = source if isinstance(source, DataSource) else DataSource(source, tokens)
    if src.kind == "images" and loader in ("dali", "auto"):
        dali_loader = _dali_loader(src, batch_size, shuffle, seed, rank, world, workers, drop_last, loader)
        if dali_loader is not None:
            return dali_loader
    if src.kind == "features":
        dataset = FeatureBatches(
            src.path, src.tokens_path, batch_size, shuffle, seed, rank, world, drop_last=drop_last, report=True
        )
    else:
        dataset = ShardBatches(
            src.urls,
            src.tokens_path,
            batch_size,
            shuffle,
            seed,
            rank,
            world,
            drop_last=drop_last,
            expected=src.shard_samples,
            report=True,
        )
    return Loader(src, dataset, batch_size, workers, pin_memory)


def _dali_loader(src, batch_size, shuffle, seed, rank, world, workers, drop_last, loader):
    """pipeline/loading/dali.py's loader over shard set `src`, or None where loader "auto"
    finds no GPU or no DALI (a CapgenError where "dali" was asked for and is not installed)."""
    gpu = torch.cuda.is_available()
    # Imported only when it will run: once loaded, DALI's libraries slow torch's CPU
    # kernels (a convnet training step: 32 ms -> 42 ms measured on this 2-core machine).
    dali = _dali() if gpu or loader == "dali" else None
    if dali is None:
        if loader == "dali":
            raise CapgenError(f"{src.path}: the DALI loader needs nvidia-dali (pip install nvidia-dali-cuda130)")
        return None
    # no GPU: DALI's CPU-mode graph, slow but the same
    dali_loader = dali.make_dali_loader(
        src.path,
        batch_size,
        image_size=int(src.image_size),
        train=shuffle,
        device_id=torch.cuda.current_device() if gpu else None,
        num_threads=max(workers, 2),
        seed=seed,
        shard_id=rank,
        num_shards=world,
        tokens=src.tokens_path,
        drop_last=drop_last,
        expected=src.shard_samples,
    )
    dali_loader.source = src
    return dali_loader


def _dali():
    try:
        from pipeline.loading import dali
    except ImportError:
        return None
    return dali
