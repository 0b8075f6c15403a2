"""`capgen export` and `capgen caption --onnx`: the graphs match torch, the captions are torch's,
and the runtime needs no torch."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from cli_in_process import capgen
from click.testing import CliRunner
from PIL import Image

from model.export.runtime import OnnxCaptioner
from model.infer.captioner import Captioner
from model.nets.search import greedy
from pipeline.synth.generator import synthesize
from tools.cli.main import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPHS = ("encoder.onnx", "decoder_init.onnx", "decoder_step.onnx")


def invoke(args):
    res = CliRunner().invoke(cli, args)
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def exported(tiny_trained_checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("onnx") / "model")
    code, stdout, stderr = invoke(["export", "--checkpoint", tiny_trained_checkpoint, "--out", out, "--json"])
    assert code == 0, stderr
    return {"checkpoint": tiny_trained_checkpoint, "dir": out, "stdout": stdout}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Synthetic images the model never saw (another seed; 48x40, downscaled to 32 px), and the
    cases the preprocessing must get right: larger, smaller (upscaled), grayscale, RGBA, EXIF-rotated."""
    root = tmp_path_factory.mktemp("held_out")
    synthesize(str(root / "data"), 24, seed=97, val_fraction=0.0, width=48, height=40, workers=1)
    folder = root / "data" / "train2014"
    paths = sorted(str(folder / name) for name in os.listdir(folder))
    first = Image.open(paths[0]).convert("RGB")
    odd = {
        "large.png": first.resize((160, 120), Image.BICUBIC),
        "small.png": first.resize((24, 20), Image.BICUBIC),
        "gray.png": first.convert("L"),
        "rgba.png": first.convert("RGBA"),
    }
    for name, img in odd.items():
        img.save(root / name)
        paths.append(str(root / name))
    exif = Image.Exif()
    exif[0x0112] = 6
    first.save(root / "rotated.jpg", exif=exif, quality=95)
    return paths + [str(root / "rotated.jpg")]


def open_all(paths):
    return [Image.open(p) for p in paths]


def test_export_writes_checked_graphs_and_a_report(exported):
    folder = exported["dir"]
    assert sorted(os.listdir(folder)) == sorted([*GRAPHS, "config.json", "vocab.json", "report.json"])
    for name in GRAPHS:
        onnx.checker.check_model(os.path.join(folder, name), full_check=True)
    with open(os.path.join(folder, "report.json")) as f:
        report = json.load(f)
    assert json.loads(exported["stdout"].splitlines()[-1]) == report
    assert report["checker"] == "passed" and report["opset"] == 17
    assert set(report["max_abs_diff_by_graph"]) == {"encoder", "decoder_init", "decoder_step"}
    assert 0 <= report["max_abs_diff"] == max(report["max_abs_diff_by_graph"].values()) < 1e-3
    line = exported["stdout"].splitlines()[1]
    assert line.startswith(f"onnxruntime vs torch on sample inputs: max abs difference {report['max_abs_diff']:.3g}")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["format"] == "capgen-onnx" and config["config"] == Captioner.load(exported["checkpoint"]).config


def captions(results):
    return [[c["text"] for c in r["captions"]] for r in results]


