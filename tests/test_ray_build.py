"""`capgen shards build --ray` on a real Ray cluster on this machine, bound to 127.0.0.1: the
same bytes as a single-machine build, a resumed build, and a worker killed mid-shard."""

import errno
import glob
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.cluster.ray_tasks import LOOPBACK_ENV, NEEDS_RAY, local_cluster
from pipeline.synth.generator import synthesize
from tools.serve.process import capgen_command, free_port

RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not RAY, reason="Ray is not installed (pip install 'capgen[ray]')")
ENV = {**os.environ, **LOOPBACK_ENV, "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray head on 127.0.0.1 for this module's tests; its address."""
    if not RAY:
        pytest.skip("Ray is not installed (pip install 'capgen[ray]')")
    with local_cluster(2, free_port(), free_port()) as address:
        yield address


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """30 synthetic images (shards of 4: 8 shards) and the set one machine builds from them."""
    root = tmp_path_factory.mktemp("ray_data")
    synthesize(str(root / "data"), 30, seed=3, val_fraction=0.0, width=64, height=48, workers=1)
    single = str(root / "single")
    status, out, err = build(root / "data", single, "--workers", "1")
    assert status == 0, err
    return {"root": str(root / "data"), "single": single}


def build(root, out, *extra, wait=True):
    cmd = capgen_command() + ["shards", "build", "--coco-root", str(root), "--split", "train2014", "--out", str(out)]
    cmd += ["--shard-size", "4", "--min-freq", "1", "--quiet", *extra]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def hashes(folder):
    """{relative path: sha256} of every file in a set folder but its lock (which holds the builder's pid)."""
    found = {}
    for path in glob.glob(os.path.join(folder, "**"), recursive=True) + glob.glob(os.path.join(folder, ".parts", "*")):
        if os.path.isfile(path) and os.path.basename(path) != ".lock":
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_the_cluster_listens_on_loopback_only(cluster):
    # A driver of its own, as a build's is: with LOOPBACK_ENV, set before Ray is imported.
    code = (
        "import json, sys; from pipeline.cluster.ray_tasks import connected\n"
        "with connected(sys.argv[1]) as ray:\n"
        "    print(json.dumps([(n['NodeManagerAddress'], n['Resources']['CPU']) for n in ray.nodes() if n['Alive']]))"
    )
    r = subprocess.run([sys.executable, "-c", code, cluster], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == [["127.0.0.1", 2.0]]


def test_ray_build_is_the_single_machine_set_and_resumes(cluster, data, tmp_path):
    out = tmp_path / "ray"
    status, stdout, err = build(data["root"], out, "--ray", cluster)
    assert status == 0, err
    assert f"{out}: 30 images, 151 captions in 8 shards (8 built, 0 kept)" in stdout
    reference = hashes(data["single"])
    assert len(reference) == 8 + 8 + 8 + 5  # shards, DALI indexes, part records; manifests, skipped, text files
    assert hashes(out) == reference
    os.remove(sorted(out.glob("*.tar"))[3])
    status, stdout, err = build(data["root"], out, "--ray", cluster)
    assert status == 0, err
    assert "(1 built, 7 kept)" in stdout
    assert hashes(out) == reference


def readers(path, deadline=None):
    """Pids of the other processes holding path open; with a deadline, waits for one (a reader
    woken from open() holds its descriptor only once it runs)."""
    while deadline is not None and not readers(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = []
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == path and int(fd.split("/")[2]) != os.getpid():
                pids.append(int(fd.split("/")[2]))
        except OSError:
            continue  # gone meanwhile
    return pids


def open_writer(path, proc, deadline):
    """A write end of the FIFO at path once a reader has opened it; None when the build ended first."""
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            assert err.errno == errno.ENXIO  # no reader yet
            time.sleep(0.05)
    return None


def feed(path, image, proc, deadline):
    """Give every reader of the FIFO at path the image's bytes until the build ends; their pids."""
    fed = []
    while (fd := open_writer(path, proc, deadline)) is not None:
        pids = readers(path, deadline)
        os.set_blocking(fd, True)
        os.write(fd, image)
        os.close(fd)
        fed += pids
        while set(pids) & set(readers(path)) and time.monotonic() < deadline:
            time.sleep(0.05)  # it read to the end: the next reader is another try
    return fed


def test_a_worker_killed_mid_shard_is_retried(cluster, data, tmp_path):
    # One image is a FIFO: its shard's task blocks reading it; that worker is killed there (SIGKILL);
    # Ray runs the task again on another worker, which is then fed the image's bytes.
    path = os.path.join(data["root"], "train2014", sorted(os.listdir(os.path.join(data["root"], "train2014")))[9])
    with open(path, "rb") as f:
        image = f.read()
    os.remove(path)
    os.mkfifo(path)
    out = tmp_path / "killed"
    proc = build(data["root"], out, "--ray", cluster, wait=False)
    try:
        deadline = time.monotonic() + 120
        fd = open_writer(path, proc, deadline)
        (victim,) = readers(path, deadline)
        os.kill(victim, signal.SIGKILL)
        os.close(fd)
        fed = feed(path, image, proc, deadline)
        stdout, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        os.remove(path)
        with open(path, "wb") as f:
            f.write(image)
    assert proc.returncode == 0, err
    assert fed and victim not in fed
    assert f"{out}: 30 images, 151 captions in 8 shards (8 built, 0 kept)" in stdout
    assert hashes(out) == hashes(data["single"])


@needs_ray
@pytest.mark.parametrize(
    "extra, line",
    [
        (
            ["--ray", "--num-jobs", "2"],
            "{out}: --ray runs the whole build (one task per shard); it takes no --num-jobs",
        ),
        (["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: no Ray cluster listens there (Connection refused)"),
    ],
)
def test_bad_ray_options_are_one_line(data, tmp_path, extra, line):
    status, stdout, err = build(data["root"], tmp_path / "set", *extra)
    assert (status, err) == (1, "capgen: error: " + line.format(out=tmp_path / "set") + "\n")


def test_ray_takes_no_workers(data, tmp_path):
    status, stdout, err = build(data["root"], tmp_path / "set", "--ray", "--workers", "2")
    assert status == 2
    assert err.endswith("Error: --ray runs one task per shard on the cluster's CPUs; it takes no --workers\n")


def test_ray_missing_is_one_line(data, tmp_path):
    # What a plain install (no Ray) answers: the module made unimportable in the CLI's process.
    code = "import sys; sys.modules['ray'] = None; from tools.cli.main import main; main()"
    args = ["shards", "build", "--coco-root", data["root"], "--split", "train2014", "--out", str(tmp_path), "--ray"]
    r = subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (1, f"capgen: error: {NEEDS_RAY}\n")
    assert not os.path.exists(tmp_path / ".parts")


@needs_ray
def test_bench_shards_ray_json():
    code = "from tools.cli.main import main; main()"
    args = ["bench", "shards", "--ray", "--quick", "--images", "8", "--json"]
    r = subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout.splitlines()[-1])
    assert (figures["images"], figures["rounds"], figures["shard_size"]) == (8, 1, 1)
    for how in ("ray", "local"):
        assert [b["workers"] for b in figures[how]] == [1, 2]
        assert all(b["images_per_s"] > 0 for b in figures[how])
