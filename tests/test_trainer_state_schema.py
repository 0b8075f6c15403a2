"""Damaged trainer.pt and args.json of a run the project trained (conftest's
tiny_trained_checkpoint): `capgen train --resume`, `capgen train --config` and `capgen runs`
end with one line 'capgen: error: FILE: FIELD: cause', exit status 1, no traceback
(model/runs/state_check.py, model/train/run_args.py)."""

import json
import math
import os
import shutil

import pytest
import torch

from tests.cli_in_process import capgen


@pytest.fixture(scope="module")
def run(tiny_trained_checkpoint):
    return os.path.dirname(tiny_trained_checkpoint)


def copy(run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    return out


def run_cli(args, monkeypatch, capsys):
    code, out, err = capgen(args, capsys, monkeypatch)
    assert "Traceback" not in out + err
    return code, err


def assert_one_line(code, err, line):
    assert (code, err.splitlines()[-1], err.count("capgen: error:")) == (1, f"capgen: error: {line}", 1)


def at(*keys, value=None, drop=False):
    """A change that sets (or drops) d[k1][k2]...; a callable value is applied to the old one."""

    def change(d):
        for k in keys[:-1]:
            d = d[k]
        if drop:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value(d[keys[-1]]) if callable(value) else value

    return change


def _python_state(change):
    def apply(state):
        version, internal, gauss = state
        internal = list(internal)
        change(internal)
        return (version, tuple(internal), gauss)

    return apply


OPT, GROUP = ("optimizer",), ("optimizer", "param_groups", 0)
TRAINER_DAMAGES = [
    ("epoch-str", at("epoch", value="3"), "epoch: expected an integer >= 0, got '3'"),
    ("epoch-neg", at("epoch", value=-1), "epoch: expected an integer >= 0, got -1"),
    ("epoch-float", at("epoch", value=3.0), "epoch: expected an integer >= 0, got 3.0"),
    ("epoch-none", at("epoch", value=None), "epoch: expected an integer >= 0, got None"),
    (
        "epoch-tensor",
        at("epoch", value=torch.tensor(3)),
        "epoch: expected an integer >= 0, got an int64 tensor of shape []",
    ),
    ("epoch-missing", at("epoch", drop=True), "epoch: missing"),
    ("step-float", at("step", value=3.5), "step: expected an integer >= 0, got 3.5"),
    ("step-list", at("step", value=[90]), "step: expected an integer >= 0, got [90]"),
    ("seed-str", at("seed", value="3"), "seed: expected an integer, got '3'"),
    ("best-str", at("best", value="x"), "best: expected a number, got 'x'"),
    ("best-nan", at("best", value=math.nan), "best: expected a number, got nan"),
    ("bad-epochs", at("bad_epochs", value=-1), "bad_epochs: expected an integer >= 0, got -1"),
    ("metric", at("metric", value=5), "metric: expected a string, got 5"),
    ("scores-str", at("scores", value="x"), "scores: expected an object, got 'x'"),
    ("scores-value", at("scores", "Bleu_4", value="x"), "scores.Bleu_4: expected a number, got 'x'"),
    ("optimizer-str", at("optimizer", value="x"), "optimizer: expected an object, got 'x'"),
    ("optimizer-none", at("optimizer", value=None), "optimizer: missing (cannot resume)"),
    ("groups-missing", at(*OPT, "param_groups", drop=True), "optimizer.param_groups: missing"),
    (
        "groups-empty",
        at(*OPT, "param_groups", value=[]),
        "optimizer.param_groups: expected a list of at least 1 objects, got []",
    ),
    (
        "groups-two",
        at(*OPT, "param_groups", value=lambda g: [g[0], dict(g[0])]),
        "optimizer.param_groups: expected 1 parameter group (as these options build), got a list of 2",
    ),
    (
        "params-short",
        at(*GROUP, "params", value=lambda p: p[:-1]),
        "optimizer.param_groups[0].params: expected a list of 19 integers, got a list of 18",
    ),
    (
        "params-str",
        at(*GROUP, "params", value=lambda p: ["a", *p[1:]]),
        "optimizer.param_groups[0].params[0]: expected an integer >= 0, got 'a'",
    ),
    ("lr-str", at(*GROUP, "lr", value="x"), "optimizer.param_groups[0].lr: expected a finite number >= 0, got 'x'"),
    ("lr-neg", at(*GROUP, "lr", value=-1.0), "optimizer.param_groups[0].lr: expected a finite number >= 0, got -1.0"),
    ("lr-missing", at(*GROUP, "lr", drop=True), "optimizer.param_groups[0].lr: missing"),
    (
        "betas",
        at(*GROUP, "betas", value=(0.9,)),
        "optimizer.param_groups[0].betas: expected a list of 2 items, got (0.9,)",
    ),
    ("eps-str", at(*GROUP, "eps", value="x"), "optimizer.param_groups[0].eps: expected a number, got 'x'"),
    (
        "amsgrad",
        at(*GROUP, "amsgrad", value="no"),
        "optimizer.param_groups[0].amsgrad: expected true or false, got 'no'",
    ),
    ("decay-missing", at(*GROUP, "weight_decay", drop=True), "optimizer.param_groups[0].weight_decay: missing"),
    ("state-str", at(*OPT, "state", value="x"), "optimizer.state: expected an object, got 'x'"),
    ("state-key", at(*OPT, "state", "a", value={}), "optimizer.state.'a': key: expected an integer >= 0"),
    (
        "state-id",
        at(*OPT, "state", 99, value={}),
        "optimizer.state[99]: no parameter of param_groups has this id",
    ),
    (
        "state-value",
        at(*OPT, "state", 0, "exp_avg", value="x"),
        "optimizer.state[0].exp_avg: expected a tensor or a finite number, got 'x'",
    ),
    (
        "state-shape",
        at(*OPT, "state", 0, "exp_avg", value=torch.zeros(3)),
        "optimizer.state[0].exp_avg: expected a finite number or a tensor of shape [] "
        "or a tensor of shape [16, 256], got a float32 tensor of shape [3]",
    ),
    ("rng-none", at("rng", value=None), "rng: missing (cannot resume)"),
    ("rng-missing", at("rng", drop=True), "rng: missing"),
    (
        "torch-short",
        at("rng", "torch", value=torch.zeros(5, dtype=torch.uint8)),
        "rng.torch: expected a uint8 tensor of shape [5056], got a uint8 tensor of shape [5]",
    ),
    (
        "torch-float",
        at("rng", "torch", value=lambda t: t.float()),
        "rng.torch: expected a uint8 tensor of shape [5056], got a float32 tensor of shape [5056]",
    ),
    ("torch-list", at("rng", "torch", value=[1, 2]), "rng.torch: expected a uint8 tensor of shape [5056], got [1, 2]"),
    ("python-str", at("rng", "python", value="x"), "rng.python: expected a list of 3 items, got 'x'"),
    (
        "python-short",
        at("rng", "python", value=(3, (1, 2), None)),
        "rng.python[1]: expected a list of 625 integers, got (1, 2)",
    ),
    (
        "python-version",
        at("rng", "python", value=lambda s: (2, *s[1:])),
        "rng.python[0]: expected an integer in [3, 3], got 2",
    ),
    (
        "python-word",
        at("rng", "python", value=_python_state(lambda w: w.__setitem__(0, -1))),
        "rng.python[1][0]: expected an integer in [0, 4294967295], got -1",
    ),
    (
        "python-pos",
        at("rng", "python", value=_python_state(lambda w: w.__setitem__(-1, 700))),
        "rng.python[1]: its last item (the position) must be <= 624",
    ),
    (
        "numpy-keys",
        at("rng", "numpy", "keys", value=torch.zeros(3)),
        "rng.numpy.keys: expected an int64 tensor of shape [624], got a float32 tensor of shape [3]",
    ),
    (
        "numpy-values",
        at("rng", "numpy", "keys", value=lambda k: k - 2**40),
        "rng.numpy.keys: holds values outside [0, 2**32)",
    ),
    ("numpy-pos", at("rng", "numpy", "pos", value=999), "rng.numpy.pos: expected an integer in [0, 624], got 999"),
    ("numpy-kind", at("rng", "numpy", "kind", value="PCG64"), "rng.numpy.kind: expected one of MT19937, got 'PCG64'"),
    ("numpy-gauss", at("rng", "numpy", "gauss", value="x"), "rng.numpy.gauss: expected a finite number, got 'x'"),
    ("cuda", at("rng", "cuda", value="x"), "rng.cuda: expected a list of tensors, got 'x'"),
    ("scheduler-str", at("scheduler", value="x"), "scheduler: expected an object, got 'x'"),
    ("scheduler-none", at("scheduler", value=None), "scheduler: missing (cannot resume)"),
    ("scheduler-lr", at("scheduler", "_last_lr", value="x"), "scheduler._last_lr: expected a list of 1 items, got 'x'"),
    ("scheduler-best", at("scheduler", "best", value="x"), "scheduler.best: expected a number, got 'x'"),
    ("scheduler-missing", at("scheduler", "patience", drop=True), "scheduler.patience: missing"),
]


def resume(run):
    return ["train", "--config", os.path.join(run, "args.json"), "--out", run, "--resume", "--epochs", "16"]


@pytest.mark.parametrize("change, line", [c[1:] for c in TRAINER_DAMAGES], ids=[c[0] for c in TRAINER_DAMAGES])
def test_damaged_trainer_state_is_one_line_on_resume(change, line, run, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    path = os.path.join(damaged, "last", "trainer.pt")
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    with open(os.path.join(damaged, "log.jsonl"), "rb") as f:
        log = f.read()
    code, err = run_cli(resume(damaged), monkeypatch, capsys)
    assert_one_line(code, err, f"{path}: {line}")
    with open(os.path.join(damaged, "log.jsonl"), "rb") as f:
        assert f.read() == log  # nothing done, nothing lost


@pytest.mark.parametrize(
    "data, line", [([1, 2], "expected an object, got [1, 2]"), ("state", "expected an object, got 'state'")]
)
def test_trainer_state_that_is_no_object_is_one_line(data, line, run, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    path = os.path.join(damaged, "last", "trainer.pt")
    torch.save(data, path)
    code, err = run_cli(resume(damaged), monkeypatch, capsys)
    assert_one_line(code, err, f"{path}: {line}")


def test_runs_names_the_damaged_trainer_state(run, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    path = os.path.join(damaged, "last", "trainer.pt")
    state = torch.load(path, weights_only=True)
    state["epoch"] = "15"
    torch.save(state, path)
    code, err = run_cli(["runs", damaged], monkeypatch, capsys)
    assert_one_line(code, err, f"{path}: epoch: expected an integer >= 0, got '15'")


# ---------------------------------------------------------------- args.json

ARGS_DAMAGES = [
    ("epochs-str", at("args", "epochs", value="ten"), "args.epochs: expected an integer, got 'ten'"),
    ("epochs-bool", at("args", "epochs", value=True), "args.epochs: expected an integer, got True"),
    ("epochs-float", at("args", "epochs", value=2.5), "args.epochs: expected an integer, got 2.5"),
    ("loader", at("args", "loader", value="gpu"), "args.loader: expected one of auto, cpu, dali, got 'gpu'"),
    ("flag", at("args", "fine_tune_encoder", value="yes"), "args.fine_tune_encoder: expected true or false, got 'yes'"),
    ("optional-int", at("args", "val_images", value=1.5), "args.val_images: expected an integer, got 1.5"),
    ("lr-str", at("args", "decoder_lr", value="x"), "args.decoder_lr: expected a number, got 'x'"),
    ("path-int", at("args", "train", value=5), "args.train: expected a string, got 5"),
    ("nested", at("args", "batch_size", value={"value": 4}), "args.batch_size: expected an integer, got {'value': 4}"),
    ("args-list", at("args", value=[]), "args: expected an object, got []"),
    ("args-missing", at("args", drop=True), "args: missing"),
    (
        "unknown",
        at("args", "learning_rate", value=2),
        "args.learning_rate: unknown option (written by another capgen version?)",
    ),
    ("format", at("format", value="other"), "not a capgen args.json (format capgen-run-args/1)"),
]


@pytest.mark.parametrize("change, line", [c[1:] for c in ARGS_DAMAGES], ids=[c[0] for c in ARGS_DAMAGES])
def test_damaged_args_json_is_one_line(change, line, run, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    path = os.path.join(damaged, "args.json")
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    change(record)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f)
    code, err = run_cli(["train", "--config", path, "--out", str(tmp_path / "new")], monkeypatch, capsys)
    assert_one_line(code, err, f"{path}: {line}")


@pytest.mark.parametrize(
    "data, cause",
    [
        (b'{"format": "capgen-run-args/1", "ar', "Unterminated string starting at: line 1 column 33 (char 32)"),
        (b"[]", "not a JSON object"),
        (b"\xc3\x28", "'utf-8' codec can't decode byte 0xc3 in position 0: invalid continuation byte"),
    ],
)
@pytest.mark.parametrize("command", ["train", "runs"])
def test_corrupt_args_json_is_one_line(command, data, cause, run, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    path = os.path.join(damaged, "args.json")
    with open(path, "wb") as f:
        f.write(data)
    args = ["train", "--config", path, "--out", str(tmp_path / "new")] if command == "train" else ["runs", damaged]
    code, err = run_cli(args, monkeypatch, capsys)
    assert_one_line(code, err, f"{path}: not a capgen args.json ({cause})")
