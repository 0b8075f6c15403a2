"""`capgen shards build --urls`: URL lists (TSV, CSV, JSONL, parquet) downloaded from a real
loopback HTTP server (tools/loopback_images.py) that also answers with every fault."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cli_in_process import capgen

from pipeline.download.options import DownloadOptions
from pipeline.download.ordered import fetch_in_order
from pipeline.shards.make import build_shards
from pipeline.shards.shardset import file_sha256, read_manifest, verify
from pipeline.sources.url_list import read_url_list
from pipeline.synth.generator import synthesize
from tools.loopback_images import LoopbackImages

CAPGEN = [sys.executable, "-c", "from tools.cli.main import main; main()"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = DownloadOptions(concurrency=16, timeout=1.0, connect_timeout=1.0, retries=1, backoff=0.05, max_bytes=2_000_000)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(image folder, file name -> captions) of 12 synthetic images (`capgen synth`)."""
    root = tmp_path_factory.mktemp("urls") / "data"
    synthesize(str(root), 12, seed=5, val_fraction=0.0, width=64, height=48, workers=1)
    with open(root / "annotations" / "captions_train2014.json") as f:
        ann = json.load(f)
    names = {i["id"]: i["file_name"] for i in ann["images"]}
    captions = {}
    for a in ann["annotations"]:
        captions.setdefault(names[a["image_id"]], []).append(a["caption"])
    return str(root / "train2014"), captions


def closed_port_url():
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.jpg"


def write_tsv(path, rows):
    """Conceptual Captions' layout: caption<TAB>url, no header."""
    path.write_text("".join(f"{caption}\t{url}\n" for url, caption in rows))
    return str(path)


def good_rows(server, captions):
    return [(server.url(name), c) for name, caps in sorted(captions.items()) for c in caps]


def build(urls, out, download=FAST, **kw):
    kw = {"shard_size": 5, "workers": 1, "image_size": 32, "min_freq": 1, "name": "web", **kw}
    return build_shards(str(out), urls=urls, download=download, note=lambda line: None, **kw)


def samples(out):
    """image id -> (json meta, jpg bytes) of every shard of a set, in tar order."""
    found = {}
    for s in read_manifest(str(out))["shards"]:
        with tarfile.open(os.path.join(out, s["name"])) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                found.setdefault(int(key), {})[ext] = tar.extractfile(m).read()
    return {k: (json.loads(v["json"]), v["jpg"]) for k, v in found.items()}


def test_every_fault_counted_and_every_good_image_kept(images, tmp_path):
    folder, captions = images
    first = sorted(captions)[0]
    with LoopbackImages(folder, hang=5) as server:
        faults = server.faults(first)
        rows = good_rows(server, captions) + [(url, f"fault {k}") for k, (url, _) in faults.items()]
        rows.append((closed_port_url(), "nobody home"))
        r = build(write_tsv(tmp_path / "list.tsv", rows), tmp_path / "set")
    counts = r["manifest"]["counts"]
    expected = {reason: 0 for _, reason in faults.values() if reason != "ok"}
    for _, reason in faults.values():
        if reason != "ok":
            expected[reason] += 1
    expected["connection_error"] = 1
    assert counts["skipped"] == dict(sorted(expected.items()))
    assert counts["skipped"]["timeout"] == 2  # no answer, and a slow trickle
    assert counts["records"] == 12 + len(faults) + 1
    assert counts["images"] == 12 + 2  # 500-then-200 and the mislabeled image are kept
    got = {meta["file_name"]: meta["captions"] for meta, _ in samples(tmp_path / "set").values()}
    want = {server.url(n): c for n, c in captions.items()}
    want[faults["flaky"][0]] = ["fault flaky"]
    want[faults["mislabeled"][0]] = ["fault mislabeled"]
    assert got == want
    skipped = [line.split("\t") for line in (tmp_path / "set" / "skipped.txt").read_text().splitlines()]
    by_url = {url: reason for _, url, reason in skipped}
    assert by_url == {**{u: r for u, r in faults.values() if r != "ok"}, rows[-1][0]: "connection_error"}
    # 5xx and timeouts are retried once, a 404 is not; every request names capgen
    assert server.requests["/fault/500"] == 2 and server.requests["/fault/hang"] == 2
    assert server.requests["/fault/404"] == 1 and server.requests["/fault/flaky/" + first] == 2
    assert all("capgen" in agent for agent in server.user_agents)
    assert verify(str(tmp_path / "set")) == []


