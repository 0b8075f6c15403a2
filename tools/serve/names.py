"""How the page and the JSON API name what the server reads: never a path on the server's disk.

A checkpoint, feature cache or shard set is named by its last path component (`run/best` ->
`best`, `/data/demo/shards/val` -> `val`): the name it was given, whatever folder the server was
started in. A name relative to the start folder would say more, but a server started as a
service in `/` or in the home folder would then show nearly the whole path. An image of a set
keeps the name its shards record (`sub/0001.jpg`, set-relative) unless that name is absolute:
then its last component.
"""

import os


def public_name(path: str | os.PathLike) -> str:
    """The name the page shows for a checkpoint, export folder, cache or shard set: its last path component."""
    return os.path.basename(os.path.normpath(os.fspath(path))) or "(unnamed)"


def image_name(file_name: str | None) -> str | None:
    """An image's name as its shard records it when set-relative; an absolute one cut to its last component."""
    if file_name is None or not os.path.isabs(file_name):
        return file_name
    return public_name(file_name)
