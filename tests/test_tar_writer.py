"""The shard tar writer: tarfile's USTAR bytes, its own hash, length and member offsets."""

import hashlib
import io
import tarfile

import pytest

from pipeline.shards.tar_writer import RECORD, TarWriter

MTIME = 1_400_000_000


def with_tarfile(members):
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return f.getvalue()


def with_writer(members):
    f = io.BytesIO()
    tar = TarWriter(f, MTIME)
    for name, data in members:
        tar.add(name, data)
    tar.close()
    return f.getvalue(), tar


@pytest.mark.parametrize(
    "sizes", [[], [0], [512], [513], [0, 1, 511, 512, 513, 20_000, 3], [511] * 7, [100] * 9, [1000] * 40]
)
def test_same_bytes_hash_length_and_offsets_as_tarfile(sizes):
    # Before the end padding: 1024 bytes ([]), 8192 (7 x 511), 10240 (9 x 100: none), 62464 (40 x 1000).
    members = [(f"{123456 + i}.{'jpg' if i % 2 else 'json'}", bytes([i % 256]) * n) for i, n in enumerate(sizes)]
    if sizes:
        members[0] = ("x" * 100, members[0][1])  # a name that fills its field
    data, tar = with_writer(members)
    assert data == with_tarfile(members) and len(data) % RECORD == 0
    assert tar.sha256.hexdigest() == hashlib.sha256(data).hexdigest() and tar.bytes == len(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as read:
        assert tar.members == [(m.name, m.offset_data, m.size) for m in read]
        assert [read.extractfile(m).read() for m in read] == [d for _, d in members]


@pytest.mark.parametrize("name", ["x" * 101, "", "caf\u00e9.jpg", "a b.jpg", "a\tb.json", "a\n.jpg", "a\0.jpg"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="tar member name"):
        TarWriter(io.BytesIO(), MTIME).add(name, b"x")
