"""RUN/args.json: a run's fully resolved options, the versions it ran on and the
identity of its data, so that `capgen train --config RUN/args.json` reruns it.

Layout: {"format", "args": every TrainArgs field, "versions": {capgen, torch,
torchvision, dali, python}, "sources": {"train": ..., "val": ...}}. A shard set
is named by its manifest's sha256 (which holds every shard's sha256), a feature
cache by its attributes, shape and size plus its shard set's manifest sha256
(hashing gigabytes of features at every start would cost minutes).
"""

import importlib.metadata
import json
import os
import platform
from dataclasses import asdict, fields

from model.runs.schema import Bool, Int, Num, Obj, Opt, Str, check, read_json
from model.train.args import TrainArgs
from pipeline.atomic import atomic_write
from pipeline.errors import CapgenError
from pipeline.loading.source import DataSource
from pipeline.shards.shardset import file_sha256

FORMAT = "capgen-run-args/1"
PATH_FIELDS = ("train", "val", "out")  # stored absolute: a rerun may start elsewhere


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions():
    """Versions of what a run depends on (None: not installed); DALI under any of its CUDA names."""
    dali = next(
        (
            d.version
            for d in importlib.metadata.distributions()
            if (d.metadata["Name"] or "").lower().startswith("nvidia-dali")
        ),
        None,
    )
    return {
        "capgen": _version("capgen"),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "dali": dali,
        "python": platform.python_version(),
    }


def _manifest_identity(shard_dir):
    path = os.path.join(shard_dir, "manifest.json")
    return {
        "shard_set": os.path.abspath(shard_dir),
        "manifest_sha256": file_sha256(path) if os.path.isfile(path) else None,
    }


def source_identity(source):
    """What names a DataSource's data: see the module docstring."""
    if source.kind == "images":
        return {"kind": "images", "samples": int(source.num_samples), **_manifest_identity(source.path)}
    return {
        "kind": "features",
        "path": os.path.abspath(source.path),
        "bytes": os.path.getsize(source.path),
        "shape": list(source.cache.shape),
        "attrs": {k: v for k, v in source.cache.attrs.items()},
        **_manifest_identity(source.shard_set),
    }


def run_record(args, train_src, val_src):
    values = asdict(args)
    values.update({k: os.path.abspath(values[k]) for k in PATH_FIELDS})
    return {
        "format": FORMAT,
        "args": values,
        "versions": versions(),
        "sources": {"train": source_identity(train_src), "val": source_identity(val_src)},
    }


def write_run_args(args: TrainArgs, train_src: DataSource, val_src: DataSource) -> str:
    """Write RUN/args.json (RUN: args.out) atomically: every TrainArgs field (paths made
    absolute), the versions and the identity of the train and val data (see the module
    docstring); returns its path. The trainer's rank 0 writes it at every start."""
    path = os.path.join(args.out, "args.json")
    with atomic_write(path, "w") as f:
        json.dump(run_record(args, train_src, val_src), f, indent=1, default=_plain)
        f.write("\n")
    return path


def _plain(value):
    """numpy scalars and arrays from HDF5 attributes, as JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _field_spec(f):
    """The schema of one TrainArgs field, from its type (and its choices)."""
    meta = f.metadata.get("cli") or {}
    optional = type(None) in getattr(f.type, "__args__", ())
    base = next(t for t in (bool, int, float, str) if t is f.type or t in getattr(f.type, "__args__", ()))
    spec = {bool: Bool(), int: Int(), float: Num(finite=False), str: Str(meta.get("choices"))}[base]
    return Opt(spec) if optional else spec


RECORD = Obj(
    {
        "args": Obj(
            {f.name: _field_spec(f) for f in fields(TrainArgs)},
            optional=[f.name for f in fields(TrainArgs)],  # an older args.json: the defaults
            closed="unknown option (written by another capgen version?)",
        ),
    }
)


def read_run_args(path: str | os.PathLike) -> dict:
    """{TrainArgs field: value} from an args.json that write_run_args wrote (`capgen train
    --config`), each value of its field's type (RECORD); a missing file, bad JSON, another
    format, an option this capgen does not know or a value of the wrong type is a one-line
    CapgenError naming the file and the field (ranges are TrainArgs's to check, after the
    command line's options go on top)."""
    record = read_json(path, "a capgen args.json")
    if record.get("format") != FORMAT:
        raise CapgenError(f"{path}: not a capgen args.json (format {FORMAT})")
    return check(path, record, RECORD)["args"]
