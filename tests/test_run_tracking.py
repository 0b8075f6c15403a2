"""A run's records beyond log.jsonl: TensorBoard events, RUN/args.json, `train --config`, `capgen runs`."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from model.runs.log import read_log
from tools.cli.main import cli

TINY = [
    "--batch-size",
    4,
    "--embed-dim",
    16,
    "--attention-dim",
    16,
    "--hidden-dim",
    16,
    "--workers",
    0,
    "--log-every",
    1,
    "--seed",
    3,
]


@pytest.fixture(scope="module")
def data(train_val):
    """Feature caches of 24 train / 6 val images (conftest's train_val)."""
    return {"train": train_val["train_h5"], "val": train_val["val_h5"]}


def capgen(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def first(data, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("first") / "run")
    capgen("train", "--train", data["train"], "--val", data["val"], "--out", run, "--epochs", 2, *TINY)
    return run


def args_json(run):
    with open(os.path.join(run, "args.json")) as f:
        return json.load(f)


def losses(run):
    return [r["loss"] for r in read_log(os.path.join(run, "log.jsonl")) if r["type"] == "train"]


def test_tensorboard_events_equal_the_log(first):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(os.path.join(first, "tb"))
    board.Reload()
    expected = {}
    for r in read_log(os.path.join(first, "log.jsonl")):
        for key, value in r.items():
            if (
                key not in ("type", "epoch", "step", "world", "end_of_epoch")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                expected.setdefault(f"{r['type']}/{key}", []).append((r["step"], np.float32(value)))
    assert {
        "train/loss",
        "train/top5",
        "train/lr",
        "train/samples_per_s",
        "val/Bleu_4",
        "val/lr",
        "val/seconds",
        "epoch/samples",
    } <= set(expected)
    assert sorted(board.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        assert [(e.step, np.float32(e.value)) for e in board.Scalars(tag)] == points, tag
    assert len(points) and "val/captions/text_summary" in board.Tags()["tensors"]
    text = board.Tensors("val/captions/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.startswith("| image | generated | reference |") and len(text.splitlines()) == 2 + 5


def test_args_json_holds_every_option_versions_and_sources(first, data):
    from dataclasses import fields

    from model.train.args import TrainArgs

    record = args_json(first)
    assert record["format"] == "capgen-run-args/1"
    assert list(record["args"]) == [f.name for f in fields(TrainArgs)]
    assert record["args"]["train"] == os.path.abspath(data["train"]) and record["args"]["epochs"] == 2
    assert record["args"]["grad_clip"] == 5.0 and record["args"]["seed"] == 3
    assert set(record["versions"]) == {"capgen", "torch", "torchvision", "dali", "python"}
    train = record["sources"]["train"]
    assert train["kind"] == "features" and train["shape"][0] == 24 and train["attrs"]["encoder"] == "resnet18"
    assert len(train["manifest_sha256"]) == 64


def test_config_reruns_the_run_and_flags_given_win(first, tmp_path):
    again = str(tmp_path / "again")
    capgen("train", "--config", os.path.join(first, "args.json"), "--out", again)
    a, b = args_json(first), args_json(again)
    assert b["args"].pop("out") == os.path.abspath(again)
    a["args"].pop("out")
    assert a == b
    assert losses(again) == losses(first) and len(losses(first)) == 12

    other = str(tmp_path / "other")
    capgen("train", "--config", os.path.join(first, "args.json"), "--out", other, "--epochs", 1, "--decoder-lr", 1e-3)
    c = args_json(other)["args"]
    changed = {k for k in c if c[k] != args_json(first)["args"][k]}
    assert changed == {"out", "epochs", "decoder_lr"} and (c["epochs"], c["decoder_lr"]) == (1, 1e-3)


def test_config_refuses_a_file_that_is_not_args_json(first, tmp_path):
    bad = tmp_path / "args.json"
    bad.write_text('{"format": "capgen-run-args/1", "args": {"epochs": 1, "learning_rate": 2}}')
    r = CliRunner().invoke(cli, ["train", "--config", str(bad)])
    assert (
        r.exit_code != 0
        and str(r.exception) == f"{bad}: args.learning_rate: unknown option (written by another capgen version?)"
    )
    r = CliRunner().invoke(cli, ["train", "--epochs", "1"])
    assert r.exit_code == 2 and "Missing option '--train' (or --config RUN/args.json)." in r.output


def test_runs_table_and_json(first, tmp_path):
    other = str(tmp_path / "short")
    capgen("train", "--config", os.path.join(first, "args.json"), "--out", other, "--epochs", 1)
    rows = [json.loads(line) for line in capgen("runs", first, other, "--json").splitlines()]
    val = [r for r in read_log(os.path.join(first, "log.jsonl")) if r["type"] == "val"]
    best = max(val, key=lambda r: r["Bleu_4"])
    assert [(r["epochs"], r["steps"]) for r in rows] == [(2, 12), (1, 6)]
    assert rows[0]["metric"] == rows[1]["metric"] == "Bleu_4"
    assert rows[0]["best_Bleu_4"] == best["Bleu_4"] and rows[0]["best_epoch"] == best["epoch"] + 1
    assert rows[0]["seconds"] == round(sum(r["seconds"] for r in val), 1) > 0
    assert rows[0]["options"] == rows[1]["options"] and rows[0]["options"]["batch_size"] == 4
    table = capgen("runs", first, other).splitlines()
    assert [line.split()[0] for line in table] == [
        "run",
        "best",
        "best",
        "epochs",
        "steps",
        "seconds",
        "early",
        "train",
        "batch_size",
        "encoder",
        "fine_tune_encoder",
        "embed_dim",
        "hidden_dim",
        "dropout",
        "decoder_lr",
        "beam",
        "seed",
    ]
    assert table[0].split() == ["run", "run", "short"]
    assert table[1].split()[:3] == ["best", "Bleu", "4"]
    assert table[3].split() == ["epochs", "2", "1"] and table[8].split() == ["batch_size", "4", "4"]
