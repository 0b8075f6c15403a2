"""The Python API (`import capgen`): each function gives what its command gives, on the tiny fixtures."""

import filecmp
import importlib.metadata
import inspect
import json
import os
import pydoc

import pytest
from cli_in_process import capgen as cli
from PIL import Image

import capgen
from model.runs.log import read_log
from pipeline.errors import UsageError

TINY = dict(batch_size=4, embed_dim=16, attention_dim=16, hidden_dim=16, workers=0, log_every=1, seed=3)
SHARDS = dict(image_size=32, shard_size=6, preset="coco", min_freq=1, workers=1)


def cli_ok(args, capsys, monkeypatch):
    status, out, err = cli(args, capsys, monkeypatch)
    assert status == 0, err
    return out, err


def flags(options):
    """{"image_size": 32, "index": False} -> ["--image-size", "32", "--no-index"]."""
    out = []
    for k, v in options.items():
        name = k.replace("_", "-")
        out += [f"--{name}"] if v is True else [f"--no-{name}"] if v is False else [f"--{name}", str(v)]
    return out


def same_tree(a, b):
    """Every file under a and b, byte for byte."""
    cmp = filecmp.dircmp(a, b)
    assert (cmp.left_only, cmp.right_only) == ([], [])
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert (mismatch, errors) == ([], [])
    for sub in cmp.common_dirs:
        same_tree(os.path.join(a, sub), os.path.join(b, sub))