def test_same_bytes_whatever_the_concurrency(images, tmp_path):
    folder, captions = images
    first = sorted(captions)[0]
    with LoopbackImages(folder) as server:
        quick = {
            k: v for k, v in server.faults(first).items() if k in ("404", "html", "noai", "redirect_loop", "flaky")
        }
        urls = write_tsv(tmp_path / "list.tsv", good_rows(server, captions) + [(u, k) for k, (u, _) in quick.items()])
        one = build(urls, tmp_path / "one", DownloadOptions(concurrency=1, retries=1, backoff=0.01))
        many = build(urls, tmp_path / "many", DownloadOptions(concurrency=16, retries=1, backoff=0.01))
    shards = [s["name"] for s in one["manifest"]["shards"]]
    assert len(shards) == 4  # 17 records, 5 a shard: failures keep their place in the order
    assert one["manifest"]["shards"] == many["manifest"]["shards"]
    for name in shards:
        assert file_sha256(str(tmp_path / "one" / name)) == file_sha256(str(tmp_path / "many" / name))
    assert (tmp_path / "one" / "skipped.txt").read_text() == (tmp_path / "many" / "skipped.txt").read_text()


def test_at_most_per_host_requests_to_one_host_at_a_time(images):
    folder, captions = images
    with LoopbackImages(folder, latency=0.05) as server:
        urls = [server.url(name) for name in sorted(captions)]
        got = list(fetch_in_order(urls, DownloadOptions(concurrency=16, per_host=3)))
    assert got == [Path(folder, name).read_bytes() for name in sorted(captions)]
    assert server.most_in_flight == 3


