"""`capgen export`: a checkpoint -> ONNX graphs for onnxruntime, checked against torch.

Three graphs, every batch axis dynamic (B images, G beams or captions per image):

  encoder.onnx       images [B,3,S,S] (normalised) -> features [B,P,C]
  decoder_init.onnx  features [B,P,C] -> standardised [B,P,C], proj [B,P,A], h0 [B,H], c0 [B,H]
                     (Decoder.prepare: run once per image)
  decoder_step.onnx  standardised, proj, prev [B,G] int64, h [B,G,H], c [B,G,H]
                     -> logp [B,G,V], alpha [B,G,P], h1, c1 (Decoder.step: attention, gate, LSTM cell,
                     output layer, log-softmax)

The search itself (greedy, beam) stays in Python: model/export/numpy_search.py, model/nets/search.py's
twin. Exported with torch's TorchScript-based exporter (`dynamo=False`): it needs nothing beyond
torch and onnx (the torch.export-based one needs onnxscript) and traces these graphs whole.
Each graph is checked by onnx.checker, then run by onnxruntime on sample inputs at two batch
shapes against torch: the max abs difference of each is printed and kept in report.json.
"""

import json
import os
import time
import warnings

import numpy as np
import torch
from torch import nn

from model.export.runtime import CONFIG, DEFAULT_OPSET, FORMAT, GRAPHS, REPORT, VERSION, VOCAB, OnnxCaptioner
from model.infer.captioner import Captioner
from model.nets.decoder import Context
from model.runs import checkpoint
from pipeline.atomic import atomic_dir, atomic_write
from pipeline.errors import CapgenError, first_line

TOLERANCE = 1e-4  # a graph fails the check past this times max(1, the largest |output| torch gives)
SHAPES = ((1, 1), (2, 3))  # (images, groups) of the sample inputs


class _Init(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features):
        return tuple(self.decoder.prepare(features))


class _Step(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features, proj, prev, h, c):
        return self.decoder.step(Context(features, proj, None, None), prev, h, c)


def _modules(captioner):
    """The graphs as torch modules, all in eval mode: a wrapper left in training mode would put the
    decoder in it too when the exporter restores the wrapper's mode (dropout in the reference)."""
    return {
        "encoder": captioner.encoder.eval(),
        "decoder_init": _Init(captioner.decoder).eval(),
        "decoder_step": _Step(captioner.decoder).eval(),
    }


def sample_inputs(captioner, images, groups, seed=0):
    """Inputs of each graph for `images` random images and `groups` beams: {graph: tuple of tensors}."""
    g = torch.Generator().manual_seed(seed)
    size, image = captioner.image["size"], captioner.image
    pixels = torch.randint(0, 256, (images, 3, size, size), generator=g).float() / 255
    x = (pixels - torch.tensor(image["mean"])[:, None, None]) / torch.tensor(image["std"])[:, None, None]
    with torch.inference_mode():
        features = captioner.encoder(x)
        ctx = captioner.decoder.prepare(features)
    state = [
        s[:, None].expand(-1, groups, -1) + 0.1 * torch.randn(images, groups, s.shape[1], generator=g) for s in ctx[2:]
    ]
    prev = torch.randint(0, captioner.decoder.vocab_size, (images, groups), generator=g)
    return {
        "encoder": (x,),
        "decoder_init": (features,),
        "decoder_step": (ctx.features, ctx.proj, prev, *state),
    }


def _dynamic_axes(graph, inputs):
    """Axis 0 of every input and output is the batch; the step's prev, h, c and outputs also have groups."""
    _, in_names, out_names = GRAPHS[graph]
    axes = {name: {0: "batch"} for name in in_names + out_names}
    if graph == "decoder_step":
        for name in ["prev", "h", "c", *out_names]:
            axes[name] = {0: "batch", 1: "groups"}
    return axes


def _export_graph(module, graph, inputs, path, opset):
    _, in_names, out_names = GRAPHS[graph]
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            inputs,
            path,
            dynamo=False,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=_dynamic_axes(graph, inputs),
            opset_version=opset,
            do_constant_folding=True,
        )


def check(captioner, runtime, seed=0):
    """onnxruntime against torch on sample inputs of each SHAPES: {graph: max abs difference}
    and {graph: the largest |value| torch gave}."""
    diffs, scales = {}, {}
    modules = _modules(captioner)
    for images, groups in SHAPES:
        for graph, inputs in sample_inputs(captioner, images, groups, seed).items():
            with torch.inference_mode():
                want = modules[graph](*inputs)
            want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
            got = runtime.run(graph, *(t.numpy() for t in inputs))
            diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
            diffs[graph] = max(diffs.get(graph, 0.0), diff)
            scales[graph] = max([scales.get(graph, 0.0)] + [float(np.abs(w).max()) for w in want])
    return diffs, scales


def export(ckpt_dir, out_dir, opset=DEFAULT_OPSET, seed=0) -> dict:
    """Write CHECKPOINT's encoder and decoder step as ONNX into OUT_DIR (replaced whole, atomically),
    with config.json, vocab.json and report.json; returns the report (max abs differences)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise CapgenError(f"{out_dir}: {err.name} is not installed (pip install onnx onnxruntime)") from None
    start = time.perf_counter()
    captioner = Captioner.load(ckpt_dir, "cpu")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CapgenError(f"{out_dir}: exists and is not a folder")
    modules = _modules(captioner)
    with atomic_dir(out_dir) as tmp:
        for graph, inputs in sample_inputs(captioner, *SHAPES[-1], seed).items():
            path = os.path.join(tmp, GRAPHS[graph][0])
            try:
                _export_graph(modules[graph], graph, inputs, path, opset)
                onnx.checker.check_model(path, full_check=True)
            except Exception as err:  # noqa: BLE001 - the exporter and the checker raise many types
                raise CapgenError(f"{out_dir}: {graph} export at opset {opset} failed ({first_line(err)})") from None
        _write_config(tmp, ckpt_dir, captioner, opset)
        diffs, scales = check(captioner, OnnxCaptioner.load(tmp, threads=1), seed)
        report = {
            "checkpoint": os.path.abspath(checkpoint.resolve(ckpt_dir)),
            "opset": opset,
            "checker": "passed",
            "samples": [{"images": b, "groups": g, "seed": seed} for b, g in SHAPES],
            "max_abs_diff": max(diffs.values()),
            "max_abs_diff_by_graph": diffs,
            "max_abs_value_by_graph": scales,  # torch's largest |output|: the scale of the differences
            "tolerance": TOLERANCE,
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "seconds": round(time.perf_counter() - start, 3),
        }
        bad = [g for g in diffs if diffs[g] > TOLERANCE * max(1.0, scales[g])]
        if bad:
            raise CapgenError(f"{out_dir}: onnxruntime differs from torch in {', '.join(bad)} ({diffs})")
        with atomic_write(os.path.join(tmp, REPORT), "w") as f:
            json.dump(report, f, indent=1)
    return report


def _write_config(folder, ckpt_dir, captioner, opset):
    config = {
        "format": FORMAT,
        "version": VERSION,
        "files": {graph: file for graph, (file, _, _) in GRAPHS.items()},
        "opset": opset,
        "config": captioner.config,
        "grid": captioner.grid,
        "checkpoint": os.path.abspath(checkpoint.resolve(ckpt_dir)),
    }
    with atomic_write(os.path.join(folder, CONFIG), "w") as f:
        json.dump(config, f, indent=1)
    captioner.vocab.save(os.path.join(folder, VOCAB))