def assert_scores_close(got, want):
    for a, b in zip(got, want):
        for x, y in zip(a["captions"], b["captions"]):
            assert x["score"] == pytest.approx(y["score"], rel=1e-5, abs=1e-4)
        assert np.allclose(np.asarray(a["attention"]), np.asarray(b["attention"]), atol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_captions_are_torchs(exported, held_out):
    images = open_all(held_out)
    runtime = OnnxCaptioner.load(exported["dir"], threads=1)
    reference = Captioner.load(exported["checkpoint"])
    assert runtime.grid == reference.grid and runtime.vocab.itos == reference.vocab.itos
    for img in images:
        assert np.array_equal(runtime.preprocess(img), reference.preprocess(img).numpy())
    # greedy: exactly the same tokens as model/nets/search.py's greedy
    x = np.stack([runtime.preprocess(img) for img in images])
    tokens, alphas = runtime.greedy(x)
    with torch.inference_mode():
        want_tokens, want_alphas = greedy(
            reference.decoder, reference.encoder(torch.from_numpy(x)), reference.vocab.max_len
        )
    assert np.array_equal(tokens, want_tokens.numpy())
    assert np.allclose(alphas, want_alphas.numpy(), atol=1e-5)
    assert len({tuple(row) for row in tokens}) > 3  # a model whose captions differ by image
    for beam in (1, 3):
        got = runtime.caption(images, beam=beam, topk=beam, batch_size=8)
        want = reference.caption(images, beam=beam, topk=beam, batch_size=8)
        differ = [(p, a, b) for p, a, b in zip(held_out, captions(got), captions(want)) if a != b]
        # Equal scores within float32 rounding could swap two beams: none seen; each would be listed here.
        assert not differ, f"beam {beam}: {len(differ)} of {len(images)} images differ (near-tied beams?): {differ}"
        assert_scores_close(got, want)


def test_caption_cli_onnx_prints_what_the_checkpoint_does(exported, held_out, tmp_path):
    images = held_out[:3]
    code, onnx_out, err = invoke(["caption", "--onnx", exported["dir"], *images, "--json", "--threads", "1"])
    assert code == 0, err
    code, torch_out, err = invoke(["caption", "--checkpoint", exported["checkpoint"], *images, "--json"])
    assert code == 0, err
    got, want = ([json.loads(line) for line in out.splitlines()] for out in (onnx_out, torch_out))
    assert [r["image"] for r in got] == images and captions(got) == captions(want)
    assert [(r["words"], r["grid"]) for r in got] == [(r["words"], r["grid"]) for r in want]
    assert_scores_close(got, want)
    code, text, err = invoke(["caption", "--onnx", exported["dir"], images[0], "--attention", str(tmp_path / "a.png")])
    assert code == 0 and text.splitlines()[0] == images[0] and "attention figure" in err
    assert Image.open(tmp_path / "a.png").format == "PNG"


@pytest.mark.usefixtures("one_thread")
def test_numpy_search_is_search_py():
    """The same decoder step under both searches: the same tokens, scores, attention and ranking."""
    from model.export import numpy_search
    from model.nets.decoder import Decoder
    from model.nets.search import beam_search

    torch.manual_seed(0)
    decoder = Decoder(12, 8, 8, 8, 8, dropout=0.0).eval()
    features = torch.randn(5, 4, 8) * 3
    ctx = decoder.prepare(features)

    def step(prev, h, c):
        with torch.inference_mode():
            out = decoder.step(ctx, torch.from_numpy(prev), torch.from_numpy(h), torch.from_numpy(c))
        return [t.numpy().copy() for t in out]

    h0, c0 = ctx.h.detach().numpy(), ctx.c.detach().numpy()
    tokens, alphas = numpy_search.greedy(step, h0, c0, max_len=6)
    want_tokens, want_alphas = greedy(decoder, features, max_len=6)
    assert np.array_equal(tokens, want_tokens.numpy()) and np.array_equal(alphas, want_alphas.numpy())
    for beam, topk, norm in ((1, 1, False), (3, 2, False), (4, 4, True)):
        got = numpy_search.beam_search(step, h0, c0, beam, max_len=6, topk=topk, length_norm=norm)
        want = beam_search(decoder, features, beam, max_len=6, topk=topk, length_norm=norm)
        for a, b in zip(got, want):
            assert [(h.tokens, h.score) for h in a] == [(h.tokens, h.score) for h in b]
            assert all(np.array_equal(x.alphas, y.alphas) for x, y in zip(a, b))


def test_runtime_runs_without_torch(exported, held_out):
    """A process where torch, torchvision, simplejpeg and click cannot be imported captions an image."""
    code = (
        "import json, sys\n"
        "for name in ('torch', 'torchvision', 'simplejpeg', 'click'): sys.modules[name] = None\n"
        "from PIL import Image\n"
        "from model.export.runtime import OnnxCaptioner\n"
        f"r = OnnxCaptioner.load({exported['dir']!r}, threads=1).caption([Image.open({held_out[0]!r})], beam=3)\n"
        "print(json.dumps(r[0]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    want = Captioner.load(exported["checkpoint"]).caption([Image.open(held_out[0])], beam=3)[0]
    assert captions([got]) == captions([want])
    assert_scores_close([got], [want])


def test_bad_inputs_are_one_line(exported, tmp_path, held_out, capsys, monkeypatch):
    def invoke(args):
        return capgen(args, capsys, monkeypatch)

    missing = str(tmp_path / "nowhere")
    code, _, err = invoke(["caption", "--onnx", missing, held_out[0]])
    assert (code, err) == (1, f"capgen: error: {missing}: no such folder (make one with capgen export)\n")
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(["caption", "--onnx", str(tmp_path / "empty"), held_out[0]])
    assert code == 1 and err.startswith(f"capgen: error: {tmp_path / 'empty' / 'config.json'}: not found")
    code, _, err = invoke(["caption", "--onnx", exported["dir"], "--checkpoint", exported["checkpoint"], held_out[0]])
    assert code == 2 and "Give one of --checkpoint (torch) or --onnx" in err
    code, _, err = invoke(["export", "--checkpoint", missing, "--out", str(tmp_path / "m")])
    assert (code, err) == (1, f"capgen: error: {missing}: checkpoint folder not found\n")
    (tmp_path / "file").write_text("x")
    code, _, err = invoke(["export", "--checkpoint", exported["checkpoint"], "--out", str(tmp_path / "file")])
    assert code == 2 and err.splitlines()[-1].endswith(f"'{tmp_path / 'file'}' is a file.")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(exported["dir"]):
        (broken / name).write_bytes(open(os.path.join(exported["dir"], name), "rb").read())
    (broken / "decoder_step.onnx").write_bytes(b"not a graph")
    code, _, err = invoke(["caption", "--onnx", str(broken), held_out[0]])
    assert code == 1 and err.startswith(f"capgen: error: {broken / 'decoder_step.onnx'}: cannot load (")
    assert len(err.splitlines()) == 1


def test_serve_onnx_answers_as_the_checkpoint_does(exported, held_out, capsys, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette prefers httpx2; httpx is what we have
        from fastapi.testclient import TestClient

    from tools.serve.app import create_app

    runtime = OnnxCaptioner.load(exported["dir"], threads=1)
    with TestClient(create_app(runtime, beam=3, topk=2)) as client:
        with open(held_out[1], "rb") as f:
            reply = client.post("/api/caption", files={"image": ("a.jpg", f.read(), "image/jpeg")})
        assert reply.status_code == 200, reply.text
        bad = client.post("/api/caption", files={"image": ("b.jpg", b"not an image", "image/jpeg")})
        assert bad.status_code == 415
    got = reply.json()
    want = Captioner.load(exported["checkpoint"]).caption([Image.open(held_out[1])], beam=3, topk=2)[0]
    assert captions([got]) == captions([want]) and got["grid"] == want["grid"]
    assert_scores_close([got], [want])
    code, _, err = capgen(["serve", "--onnx", exported["dir"], "--index", "x"], capsys, monkeypatch)
    assert code == 2 and "--index scores with the torch decoder: give --checkpoint." in err
    code, _, err = capgen(["serve"], capsys, monkeypatch)
    assert code == 2 and "Give one of --checkpoint (torch) or --onnx" in err
