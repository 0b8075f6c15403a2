"""`capgen bench caption`: torch against onnxruntime on the same images, in the same run.

The checkpoint is exported to a temp folder (`capgen export`; or --onnx names a folder already
exported from it). Both captioners caption the same decoded images (synthetic 640x480 JPEGs of
coloured shapes, tools/bench/serve.py's) with the same beam, on the same number of threads
(torch.set_num_threads; onnxruntime's intra_op_num_threads), at each batch size: a pass
captions every image once, in calls of `batch` images (preprocessing included, as
Captioner.caption does it), and the passes of the two alternate, so a busy machine slows both
alike. Figures per batch size and runtime: images/s of the best pass, median and p95 latency of
one call over every pass; the ratio is onnxruntime's images/s over torch's. The best captions of
the two are compared too (they should be the same).
"""

import io
import tempfile
import time

import torch
from PIL import Image

from model.export.export import export
from model.export.runtime import OnnxCaptioner
from model.infer.captioner import Captioner
from tools.bench.serve import make_images, percentile

BATCHES = (1, 16)


def _pass(captioner, images, batch, beam):
    """Caption every image once, `batch` at a time: (best captions, seconds of each call)."""
    best, seconds = [], []
    for i in range(0, len(images), batch):
        start = time.perf_counter()
        results = captioner.caption(images[i : i + batch], beam=beam, topk=1, batch_size=batch)
        seconds.append(time.perf_counter() - start)
        best += [r["captions"][0]["text"] for r in results]
    return best, seconds


def _figures(passes, images):
    calls = [s for p in passes for s in p]
    return {
        "images_per_s": images / min(sum(p) for p in passes),
        "p50_ms": percentile(calls, 50),
        "p95_ms": percentile(calls, 95),
    }


def measure(captioners, images, batch, beam, rounds):
    """{name: figures} of each captioner at one batch size, passes interleaved; and whether their
    best captions agree, image by image."""
    passes = {name: [] for name in captioners}
    captions = {name: _pass(c, images[:batch], batch, beam)[0] for name, c in captioners.items()}  # warm-up
    for _ in range(rounds):
        for name, c in captioners.items():
            captions[name], seconds = _pass(c, images, batch, beam)
            passes[name].append(seconds)
    torch_best, onnx_best = captions.values()
    same = sum(a == b for a, b in zip(torch_best, onnx_best))
    return {name: _figures(p, len(images)) for name, p in passes.items()}, same


def run(checkpoint, n_images=64, beam=3, threads=2, rounds=3, onnx_dir=None, echo=print) -> dict:
    """Both captioners on `n_images` images at each of BATCHES: the figures as one dict."""
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in make_images(n_images)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if onnx_dir is None:
                onnx_dir = f"{tmp}/model"
                report = export(checkpoint, onnx_dir)
                echo(f"exported {checkpoint}: max abs difference onnxruntime vs torch {report['max_abs_diff']:.2g}")
            captioners = {"torch": Captioner.load(checkpoint), "onnxruntime": OnnxCaptioner.load(onnx_dir, threads)}
            size = captioners["torch"].image["size"]
            echo(f"bench caption: {n_images} 640x480 images -> {size} px, beam {beam}, {threads} threads, cpu")
            out = {"threads": threads, "beam": beam, "images": n_images, "rounds": rounds, "batches": []}
            for batch in BATCHES:
                figures, same = measure(captioners, images, batch, beam, rounds)
                ratio = figures["onnxruntime"]["images_per_s"] / figures["torch"]["images_per_s"]
                out["batches"].append({"batch": batch, **figures, "ratio": ratio, "same_captions": same})
                echo(report_line(batch, figures, ratio, same, n_images))
    finally:
        torch.set_num_threads(before)
    return out


def report_line(batch, figures, ratio, same, n_images):
    parts = [
        f"{name} {f['images_per_s']:.1f} images/s (p50 {f['p50_ms']:.1f} ms, p95 {f['p95_ms']:.1f} ms)"
        for name, f in figures.items()
    ]
    return f"batch {batch:2d}: {'; '.join(parts)}; ratio {ratio:.2f}x; same best caption {same}/{n_images}"
