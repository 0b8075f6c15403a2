"""DALI index files: what DALI's own wds2idx writes, rewritten only when stale; `capgen shards index`."""

import io
import os
import tarfile

import pytest
from click.testing import CliRunner

from pipeline.errors import CapgenError
from pipeline.shards.wds_index import index_path, index_shards, write_index
from tools.cli.main import cli


def add(tar, name, data=b"", kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_shard(path, keys):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "sub", kind=tarfile.DIRTYPE)
        add(tar, ".hidden", b"x")
        for k in keys:
            add(tar, f"{k}.jpg", b"\xff\xd8" + bytes(100 + k % 7))
            add(tar, f"{k}.json", b'{"image_id": %d}' % k)
        add(tar, "sub/9.seg.png", b"png")  # a key with a folder, an extension with a dot


def test_index_matches_dali_wds2idx(tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    tar = str(tmp_path / "set-000000.tar")
    make_shard(tar, [5, 17, 123456])
    assert write_index(tar) == str(tmp_path / "set-000000.idx")
    lines = open(index_path(tar)).read().splitlines()
    assert lines[0] == "v1.2 4" and lines[1].startswith("jpg ") and lines[1].endswith(" 5.json")
    assert lines[4].split()[::4] == ["seg.png"] and lines[4].split()[3] == "sub/9.seg.png"
    with wds2idx.IndexCreator(tar, str(tmp_path / "ref.idx"), verbose=False) as ic:
        ic.create_index()
    assert open(index_path(tar)).read() == open(tmp_path / "ref.idx").read()


def test_index_shards_rewrites_only_stale(tmp_path):
    tars = [str(tmp_path / f"set-{k:06d}.tar") for k in range(2)]
    for k, t in enumerate(tars):
        make_shard(t, [k + 1])
    assert index_shards(tmp_path) == [(t, index_path(t), True) for t in tars]
    assert [w for _, _, w in index_shards(tmp_path)] == [False, False]
    old = os.path.getmtime(index_path(tars[0]))
    os.utime(tars[1], (old + 10, old + 10))  # shard rebuilt after its index
    assert [w for _, _, w in index_shards(tmp_path)] == [False, True]
    assert [w for _, _, w in index_shards(tmp_path, force=True)] == [True, True]


def test_cli_and_errors(tmp_path):
    make_shard(str(tmp_path / "set-000000.tar"), [3])
    r = CliRunner().invoke(cli, ["shards", "index", str(tmp_path)])
    assert r.exit_code == 0 and r.output == f"{tmp_path}: 1 shards, 1 index files written, 0 current\n"
    (tmp_path / "set-000001.tar").write_bytes(b"junk")
    with pytest.raises(CapgenError, match="set-000001.tar: not a readable tar"):
        index_shards(tmp_path)
    with pytest.raises(CapgenError, match="no .tar shards"):
        index_shards(tmp_path / "none")
