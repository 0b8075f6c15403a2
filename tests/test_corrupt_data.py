"""Corrupt shards caught where they are read (loader, training, features extract), and disk full."""

import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

from pipeline.errors import first_line
from pipeline.loading.loader import make_loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = "train2014-000001.tar"  # the second of 4 shards of 6 samples


@pytest.fixture(scope="module")
def shard_set(tiny_shards):
    return tiny_shards(
        images=30, seed=11, width=48, height=40, val_fraction=0.2, image_size=32, shard_size=6, preset="coco"
    )


def members_from(path, sample):
    """Byte offset of the header of the first member of sample number `sample` (0-based)."""
    with tarfile.open(path) as tar:
        keys = []
        for m in tar:
            key = m.name.split(".", 1)[0]
            if key not in keys:
                keys.append(key)
                if len(keys) == sample + 1:
                    return m.offset
    raise AssertionError("too few samples")


def flip_header(path):
    with open(path, "r+b") as f:
        f.seek(100)  # inside the first header's mode field: the checksum fails
        f.write(b"\xff")


def truncate_after_3(path):
    with open(path, "r+b") as f:
        f.truncate(members_from(path, 3))


def bad_jpeg(path):
    """The first sample's JPEG replaced by bytes that do not decode."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    first_jpg = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for m, data in members:
            if m.name == first_jpg:
                data = b"\xff\xd8\xff\xe0 not a jpeg at all"
                m.size = len(data)
            out.addfile(m, io.BytesIO(data))


CORRUPTIONS = {
    "flipped header byte": (flip_header, 6),
    "truncated at a member boundary": (truncate_after_3, 3),
    "flipped JPEG bytes": (bad_jpeg, 1),
    "empty": (lambda p: open(p, "wb").close(), 6),
    "deleted": (os.unlink, 6),
}


def corrupt_copy(shard_set, tmp_path, kind):
    out = tmp_path / "set"
    shutil.copytree(shard_set, out)
    CORRUPTIONS[kind][0](str(out / SHARD))
    return str(out)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_loader_names_the_shard_and_counts_the_lost(shard_set, tmp_path, capsys, kind, workers):
    folder = corrupt_copy(shard_set, tmp_path, kind)
    loader = make_loader(folder, 4, shuffle=False, workers=workers, loader="cpu")
    batches = list(loader)
    lost = CORRUPTIONS[kind][1]
    assert sum(len(b["image_ids"]) for b in batches) == 24 - lost
    assert all(set(b) == {"image_ids", "tokens", "lengths", "images"} for b in batches)
    assert loader.lost() == (lost, 24)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("capgen: warning:")]
    assert len(warning) == 1 and warning[0].startswith(f"capgen: warning: {folder}/{SHARD}: {lost} of 6 samples lost (")


def capgen(args, cwd, fsize=None):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit if fsize else None,
    )


TRAIN = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--embed-dim",
    "8",
    "--attention-dim",
    "8",
    "--hidden-dim",
    "8",
    "--encoder",
    "resnet18",
    "--encoder-stop",
    "layer3",
    "--encoder-weights",
    "none",
    "--workers",
    "1",
    "--loader",
    "cpu",
    "--log-every",
    "2",
]


def test_training_on_a_corrupt_shard(shard_set, tiny_shards, tmp_path):
    val = tiny_shards(
        images=30,
        seed=11,
        width=48,
        height=40,
        val_fraction=0.2,
        image_size=32,
        shard_size=6,
        preset="coco",
        split="val2014",
    )
    folder = corrupt_copy(shard_set, tmp_path, "flipped header byte")
    base = ["train", "--train", folder, "--val", val, *TRAIN]
    p = capgen([*base, "--out", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1] == (
        f"capgen: error: {folder}: 6 of 24 samples could not be read this epoch "
        "(more than --max-lost 0.01); see the warnings above"
    )
    p = capgen([*base, "--out", str(tmp_path / "run2"), "--max-lost", "0.3"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"capgen: warning: {folder}/{SHARD}: 6 of 6 samples lost" in p.stderr


def test_features_extract_on_a_corrupt_shard_and_a_full_disk(shard_set, tmp_path):
    folder = corrupt_copy(shard_set, tmp_path, "truncated at a member boundary")
    out = tmp_path / "f.h5"
    extract = [
        "features",
        "extract",
        "--shards",
        folder,
        "--out",
        str(out),
        "--encoder",
        "resnet18",
        "--encoder-stop",
        "layer3",
        "--encoder-weights",
        "none",
        "--batch-size",
        "8",
        "--workers",
        "0",
    ]
    p = capgen(extract, tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1] == (
        f"capgen: error: {folder}: 3 of 24 samples could not be read "
        "(more than --max-lost 0.01); see the warnings above"
    )
    assert os.listdir(tmp_path).count("f.h5") == 0 and not os.path.exists(f"{out}.tmp")
    # Disk full (a 1 MB file size limit): one line naming the file, no temp file left.
    p = capgen([*extract, "--max-lost", "0.2"], tmp_path, fsize=1 << 20)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.splitlines()[-1] == f"capgen: error: {out}: cannot write the feature cache (File too large)"
    assert not os.path.exists(f"{out}.tmp") and not os.path.exists(out)
    p = capgen([*extract, "--max-lost", "0.2"], tmp_path)
    assert p.returncode == 0 and p.stdout.startswith(f"{out}: 21 images"), p.stderr[-2000:]


def test_checkpoint_on_a_full_disk(shard_set, tiny_shards, tmp_path):
    val = tiny_shards(
        images=30,
        seed=11,
        width=48,
        height=40,
        val_fraction=0.2,
        image_size=32,
        shard_size=6,
        preset="coco",
        split="val2014",
    )
    run = tmp_path / "run"
    base = ["train", "--train", shard_set, "--val", val, *TRAIN, "--out", str(run)]
    p = capgen(base, tmp_path, fsize=200_000)  # the log fits, the encoder's weights do not
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.splitlines()[-1] == f"capgen: error: {run}/best: cannot write checkpoint (File too large)"
    assert sorted(os.listdir(run)) == [".lock", "args.json", "log.jsonl", "tb"]  # no checkpoint debris
    p = capgen(base, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert {"best", "last"} <= set(os.listdir(run))


def test_first_line_of_an_error():
    """pipeline/errors.py's first_line, the one way an exception becomes a one-line cause."""
    h5py_text = (
        "Can't write data (file write failed: time = Mon, errno = 27, error message = 'File too large', buf = 0x1)"
    )
    assert first_line(OSError(27, h5py_text)) == "File too large"
    assert first_line(PermissionError(13, "Permission denied", "x.jpg")) == "Permission denied"
    assert first_line(OSError("cannot read", "shard.tar")) == "cannot read"  # webdataset appends the url
    assert (
        first_line(RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch"))
        == "Error(s) in loading state_dict:"
    )
    assert first_line(KeyError("image")) == "image"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert first_line(ValueError("x" * 300)) == "x" * 200 and first_line(ValueError("x" * 300), limit=5) == "xxxxx"