def test_kill_and_resume_keeps_finished_shards(images, tmp_path):
    folder, captions = images
    with LoopbackImages(folder, latency=0.15) as server:
        urls = write_tsv(tmp_path / "list.tsv", good_rows(server, captions))
        ref = build(urls, tmp_path / "ref", shard_size=2)
        out = tmp_path / "out"
        cmd = CAPGEN + ["shards", "build", "--urls", urls, "--out", str(out), "--name", "web", "--shard-size", "2"]
        cmd += ["--image-size", "32", "--min-freq", "1", "--workers", "1", "--concurrency", "1", "--quiet"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not (out / ".parts" / "web-000000.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(re.search(r"\(\d+ built, (\d+) kept\)", done.stdout).group(1)) >= 1, done.stdout
    assert read_manifest(str(out))["shards"] == ref["manifest"]["shards"]
    assert not list(out.glob("*.tmp"))


ROWS = [  # (url, caption): one URL twice (two captions), one caption repeated
    ("http://example.org/a.jpg", "a red ball"),
    ("http://example.org/b.jpg", "a blue cat"),
    ("http://example.org/a.jpg", "a red ball on grass"),
    ("https://example.org/c.png?x=1", "a small dog"),
    ("https://example.org/c.png?x=1", "a small dog"),
]
WANT = {"http://example.org/a.jpg": ["a red ball", "a red ball on grass"]}
WANT.update({"http://example.org/b.jpg": ["a blue cat"], "https://example.org/c.png?x=1": ["a small dog"]})


def expected_id(url):
    """The documented id: the top 53 bits of the first 8 bytes of sha256(URL), as --captions' from a file name."""
    return int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big") >> 11


def list_files(tmp_path):
    """The same list as every format, each with its own malformed rows; -> {path: (options, set aside)}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = [("ftp://example.org/x.jpg", "bad scheme"), ("", "no url"), ("http://example.org/d.jpg", "")]
    cc3m = tmp_path / "cc3m.tsv"
    cc3m.write_text("".join(f"{c}\t{u}\n" for u, c in ROWS + bad[:1] + bad[2:]) + "three\tcells\there\n")
    cc12m = tmp_path / "cc12m.tsv"
    cc12m.write_text("".join(f"{u}\t{c}\n" for u, c in ROWS))
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("URL,TEXT\n" + "".join(f'{u},"{c}"\n' for u, c in ROWS + bad))
    jsonl = tmp_path / "list.jsonl"
    lines = [json.dumps({"url": u, "caption": c}) for u, c in ROWS[:3]] + ["{not json"]
    lines.append(json.dumps({"url": ROWS[3][0], "caption": [ROWS[3][1], ROWS[4][1]]}))
    jsonl.write_text("\n".join(lines) + "\n")
    parquet = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": [u for u, _ in ROWS], "TEXT": [c for _, c in ROWS]}), str(parquet))
    dup = {"duplicate_caption": 1}
    return {
        str(cc3m): ({}, {"bad_row": 1, "bad_url": 1, "duplicate_caption": 1, "empty_caption": 1}),
        str(cc12m): ({}, dup),
        str(csv_file): (
            {"url_column": "URL", "caption_column": "TEXT"},
            {**dup, "bad_url": 1, "empty_caption": 1, "no_url": 1},
        ),
        str(jsonl): ({}, {"bad_json": 1, **dup}),
        str(parquet): ({"url_column": "URL", "caption_column": "TEXT"}, dup),
    }


def test_every_list_format_reads_the_same_images(tmp_path):
    for path, (columns, set_aside) in list_files(tmp_path).items():
        source = read_url_list(path, **columns)
        got = {r.path: r.captions for r in source.records}
        want = dict(WANT)
        if "d.jpg" in open(path, "rb").read().decode("latin-1"):
            want["http://example.org/d.jpg"] = []  # its only caption was empty: the builder counts no_captions
        assert got == want, path
        assert [r.image_id for r in source.records] == sorted(expected_id(u) for u in want), path
        assert [r.file_name for r in source.records] == [r.path for r in source.records]
        assert source.dropped == set_aside, path


def test_bad_url_lists_are_one_line_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "list.txt").write_text("http://example.org/a.jpg\ta cat\n")
    (tmp_path / "nourl.csv").write_text("link,caption\nhttp://example.org/a.jpg,a cat\n")
    (tmp_path / "plain.tsv").write_text("a cat\tnot a url\n")
    (tmp_path / "allbad.tsv").write_text("x\thttp://example.org/b c.jpg\na cat\tftp://example.org/a.jpg\n1\t2\t3\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    cases = {
        "missing.tsv": "file not found",
        "list.txt": "unknown URL list type '.txt' (expected .tsv, .csv, .jsonl, .parquet)",
        "nourl.csv": "no column 'url' (columns: link, caption; choose one with --url-column)",
        "plain.tsv": "no column 'url' (columns: a cat, not a url; choose one with --url-column)",
        "allbad.tsv": "no usable URLs (bad_row 1, bad_url 2)",
    }
    for name, cause in cases.items():
        path = tmp_path / name
        status, out, err = capgen(["shards", "build", "--urls", path, "--out", tmp_path / "set"], capsys, monkeypatch)
        assert (status, err.splitlines()) == (1, [f"capgen: error: {path}: {cause}"]), name
    status, out, err = capgen(["shards", "build", "--urls", tmp_path / "broken.parquet"], capsys, monkeypatch)
    assert status == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"capgen: error: {tmp_path / 'broken.parquet'}: not a readable parquet file (")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    status, out, err = capgen(["shards", "build", "--urls", tmp_path / "broken.parquet"], capsys, monkeypatch)
    assert (status, err) == (
        1,
        f"capgen: error: {tmp_path / 'broken.parquet'}: reading parquet needs pyarrow (pip install 'capgen[urls]')\n",
    )
    args = ["shards", "build", "--urls", tmp_path / "plain.tsv", "--captions", tmp_path / "x.csv"]
    status, out, err = capgen(args, capsys, monkeypatch)
    assert status == 2 and "give --captions or --urls, not both" in err
    args = ["shards", "build", "--coco-root", tmp_path, "--split", "train2014", "--concurrency", "4"]
    status, out, err = capgen(args, capsys, monkeypatch)
    assert status == 2 and "--url-column and the download options need --urls" in err
