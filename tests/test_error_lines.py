"""Every warning and error starts a line of its own, even while a progress bar is drawn:
commands stopped mid-bar, run through the real CLI with their progress bars on (tqdm draws
them into a pipe too: the commands turn them off only with --quiet)."""

import os
import re

from test_corrupt_data import SHARD, TRAIN, capgen, corrupt_copy, shard_set  # noqa: F401 -- shard_set: the fixture

MARKS = ("capgen: error:", "capgen: warning:")


def marked_lines(p):
    """The stderr lines (split at \\n and at tqdm's \\r) that hold a warning or an error, after
    checking that the command failed with one line and no traceback, and that each of those
    lines starts with its mark: none continues a progress bar's line."""
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "it/s]" in p.stderr or "img/s]" in p.stderr  # a bar was drawn
    lines = [line for line in re.split(r"[\r\n]", p.stderr) if any(m in line for m in MARKS)]
    assert lines and all(line.startswith(MARKS) for line in lines), lines
    return lines


def test_training_past_max_lost_warns_mid_epoch_and_fails_on_lines_of_their_own(shard_set, train_val, tmp_path):  # noqa: F811
    folder = corrupt_copy(shard_set, tmp_path, "truncated at a member boundary")
    p = capgen(["train", "--train", folder, "--val", train_val["val"], *TRAIN, "--out", tmp_path / "run"], tmp_path)
    lost = f"capgen: warning: {folder}/{SHARD}: 3 of 6 samples lost (samples missing)"
    assert marked_lines(p) == [
        "capgen: warning: encoder resnet18: random init (weights='none'); its features carry no image "
        "knowledge: use weights='imagenet' or a weights file for real captions",  # a library warning: one line
        lost,  # the pass that measures the images' mean and std
        lost,  # the epoch's, with its bar drawn
        f"capgen: error: {folder}: 3 of 24 samples could not be read this epoch "
        "(more than --max-lost 0.01); see the warnings above",
    ]


def test_divergence_mid_epoch_is_an_error_on_its_own_line(train_val, tmp_path):
    run = tmp_path / "run"
    tiny = ["--batch-size", "4", "--embed-dim", "8", "--attention-dim", "8", "--hidden-dim", "8", "--workers", "0"]
    args = ["train", "--train", train_val["train_h5"], "--val", train_val["val_h5"], "--out", run, *tiny]
    p = capgen([*args, "--log-every", "2", "--decoder-lr", "1e30"], tmp_path)
    (line,) = marked_lines(p)
    assert line.startswith(f"capgen: error: {run}: training diverged: non-finite loss by epoch 1, step 2 ")


def test_a_shard_build_stopped_mid_way_ends_on_an_error_line(train_val, tmp_path):
    """A disk that fills (an 8 KB file size limit) in the first shard, with the bar drawn."""
    data = os.path.join(os.path.dirname(train_val["train"]), "data")  # tiny_shards keeps its images beside
    out = tmp_path / "set"
    build = ["shards", "build", "--coco-root", data, "--split", "train2014", "--out", out, "--shard-size", "6"]
    p = capgen([*build, "--image-size", "32", "--workers", "1", "--min-freq", "1"], tmp_path, fsize=8192)
    assert marked_lines(p) == [f"capgen: error: {out}/coco-train2014-000000.tar: cannot write (File too large)"]