def test_help_lists_the_api_and_every_name_has_a_typed_example():
    text = pydoc.render_doc(capgen, renderer=pydoc.plaintext)
    exported = {n for n, v in vars(capgen).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert sorted(capgen.__all__) == sorted(exported) and len(exported) == 10
    for name in capgen.__all__:
        assert f"\n    {name}(" in text or f"class {name}(" in text, name
    assert capgen.__version__ == importlib.metadata.version("capgen")
    functions = [getattr(capgen, n) for n in capgen.__all__ if inspect.isfunction(getattr(capgen, n))]
    functions += [capgen.Captioner.load, capgen.Captioner.caption]
    assert len(functions) == 9
    for f in functions:
        signature = inspect.signature(f)
        assert signature.return_annotation is not inspect.Signature.empty, f.__name__
        assert all(p.annotation is not p.empty for p in signature.parameters.values() if p.name not in ("self", "cls"))
    for obj in [*functions[:-2], capgen.TrainArgs, capgen.Captioner]:  # the methods: in the class's example
        doc = obj.__doc__
        assert "Example" in doc and ">>> " in doc and f"capgen.{obj.__name__}" in doc, obj.__name__


def test_synthesize_writes_what_capgen_synth_writes(tmp_path, capsys, monkeypatch):
    counts = capgen.synthesize(tmp_path / "api", images=8, seed=4, width=48, height=40, workers=1)
    out, _ = cli_ok(
        ["synth", tmp_path / "cli", "--images", 8, "--seed", 4, "--width", 48, "--height", 40], capsys, monkeypatch
    )
    karpathy = {"val": 1, "test": 1, "restval": 0}
    assert counts == {"images": 8, "train2014": 6, "val2014": 2, "captions": 43, "karpathy": karpathy}
    assert out.startswith(
        f"{tmp_path / 'cli'}: 8 images (train2014 6, val2014 2: Karpathy val 1 test 1 restval 0), 43 "
    )
    same_tree(tmp_path / "api", tmp_path / "cli")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_data") / "data"
    capgen.synthesize(root, images=20, seed=9, width=48, height=40, val_fraction=0.25, workers=1)
    return str(root)


def test_build_shards_gives_the_set_capgen_shards_build_gives(data, tmp_path, capsys, monkeypatch):
    notes = []
    train = capgen.build_shards(tmp_path / "api", coco_root=data, split="train2014", note=notes.append, **SHARDS)
    given = dict(coco_root=data, split="train2014", out=tmp_path / "cli", quiet=True, **SHARDS)
    cli_ok(["shards", "build", *flags(given)], capsys, monkeypatch)
    same_tree(tmp_path / "api", tmp_path / "cli")
    with open(tmp_path / "api" / "manifest.json") as f:
        assert train["manifest"] == json.load(f)
    summary = {k: train[k] for k in ("out", "num_jobs", "job_index", "built", "reused")}
    assert summary == {"out": str(tmp_path / "api"), "num_jobs": 1, "job_index": 0, "built": 3, "reused": 0}
    assert train["manifest"]["counts"]["images"] == 15 and notes == []
    # a held-out set without the training vocabulary: the same warning, through note()
    val = capgen.build_shards(tmp_path / "val-api", coco_root=data, split="val2014", note=notes.append, **SHARDS)
    given = dict(coco_root=data, split="val2014", out=tmp_path / "val-cli", quiet=True, **SHARDS)
    _, err = cli_ok(["shards", "build", *flags(given)], capsys, monkeypatch)
    assert (
        notes
        == err.splitlines()
        == [
            "capgen: warning: coco-val2014 builds its own vocabulary; "
            "pass --vocab TRAIN/vocab.json to share the training one"
        ]
    )
    same_tree(tmp_path / "val-api", tmp_path / "val-cli")
    assert val["manifest"]["counts"]["images"] == 5


def test_build_shards_from_a_captions_file_and_bad_arguments(data, tmp_path, capsys, monkeypatch):
    folder = os.path.join(data, "train2014")
    rows = [
        {"file_name": name, "text": ["a shape", "a thing"], "split": "train"} for name in sorted(os.listdir(folder))[:6]
    ]
    rows.append({"file_name": "missing.jpg", "text": "", "split": "train"})
    with open(tmp_path / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    notes = []
    options = dict(captions=tmp_path / "metadata.jsonl", images=folder, name="mine", **SHARDS)
    r = capgen.build_shards(tmp_path / "api", note=notes.append, **options)
    _, err = cli_ok(["shards", "build", "--out", tmp_path / "cli", "--quiet", *flags(options)], capsys, monkeypatch)
    same_tree(tmp_path / "api", tmp_path / "cli")
    assert (
        notes
        == err.splitlines()
        == [f"{tmp_path / 'metadata.jsonl'}: 7 rows, 7 train images; set aside: empty_caption 1"]
    )
    assert r["manifest"]["build_args"]["rows_set_aside"] == {"empty_caption": 1}
    assert r["manifest"]["counts"]["images"] == 6  # missing.jpg: no caption left
    with pytest.raises(
        UsageError, match=r"^give --coco-root with --split, --karpathy with --karpathy-split, --captions or --urls$"
    ):
        capgen.build_shards(tmp_path / "x", coco_root=data)
    with pytest.raises(capgen.CapgenError, match=r"need --captions$"):
        capgen.build_shards(tmp_path / "x", coco_root=data, split="train2014", val_fraction=0.5)
    assert not os.path.exists(tmp_path / "x")


@pytest.fixture(scope="module")
def run(train_val, tmp_path_factory):
    """capgen.train's run on the trainer tests' feature cache, validated on the val shard set."""
    out = str(tmp_path_factory.mktemp("api_run") / "run")
    args = capgen.TrainArgs(
        train=train_val["train_h5"], val=train_val["val"], out=out, epochs=1, progress=False, **TINY
    )
    return out, capgen.train(args)


def test_train_runs_as_capgen_train_does(run, train_val, tmp_path, capsys, monkeypatch):
    out, result = run
    summary = {k: result[k] for k in ("best_dir", "epochs", "step", "metric", "early_stopped")}
    assert summary == {"best_dir": f"{out}/best", "epochs": 1, "step": 6, "metric": "Bleu_4", "early_stopped": False}
    again = str(tmp_path / "cli")
    given = dict(train=train_val["train_h5"], val=train_val["val"], out=again, epochs=1, **TINY)
    stdout, _ = cli_ok(["train", *flags(given)], capsys, monkeypatch)
    assert stdout == f"{again}: 1 epochs, 6 steps, best val BLEU-4 {result['best']:.4f}; best checkpoint {again}/best\n"
    losses = [[r["loss"] for r in read_log(os.path.join(d, "log.jsonl")) if r["type"] == "train"] for d in (out, again)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    assert filecmp.cmp(
        os.path.join(out, "best", "model.safetensors"), os.path.join(again, "best", "model.safetensors"), shallow=False
    )


def test_evaluate_scores_as_capgen_eval_json(run, train_val, tmp_path, capsys, monkeypatch):
    # Without Java (the simple tokenizer, no METEOR): the same code path to compare, a minute less
    # of JVM start-ups; tests/test_cli_end_to_end.py scores with Java.
    monkeypatch.setattr("model.eval.metrics.shutil.which", lambda name: None)
    best, data = run[1]["best_dir"], train_val["val"]
    scenes = os.path.join(os.path.dirname(data), "data", "annotations", "scenes_val2014.json")
    given = dict(checkpoint=best, data=data, out=tmp_path / "cli.json", beam=2, scenes=scenes, json=True, quiet=True)
    with pytest.warns(UserWarning, match="java not found"):
        r = capgen.evaluate(best, data, tmp_path / "api.json", beam=2, scenes=scenes)
        stdout, _ = cli_ok(["eval", *flags(given)], capsys, monkeypatch)
    assert json.loads(stdout.splitlines()[-1]) == {
        **r["scores"],
        "images": 6,
        "beam": 2,
        "text_preset": "coco",
        "results": str(tmp_path / "cli.json"),
        "attributes": r["attributes"],
    }
    assert r["results"] == str(tmp_path / "api.json")
    assert filecmp.cmp(tmp_path / "api.json", tmp_path / "cli.json", shallow=False)
    assert sorted(r["attributes"]) == ["all", "colour", "count", "position", "shape", "size"]


@pytest.fixture(scope="module")
def images(train_val):
    folder = os.path.join(os.path.dirname(train_val["val"]), "data", "val2014")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))[:2]]


