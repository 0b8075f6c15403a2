"""`capgen features verify`: read every block of a feature cache, check its fletcher32
checksums (HDF5 checks them on read) and that its values are finite; a cache written
before checksums is checked for finite values and shapes only ("no checksums")."""

from __future__ import annotations

import os

import h5py
import numpy as np
from tqdm import tqdm

from pipeline.loading.features import DamagedBlock, FeatureFile, describe_damage, read_block

NON_FINITE = "non-finite values"


def verify_cache(path: str | os.PathLike, progress: bool = False) -> dict:
    """Read every chunk-sized block of the cache at `path`: {"path", "samples" (checked),
    "damaged" (samples), "ranges" ([start, stop, cause]: a checksum mismatch or a broken
    chunk loses the block, non-finite values their rows), "checksums" (bool)}.
    A file that is no readable cache (missing, not HDF5, wrong shapes) is a CapgenError."""
    cache = FeatureFile(path)
    n, ranges = len(cache), []
    bar = tqdm(total=n, unit="img", desc="verify", disable=None if progress else True, dynamic_ncols=True, leave=False)
    with h5py.File(cache.path, "r") as f:
        features = f["features"]
        for start in range(0, n, cache.chunk):
            stop = min(start + cache.chunk, n)
            try:
                block = read_block(cache.path, features, start, stop)
            except DamagedBlock as err:
                ranges.append(err.range)
            else:
                ranges += _non_finite(block, start)
            bar.update(stop - start)
    bar.close()
    return {
        "path": cache.path,
        "samples": n,
        "damaged": sum(stop - start for start, stop, _ in ranges),
        "ranges": ranges,
        "checksums": cache.checksums,
    }


def _non_finite(block, start):
    """Runs of rows of `block` (row 0 is `start`) holding a non-finite value, as ranges."""
    bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
    ranges, row = [], 0
    while row < len(bad):
        if bad[row]:
            end = row
            while end < len(bad) and bad[end]:
                end += 1
            ranges.append((start + row, start + end, NON_FINITE))
            row = end
        row += 1
    return ranges


def verify_line(result: dict) -> str:
    """The report line of one cache: 'F: N samples checked, D damaged (rows ...)' and what was
    checked ('fletcher32 checksums', or 'no checksums: finite values and shapes only')."""
    checked = "fletcher32 checksums" if result["checksums"] else "no checksums: finite values and shapes only"
    damage = f" ({describe_damage(result['ranges'])})" if result["ranges"] else ""
    return f"{result['path']}: {result['samples']} samples checked, {result['damaged']} damaged{damage} [{checked}]"


def damage_line(result: dict) -> str:
    """The error line of a damaged cache: 'F: D of N samples damaged (rows ...)'."""
    damage = describe_damage(result["ranges"])
    return f"{result['path']}: {result['damaged']} of {result['samples']} samples damaged ({damage})"
