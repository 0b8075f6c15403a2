"""Feature caches carry fletcher32 checksums: a flipped byte inside a chunk is found by
`capgen features verify`, counted as lost by eval and training (and refused past --max-lost),
and NaN features (a valid checksum over bad values) are named as corrupt input."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from model.eval.evaluate import caption_source
from pipeline.errors import CapgenError
from pipeline.loading.features import FeatureFile, FeatureWriter
from pipeline.loading.loader import make_loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def capgen(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def cache80(tiny_shards, tmp_path_factory):
    """A cache of 80 synthetic images (resnet18 to layer3, random init, 32 px) that
    `features extract` wrote: two chunks, rows 0-63 and 64-79."""
    shards = tiny_shards(
        images=80, seed=21, width=48, height=40, image_size=32, shard_size=40, preset="coco", split="train2014"
    )
    out = str(tmp_path_factory.mktemp("cache80") / "clean.h5")
    extract = ["features", "extract", "--shards", shards, "--out", out, "--encoder", "resnet18"]
    p = capgen([*extract, "--encoder-stop", "layer3", "--encoder-weights", "none", "--workers", "0", "--quiet"], ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def damaged_copy(clean, name, chunk=1):
    """A copy of `clean` beside it with one bit flipped in each of 16 bytes of features chunk
    `chunk`, inside its 9th row (the rows past the end of the last chunk are zeros, and
    fletcher32 cannot tell 0x0000 from 0xFFFF)."""
    path = os.path.join(os.path.dirname(clean), name)
    shutil.copyfile(clean, path)
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(chunk)
        offset = info.byte_offset + 8 * f["features"][0].nbytes + 100
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(16)
        f.seek(offset)
        f.write(bytes(b ^ 0x10 for b in data))
    return path


def nan_copy(clean, name, row=3):
    """A copy of `clean` with NaN written into one row through HDF5 (its checksum is valid)."""
    path = os.path.join(os.path.dirname(clean), name)
    shutil.copyfile(clean, path)
    with h5py.File(path, "r+") as f:
        f["features"][row] = np.nan
    return path


def test_extract_writes_checksums_and_verify_finds_the_flipped_chunk(cache80):
    with h5py.File(cache80, "r") as f:
        assert f["features"].fletcher32 and f["image_ids"].fletcher32 and f["features"].chunks[0] == 64
    bad = damaged_copy(cache80, "flipped.h5")
    p = capgen(["features", "verify", cache80, bad], ROOT)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stdout.splitlines() == [
        f"{cache80}: 80 samples checked, 0 damaged [fletcher32 checksums]",
        f"{bad}: 80 samples checked, 16 damaged (rows 64-79: checksum mismatch) [fletcher32 checksums]",
    ]
    assert p.stderr.splitlines() == [f"capgen: error: {bad}: 16 of 80 samples damaged (rows 64-79: checksum mismatch)"]
    p = capgen(["features", "verify", "--quiet", cache80], ROOT)
    assert (p.returncode, p.stderr) == (0, "")


def test_verify_names_nan_rows_an_old_cache_and_a_missing_file(cache80, tmp_path):
    nan = nan_copy(cache80, "nan.h5", row=3)
    cache = FeatureFile(cache80)
    old = os.path.join(os.path.dirname(cache80), "old.h5")  # beside it: the same relative shard_set
    attrs = {k: v for k, v in cache.attrs.items() if k != "format"}
    w = FeatureWriter(old, len(cache), cache.positions, cache.channels, attrs, checksums=False)
    w.write(cache.image_ids, cache.read(0, len(cache)))
    w.close()
    missing = str(tmp_path / "missing.h5")
    p = capgen(["features", "verify", old, nan, missing], ROOT)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stdout.splitlines() == [
        f"{old}: 80 samples checked, 0 damaged [no checksums: finite values and shapes only]",
        f"{nan}: 80 samples checked, 1 damaged (rows 3-3: non-finite values) [fletcher32 checksums]",
    ]
    assert p.stderr.splitlines() == [
        f"capgen: error: {nan}: 1 of 80 samples damaged (rows 3-3: non-finite values)",
        f"capgen: error: {missing}: feature cache not found",
    ]
    # An old cache (no checksums) still reads, through the loader too.
    assert not FeatureFile(old).checksums
    loader = make_loader(old, 32, shuffle=False)
    assert sum(len(b["image_ids"]) for b in loader) == 80 and loader.lost() == (0, 80)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_counts_a_damaged_chunk_as_lost(cache80, workers, capfd):
    bad = damaged_copy(cache80, f"loader{workers}.h5")
    loader = make_loader(bad, 16, shuffle=True, seed=1, workers=workers)
    ids = [i for b in loader for i in b["image_ids"].tolist()]
    assert sorted(ids) == sorted(FeatureFile(cache80).image_ids[:64].tolist())
    assert loader.lost() == (16, 80) and loader.lost_shards == {bad: 16}
    # One warning for the file, of all its samples, whichever worker read the block.
    assert capfd.readouterr().err.splitlines() == [
        f"capgen: warning: {bad}: 16 of 80 samples lost (rows 64-79: checksum mismatch)"
    ]


def test_eval_counts_the_damaged_chunk_and_refuses_past_max_lost(cache80, tiny_trained_checkpoint, tmp_path, capsys):
    bad = damaged_copy(cache80, "eval.h5")
    warning = f"capgen: warning: {bad}: 16 of 80 samples lost (rows 64-79: checksum mismatch)"
    out = str(tmp_path / "r.json")
    p = capgen(["eval", "--checkpoint", tiny_trained_checkpoint, "--data", bad, "--out", out, "--beam", "1"], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-2:] == [
        warning,
        f"capgen: error: {bad}: 16 of 80 samples could not be read (more than --max-lost 0.01); see the warnings above",
    ]
    assert not os.path.exists(out)
    # Within --max-lost: the 64 readable images are captioned, the warning said once.
    captions, _, _ = caption_source(tiny_trained_checkpoint, bad, beam=1, device="cpu", max_lost=0.25)
    assert sorted(captions) == sorted(FeatureFile(cache80).image_ids[:64].tolist())
    assert capsys.readouterr().err.splitlines() == [warning]


TRAIN = ["--epochs", "1", "--batch-size", "16", "--embed-dim", "8", "--attention-dim", "8", "--hidden-dim", "8"]
TRAIN += ["--workers", "0", "--log-every", "2", "--val-images", "4"]


def test_training_counts_the_damaged_chunk_and_refuses_past_max_lost(cache80, tmp_path):
    bad = damaged_copy(cache80, "train.h5")
    base = ["train", "--train", bad, "--val", cache80, *TRAIN]
    p = capgen([*base, "--out", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    warning = f"capgen: warning: {bad}: 16 of 80 samples lost (rows 64-79: checksum mismatch)"
    assert warning in p.stderr  # printed as the pass ends (on the epoch's bar until bars end their line first)
    assert p.stderr.splitlines()[-1] == (
        f"capgen: error: {bad}: 16 of 80 samples could not be read this epoch (more than --max-lost 0.01); "
        "see the warnings above"
    )
    p = capgen([*base, "--out", str(tmp_path / "run2"), "--max-lost", "0.25"], tmp_path)
    assert p.returncode == 0 and p.stderr.count(warning) == 1, p.stderr[-2000:]


def test_nan_features_are_corrupt_input_not_a_learning_rate(cache80, tiny_trained_checkpoint, tmp_path):
    nan = nan_copy(cache80, "nan-train.h5", row=3)
    p = capgen(["train", "--train", nan, "--val", cache80, *TRAIN, "--out", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "decoder-lr" not in p.stderr
    assert p.stderr.splitlines()[-1] == (
        f"capgen: error: {nan}: corrupt input: non-finite features reached the model by epoch 1, step 4 "
        f"(`capgen features verify {nan}` names the damaged rows); the last good checkpoints are kept"
    )
    with pytest.raises(CapgenError) as err:
        caption_source(tiny_trained_checkpoint, nan, beam=1, device="cpu")
    assert str(err.value) == (
        f"{nan}: corrupt input: non-finite features reached the model "
        f"(`capgen features verify {nan}` names the damaged rows)"
    )


def test_scst_on_nan_features_is_corrupt_input(train_val, tiny_trained_checkpoint, tmp_path):
    from model.train.args import TrainArgs
    from model.train.loop import train

    nan = nan_copy(train_val["train_h5"], "nan-scst.h5", row=0)
    args = TrainArgs(
        train=nan,
        val=train_val["val_h5"],
        out=str(tmp_path / "run"),
        scst=True,
        init=tiny_trained_checkpoint,
        scst_samples=2,
        epochs=1,
        batch_size=8,
        val_images=1,
        workers=0,
        progress=False,
    )
    with pytest.raises(CapgenError) as err:  # not torch.multinomial's RuntimeError on NaN probabilities
        train(args)
    assert str(err.value) == (
        f"{nan}: corrupt input: non-finite features reached the model "
        f"(`capgen features verify {nan}` names the damaged rows)"
    )


def test_reading_a_damaged_cache_whole_names_the_rows(cache80):
    bad = damaged_copy(cache80, "whole.h5")
    with pytest.raises(CapgenError) as err:  # retrieval and search read a cache whole
        FeatureFile(bad).read(0, 80)
    assert str(err.value) == f"{bad}: rows 64-79: checksum mismatch"
    assert FeatureFile(bad).read(0, 64).shape == (64, 4, 256)


def test_damaged_ids_or_non_finite_stats_are_one_line_errors(cache80):
    ids = os.path.join(os.path.dirname(cache80), "ids.h5")
    shutil.copyfile(cache80, ids)
    with h5py.File(ids, "r") as f:
        info = f["image_ids"].id.get_chunk_info(0)
    with open(ids, "r+b") as f:  # one bit of the first chunk's second id
        f.seek(info.byte_offset + 8)
        byte = f.read(1)[0]
        f.seek(info.byte_offset + 8)
        f.write(bytes([byte ^ 0x01]))
    stats = os.path.join(os.path.dirname(cache80), "stats.h5")
    shutil.copyfile(cache80, stats)
    with h5py.File(stats, "r+") as f:
        f["channel_std"][5] = np.inf
    p = capgen(["features", "verify", ids, stats], ROOT)
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stdout == ""
    assert p.stderr.splitlines() == [
        f"capgen: error: {ids}: image_ids: cannot read (checksum mismatch)",
        f"capgen: error: {stats}: channel_std holds non-finite values",
    ]


def test_search_on_nan_features_is_corrupt_input(train_val, tiny_trained_checkpoint):
    from model.retrieval.source import load_index

    nan = nan_copy(train_val["val_h5"], "nan-search.h5", row=2)
    with pytest.raises(CapgenError) as err:
        load_index(tiny_trained_checkpoint, nan, device="cpu", progress=False)
    assert str(err.value) == (
        f"{nan}: corrupt input: non-finite features reached the model "
        f"(`capgen features verify {nan}` names the damaged rows)"
    )
