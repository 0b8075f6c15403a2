"""DALI index files for WebDataset shards (what DALI's wds2idx writes, in Python).

Format v1.2, one line per sample, components in tar order:

    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> <ext> <data_offset> <size> <member_name> ...

With the index, `fn.readers.webdataset` starts without scanning the tars, and the
member name reaches the pipeline as the sample's source_info ("tar:offset:name"):
that is how the image id (the sample key) travels to the trainer.
"""

import os
import tarfile

from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError
from pipeline.shards.shardset import shard_paths

VERSION = "v1.2"


def index_path(tar_path):
    """NAME-000000.tar -> NAME-000000.idx"""
    return os.path.splitext(tar_path)[0] + ".idx"


def split_name(name):
    """'dir/123.seg.png' -> ('dir/123', 'seg.png'): the extension starts at the first dot
    of the base name, as webdataset and DALI split it."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def read_members(tar_path):
    """[(name, data_offset, size)] of the regular files of a tar, in tar order."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]
    except (tarfile.TarError, OSError) as err:
        raise CapgenError(f"{tar_path}: not a readable tar ({err})") from None


def group_samples(tar_path, members):
    """[[(ext, data_offset, size, name), ...] per sample] from a tar's members
    [(name, data_offset, size)]: consecutive members of one key make a sample."""
    samples, last = [], None
    for name, offset, size in members:
        key, ext = split_name(name)
        if not key or key.endswith("/"):  # hidden files: DALI skips them too
            continue
        if any(c.isspace() for c in name):
            raise CapgenError(f"{tar_path}: member name {name!r} has white space")
        if key != last:
            samples.append([])
            last = key
        samples[-1].append((ext, offset, size, name))
    if not samples:
        raise CapgenError(f"{tar_path}: no samples in shard")
    return samples


def read_samples(tar_path):
    """[[(ext, data_offset, size, name), ...] per sample] for the regular files of a tar."""
    return group_samples(tar_path, read_members(tar_path))


def write_index(tar_path, idx_path=None, members=None):
    """Write the index of one shard (atomically); returns its path. members: the tar's
    regular files [(name, data_offset, size)] where its writer knows them (else the tar is read)."""
    idx_path = idx_path or index_path(tar_path)
    samples = group_samples(tar_path, read_members(tar_path) if members is None else members)
    with atomic_write(idx_path, "w") as f:
        f.write(f"{VERSION} {len(samples)}\n")
        for sample in samples:
            f.write(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) + "\n")
    return idx_path


def is_current(tar_path, idx_path):
    """An index is current when it is newer than its tar and in this format."""
    try:
        if os.path.getmtime(idx_path) < os.path.getmtime(tar_path):
            return False
        with open(idx_path) as f:
            return f.readline().split(" ")[0] == VERSION
    except OSError:
        return False


def shard_tars(shard_dir):
    """The set's shards (those its manifest names, else every *.tar), at least one."""
    tars = shard_paths(os.fspath(shard_dir))
    if not tars:
        raise CapgenError(f"{shard_dir}: no .tar shards in folder")
    return tars


def index_shards(shard_dir, force=False):
    """Index every shard of a shard set folder; returns [(tar, idx, written)]."""
    out = []
    for tar in shard_tars(shard_dir):
        idx = index_path(tar)
        written = force or not is_current(tar, idx)
        if written:
            write_index(tar, idx)
        out.append((tar, idx, written))
    return out
