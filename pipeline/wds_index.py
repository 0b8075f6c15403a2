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
from pipeline.shardset import shard_paths

VERSION = "v1.2"


def index_path(tar_path):
    """NAME-000000.tar -> NAME-000000.idx"""
    return os.path.splitext(tar_path)[0] + ".idx"


def split_name(name):
    """'dir/123.seg.png' -> ('dir/123', 'seg.png'): the extension starts at the first dot
    of the base name, as webdataset and DALI split it."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


def read_samples(tar_path):
    """[[(ext, data_offset, size, name), ...] per sample] for the regular files of a tar."""
    samples, last = [], None
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = split_name(member.name)
                if not key or key.endswith("/"):  # hidden files: DALI skips them too
                    continue
                if any(c.isspace() for c in member.name):
                    raise CapgenError(f"{tar_path}: member name {member.name!r} has white space")
                if key != last:
                    samples.append([])
                    last = key
                samples[-1].append((ext, member.offset_data, member.size, member.name))
    except (tarfile.TarError, OSError) as err:
        raise CapgenError(f"{tar_path}: not a readable tar ({err})") from None
    if not samples:
        raise CapgenError(f"{tar_path}: no samples in shard")
    return samples


def write_index(tar_path, idx_path=None):
    """Write the index of one shard (atomically); returns its path."""
    idx_path = idx_path or index_path(tar_path)
    samples = read_samples(tar_path)
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