def test_captioner_gives_capgen_caption_json_and_its_figure(run, images, tmp_path, capsys, monkeypatch):
    best = run[1]["best_dir"]
    captioner = capgen.Captioner.load(best)
    opened = [Image.open(p) for p in images]
    results = captioner.caption(opened, beam=3)
    assert captioner.caption(images, beam=3) == results  # paths or PIL images alike
    given = dict(checkpoint=best, beam=3, json=True, attention=tmp_path / "cli.png")
    stdout, stderr = cli_ok(["caption", *flags(given), *images], capsys, monkeypatch)
    for line, path, r in zip(stdout.splitlines(), images, results):
        assert json.loads(line) == {
            "image": path,
            "captions": [{"text": c["text"], "score": round(c["score"], 4)} for c in r["captions"]],
            "words": r["words"],
            "attention": [[round(a, 5) for a in row] for row in r["attention"]],
            "grid": r["grid"],
        }
        assert len(r["captions"]) == 3 and len(r["attention"]) == len(r["words"]) and r["grid"] == [2, 2]
    mode = captioner.image["resize_mode"]
    figures = []
    for path, image, r in zip(images, opened, results):
        stem = os.path.splitext(os.path.basename(path))[0]
        assert (
            capgen.save_attention_figure(image, r, tmp_path / f"api-{stem}.png", mode) == tmp_path / f"api-{stem}.png"
        )
        assert filecmp.cmp(tmp_path / f"api-{stem}.png", tmp_path / f"cli-{stem}.png", shallow=False)
        figures.append(capgen.attention_figure(image, r, mode))
    titles = [[ax.get_title() for ax in fig.axes if ax.get_title()] for fig in figures]
    assert titles == [[f"score {r['captions'][0]['score']:.2f}", *r["words"]] for r in results]
    assert stderr.count(": attention figure ") == 2


def test_search_gives_capgen_search_json(run, train_val, capsys, monkeypatch):
    best, data = run[1]["best_dir"], train_val["val"]
    found = capgen.search(best, data, ["a red circle", "blue zorg"], top=3)
    given = dict(checkpoint=best, data=data, top=3, json=True, quiet=True)
    stdout, _ = cli_ok(["search", *flags(given), "a red circle", "blue zorg"], capsys, monkeypatch)
    assert found == [json.loads(line) for line in stdout.splitlines()]
    assert [f["unknown_words"] for f in found] == [[], ["zorg"]] and [len(f["results"]) for f in found] == [3, 3]
    assert capgen.search(best, data, "a red circle", top=3) == found[:1]
    with pytest.raises(capgen.CapgenError, match=r"^--top: must be at least 1 \(got 0\)$"):
        capgen.search(best, data, "red", top=0)
