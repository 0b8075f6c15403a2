"""Random access to single samples of a shard set: one image's JPEG or json by image id.

The member offset map is built once from the tar headers (what a DALI index
holds, pipeline/shards/wds_index.py read_samples); a read is then one seek and one
read in the shard file, without scanning the tar.
"""

import json
import os

from pipeline.errors import CapgenError
from pipeline.shards.shardset import shard_paths
from pipeline.shards.wds_index import read_samples, split_name


class ShardMembers:
    """image id -> {ext: (tar path, data offset, size)} for every sample of a shard set."""

    def __init__(self, shard_dir):
        self.shard_dir = os.fspath(shard_dir)
        self.members = {}
        for tar in shard_paths(self.shard_dir):
            for sample in read_samples(tar):
                key = split_name(sample[0][3])[0].rsplit("/", 1)[-1]
                if key.isdigit():
                    self.members[int(key)] = {ext: (tar, offset, size) for ext, offset, size, _ in sample}

    def __len__(self):
        return len(self.members)

    def __contains__(self, image_id):
        return int(image_id) in self.members

    def read(self, image_id, ext="jpg"):
        """The bytes of one component of one sample; CapgenError when it is not in the set."""
        found = self.members.get(int(image_id), {}).get(ext)
        if found is None:
            raise CapgenError(f"{self.shard_dir}: no {ext} for image id {image_id}")
        path, offset, size = found
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as err:
            raise CapgenError(f"{path}: cannot read ({err.strerror or err})") from None
        if len(data) != size:
            raise CapgenError(f"{path}: truncated at image id {image_id}")
        return data

    def file_names(self):
        """image id -> the source file name its json component records (those that have one)."""
        names = {}
        for image_id in self.members:
            try:
                meta = json.loads(self.read(image_id, "json"))
            except (CapgenError, ValueError):
                continue
            if isinstance(meta, dict) and isinstance(meta.get("file_name"), str):
                names[image_id] = meta["file_name"]
        return names
