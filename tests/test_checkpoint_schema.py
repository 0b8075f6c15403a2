"""Damaged checkpoint files of a run the project trained (conftest's tiny_trained_checkpoint):
config.json, the weights, trainer.pt, args.json. Every command that reads one ends with one
line 'capgen: error: FILE: FIELD: cause', exit status 1, no traceback (model/runs/schema.py)."""

import hashlib
import json
import math
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from model.export.export import export
from tests.cli_in_process import capgen

SPECIALS = "<pad> <start> <end> <unk>"


@pytest.fixture(scope="module")
def run(tiny_trained_checkpoint):
    """The trained run folder (RUN/last, RUN/best, RUN/args.json); tests copy it before damaging."""
    return os.path.dirname(tiny_trained_checkpoint)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "red.jpg"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(path)
    return str(path)


def copy(run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    return out


def edit_json(path, change):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    change(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def setter(*keys, value=None, drop=False):
    """A change that sets (or drops) data[k1][k2]...; a callable value is applied to the old one."""

    def change(data):
        for k in keys[:-1]:
            data = data[k]
        if drop:
            del data[keys[-1]]
        else:
            data[keys[-1]] = value(data[keys[-1]]) if callable(value) else value

    return change


def run_cli(args, monkeypatch, capsys):
    code, out, err = capgen(args, capsys, monkeypatch)
    assert "Traceback" not in out + err
    return code, err


def assert_one_line(code, err, line):
    assert (code, err.splitlines()[-1], err.count("capgen: error:")) == (1, f"capgen: error: {line}", 1)


# ---------------------------------------------------------------- config.json

CONFIG_DAMAGES = [
    # (id, change, FIELD: cause)
    (
        "size-str",
        setter("config", "image", "size", value="224"),
        "config.image.size: expected an integer in [8, 10000], got '224'",
    ),
    (
        "size-zero",
        setter("config", "image", "size", value=0),
        "config.image.size: expected an integer in [8, 10000], got 0",
    ),
    (
        "size-float",
        setter("config", "image", "size", value=32.0),
        "config.image.size: expected an integer in [8, 10000], got 32.0",
    ),
    (
        "size-bool",
        setter("config", "image", "size", value=True),
        "config.image.size: expected an integer in [8, 10000], got True",
    ),
    (
        "size-null",
        setter("config", "image", "size", value=None),
        "config.image.size: expected an integer in [8, 10000], got None",
    ),
    (
        "size-huge",
        setter("config", "image", "size", value=10**9),
        "config.image.size: expected an integer in [8, 10000], got 1000000000",
    ),
    (
        "size-nested",
        setter("config", "image", "size", value=[32]),
        "config.image.size: expected an integer in [8, 10000], got [32]",
    ),
    ("size-missing", setter("config", "image", "size", drop=True), "config.image.size: missing"),
    (
        "mean-str",
        setter("config", "image", "mean", value="abc"),
        "config.image.mean: expected a list of 3 numbers, got 'abc'",
    ),
    (
        "mean-short",
        setter("config", "image", "mean", value=[0.5, 0.5]),
        "config.image.mean: expected a list of 3 numbers, got [0.5, 0.5]",
    ),
    (
        "mean-item-str",
        setter("config", "image", "mean", value=[0.5, "x", 0.5]),
        "config.image.mean[1]: expected a finite number, got 'x'",
    ),
    (
        "mean-nested",
        setter("config", "image", "mean", value=[[0.5], [0.5], [0.5]]),
        "config.image.mean[0]: expected a finite number, got [0.5]",
    ),
    (
        "mean-nan",
        setter("config", "image", "mean", value=[0.5, math.nan, 0.5]),
        "config.image.mean[1]: expected a finite number, got nan",
    ),
    (
        "mean-object",
        setter("config", "image", "mean", value={"r": 0.5}),
        "config.image.mean: expected a list of 3 numbers, got {'r': 0.5}",
    ),
    (
        "std-zero",
        setter("config", "image", "std", value=[0.2, 0, 0.2]),
        "config.image.std[1]: expected a finite number > 0, got 0",
    ),
    (
        "std-inf",
        setter("config", "image", "std", value=[0.2, math.inf, 0.2]),
        "config.image.std[1]: expected a finite number > 0, got inf",
    ),
    (
        "resize-mode",
        setter("config", "image", "resize_mode", value="zoom"),
        "config.image.resize_mode: expected one of squash, crop, stretch, center-crop, pad, got 'zoom'",
    ),
    ("image-list", setter("config", "image", value=[32]), "config.image: expected an object, got [32]"),
    ("image-missing", setter("config", "image", drop=True), "config.image: missing"),
    (
        "vocab-size-neg",
        setter("config", "decoder", "vocab_size", value=-1),
        "config.decoder.vocab_size: expected an integer >= 4, got -1",
    ),
    (
        "vocab-size-str",
        setter("config", "decoder", "vocab_size", value="61"),
        "config.decoder.vocab_size: expected an integer >= 4, got '61'",
    ),
    (
        "vocab-size-off",
        setter("config", "decoder", "vocab_size", value=lambda n: n - 1),
        "vocabulary of {words} words, the decoder predicts {words_less_1}",
    ),
    (
        "itos-short",
        setter("vocab", "itos", value=lambda w: w[:-1]),
        "vocabulary of {words_less_1} words, the decoder predicts {words}",
    ),
    (
        "itos-specials",
        setter("vocab", "itos", value=lambda w: ["x", *w[1:]]),
        f"vocab.itos: must start with {SPECIALS}",
    ),
    (
        "itos-repeat",
        setter("vocab", "itos", value=lambda w: [*w[:5], w[4], *w[6:]]),
        "vocab.itos: words must be distinct",
    ),
    (
        "itos-number",
        setter("vocab", "itos", value=lambda w: [*w[:4], 7, *w[5:]]),
        "vocab.itos[4]: expected a string, got 7",
    ),
    ("itos-str", setter("vocab", "itos", value="abc"), "vocab.itos: expected a list of at least 4 strings, got 'abc'"),
    ("preset", setter("vocab", "preset", value="x"), "vocab.preset: expected one of seed, coco, got 'x'"),
    ("max-len", setter("vocab", "max_len", value=0), "vocab.max_len: expected an integer >= 1, got 0"),
    ("vocab-missing", setter("vocab", drop=True), "vocab: missing"),
    ("config-list", setter("config", value=[]), "config: expected an object, got []"),
    (
        "decoder-extra",
        setter("config", "decoder", "extra", value=1),
        "config.decoder.extra: unknown field "
        "(expected vocab_size, feature_dim, embed_dim, attention_dim, hidden_dim, dropout)",
    ),
    (
        "dropout",
        setter("config", "decoder", "dropout", value=1.5),
        "config.decoder.dropout: expected a finite number in [0, 1), got 1.5",
    ),
    (
        "hidden-zero",
        setter("config", "decoder", "hidden_dim", value=0),
        "config.decoder.hidden_dim: expected an integer >= 1, got 0",
    ),
    ("hidden-missing", setter("config", "decoder", "hidden_dim", drop=True), "config.decoder.hidden_dim: missing"),
    (
        "feature-dim",
        setter("config", "decoder", "feature_dim", value=512),
        "config.decoder.feature_dim: 512, but the resnet18 encoder to layer3 gives 256 channels",
    ),
    (
        "encoder-name",
        setter("config", "encoder", "name", value="resnet7"),
        "config.encoder: unknown encoder 'resnet7' (expected one of resnet18, resnet34, resnet50, resnet101)",
    ),
    ("encoder-name-int", setter("config", "encoder", "name", value=5), "config.encoder.name: expected a string, got 5"),
    (
        "encoder-stop",
        setter("config", "encoder", "stop", value="layer9"),
        "config.encoder: unknown stop 'layer9' (expected one of layer2, layer3, layer4)",
    ),
    (
        "grid",
        setter("config", "encoder", "grid", value=["a", 2]),
        "config.encoder.grid[0]: expected an integer >= 1, got 'a'",
    ),
    ("sha-not-hex", setter("weights_sha256", value="xyz"), "weights_sha256: not a sha256 (64 hex digits)"),
    ("sha-number", setter("weights_sha256", value=5), "weights_sha256: expected a string, got 5"),
    (
        "format",
        setter("format", value="other"),
        "not a capgen checkpoint config (format 'other', expected capgen-checkpoint/1)",
    ),
]


def expected_line(run, line):
    with open(os.path.join(run, "last", "config.json"), encoding="utf-8") as f:
        words = len(json.load(f)["vocab"]["itos"])
    return line.replace("{words}", str(words)).replace("{words_less_1}", str(words - 1))


@pytest.mark.parametrize("change, line", [c[1:] for c in CONFIG_DAMAGES], ids=[c[0] for c in CONFIG_DAMAGES])
def test_damaged_config_is_one_line(change, line, run, image, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    config = os.path.join(damaged, "last", "config.json")
    edit_json(config, change)
    code, err = run_cli(["caption", "--checkpoint", os.path.join(damaged, "last"), image], monkeypatch, capsys)
    assert_one_line(code, err, f"{config}: {expected_line(run, line)}")


RAW_CONFIGS = [
    (
        "truncated",
        b'{"format": "capgen-checkpoint/1", "con',
        "Unterminated string starting at: line 1 column 35 (char 34)",
    ),
    ("empty", b"", "Expecting value: line 1 column 1 (char 0)"),
    ("not-utf8", b"\xc3\x28", "'utf-8' codec can't decode byte 0xc3 in position 0: invalid continuation byte"),
    ("list", b"[1, 2]", "not a JSON object"),
    ("string", b'"config"', "not a JSON object"),
    ("null", b"null", "not a JSON object"),
    ("deep", b"[" * 100_000, "maximum recursion depth exceeded while decoding a JSON array from a unicode string"),
]


@pytest.mark.parametrize("data, cause", [c[1:] for c in RAW_CONFIGS], ids=[c[0] for c in RAW_CONFIGS])
def test_corrupt_config_json_is_one_line(data, cause, run, image, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    config = os.path.join(damaged, "last", "config.json")
    with open(config, "wb") as f:
        f.write(data)
    code, err = run_cli(["caption", "--checkpoint", os.path.join(damaged, "last"), image], monkeypatch, capsys)
    assert_one_line(code, err, f"{config}: not a capgen checkpoint config ({cause})")


def command_line(command, ckpt, image, data, out):
    """A command that reads the checkpoint `ckpt`, as the user types it."""
    return {
        "caption": ["caption", "--checkpoint", ckpt, image],
        "eval": ["eval", "--checkpoint", ckpt, "--data", data["val_h5"], "--out", out / "r.json"],
        "export": ["export", "--checkpoint", ckpt, "--out", out / "onnx"],
        "search": ["search", "--checkpoint", ckpt, "--data", data["val_h5"], "a red circle"],
        "serve": ["serve", "--checkpoint", ckpt, "--host", "127.0.0.1", "--port", "0"],
        "bench-caption": ["bench", "caption", "--checkpoint", ckpt, "--images", "2"],
        "scst-init": [
            "train",
            "--train",
            data["train_h5"],
            "--val",
            data["val_h5"],
            "--out",
            out / "scst",
            "--scst",
            "--init",
            ckpt,
            "--epochs",
            "1",
            "--workers",
            "0",
        ],
    }[command]


COMMANDS = ["caption", "eval", "export", "search", "serve", "bench-caption", "scst-init"]
SOME = {c[0]: c for c in CONFIG_DAMAGES if c[0] in ("size-str", "mean-short", "vocab-size-neg", "feature-dim")}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", list(SOME))
def test_every_command_reading_a_checkpoint_says_the_same_line(
    command, damage, run, image, train_val, tmp_path, monkeypatch, capsys
):
    _, change, line = SOME[damage]
    damaged = copy(run, tmp_path)
    config = os.path.join(damaged, "best", "config.json")
    edit_json(config, change)
    args = command_line(command, os.path.join(damaged, "best"), image, train_val, tmp_path)
    code, err = run_cli(args, monkeypatch, capsys)
    assert_one_line(code, err, f"{config}: {expected_line(run, line)}")


# ---------------------------------------------------------------- the weights against config.json


def rewrite_weights(folder, change):
    """Change the weights and record their new sha256, as a hand edit that kept the folder consistent would."""
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    change(state)
    save_file(state, path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    edit_json(os.path.join(folder, "config.json"), setter("weights_sha256", value=digest))


def _set(name, value):
    return lambda s: s.__setitem__(name, value(s[name]))


WEIGHT_DAMAGES = [
    (
        "missing",
        lambda s: s.pop("decoder.fc.bias"),
        "decoder.fc.bias: missing (the model its config.json describes has it)",
    ),
    (
        "extra",
        lambda s: s.__setitem__("decoder.extra", torch.ones(2)),
        "decoder.extra: not a weight of the model its config.json describes",
    ),
    (
        "shape",
        _set("decoder.fc.weight", lambda t: t[:-1]),
        "decoder.fc.weight: shape [{words_less_1}, 16], its config.json gives [{words}, 16]",
    ),
    (
        "flat",
        _set("decoder.fc.weight", lambda t: t.flatten()),
        "decoder.fc.weight: shape [{words_x16}], its config.json gives [{words}, 16]",
    ),
    (
        "nan",
        _set("decoder.fc.weight", lambda t: t.index_fill(0, torch.tensor([3]), math.nan)),
        "decoder.fc.weight: holds non-finite values (NaN or inf)",
    ),
    (
        "inf",
        _set("decoder.feature_std", lambda t: t.index_fill(0, torch.tensor([0]), math.inf)),
        "decoder.feature_std: holds non-finite values (NaN or inf)",
    ),
    (
        "int",
        _set("decoder.fc.bias", lambda t: t.long()),
        "decoder.fc.bias: torch.int64, its config.json gives torch.float32",
    ),
    (
        "encoder-shape",
        _set("encoder.conv1.weight", lambda t: t[:, :2].contiguous()),
        "encoder.conv1.weight: shape [64, 2, 7, 7], its config.json gives [64, 3, 7, 7]",
    ),
    (
        "encoder-missing",
        lambda s: s.pop("encoder.layer3.1.bn2.running_var"),
        "encoder.layer3.1.bn2.running_var: missing (the model its config.json describes has it)",
    ),
]


@pytest.mark.parametrize("change, line", [c[1:] for c in WEIGHT_DAMAGES], ids=[c[0] for c in WEIGHT_DAMAGES])
def test_weights_that_disagree_with_the_config_name_the_tensor(change, line, run, image, tmp_path, monkeypatch, capsys):
    damaged = copy(run, tmp_path)
    last = os.path.join(damaged, "last")
    rewrite_weights(last, change)
    code, err = run_cli(["caption", "--checkpoint", last, image], monkeypatch, capsys)
    with open(os.path.join(last, "config.json"), encoding="utf-8") as f:
        words = len(json.load(f)["vocab"]["itos"])
    text = line.replace("{words}", str(words)).replace("{words_less_1}", str(words - 1))
    text = text.replace("{words_x16}", str(words * 16))
    assert_one_line(code, err, f"{os.path.join(last, 'model.safetensors')}: {text}")


# ---------------------------------------------------------------- an export's config.json (capgen caption --onnx)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """`capgen export` of the trained run's best."""
    out = tmp_path_factory.mktemp("onnx") / "model"
    export(os.path.join(run, "best"), str(out))
    return str(out)


EXPORT_DAMAGES = [
    (
        "size-str",
        setter("config", "image", "size", value="32"),
        "config.image.size: expected an integer in [8, 10000], got '32'",
    ),
    (
        "mean-short",
        setter("config", "image", "mean", value=[0.5]),
        "config.image.mean: expected a list of 3 numbers, got [0.5]",
    ),
    (
        "std-zero",
        setter("config", "image", "std", value=[0, 1, 1]),
        "config.image.std[0]: expected a finite number > 0, got 0",
    ),
    (
        "resize-mode",
        setter("config", "image", "resize_mode", value=3),
        "config.image.resize_mode: expected one of squash, crop, stretch, center-crop, pad, got 3",
    ),
    ("grid", setter("grid", value="2x2"), "grid: expected a list of 2 integers, got '2x2'"),
    ("grid-missing", setter("grid", drop=True), "grid: missing"),
    ("config-missing", setter("config", drop=True), "config: missing"),
]


@pytest.mark.parametrize("change, line", [c[1:] for c in EXPORT_DAMAGES], ids=[c[0] for c in EXPORT_DAMAGES])
def test_damaged_export_config_is_one_line(change, line, exported, image, tmp_path, monkeypatch, capsys):
    folder = str(tmp_path / "model")
    shutil.copytree(exported, folder)
    config = os.path.join(folder, "config.json")
    edit_json(config, change)
    code, err = run_cli(["caption", "--onnx", folder, image], monkeypatch, capsys)
    assert_one_line(code, err, f"{config}: {line}")
