"""Bad option values for train / eval / caption / features extract: one line, the exact words, exit status.

Run in process through tools.cli.main (the console script's entry), so a traceback would
fail the test; option values are refused before any file is read.
"""

import sys

import pytest

from tools.cli import main as cli


def run_cli(args, monkeypatch, capsys):
    """(exit status, stdout, stderr) of `capgen ARGS`."""
    monkeypatch.setattr(sys, "argv", ["capgen", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


TRAIN = ["train", "--train", "nowhere/train", "--val", "nowhere/val", "--out", "nowhere/run"]

TRAIN_CASES = [
    (["--decoder-lr", "0"], "--decoder-lr: 0.0: must be finite and > 0"),
    (["--decoder-lr", "-1"], "--decoder-lr: -1.0: must be finite and > 0"),
    (["--decoder-lr", "nan"], "--decoder-lr: nan: not a number"),
    (["--decoder-lr", "inf"], "--decoder-lr: inf: must be finite and > 0"),
    (["--encoder-lr", "0"], "--encoder-lr: 0.0: must be finite and > 0"),
    (["--batch-size", "0"], "--batch-size: 0: must be an integer >= 1"),
    (["--epochs", "0"], "--epochs: 0: must be an integer >= 1"),
    (["--embed-dim", "0"], "--embed-dim: 0: must be an integer >= 1"),
    (["--attention-dim", "-3"], "--attention-dim: -3: must be an integer >= 1"),
    (["--hidden-dim", "0"], "--hidden-dim: 0: must be an integer >= 1"),
    (["--beam", "0"], "--beam: 0: must be an integer >= 1"),
    (["--patience", "0"], "--patience: 0: must be an integer >= 1"),
    (["--val-images", "0"], "--val-images: 0: must be an integer >= 1"),
    (["--log-every", "0"], "--log-every: 0: must be an integer >= 1"),
    (["--workers", "-1"], "--workers: -1: must be an integer >= 0"),
    (["--dropout", "1"], "--dropout: 1.0: must be in [0, 1)"),
    (["--dropout", "2"], "--dropout: 2.0: must be in [0, 1)"),
    (["--dropout", "-0.1"], "--dropout: -0.1: must be in [0, 1)"),
    (["--max-lost", "1.5"], "--max-lost: 1.5: must be in [0, 1]"),
]


@pytest.mark.parametrize("extra, message", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_train_option_values(extra, message, monkeypatch, capsys):
    code, out, err = run_cli(TRAIN + extra, monkeypatch, capsys)
    assert (code, out, err) == (1, "", f"capgen: error: {message}\n")


USAGE_CASES = [
    (TRAIN + ["--batch-size", "abc"], "Invalid value for '--batch-size': 'abc' is not a valid integer."),
    (
        ["eval", "--checkpoint", "run", "--data", "d", "--out", "r.json", "--beam", "0"],
        "Invalid value for '--beam': 0 is not in the range x>=1.",
    ),
    (
        ["eval", "--checkpoint", "run", "--data", "d", "--out", "r.json", "--limit", "0"],
        "Invalid value for '--limit': 0 is not in the range x>=1.",
    ),
    (
        ["eval", "--checkpoint", "run", "--data", "d", "--out", "r.json", "--batch-size", "-2"],
        "Invalid value for '--batch-size': -2 is not in the range x>=1.",
    ),
    (
        ["caption", "--checkpoint", "run", "--beam", "0", "a.jpg"],
        "Invalid value for '--beam': 0 is not in the range x>=1.",
    ),
    (
        ["caption", "--checkpoint", "run", "--topk", "0", "a.jpg"],
        "Invalid value for '--topk': 0 is not in the range x>=1.",
    ),
    (
        ["features", "extract", "--shards", ".", "--out", "f.h5", "--batch-size", "0"],
        "Invalid value for '--batch-size': 0 is not in the range x>=1.",
    ),
    (
        ["features", "extract", "--shards", ".", "--out", "f.h5", "--workers", "-1"],
        "Invalid value for '--workers': -1 is not in the range x>=0.",
    ),
    (
        ["features", "extract", "--shards", ".", "--out", "f.h5", "--max-lost", "1.5"],
        "Invalid value for '--max-lost': 1.5 is not in the range 0<=x<=1.",
    ),
]


@pytest.mark.parametrize("args, message", USAGE_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in USAGE_CASES])
def test_usage_errors(args, message, monkeypatch, capsys):
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == f"Error: {message}" and "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--data", "d", "--out", "r.json"],
        ["caption", "a.jpg"],
    ],
)
def test_missing_checkpoint_is_one_line(command, tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "run" / "best")
    args = command[:1] + ["--checkpoint", missing] + command[1:]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert (code, err) == (1, f"capgen: error: {missing}: checkpoint folder not found\n")
